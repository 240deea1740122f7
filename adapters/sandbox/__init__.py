"""Reference providers for tests and demos: real HTTP servers answering like the real ones, on synthetic people.

The people live in `citizens.json` (deterministic, hand-written, no real person). Each citizen is stored once,
in FranceConnect pivot-identity form, so a test can build the exact `PivotIdentity` a consumer would send; the
provider-side records (CAF/MSA household, MESR admissions, Cnous grant, France Travail registration, benefit
statuses, DGFiP income-tax notices) are attached to it. The servers (`api_particulier.py`, `dgfip.py`) match
identities the way upstream does: names compared after `normalise_name` (case, accents, hyphens, apostrophes),
the first names sent must be the first first names of the person (sending more narrows the match), an unknown
birth day or month on either side matches only an unknown one, an omitted day or month matches any.

Fault-injection citizens, matched like anyone else and then misbehaving on every endpoint of every sandbox
(identity, INE, France Travail identifier and numéro fiscal alike):

* ``unavailable``      -- answers 503 in the upstream error shape (provider down);
* ``upstream_timeout`` -- answers 504 with the upstream "intermédiaire hors-délai" code;
* ``slow``             -- answers correctly after ``slow_delay`` seconds (10 s by default);
* ``schema_violation`` -- answers 200 with records whose values break the dataset schemas;
* ``not_json``         -- answers 200 with an HTML page.

Invariant: loading never fails silently; a malformed `citizens.json` raises at load time, so a sandbox that
starts serves exactly the documented people.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

from adapters.identity import PivotIdentity, normalise_name

FAULTS = frozenset({"unavailable", "upstream_timeout", "slow", "schema_violation", "not_json"})
DEFAULT_SLOW_DELAY = 10.0

# Records a citizen may carry, by the key used in citizens.json.
RECORDS = frozenset({
    "statut_etudiant", "etudiant_boursier", "france_travail_record", "complementaire_sante_solidaire",
    "revenu_solidarite_active", "prime_activite", "dgfip_record", "allocation_adulte_handicape",
    "allocation_enfant_handicape", "allocation_soutien_familial", "service_national",
    "participation_familiale_eaje", "service_civique", "statut_sportif", "france_travail_indemnites", "scolarites",
    "extrait_immatriculation_vehicule",
})


@dataclass(frozen=True, slots=True)
class Citizen:
    id: str
    tests: str
    pivot: PivotIdentity
    # Birth commune (or country, when born abroad) in words, as providers that echo it write it.
    birthplace_label: str
    ine: str | None = None
    france_travail: str | None = None
    # the athlete's identifier at the ministry of Sports (SDH)
    sdh: str | None = None
    fault: str | None = None
    # Key of the CAF/MSA household in `Directory.households`; both spouses of a household point at it.
    household: str | None = None
    records: Mapping[str, Any] = field(default_factory=dict)

    @property
    def birth(self) -> tuple[int, int, int]:
        """Year, month, day; 0 for an unknown month or day."""
        y, m, d = self.pivot.birthdate.split("-")
        return int(y), int(m), int(d)

    @property
    def sex(self) -> str:
        return "M" if self.pivot.gender == "male" else "F"


@dataclass(frozen=True, slots=True)
class CivilQuery:
    """An identity as an upstream `/identite` endpoint receives it. None means the parameter was not sent."""

    birth_name: str
    first_names: Sequence[str]
    year: int | None = None
    month: int | None = None
    day: int | None = None
    sex: str | None = None
    birth_commune: str | None = None
    birth_country: str | None = None


@dataclass(frozen=True, slots=True)
class Directory:
    citizens: tuple[Citizen, ...]
    households: Mapping[str, Mapping[str, Any]]

    def citizen(self, citizen_id: str) -> Citizen:
        for c in self.citizens:
            if c.id == citizen_id:
                return c
        raise KeyError(citizen_id)

    def match(self, q: CivilQuery) -> list[Citizen]:
        return [c for c in self.citizens if _matches(c, q)]

    def by_ine(self, ine: str) -> Citizen | None:
        wanted = ine.upper()
        return next((c for c in self.citizens if c.ine is not None and c.ine.upper() == wanted), None)

    def by_spi(self, spi: str) -> Citizen | None:
        """By numéro fiscal (SPI), the DGFiP's identifier of a taxpayer."""
        return next((c for c in self.citizens if c.records.get("dgfip_record", {}).get("spi") == spi), None)

    def by_sdh(self, identifiant: str) -> Citizen | None:
        return next((c for c in self.citizens if c.sdh is not None and c.sdh == identifiant), None)

    def by_france_travail(self, identifiant: str) -> Citizen | None:
        wanted = identifiant.casefold()
        return next((c for c in self.citizens
                     if c.france_travail is not None and c.france_travail.casefold() == wanted), None)


