"""Who a request is about: one of a closed set of subject kinds, each checked when it is built.

`Subject` is a union of frozen dataclasses:

=====================  =====================================  ==================================================
kind                   class                                  what it is
=====================  =====================================  ==================================================
``pivot_identity``     `adapters.identity.PivotIdentity`      a citizen's FranceConnect pivot identity
``france_connect``     `FranceConnectSubject`                 a citizen's FranceConnect access token, with the
                                                              pivot identity it was issued for
``ine``, ...           `ProviderIdentifier`                   a provider's own identifier for a citizen (the kind
                                                              is the scheme: ``ine``, ``france_travail``,
                                                              ``sportif``, or another lower-case word)
``siren``              `Siren`                                a company (unité légale), Luhn-checked
``siret``              `Siret`                                an establishment, Luhn-checked (La Poste's rule)
``rna``                `Rna`                                  an association in the RNA (W + 9 digits)
=====================  =====================================  ==================================================

Invariants: a subject that exists is well-formed (every check runs at construction), so adapters and the subject
key never see a malformed one; `canonical()` is the only input of `subject_key`, and it never changes for a kind
that already exists (keys are stored in the access log, consents and journals). A FranceConnect subject has the
same key as its pivot identity: it is the same person, so the same journal.

A FranceConnect access token is never taken from a consumer: only the broker's own citizen login obtains one, and
it reaches a provider only through a consent (`broker.exchange.pipeline`). `parse_subject` therefore refuses the
``france_connect`` member with `FranceConnectOutsideConsent`; the pipeline reads it as a mode when an access token
stands for a consent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from adapters.identity import PivotIdentity, SubjectError, valid_siren, valid_siret

PIVOT_IDENTITY = "pivot_identity"
FRANCE_CONNECT = "france_connect"
SIREN = "siren"
SIRET = "siret"
RNA = "rna"
INE = "ine"
FRANCE_TRAVAIL = "france_travail"
SPORTIF = "sportif"
# Kinds that are not identifier schemes: an identifier may not take these names, so a kind names one thing.
RESERVED_KINDS = frozenset({PIVOT_IDENTITY, FRANCE_CONNECT, SIREN, SIRET, RNA})
BUSINESS_KINDS = frozenset({SIREN, SIRET, RNA})

_SCHEME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# API Particulier's own pattern: 10 digits and a letter, or (since 2018) 9 digits and 2 letters.
_INE = re.compile(r"[0-9A-Za-z]{11}")
_RNA = re.compile(r"W[0-9][0-9AB][0-9]{7}")


class FranceConnectOutsideConsent(SubjectError):
    """A FranceConnect-mode subject was sent where no consent stands for the citizen."""


@dataclass(frozen=True, slots=True)
class ProviderIdentifier:
    """A provider's own identifier of a citizen: scheme 'ine' (student number), 'france_travail' (the identifier
    the person chose at France Travail), 'sportif' (Ministère des Sports), or another lower-case word an
    `http_json` provider declares."""

    scheme: str
    value: str

    def __post_init__(self) -> None:
        if not _SCHEME.fullmatch(self.scheme):
            raise SubjectError("identifier.scheme must be a lower-case word")
        if self.scheme in RESERVED_KINDS:
            raise SubjectError(f"identifier.scheme {self.scheme!r} is a subject kind of its own: send "
                               f"{{{self.scheme!r}: ...}}")
        if not self.value or len(self.value) > 128 or not self.value.isprintable():
            raise SubjectError("identifier.value must be 1 to 128 printable characters")
        if self.scheme == INE and not _INE.fullmatch(self.value):
            raise SubjectError("an INE is 11 letters and digits")

    @property
    def kind(self) -> str:
        return self.scheme

    def canonical(self) -> str:
        # An INE is printed in either case; the key must not depend on it. Other schemes are case-sensitive.
        value = self.value.upper() if self.scheme == INE else self.value
        return f"id\x1f{self.scheme}\x1f{value}"

    def to_subject_json(self) -> dict[str, Any]:
        return {"identifier": {"scheme": self.scheme, "value": self.value}}


@dataclass(frozen=True, slots=True)
class FranceConnectSubject:
    """A citizen as FranceConnect knows them: the access token the broker's login received, for providers'
    `/france_connect` endpoints (which ask FranceConnect who the token is for), and the pivot identity it came
    with, for the subject key."""

    identity: PivotIdentity = field(repr=False)
    access_token: str = field(repr=False)
    kind: ClassVar[str] = FRANCE_CONNECT

    def __post_init__(self) -> None:
        if not self.access_token or len(self.access_token) > 4096 or not self.access_token.isascii() \
                or not self.access_token.isprintable() or " " in self.access_token:
            raise SubjectError("the FranceConnect access token is malformed")

    def canonical(self) -> str:
        return self.identity.canonical()

    def to_subject_json(self) -> dict[str, Any]:
        return {FRANCE_CONNECT: {}}  # the token never leaves the broker


@dataclass(frozen=True, slots=True)
class Siren:
    """A company (unité légale) by its SIREN: nine digits, Luhn check digit."""

    value: str
    kind: ClassVar[str] = SIREN

    def __post_init__(self) -> None:
        if not valid_siren(self.value):
            raise SubjectError("siren must be nine digits with a valid check digit")

    def canonical(self) -> str:
        return f"siren\x1f{self.value}"

    def to_subject_json(self) -> dict[str, Any]:
        return {SIREN: self.value}


@dataclass(frozen=True, slots=True)
class Siret:
    """An establishment by its SIRET: fourteen digits, SIREN and SIRET check digits (La Poste's exception)."""

    value: str
    kind: ClassVar[str] = SIRET

    def __post_init__(self) -> None:
        if not valid_siret(self.value):
            raise SubjectError("siret must be fourteen digits with valid check digits")

    @property
    def siren(self) -> Siren:
        return Siren(self.value[:9])

    def canonical(self) -> str:
        return f"siret\x1f{self.value}"

    def to_subject_json(self) -> dict[str, Any]:
        return {SIRET: self.value}


@dataclass(frozen=True, slots=True)
class Rna:
    """An association by its RNA number (Répertoire national des associations): W and nine digits, the first
    two naming the département, so Corsica's 2A and 2B keep their letter (W2A1000123)."""

    value: str
    kind: ClassVar[str] = RNA

    def __post_init__(self) -> None:
        if not _RNA.fullmatch(self.value):
            raise SubjectError("rna must be W followed by nine digits (e.g. W751234567)")

    def canonical(self) -> str:
        return f"rna\x1f{self.value}"

    def to_subject_json(self) -> dict[str, Any]:
        return {RNA: self.value}


Subject = PivotIdentity | FranceConnectSubject | ProviderIdentifier | Siren | Siret | Rna

_MEMBERS = (PIVOT_IDENTITY, "identifier", FRANCE_CONNECT, SIREN, SIRET, RNA)


def parse_subject(raw: Any) -> Subject:
    """The subject of a JSON request body: an object with exactly one member, named after its kind.

    ``{"pivot_identity": {...}}``, ``{"identifier": {"scheme", "value"}}``, ``{"siren": "..."}``,
    ``{"siret": "..."}``, ``{"rna": "..."}``. ``{"france_connect": {}}`` raises `FranceConnectOutsideConsent`:
    a consumer never holds a citizen's FranceConnect token.
    """
    if not isinstance(raw, Mapping):
        raise SubjectError("subject must be an object")
    unknown = set(raw) - set(_MEMBERS)
    if unknown:
        raise SubjectError(f"subject has unknown members: {', '.join(sorted(unknown))}")
    if len(raw) != 1:
        raise SubjectError(f"subject needs exactly one of {', '.join(_MEMBERS)}")
    (member, value), = raw.items()
    if member == FRANCE_CONNECT:
        raise FranceConnectOutsideConsent("a FranceConnect subject exists only inside a consent flow: present "
                                          "the consent's access token")
    if member == PIVOT_IDENTITY:
        return PivotIdentity.from_json(value)
    if member == "identifier":
        if not isinstance(value, Mapping) or set(value) != {"scheme", "value"}:
            raise SubjectError("identifier must be {scheme, value}")
        if not isinstance(value["scheme"], str) or not isinstance(value["value"], str):
            raise SubjectError("identifier.scheme and identifier.value must be strings")
        return ProviderIdentifier(value["scheme"], value["value"])
    if not isinstance(value, str):
        raise SubjectError(f"{member} must be a string")
    if member == SIREN:
        return Siren(value)
    return Siret(value) if member == SIRET else Rna(value)


def identifier_value(subject: Subject) -> str | None:
    """The number or identifier a provider looks this subject up by (a SIREN, an INE, ...); None for a person
    known by identity or FranceConnect token."""
    if isinstance(subject, ProviderIdentifier | Siren | Siret | Rna):
        return subject.value
    return None


def subject_key(secret: bytes, subject: Subject) -> str:
    """A keyed hash of the normalised subject: the same person (or business) gives the same key; without the
    secret it names nobody (a plain hash of an identity could be reversed by trying every name and birth date,
    and every SIREN is public). The key of a subject's access-log entries, consents and journal."""
    return hmac.new(secret, subject.canonical().encode(), hashlib.sha256).hexdigest()
