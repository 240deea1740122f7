"""Values as a French reader expects them, driven by the dataset schema: never a key, never a code a title exists
for, never an ISO date.

- an object is its members under their schema titles (`schemas.labels`); an array is its items, each under the
  items' title and its rank (« Enfant 2 »);
- a string whose schema says `format: date` (or whose `pattern` only admits ISO dates, as the partial birth dates
  `1985-00-00` of the pivot identity) reads « 14 mars 1985 », « mars 1985 » or « 1985 »; `format: date-time`
  reads « 14 mars 2026 à 15 h 57 », in Paris time;
- an enum value reads as its `x-enum-titles` title (« Femme » for `F`);
- a number reads with French grouping and decimal comma (« 1 045 », « 2,5 »), with « € » when the schema says
  `x-unit: EUR`; a boolean reads « Oui » or « Non »; null reads « non renseigné ».

Also the few phrases pages build around values: durations in days with their plural, times of day, the question a
derived answer answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from broker.registry.derived import DerivedRule
from schemas import labels

PARIS = ZoneInfo("Europe/Paris")
MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
          "novembre", "décembre")
NARROW_NBSP = "\u202f"
"""The thousands separator of French typography (and before « € »)."""
MISSING = "non renseigné"
_ISO_DATE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
_UNITS = {"EUR": "€"}


# -- scalars ---------------------------------------------------------------------------------------------------


def day_fr(d: date) -> str:
    """« 1er mars 1985 », « 14 mars 1985 »."""
    return f"{'1er' if d.day == 1 else d.day} {MONTHS[d.month - 1]} {d.year}"


def iso_date_fr(text: str) -> str | None:
    """An ISO date, possibly partial with 00 for an unknown month or day (« mars 1985 », « 1985 »); None when the
    text is not one."""
    m = _ISO_DATE.match(text)
    if m is None:
        return None
    year, month, day = (int(g) for g in m.groups())
    if month == 0:
        return str(year) if day == 0 else None
    if not 1 <= month <= 12:
        return None
    if day == 0:
        return f"{MONTHS[month - 1]} {year}"
    try:
        return day_fr(date(year, month, day))
    except ValueError:
        return None


def time_fr(moment: datetime) -> str:
    """« 15 h 57 », in Paris time."""
    local = moment.astimezone(PARIS)
    return f"{local.hour} h {local.minute:02d}"


def moment_fr(moment: datetime) -> str:
    """« 14 mars 2026 à 15 h 57 », in Paris time."""
    return f"{day_fr(moment.astimezone(PARIS).date())} à {time_fr(moment)}"


def number_fr(value: float) -> str:
    """« 1045 », « 12 345 », « 2,5 », « -12 345,75 »: groups of three from five digits on, as French typography
    has it (so a year is never split)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    whole, _, fraction = (f"{value:,}" if isinstance(value, int) else f"{value:,.6f}".rstrip("0")).partition(".")
    if abs(value) < 10_000:
        whole = whole.replace(",", "")
    return whole.replace(",", NARROW_NBSP) + ("," + fraction if fraction else "")


def yes_no(value: bool) -> str:
    return "Oui" if value else "Non"


def days_fr(days: int) -> str:
    """« 1 jour », « 30 jours »."""
    return f"{number_fr(days)} jour{'s' if abs(days) > 1 else ''}"


def count_fr(n: int, singular: str, plural: str | None = None) -> str:
    """« 1 accès », « 3 consentements », « aucun consentement » (the caller gives the plural when not +s)."""
    if n == 0:
        return f"aucun {singular}"
    return f"{number_fr(n)} {singular if n == 1 else plural or singular + 's'}"


