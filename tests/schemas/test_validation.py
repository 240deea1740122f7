"""The broker's hot-path validator: same verdicts as the schema tests, refusals that name the path, not the value."""

from __future__ import annotations

from typing import Any

import pytest

import schemas
from schemas.validation import InvalidDocument, Validators
from tests.schemas.test_schemas import _DELETE, ALL, INVALID, _example, _set

VALIDATORS = Validators()


def refusal(dataset: str, document: Any, validators: Validators = VALIDATORS) -> str:
    """The reason `verify` gives for refusing `document` (it fails the test if the document passes)."""
    with pytest.raises(InvalidDocument) as info:
        validators.verify(dataset, 1, document)
    return info.value.reason


@pytest.mark.parametrize(("dataset", "version"), ALL)
def test_every_example_is_accepted(dataset: str, version: int) -> None:
    for example in schemas.load(dataset, version)["examples"]:
        VALIDATORS.verify(dataset, version, example)


@pytest.mark.parametrize(("dataset", "path", "value"), INVALID)
def test_invalid_documents_are_refused_naming_the_path(dataset: str, path: str, value: Any) -> None:
    reason = refusal(dataset, _set(_example(dataset), path, value))
    assert reason.startswith(f"{dataset} v1 at /")
    *parents, last = path.split(".")
    pointer = "/" + "/".join(path.split("."))
    # a wrong value is reported at its own path; a missing or unexpected member at its object's, by name
    assert pointer in reason or ("/" + "/".join(parents) in reason and repr(last) in reason.replace('"', "'")), reason


def test_reason_never_carries_the_offending_value() -> None:
    doc = _set(_example("quotient_familial"), "allocataires.0.nom_naissance", 1789)
    doc = _set(doc, "allocataires.0.sexe", "SECRET-VALUE")
    reason = refusal("quotient_familial", doc)
    assert "/allocataires/0/" in reason
    assert "SECRET-VALUE" not in reason and "1789" not in reason


@pytest.mark.parametrize("bad", ["1979-07-02\n", "1979-07-02 ", "1979-7-2"])
def test_patterns_match_the_whole_string(bad: str) -> None:
    # ECMA-262 `$` does not match before a final newline, unlike Python's re: such a date is refused
    assert "at /birthdate:" in refusal("identite_pivot", {**_example("identite_pivot"), "birthdate": bad})


def test_not_a_number_is_not_a_number() -> None:
    doc = {**_example("revenu_fiscal_reference"), "nombre_parts": float("nan")}
    assert "at /nombre_parts:" in refusal("revenu_fiscal_reference", doc)


def test_non_json_values_are_refused_not_crashed() -> None:
    doc = {**_example("revenu_fiscal_reference"), 1: 2}
    assert "not a JSON document" in refusal("revenu_fiscal_reference", doc)


def test_formats_are_asserted(monkeypatch: pytest.MonkeyPatch) -> None:
    # No dataset uses `format` yet; when one does, a calendar-impossible date must be refused, not annotated.
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
              "properties": {"date_debut": {"type": "string", "format": "date"}}}
    monkeypatch.setattr(schemas, "load", lambda dataset, version: schema)
    validators = Validators()
    validators.verify("some_dataset", 1, {"date_debut": "2024-02-29"})
    assert "at /date_debut: fails 'format'" in refusal("some_dataset", {"date_debut": "2023-02-29"}, validators)


def test_deleted_marker_is_shared_with_the_schema_tests() -> None:
    # guards the import above: INVALID's deletions must reach _set as deletions, not as a value
    assert any(value is _DELETE for _, _, value in INVALID)


def _date_paths(node: Any, root: dict[str, Any], path: str = "") -> list[str]:
    """Dotted paths (through object members only) of every member whose schema, through $ref, says format date."""
    while isinstance(node, dict) and "$ref" in node:
        node = root["$defs"][node["$ref"].removeprefix("#/$defs/")]
    if not isinstance(node, dict):
        return []
    found = [path] if path and (node.get("format") == "date" or
                                any(b.get("format") == "date" for b in node.get("anyOf", ()))) else []
    for name, sub in node.get("properties", {}).items():
        found += _date_paths(sub, root, f"{path}.{name}" if path else name)
    return found


def test_impossible_dates_are_refused_at_the_hot_path_in_every_schema() -> None:
    """Dates are `format: date`, asserted: 2021-06-31 matches every ISO pattern and is still refused."""
    checked = 0
    for dataset, version in ALL:
        for path in _date_paths(schemas.load(dataset, version), schemas.load(dataset, version)):
            try:
                doc = _set(_example(dataset), path, "2021-06-31")
            except (KeyError, IndexError, TypeError):
                continue  # not in this example (an optional member, or under an array)
            assert refusal(dataset, doc).startswith(f"{dataset} v1 at /"), (dataset, path)
            checked += 1
    assert checked >= 6


@pytest.mark.parametrize(("birthdate", "accepted"), [
    ("1985-02-00", True), ("1985-00-00", True), ("1984-02-29", True),
    ("1985-02-29", False), ("1985-02-30", False), ("1985-00-05", False), ("1985-13-00", False),
])
def test_partial_birth_dates_pass_impossible_ones_do_not(birthdate: str, accepted: bool) -> None:
    doc = {**_example("identite_pivot"), "birthdate": birthdate}
    if accepted:
        VALIDATORS.verify("identite_pivot", 1, doc)
    else:
        assert "at /birthdate:" in refusal("identite_pivot", doc)
