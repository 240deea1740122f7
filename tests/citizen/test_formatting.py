"""Values formatted for people, driven by the schema: dates, sex, amounts, Oui/Non, enums, arrays of people."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import schemas
from broker.citizen import formatting as f
from broker.registry.derived import DerivedRule

NNBSP = "\u202f"


@pytest.mark.parametrize(("iso", "text"), [
    ("1985-03-14", "14 mars 1985"), ("2024-01-01", "1er janvier 2024"), ("1970-04-00", "avril 1970"),
    ("1962-00-00", "1962"), ("2024-02-30", None), ("1962-00-04", None), ("14/03/1985", None), ("2024-13-01", None),
])
def test_iso_dates_in_french(iso: str, text: str | None) -> None:
    assert f.iso_date_fr(iso) == text


def test_moments_are_in_paris_time() -> None:
    assert f.moment_fr(datetime(2026, 3, 14, 14, 57, tzinfo=UTC)) == "14 mars 2026 à 15 h 57"  # UTC+1
    assert f.moment_fr(datetime(2026, 7, 1, 6, 5, tzinfo=UTC)) == "1er juillet 2026 à 8 h 05"  # UTC+2


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (582, "582"), (1045, "1045"), (2024, "2024"), (12345, f"12{NNBSP}345"),
    (-1234567, f"-1{NNBSP}234{NNBSP}567"), (2.5, "2,5"), (3.0, "3"), (1234.75, "1234,75"),
    (45678.5, f"45{NNBSP}678,5"),
])
def test_numbers_in_french(value: float, text: str) -> None:
    assert f.number_fr(value) == text


@pytest.mark.parametrize(("days", "text"), [(1, "1 jour"), (2, "2 jours"), (30, "30 jours")])
def test_durations_agree_in_number(days: int, text: str) -> None:
    assert f.days_fr(days) == text


def test_a_household_as_people_read_it() -> None:
    schema = schemas.load("quotient_familial", 1)
    document = schema["examples"][0]
    qf = f.show_field(schema, "quotient_familial", document["quotient_familial"])
    assert dict(qf.members) == {
        "Caisse (CAF ou MSA)": f.Shown(text="Caisse d'allocations familiales (CAF)"),
        "Valeur du quotient familial": f.Shown(text=f"1045{NNBSP}€"),
        "Année d'application": f.Shown(text="2024"),
        "Mois d'application": f.Shown(text="6"),
        "Année de calcul": f.Shown(text="2024"),
        "Mois de calcul": f.Shown(text="5"),
    }
    adults = f.show_field(schema, "allocataires", document["allocataires"])
    assert [label for label, _ in adults.items] == ["Allocataire ou conjoint 1", "Allocataire ou conjoint 2"]
    first = dict(adults.items[0][1].members)
    assert first["Date de naissance"].text == "2 juillet 1979"
    assert first["Sexe"].text == "Homme"
    assert first["Nom d'usage"] == f.Shown(text="non renseigné", missing=True)
    children = f.show_field(schema, "enfants", document["enfants"])
    assert [label for label, _ in children.items] == ["Enfant"]  # one child: no rank
    assert f.show_field(schema, "enfants", []).text == "aucun"


def test_booleans_nulls_and_nullable_dates() -> None:
    schema = schemas.load("complementaire_sante_solidaire", 1)
    assert f.show_field(schema, "est_beneficiaire", True).text == "Oui"
    assert f.show_field(schema, "avec_participation", False).text == "Non"
    assert f.show_field(schema, "date_debut_droit", "2024-01-01").text == "1er janvier 2024"
    assert f.show_field(schema, "date_debut_droit", None).missing


def test_undescribed_members_never_show_their_key() -> None:
    shown = f.show({"numero_allocataire": "0000354"}, {"type": "object"}, {})
    assert shown.members[0][0] == "Numero allocataire"
    assert "numero_allocataire" not in shown.plain()


def test_derived_questions() -> None:
    schema = schemas.load("quotient_familial", 1)
    asked = DerivedRule("qf_800", "quotient_familial.valeur", op="<=", value=800,
                        question="Votre quotient familial est-il inférieur ou égal à 800 ?")
    assert f.derived_question(asked, schema) == "Votre quotient familial est-il inférieur ou égal à 800 ?"
    built = DerivedRule("qf_800", "quotient_familial.valeur", op="<=", value=800)
    assert f.derived_question(built, schema) == f"Valeur du quotient familial : 800{NNBSP}€ au plus ?"
    assert f.derived_answer(built, True) == "Oui"
    bracket = DerivedRule("tranche", "quotient_familial.valeur", bounds=(400.0, 800.0), labels=("A", "B", "C"))
    assert f.derived_question(bracket, schema) == "Valeur du quotient familial : dans quelle tranche ?"
    assert f.derived_answer(bracket, "B") == "B"
