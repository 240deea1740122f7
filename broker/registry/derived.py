"""Derived answers: data minimisation beyond the field level.

A habilitation may grant, instead of a raw value, an answer computed from it: a yes/no test (`quotient_familial.valeur
<= 800`) or a bracket among configured bounds. The consumer asks for `derived.<name>` and receives only the computed
answer under `data.derived`; the raw value never leaves the broker, and the access log lists the derived field.

Registry form, inside a `[[habilitations]]` table:

    [[habilitations.derived]]
    name = "qf_inferieur_800"                # released as data.derived.qf_inferieur_800
    source = "quotient_familial.valeur"      # a numeric field of the dataset
    test = { op = "<=", value = 800 }        # -> true / false
    question = "Votre quotient familial est-il inférieur ou égal à 800 ?"   # optional: what citizens read

    [[habilitations.derived]]
    name = "tranche_qf"
    source = "quotient_familial.valeur"
    brackets = { bounds = [400, 800, 1200], labels = ["A", "B", "C", "D"] }
    # -> "A" for v <= 400, "B" for 400 < v <= 800, "C" for 800 < v <= 1200, "D" above

A missing source value gives no derived answer (the field is absent, as a missing raw field would be).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "derived."
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq, "!=": operator.ne,
}


class DerivedRuleError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class DerivedRule:
    name: str
    source: str
    op: str | None = None
    value: float | None = None
    bounds: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()
    question: str | None = None
    """The question the answer answers, as citizens read it on the consent screen and in their journal."""

    @property
    def field(self) -> str:
        return PREFIX + self.name

    def compute(self, document: Mapping[str, Any]) -> Any:
        node: Any = document
        for part in self.source.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        if isinstance(node, bool) or not isinstance(node, int | float):
            return None
        if self.op is not None:
            return OPERATORS[self.op](node, self.value)
        index = sum(1 for bound in self.bounds if node > bound)
        return self.labels[index]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "source": self.source}
        if self.op is not None:
            out["test"] = {"op": self.op, "value": self.value}
        else:
            out["brackets"] = {"bounds": list(self.bounds), "labels": list(self.labels)}
        if self.question is not None:
            out["question"] = self.question
        return out


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DerivedRuleError(f"{what} must be a number")
    return value


def _schema_type(schema: Mapping[str, Any], path: str) -> Any:
    node: Mapping[str, Any] = schema
    for part in path.split("."):
        props = node.get("properties")
        if not isinstance(props, Mapping) or part not in props:
            return None
        node = props[part]
    return node.get("type")


def parse_rule(raw: Any, schema: Mapping[str, Any]) -> DerivedRule:
    """Check one registry entry against the dataset schema; raise `DerivedRuleError` saying what is wrong."""
    if not isinstance(raw, Mapping):
        raise DerivedRuleError("each derived entry must be a table")
    unknown = set(raw) - {"name", "source", "test", "brackets", "question"}
    if unknown:
        raise DerivedRuleError(f"unknown key(s): {', '.join(sorted(unknown))}")
    name, source = raw.get("name"), raw.get("source")
    if not isinstance(name, str) or not _NAME.match(name):
        raise DerivedRuleError("'name' must be a lower-case identifier")
    if not isinstance(source, str):
        raise DerivedRuleError("'source' must be a field path")
    types = _schema_type(schema, source)
    types = types if isinstance(types, list) else [types]
    if not {"integer", "number"} & set(types):
        raise DerivedRuleError(f"source {source!r} is not a numeric field of the dataset")
    question = raw.get("question")
    if question is not None and (not isinstance(question, str) or not question.strip()):
        raise DerivedRuleError("'question' must be a non-empty string")
    if ("test" in raw) == ("brackets" in raw):
        raise DerivedRuleError(f"derived {name!r} needs exactly one of 'test' and 'brackets'")
    if "test" in raw:
        test = raw["test"]
        if not isinstance(test, Mapping) or set(test) != {"op", "value"}:
            raise DerivedRuleError("'test' must be { op = ..., value = ... }")
        if test["op"] not in OPERATORS:
            raise DerivedRuleError(f"'test.op' must be one of {' '.join(OPERATORS)}")
        return DerivedRule(name, source, op=test["op"], value=_number(test["value"], "'test.value'"),
                           question=question)
    brackets = raw["brackets"]
    if not isinstance(brackets, Mapping) or set(brackets) != {"bounds", "labels"}:
        raise DerivedRuleError("'brackets' must be { bounds = [...], labels = [...] }")
    bounds = brackets["bounds"]
    labels = brackets["labels"]
    if not isinstance(bounds, list) or not bounds:
        raise DerivedRuleError("'brackets.bounds' must be a non-empty list of numbers")
    numbers = tuple(_number(b, "each bound") for b in bounds)
    if list(numbers) != sorted(set(numbers)):
        raise DerivedRuleError("'brackets.bounds' must be strictly increasing")
    if not isinstance(labels, list) or len(labels) != len(numbers) + 1 or not all(isinstance(x, str) for x in labels):
        raise DerivedRuleError("'brackets.labels' must be one more string than there are bounds")
    return DerivedRule(name, source, bounds=numbers, labels=tuple(labels), question=question)