# -- values under their schema -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shown:
    """A value as a page shows it: a text, or labelled members (an object), or labelled items (an array)."""

    text: str = ""
    missing: bool = False
    members: tuple[tuple[str, Shown], ...] = ()
    items: tuple[tuple[str, Shown], ...] = ()
    kind: str = "scalar"
    """"scalar", "object" or "array"."""

    def plain(self) -> str:
        """The whole value on one line, for a cell or an e-mail: « Nom de naissance : DUPONT ; Prénoms : … »."""
        if self.kind == "object":
            return " ; ".join(f"{label} : {value.plain()}" for label, value in self.members) or "aucun"
        if self.kind == "array":
            return " — ".join(f"{label} : {value.plain()}" for label, value in self.items) or "aucun"
        return self.text


def _is_date(v: Mapping[str, Any]) -> bool:
    if v.get("format") == "date":
        return True
    pattern = v.get("pattern")
    return isinstance(pattern, str) and pattern.startswith(("^[0-9]{4}-", "^\\d{4}-"))


def _scalar(value: Any, v: Mapping[str, Any], node: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    titled = labels.enum_title(node, root, value)
    if titled is not None:
        return titled
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, int | float):
        unit = _UNITS.get(str(v.get("x-unit")))
        return number_fr(value) + (NARROW_NBSP + unit if unit else "")
    text = str(value)
    if _is_date(v):
        return iso_date_fr(text) or text
    if v.get("format") == "date-time":
        try:
            return moment_fr(datetime.fromisoformat(text))
        except ValueError:
            return text
    return text


def show(value: Any, node: Mapping[str, Any] | None, root: Mapping[str, Any]) -> Shown:
    """`value` as the schema at `node` (in `root`) describes it; an undescribed member still never shows its key."""
    node = node or {}
    v = labels.view(node, root)
    if value is None:
        return Shown(text=MISSING, missing=True)
    if isinstance(value, Mapping):
        props = v.get("properties") if isinstance(v.get("properties"), Mapping) else {}
        members = []
        for key, sub in value.items():
            sub_node = props.get(key) if isinstance(props, Mapping) else None
            label = (labels.title_of(sub_node, root) if sub_node else None) or labels.readable(str(key))
            members.append((label, show(sub, sub_node, root)))
        return Shown(members=tuple(members), kind="object")
    if isinstance(value, list):
        items_node = v.get("items") if isinstance(v.get("items"), Mapping) else None
        name = labels.item_title(node, root) or labels.title_of(node, root) or "Élément"
        shown = [(f"{name} {i}" if len(value) > 1 else name, show(item, items_node, root))
                 for i, item in enumerate(value, 1)]
        return Shown(items=tuple(shown), kind="array", text="" if value else "aucun")
    return Shown(text=_scalar(value, v, node, root))


def show_field(schema: Mapping[str, Any], path: str, value: Any) -> Shown:
    """The value of a dotted field of a dataset document, under the schema."""
    return show(value, labels.member(schema, path), schema)


# -- derived answers -------------------------------------------------------------------------------------------------

_OPERATOR_PHRASES = {
    "<=": "{} au plus", "<": "moins de {}", ">=": "{} au moins", ">": "plus de {}", "==": "exactement {}",
    "!=": "autre que {}",
}


def derived_question(rule: DerivedRule, schema: Mapping[str, Any] | None) -> str:
    """The question a derived answer answers: the registry's own wording (`question`), else one built from the
    source's title, agreement-free (« Valeur du quotient familial : 800 € au plus ? »)."""
    if rule.question:
        return rule.question
    node = labels.member(schema, rule.source) if schema else None
    source = (labels.title_of(node, schema) if node is not None and schema else None) or labels.readable(rule.source)
    if rule.op is None:
        return f"{source} : dans quelle tranche ?"
    unit = _UNITS.get(str(labels.view(node, schema or {}).get("x-unit"))) if node is not None else None
    amount = number_fr(rule.value or 0) + (NARROW_NBSP + unit if unit else "")
    return f"{source} : {_OPERATOR_PHRASES[rule.op].format(amount)} ?"


def derived_answer(rule: DerivedRule, value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return yes_no(value)
    return str(value) if rule.op is None else number_fr(value)
