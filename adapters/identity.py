"""Identities and numbers: a citizen's FranceConnect pivot identity, name normalisation, SIREN and SIRET checks.

The subject kinds built on them, and the subject key, are in `adapters.subjects`.

Invariant: a `PivotIdentity` is always well-formed (formats checked at construction), so adapters and the
subject-key hash never see a malformed identity.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, ClassVar

_COG_COMMUNE = re.compile(r"[0-9][0-9AB][0-9]{3}")
_COG_COUNTRY = re.compile(r"99[0-9]{3}")
FRANCE = "99100"


class SubjectError(ValueError):
    """The subject of a request is missing or malformed. The message is safe to show the caller."""


@dataclass(frozen=True, slots=True)
class PivotIdentity:
    """FranceConnect pivot identity (claims of the same names).

    `birthdate` is YYYY-MM-DD; FranceConnect sends YYYY-MM-00 or YYYY-00-00 when the day or month is unknown,
    which we keep as given. `birthplace` is the INSEE COG code of the commune, empty when born abroad.

    `preferred_name` (FranceConnect claim of that name: the usage name, e.g. a spouse's name) is optional and is
    not part of the pivot identity: it never enters `normalised()`, so it does not change the subject key. It is
    carried because providers accept it as a hint (API Particulier's `nomUsage`).
    """

    family_name: str
    given_name: str
    birthdate: str
    gender: str
    birthplace: str
    birthcountry: str
    preferred_name: str = ""
    given_name_array: tuple[str, ...] = ()
    """FranceConnect v2's `given_name_array` claim: the first names one by one, so that a first name with a space
    in it (« Marie Davida ») is not taken for two. Optional (empty: split `given_name` on spaces); when given, it
    must be `given_name`'s words in order. Like the usage name it never enters `normalised()`."""
    kind: ClassVar[str] = "pivot_identity"

    def __post_init__(self) -> None:
        if not self.family_name.strip():
            raise SubjectError("family_name is empty")
        if not self.given_name.strip():
            raise SubjectError("given_name is empty")
        if self.gender not in ("male", "female"):
            raise SubjectError("gender must be 'male' or 'female'")
        m = re.fullmatch(r"([0-9]{4})-([0-9]{2})-([0-9]{2})", self.birthdate)
        if m is None:
            raise SubjectError("birthdate must be YYYY-MM-DD")
        year, month, day = (int(g) for g in m.groups())
        if month == 0 and day != 0:
            raise SubjectError("birthdate with an unknown month must have an unknown day")
        if month and day:
            try:
                date(year, month, day)
            except ValueError:
                raise SubjectError("birthdate is not a calendar date") from None
        elif month > 12:
            raise SubjectError("birthdate month is out of range")
        if self.given_name_array:
            if any(not n.strip() for n in self.given_name_array):
                raise SubjectError("given_name_array has an empty first name")
            if " ".join(self.given_name_array).split() != self.given_name.split():
                raise SubjectError("given_name_array must be given_name's first names, in order")
        if not _COG_COUNTRY.fullmatch(self.birthcountry):
            raise SubjectError("birthcountry must be a 5-digit COG country code starting with 99")
        if self.birthcountry == FRANCE:
            if not _COG_COMMUNE.fullmatch(self.birthplace):
                raise SubjectError("birthplace must be a 5-character COG commune code when born in France")
        elif self.birthplace:
            raise SubjectError("birthplace must be empty when born abroad")

    @classmethod
    def from_json(cls, raw: Any) -> PivotIdentity:
        if not isinstance(raw, Mapping):
            raise SubjectError("pivot_identity must be an object")
        fields = ("family_name", "given_name", "birthdate", "gender", "birthplace", "birthcountry")
        unknown = set(raw) - {*fields, "preferred_name", "given_name_array"}
        if unknown:
            raise SubjectError(f"pivot_identity has unknown members: {', '.join(sorted(unknown))}")
        values: dict[str, str] = {}
        for name in fields:
            value = raw.get(name, "" if name == "birthplace" else None)
            if not isinstance(value, str):
                raise SubjectError(f"pivot_identity.{name} must be a string")
            values[name] = value
        preferred = raw.get("preferred_name", "")
        if not isinstance(preferred, str):
            raise SubjectError("pivot_identity.preferred_name must be a string")
        names = raw.get("given_name_array", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SubjectError("pivot_identity.given_name_array must be a list of strings")
        return cls(**values, preferred_name=preferred, given_name_array=tuple(names))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "family_name": self.family_name,
            "given_name": self.given_name,
            "birthdate": self.birthdate,
            "gender": self.gender,
            "birthplace": self.birthplace,
            "birthcountry": self.birthcountry,
        }
        if self.preferred_name:
            out["preferred_name"] = self.preferred_name
        if self.given_name_array:
            out["given_name_array"] = list(self.given_name_array)
        return out

    @property
    def given_names(self) -> tuple[str, ...]:
        """The first names one by one: `given_name_array` when known, else FranceConnect's space-separated
        `given_name` split on spaces."""
        return tuple(n.strip() for n in self.given_name_array) or tuple(self.given_name.split())

    def normalised(self) -> tuple[str, str, str, str, str, str]:
        """The identity as upstream matching sees it; equal tuples mean the same person to a provider."""
        return (
            normalise_name(self.family_name),
            " ".join(normalise_name(n) for n in self.given_names),
            self.birthdate,
            self.gender,
            self.birthplace,
            self.birthcountry,
        )

    def canonical(self) -> str:
        """A stable text form of the normalised identity, input to the keyed subject hash (never change it)."""
        return "pivot\x1f" + "\x1f".join(self.normalised())

    def to_subject_json(self) -> dict[str, Any]:
        return {"pivot_identity": self.to_json()}


def normalise_name(name: str) -> str:
    """Upper case, accents removed, hyphens and apostrophes as spaces, runs of spaces collapsed.

    This is how INSEE's RNIPP and the CNAF/CNOUS matching compare names: "Lefèvre-D'Arc" matches "LEFEVRE D ARC".
    """
    decomposed = unicodedata.normalize("NFKD", name)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    stripped = stripped.replace("Œ", "OE").replace("œ", "oe").replace("Æ", "AE").replace("æ", "ae")
    cleaned = re.sub(r"[-'’‐‑ʼ`\s]+", " ", stripped)
    return cleaned.strip().upper()


# -- organisations ------------------------------------------------------------------------------------------------

_LA_POSTE_SIREN = "356000000"
_LA_POSTE_HEAD_OFFICE = "35600000000048"


def _luhn_valid(digits: str) -> bool:
    """The Luhn checksum (ISO/IEC 7812-1): from the right, every second digit doubled (9 taken off above 9)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def valid_siren(siren: str) -> bool:
    """Whether `siren` is nine digits with a valid Luhn check digit (INSEE's SIRENE numbering)."""
    return len(siren) == 9 and siren.isascii() and siren.isdigit() and _luhn_valid(siren)


def valid_siret(siret: str) -> bool:
    """Whether `siret` is fourteen digits whose SIREN (its first nine) and whole number have valid check digits.

    La Poste is the one exception INSEE documents: its establishments' SIRETs (SIREN 356 000 000, all under one
    SIREN, more than the NIC's check digit can number) have a digit sum divisible by 5 instead of a Luhn
    checksum; its head office, 356 000 000 00048, follows the Luhn rule as every other SIRET does.
    """
    if len(siret) != 14 or not siret.isascii() or not siret.isdigit() or not valid_siren(siret[:9]):
        return False
    if siret.startswith(_LA_POSTE_SIREN) and siret != _LA_POSTE_HEAD_OFFICE:
        return sum(ord(c) - 48 for c in siret) % 5 == 0
    return _luhn_valid(siret)
