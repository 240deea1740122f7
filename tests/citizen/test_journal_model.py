"""The journal's model and its spreadsheet: a preview is never a transfer, a refusal says why in the citizen's words,
and the CSV round-trips through the parse a French spreadsheet does (BOM, sniffed `;`, day-first Paris times)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.citizen.formatting import PARIS
from broker.citizen.portal import entries
from broker.citizen.portal.spreadsheet import BOM, COLUMNS, journal_spreadsheet
from broker.registry import Habilitation, LegalBasis, Organisation, Purpose, Registry

LYON, PARIS_SIRET = "21690123100011", "21750001600019"
PURPOSE = "tarification-restauration-scolaire"
REGISTRY = Registry(
    organisations=(Organisation(LYON, "Ville de Lyon", ("consumer",)),
                   Organisation(PARIS_SIRET, "=Ville de Paris", ("consumer",))),
    habilitations=(Habilitation("lyon", LYON, "quotient_familial", (PURPOSE,), ("quotient_familial",), (LYON,),
                                LegalBasis("consent", "CRPA L114-8", "https://legifrance.gouv.fr/x"), "P1Y"),),
    purposes=(Purpose(PURPOSE, "Calculer le tarif de la cantine"),))


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": str(uuid.uuid4()), "logged_at": "2026-03-14T14:57:03.000001Z", "consumer": LYON,
        "dataset": "quotient_familial", "dataset_version": 1, "purpose": PURPOSE, "recipient": LYON,
        "habilitation_id": "lyon", "legal_basis_type": "consent", "legal_basis_title": "CRPA L114-8",
        "legal_basis_url": "https://legifrance.gouv.fr/x", "fields_requested": ["quotient_familial", "adresse"],
        "fields_released": ["quotient_familial"], "outcome": "released", "problem_type": None,
    }
    entry.update(changes)
    return entry


def test_a_preview_is_never_a_transfer() -> None:
    preview = entries.view(_entry(purpose="apercu-consentement", recipient="citoyen",
                                  fields_released=["quotient_familial", "adresse"]), REGISTRY)
    assert (preview.kind, preview.kind_label, preview.fields_verb) == ("preview", "Aperçu pour vous seul·e", "Montrées")
    assert "Rien ne lui a été transmis" in preview.summary and "obtenu" not in preview.summary
    assert preview.fields == ("Quotient familial", "Adresse de la famille")
    assert preview.recipient is None and preview.purpose.startswith("Vous montrer vos données")
    transfer = entries.view(_entry(), REGISTRY)
    assert (transfer.kind, transfer.fields_verb, transfer.fields) == ("released", "Transmises", ("Quotient familial",))
    assert transfer.summary == "Ville de Lyon a obtenu vos données « Quotient familial CAF ou MSA »."
    assert transfer.purpose == "Calculer le tarif de la cantine" and transfer.when == "14 mars 2026 à 15 h 57"


@pytest.mark.parametrize(("problem", "basis", "reason"), [
    ("https://dlnuf.org/problems/not-authorized", "", "Administration non habilitée"),
    ("https://dlnuf.org/problems/signature-rejected", "", "Administration non habilitée"),
    ("https://dlnuf.org/problems/subject-not-found", "information", "Données introuvables"),
    ("https://dlnuf.org/problems/identity-ambiguous", "information", "Données introuvables"),
    ("https://dlnuf.org/problems/legal-basis-refused", "consent", "Consentement absent ou retiré"),
    ("https://dlnuf.org/problems/legal-basis-refused", "proactive", "Votre opposition"),
    ("https://dlnuf.org/problems/invalid-subject", "", "Demande incomplète"),
    ("provider-unavailable", "information", "Fournisseur indisponible"),  # the preview logs a slug
    ("https://dlnuf.org/problems/something-new", "", "Refusé"),
])
def test_refusals_say_why_in_citizen_words(problem: str, basis: str, reason: str) -> None:
    outcome = "failed" if "provider-unavailable" in problem else "refused"
    view = entries.view(_entry(outcome=outcome, problem_type=problem, legal_basis_type=basis or None,
                               fields_released=[]), REGISTRY)
    assert view.reason == reason and view.reason_detail and "Rien n'a été transmis" in view.reason_detail
    assert view.fields_verb == "Demandées" and view.fields == ("Quotient familial", "Adresse de la famille")


def test_the_spreadsheet_round_trips_through_a_french_spreadsheet_parse() -> None:
    rows = [entries.view(_entry(), REGISTRY),
            entries.view(_entry(consumer=PARIS_SIRET, recipient=PARIS_SIRET, habilitation_id=None, outcome="refused",
                                problem_type="https://dlnuf.org/problems/not-authorized", legal_basis_type=None,
                                logged_at="2026-07-01T06:05:00.000000Z"), REGISTRY)]
    raw = journal_spreadsheet(zip(rows, [41, None], strict=True)).encode("utf-8")
    # what a spreadsheet does: see the BOM, decode UTF-8, sniff the separator, read day-first local times
    assert raw.startswith(BOM.encode("utf-8"))
    text = raw.decode("utf-8-sig")
    dialect = csv.Sniffer().sniff(text.split("\r\n", 1)[0])
    assert dialect.delimiter == ";"
    table = list(csv.DictReader(io.StringIO(text), dialect=dialect))
    assert list(table[0]) == list(COLUMNS)
    moments = [datetime.strptime(r["Date et heure (Paris)"], "%d/%m/%Y %H:%M:%S").replace(tzinfo=PARIS)
               for r in table]
    assert moments == [datetime(2026, 3, 14, 14, 57, 3, 1, tzinfo=UTC).replace(microsecond=0),
                       datetime(2026, 7, 1, 6, 5, tzinfo=UTC)]
    assert [r["Type"] for r in table] == ["Données transmises", "Refusé"]
    assert table[0]["Détail des données"] == "Transmises : Quotient familial"
    assert table[0]["Finalité"] == "Calculer le tarif de la cantine" and table[0]["Position dans le journal public"] \
        == "41"
    assert table[1]["Motif"].startswith("Administration non habilitée : ")
    assert table[1]["Administration"] == "'=Ville de Paris"  # a name that starts like a formula is not run
    assert [r["Identifiant de l'entrée"] for r in table] == [r.id for r in rows]
    assert "tarification-restauration-scolaire" not in text and "quotient_familial" not in text
