"""The one label lookup: titles through properties, array items, `$ref` and nullable branches, for every schema;
and every enum value with a French title, in every schema to come."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import schemas
from schemas import labels

ALL = [(d, v) for d, versions in schemas.catalogue().items() for v in versions]


@pytest.mark.parametrize(("path", "title"), [
    ("quotient_familial", "Quotient familial"),
    ("quotient_familial.valeur", "Valeur du quotient familial"),
    ("allocataires", "Allocataires"),
    ("allocataires[]", "Allocataire ou conjoint"),  # the title beside the $ref wins over the target's
    ("allocataires[].nom_naissance", "Nom de naissance"),  # inside $defs/personne, through items and $ref
    ("allocataires.nom_naissance", "Nom de naissance"),  # a dotted path steps through the array too
    ("enfants[].date_naissance", "Date de naissance"),  # a $ref with its own title
    ("adresse.complement_information_geographique", "Complément d'adresse"),
])
def test_titles_follow_items_refs_and_properties(path: str, title: str) -> None:
    assert labels.field_title("quotient_familial", path) == title


def test_titles_through_nullable_branches() -> None:
    # date_debut_droit is anyOf [$ref date, null]: the title is beside the branches, the type inside
    schema = schemas.load("complementaire_sante_solidaire", 1)
    node = labels.member(schema, "date_debut_droit")
    assert node is not None
    v = labels.view(node, schema)
    assert v["title"] == "Date d'ouverture du droit" and v["type"] == "string" and v["nullable"] is True


def test_unknown_paths_give_none_and_keys_become_words() -> None:
    assert labels.field_title("quotient_familial", "pointure") is None
    assert labels.field_title("quotient_familial", "adresse.pays.code") is None
    assert labels.field_title("nope", "x") is None
    assert labels.dataset_title("nope") is None
    assert labels.readable("complement_information_geographique") == "Complement information geographique"
    assert labels.readable("allocataires[].nom_naissance") == "Allocataires — nom naissance"


def test_enum_titles() -> None:
    schema = schemas.load("quotient_familial", 1)
    sexe = labels.member(schema, "enfants[].sexe")
    assert sexe is not None
    assert labels.enum_title(sexe, schema, "F") == "Femme"
    assert labels.enum_title(sexe, schema, "X") is None
    categorie = schemas.load("statut_demandeur_emploi", 1)
    code = labels.member(categorie, "inscription.categorie.code")
    assert code is not None and labels.enum_title(code, categorie, 3) == "Catégorie 3"


def _enums(node: Any, root: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "enum" in node:
            yield where, node
        for key, sub in node.items():
            if key != "examples":
                yield from _enums(sub, root, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _enums(sub, root, f"{where}[{i}]")


@pytest.mark.parametrize(("dataset", "version"), ALL)
def test_every_enum_value_has_a_french_title(dataset: str, version: int) -> None:
    # A citizen reads « Femme », not `F`. The exception is a code the schema itself calls a code (« Code du régime »),
    # always released with its own label (`libelle`) beside it.
    schema = schemas.load(dataset, version)
    for where, node in _enums(schema, schema, dataset):
        if str(node.get("title", "")).startswith("Code"):
            continue
        titles = node.get("x-enum-titles")
        assert isinstance(titles, dict), f"{where}: enum without x-enum-titles"
        for value in node["enum"]:
            title = labels.enum_title(node, schema, value)
            assert title and title.strip() and title != value, f"{where}: no French title for {value!r}"
        assert len(titles) == len(node["enum"]), f"{where}: x-enum-titles names values the enum does not have"