def _tokens(names: Sequence[str]) -> list[str]:
    return normalise_name(" ".join(names)).split()


def _matches(c: Citizen, q: CivilQuery) -> bool:
    if normalise_name(q.birth_name) != normalise_name(c.pivot.family_name):
        return False
    wanted = _tokens(q.first_names)
    if not wanted or _tokens(c.pivot.given_names)[: len(wanted)] != wanted:
        return False
    # The first names asked must end where one of the person's ends: « Marie » is not « Marie Davida », a single
    # first name with a space in it (as the civil registry, hence upstream, compares them).
    boundaries = {len(_tokens(c.pivot.given_names[:n])) for n in range(len(c.pivot.given_names) + 1)}
    if len(wanted) not in boundaries:
        return False
    year, month, day = c.birth
    # Upstream ignores the month without a year and the day without a month.
    if q.year is not None:
        if q.year != year:
            return False
        if q.month is not None:
            if q.month != month:
                return False
            if q.day is not None and q.day != day:
                return False
    if q.sex is not None and q.sex != c.sex:
        return False
    if q.birth_country is not None and q.birth_country != c.pivot.birthcountry:
        return False
    return q.birth_commune is None or q.birth_commune == c.pivot.birthplace


_INE = re.compile(r"^[0-9a-zA-Z]{11}$")


def _citizen(raw: Mapping[str, Any]) -> Citizen:
    cid = raw["id"]
    unknown = set(raw) - {"id", "tests", "pivot_identity", "birthplace_label", "ine", "france_travail", "sdh", "fault",
                          "household", *RECORDS}
    if unknown:
        raise ValueError(f"citizen {cid}: unknown members {sorted(unknown)}")
    fault = raw.get("fault")
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"citizen {cid}: unknown fault {fault!r}")
    ine = raw.get("ine")
    if ine is not None and not _INE.match(ine):
        raise ValueError(f"citizen {cid}: INE {ine!r} is not 11 letters or digits")
    return Citizen(
        id=cid,
        tests=raw["tests"],
        pivot=PivotIdentity.from_json(raw["pivot_identity"]),
        birthplace_label=raw["birthplace_label"],
        ine=ine,
        france_travail=raw.get("france_travail"),
        sdh=raw.get("sdh"),
        fault=fault,
        household=raw.get("household"),
        records={k: raw[k] for k in RECORDS if k in raw},
    )


def load_directory(text: str) -> Directory:
    raw = json.loads(text)
    households = raw["households"]
    citizens = tuple(_citizen(c) for c in raw["citizens"])
    ids = [c.id for c in citizens]
    if len(set(ids)) != len(ids):
        raise ValueError("citizens.json: duplicate citizen id")
    for c in citizens:
        if c.household is not None and c.household not in households:
            raise ValueError(f"citizen {c.id}: unknown household {c.household!r}")
    return Directory(citizens, households)


@cache
def directory() -> Directory:
    """The citizens shipped with the package."""
    return load_directory(resources.files(__name__).joinpath("citizens.json").read_text("utf-8"))


async def serve(app: web.Application, *, host: str = "127.0.0.1", port: int = 0,
                shutdown_timeout: float = 1.0) -> tuple[web.AppRunner, str]:
    """Start `app` on host:port (port 0 picks a free one); return the runner to clean up and the base URL.

    Handlers are cancelled when their client goes away, so a test that gives up on the slow citizen does not
    leave a sleeping handler holding the server open at cleanup.
    """
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    return runner, f"http://{bound_host}:{bound_port}"
