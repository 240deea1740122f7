from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import jsonschema
import pytest

import schemas

DATASETS = {
    "identite_pivot", "quotient_familial", "statut_etudiant", "etudiant_boursier", "statut_demandeur_emploi",
    "complementaire_sante_solidaire", "revenu_solidarite_active", "prime_activite", "revenu_fiscal_reference",
    # API Entreprise, about businesses and associations
    "unite_legale", "unite_legale_diffusible", "etablissement", "etablissement_diffusible", "attestation_vigilance",
    "attestation_fiscale", "extrait_kbis", "mandataires_sociaux", "extrait_rne", "beneficiaires_effectifs",
    "association", "effectifs_annuels", "certification_qualibat", "certification_rge", "certification_qualiopi",
    "certification_opqibi", "certification_qualifelec", "conformite_cotisations_msa", "conformite_cotisations_probtp",
    "numero_tva",
    # API Particulier, added with the subject union
    "allocation_adulte_handicape", "allocation_enfant_handicape", "allocation_soutien_familial", "service_national",
    "participation_familiale_eaje", "service_civique", "statut_sportif", "indemnites_france_travail", "scolarites",
    "extrait_immatriculation_vehicule",
}
ALL = [(d, v) for d, versions in schemas.catalogue().items() for v in versions]


def validator(dataset: str, version: int) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schemas.load(dataset, version))


def test_catalogue_has_every_dataset() -> None:
    assert set(schemas.catalogue()) == DATASETS
    # a new upstream shape is a new version beside the old one: Cnous v4's statut_boursier
    # and the answers without identite of the FranceConnect modes of MESRI (statut_etudiant v2) and Cnous (v3)
    assert {d: schemas.latest(d) for d in DATASETS if schemas.latest(d) != 1} == {"etudiant_boursier": 3,
                                                                                    "statut_etudiant": 2}


def test_no_stray_json_files() -> None:
    names = {e.name for e in resources.files("schemas").iterdir() if e.name.endswith(".json")}
    assert names == {schemas.file_name(d, v) for d, v in ALL}


@pytest.mark.parametrize(("dataset", "version"), ALL)
def test_schema_is_valid_2020_12(dataset: str, version: int) -> None:
    schema = schemas.load(dataset, version)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(("dataset", "version"), ALL)
def test_id_matches_file_name(dataset: str, version: int) -> None:
    assert schemas.load(dataset, version)["$id"] == schemas.SCHEMA_BASE + f"{dataset}.v{version}.json"


