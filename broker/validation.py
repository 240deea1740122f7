"""Validation of provider answers against the dataset schema, with validators compiled once per version."""

from __future__ import annotations

from typing import Any

import jsonschema
from jsonschema.protocols import Validator

import schemas
from broker.errors import InvalidProviderAnswer


class Validators:
    def __init__(self) -> None:
        self._compiled: dict[tuple[str, int], Validator] = {}

    def _get(self, dataset: str, version: int) -> Validator:
        key = (dataset, version)
        validator = self._compiled.get(key)
        if validator is None:
            schema = schemas.load(dataset, version)
            cls = jsonschema.validators.validator_for(schema)
            validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
            self._compiled[key] = validator
        return validator

    def verify(self, dataset: str, version: int, document: Any) -> None:
        validator = self._get(dataset, version)
        error = jsonschema.exceptions.best_match(validator.iter_errors(document))
        if error is not None:
            where = "/" + "/".join(str(p) for p in error.absolute_path)
            raise InvalidProviderAnswer("provider answer invalid",
                                        reason=f"{dataset} v{version} at {where}: {error.message[:200]}")
