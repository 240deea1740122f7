"""Validation of provider answers against the dataset schema, with validators compiled once per version.

The validator is jsonschema-rs (Rust), chosen by measurement (benchmarks/validation.py): it agrees with the
repository's schema tests, is 100 to 200 times faster than `jsonschema` on these documents, and reads patterns as
ECMA-262 does, so a date with a trailing newline fails `^...$` (Python's `re`, hence `jsonschema`, accepts it).
`format` is asserted, not only annotated, so a schema that says `"format": "date"` refuses 2024-02-30.

Invariant: a refusal's reason names where the answer is wrong (instance path, keyword, schema path) but never the
offending value: reasons go to the server log, and a value in a citizen's record is personal data.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs

import schemas


class InvalidDocument(ValueError):
    """A document does not validate against its dataset schema. `reason` names where, never the value."""

    def __init__(self, reason: str) -> None:
        super().__init__("provider answer invalid")
        self.reason = reason


class InvalidParameters(ValueError):
    """The dataset parameters of a request are missing, unknown or malformed. The message is for the caller: it
    names the parameter and what is expected (parameters are the caller's own values, not a citizen's)."""

    public = True


# Their messages name members of the schema, not values of the document.
_MESSAGE_IS_SAFE = frozenset({"required", "additionalProperties"})


def _pointer(path: list[str | int]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


class Validators:
    def __init__(self) -> None:
        self._compiled: dict[tuple[str, int], jsonschema_rs.Draft202012Validator] = {}

    def _get(self, dataset: str, version: int) -> jsonschema_rs.Draft202012Validator:
        key = (dataset, version)
        validator = self._compiled.get(key)
        if validator is None:
            validator = jsonschema_rs.Draft202012Validator(schemas.load(dataset, version), validate_formats=True)
            self._compiled[key] = validator
        return validator

    def verify_parameters(self, dataset: str, version: int, parameters: Any) -> None:
        """Return None when `parameters` are what the dataset version declares (``x-parameters``); raise
        `InvalidParameters` otherwise. A version that declares none takes none."""
        declared = schemas.parameters_schema(dataset, version)
        if declared is None:
            if parameters:
                raise InvalidParameters(f"{dataset} v{version} takes no parameters")
            return
        key = (dataset, -version)  # beside the document validators, never mistaken for one
        validator = self._compiled.get(key)
        if validator is None:
            validator = jsonschema_rs.Draft202012Validator(declared, validate_formats=True)
            self._compiled[key] = validator
        error = next(iter(validator.iter_errors(parameters)), None)
        if error is not None:
            where = _pointer(error.instance_path) if error.instance_path else "parameters"
            raise InvalidParameters(f"{dataset} v{version} parameters at {where}: {error.message[:200]}")

    def verify(self, dataset: str, version: int, document: Any) -> None:
        """Return None when `document` is valid; raise `InvalidDocument` naming the first error's path."""
        validator = self._get(dataset, version)
        try:
            if validator.is_valid(document):  # the common case, and the cheapest call
                return
            error = next(iter(validator.iter_errors(document)), None)
        except ValueError as exc:  # not a JSON value at all (a non-string key): adapters should never build one
            raise InvalidDocument(f"{dataset} v{version}: not a JSON document ({exc})") from None
        if error is None:
            raise InvalidDocument(f"{dataset} v{version}: invalid")
        keyword = str(error.schema_path[-1]) if error.schema_path else "schema"
        what = error.message[:200] if keyword in _MESSAGE_IS_SAFE else f"fails {keyword!r}"
        raise InvalidDocument(f"{dataset} v{version} at {_pointer(error.instance_path)}: {what} "
                              f"(schema {_pointer(error.schema_path)})")