def _described(schema: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema that documents a member: the root, each property, each array's items if an object."""
    if not isinstance(schema, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        yield f"{where}.{name}", sub
        yield from _described(sub, f"{where}.{name}")
    for key in ("items", "then", "else", "if"):
        if key in schema:
            yield from _described(schema[key], f"{where}[{key}]")
    for name, sub in schema.get("$defs", {}).items():
        yield from _described(sub, f"{where}$defs.{name}")


@pytest.mark.parametrize(("dataset", "version"), ALL)
def test_every_member_is_described_in_french_and_english(dataset: str, version: int) -> None:
    schema = schemas.load(dataset, version)
    members = [(dataset, schema), *_described(schema, dataset)]
    # Conditional branches only narrow a property already described at the top.
    members = [(w, s) for w, s in members if "[then]" not in w and "[else]" not in w and "[if]" not in w]
    for where, sub in members:
        assert sub.get("description"), f"{where} has no French description"
        assert sub.get("x-description-en"), f"{where} has no English x-description-en"
        assert sub["description"] != sub["x-description-en"], where


def _labelled(schema: Any, where: str, key: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every schema a citizen may see as a labelled value, with the key it hides: each property at any depth
    (also under `$defs` and inside `anyOf`/`oneOf`/`allOf` branches), each array's items, each object in `$defs`.
    Conditional branches (`if`/`then`/`else`) only narrow a property already labelled, so they are not walked."""
    if not isinstance(schema, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        if isinstance(sub, dict):
            yield f"{where}.{name}", name, sub
            yield from _labelled(sub, f"{where}.{name}", name)
    if isinstance(schema.get("items"), dict):
        # array items have no key of their own: the array's key is the raw name they must not show
        yield f"{where}[]", key, schema["items"]
        yield from _labelled(schema["items"], f"{where}[]", key)
    for keyword in ("anyOf", "oneOf", "allOf"):
        for i, branch in enumerate(schema.get(keyword, ())):
            yield from _labelled(branch, f"{where}[{keyword}{i}]", key)
    for name, sub in schema.get("$defs", {}).items():
        if isinstance(sub, dict) and ("properties" in sub or sub.get("type") == "object"):
            yield f"{where}$defs.{name}", name, sub
        yield from _labelled(sub, f"{where}$defs.{name}", name)


@pytest.mark.parametrize(("dataset", "version"), ALL)
def test_every_member_has_a_french_title_and_description(dataset: str, version: int) -> None:
    # The consent screen and the portal show `title` to citizens in place of the key, and `description` beside it.
    schema = schemas.load(dataset, version)
    assert isinstance(schema.get("title"), str) and schema["title"].strip(), f"{dataset} has no title"
    members = list(_labelled(schema, dataset, dataset))
    assert members, dataset
    for where, key, sub in members:
        title, description = sub.get("title"), sub.get("description")
        assert isinstance(title, str) and title.strip(), f"{where} has no French title"
        assert isinstance(description, str) and description.strip(), f"{where} has no French description"
        assert sub.get("x-description-en"), f"{where} has no English x-description-en"
        # A label, not the key. « Pays » for `pays` or « Quotient familial » for `quotient_familial` are right,
        # so what is refused is the key as written: unchanged, snake_case, or lower case.
        assert title != key, f"{where}: title is the raw key"
        assert "_" not in title and title[0].isupper(), f"{where}: title {title!r} looks like a key"
        # The description says what the value means, beyond repeating the label.
        assert description.strip().rstrip(".").casefold() != title.casefold(), f"{where}: description repeats the title"


@pytest.mark.parametrize(("dataset", "version"), ALL)
def test_sibling_members_have_distinct_titles(dataset: str, version: int) -> None:
    # Two values shown side by side under the same label could not be told apart by a citizen.
    schema = schemas.load(dataset, version)
    objects = [schema, *(sub for _, _, sub in _labelled(schema, dataset, dataset))]
    for obj in objects:
        titles = [s.get("title") for s in obj.get("properties", {}).values() if isinstance(s, dict)]
        assert len(titles) == len(set(titles)), f"{dataset}: duplicate titles among {titles}"


@pytest.mark.parametrize(("dataset", "version"), ALL)
def test_objects_reject_unknown_members(dataset: str, version: int) -> None:
    schema = schemas.load(dataset, version)
    objects = [(dataset, schema)] + [(w, s) for w, s in _described(schema, dataset) if "properties" in s]
    objects += [(f"$defs.{n}", s) for n, s in schema.get("$defs", {}).items() if "properties" in s]
    for where, sub in objects:
        assert sub.get("additionalProperties") is False, where


@pytest.mark.parametrize(("dataset", "version"), ALL)
def test_examples_validate(dataset: str, version: int) -> None:
    schema = schemas.load(dataset, version)
    assert schema["examples"], "each schema carries at least one example"
    for example in schema["examples"]:
        validator(dataset, version).validate(example)


def _example(dataset: str) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(schemas.load(dataset, 1)["examples"][0])
    return doc


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    target: Any = doc
    *parents, last = path.split(".")
    for p in parents:
        target = target[int(p)] if isinstance(target, list) else target[p]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


_DELETE = object()

INVALID = [
    ("identite_pivot", "gender", "M"),
    ("identite_pivot", "birthdate", "1979-13-02"),
    ("identite_pivot", "birthdate", "02/07/1979"),
    ("identite_pivot", "birthplace", ""),  # born in France without a commune
    ("identite_pivot", "birthcountry", "100"),
    ("identite_pivot", "nickname", "JB"),
    ("quotient_familial", "quotient_familial.valeur", "1045"),
    ("quotient_familial", "quotient_familial.fournisseur", "CAF"),
    ("quotient_familial", "quotient_familial.mois", 13),
    ("quotient_familial", "allocataires", []),
    ("quotient_familial", "allocataires.0.sexe", "X"),
    ("quotient_familial", "adresse.code_postal_ville", _DELETE),
    ("quotient_familial", "adresse.iban", "FR76..."),
    ("statut_etudiant", "admissions.0.est_inscrit", "oui"),
    ("statut_etudiant", "admissions.0.etablissement_etudes.uai", "INCONNU"),
    ("etudiant_boursier", "echelon_bourse.echelon", "9"),
    ("etudiant_boursier", "periode_versement_bourse.date_rentree", "septembre"),
    ("statut_demandeur_emploi", "inscription.categorie.code", 9),
    ("statut_demandeur_emploi", "inscription.date_fin", "2024"),
    ("complementaire_sante_solidaire", "est_beneficiaire", "oui"),
    ("revenu_solidarite_active", "date_debut_droit", "01/05/2023"),
    ("prime_activite", "avec_majoration", _DELETE),
    ("revenu_fiscal_reference", "nombre_parts", 2.3),
    ("revenu_fiscal_reference", "situation_famille", "Marié(e)s"),
    ("revenu_fiscal_reference", "revenu_fiscal_reference", -1),
]


@pytest.mark.parametrize(("dataset", "path", "value"), INVALID)
def test_invalid_documents_are_rejected(dataset: str, path: str, value: Any) -> None:
    doc = _set(_example(dataset), path, value)
    errors = list(validator(dataset, 1).iter_errors(doc))
    assert errors, f"{dataset} accepted {path} = {value!r}"


def test_born_abroad_must_not_name_a_commune() -> None:
    doc = _example("identite_pivot")
    v = validator("identite_pivot", 1)
    v.validate({**doc, "birthcountry": "99350", "birthplace": ""})
    with pytest.raises(jsonschema.ValidationError):
        v.validate({**doc, "birthcountry": "99350", "birthplace": "69383"})


def test_partial_birthdates_are_pivot_identities() -> None:
    v = validator("identite_pivot", 1)
    for birthdate in ("1962-00-00", "1970-04-00"):
        v.validate({**_example("identite_pivot"), "birthdate": birthdate})
    with pytest.raises(jsonschema.ValidationError):
        v.validate({**_example("identite_pivot"), "birthdate": "1970-00-04"})


def test_schema_files_are_utf8_json_with_french_text() -> None:
    # Non-ASCII must be stored as such, so the French descriptions stay readable in review.
    text = resources.files("schemas").joinpath("quotient_familial.v1.json").read_text("utf-8")
    assert "\\u00e9" not in text and "é" in text
    json.loads(text)


# --------------------------------------------------------------------------------- projection


def test_project_drops_undeclared_members_at_every_depth() -> None:
    schema = schemas.load("quotient_familial", 1)
    upstream = _example("quotient_familial")
    upstream["nouveau_champ"] = 1
    upstream["quotient_familial"]["nouveau"] = True
    upstream["allocataires"][0]["numero_allocataire"] = "0000354"
    upstream["adresse"]["coordonnees_gps"] = [45.7, 4.8]
    projected = schemas.project(upstream, schema)
    assert projected == _example("quotient_familial")


def test_project_never_coerces() -> None:
    schema = schemas.load("quotient_familial", 1)
    upstream = _set(_example("quotient_familial"), "quotient_familial.valeur", "1045")
    projected = schemas.project(upstream, schema)
    assert projected["quotient_familial"]["valeur"] == "1045"
    with pytest.raises(jsonschema.ValidationError):
        validator("quotient_familial", 1).validate(projected)


def test_project_follows_nullable_refs_and_keeps_nulls() -> None:
    schema = schemas.load("statut_demandeur_emploi", 1)
    doc = _example("statut_demandeur_emploi")
    assert schemas.project(doc, schema) == doc
    assert schemas.project(None, schema) is None
