"""The registry: organisations, their keys, adapters and habilitations, from one declarative TOML file.

The file is the whole truth: `apply` makes the database equal to it (adds, changes and removes rows) in one
transaction, reports what changed, and bumps the registry version so every running broker reloads. Applying the
same file twice changes nothing. A file that does not validate changes nothing and the error names its line.

Operator mistakes must not cost data or availability, and running brokers apply a new registry at once, so:
an empty file is refused; removing anything (an organisation, a key, an adapter, a habilitation) is refused
unless asked for (`prune=True`, the command's `--prune`), the refusal listing what would go; a SIRET with a wrong
check digit and the same public key under two kids are refused; an already-expired key is reported as a warning
with its line. A dry run runs the very same statements and rolls them back, so it reports exactly what a real run
would, refusals included.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import asyncpg

import schemas
from adapters import registry as adapter_registry
from adapters.identity import valid_siret
from broker.registry.derived import DerivedRule, DerivedRuleError, parse_rule
from broker.registry.quota import Quota, QuotaError
from broker.signing.keys import InvalidKey, jwk_thumbprint, public_key_from_jwk
from broker.storage import db

_SIRET = re.compile(r"^[0-9]{14}$")
_RECIPIENT = re.compile(r"^[0-9]{14}(/[A-Za-z0-9_.-]{1,64})?$")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_PURPOSE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_DURATION = re.compile(r"^P(?:[0-9]+Y)?(?:[0-9]+M)?(?:[0-9]+W)?(?:[0-9]+D)?$")
LEGAL_BASES = ("information", "proactive", "consent")


class RegistryError(ValueError):
    """The registry file is invalid. The message names the table, the entry and, when it can, the line."""


class RemovalRefused(RegistryError):
    """Applying the file would remove entries, and removals were not asked for (`prune`)."""

    def __init__(self, removals: Sequence[Change]) -> None:
        lines = [f"  {c.table}: {', '.join(c.removed)}" for c in removals if c.removed]
        super().__init__("the file would remove:\n" + "\n".join(lines)
                         + "\nnothing was changed; apply again with --prune to remove them")
        self.removals = tuple(removals)


@dataclass(frozen=True, slots=True)
class Organisation:
    siret: str
    name: str
    roles: tuple[str, ...]
    redirect_uris: tuple[str, ...] = ()
    """OAuth redirect URIs of a consumer using the consent flow, compared exactly (no pattern, no prefix)."""
    quota: Quota | None = None
    """A consumer's exchanges per window, all habilitations together; None: the broker's default."""


@dataclass(frozen=True, slots=True)
class KeyEntry:
    kid: str
    siret: str
    alg: str
    jwk: dict[str, Any]
    not_before: datetime | None
    not_after: datetime | None


@dataclass(frozen=True, slots=True)
class LegalBasis:
    type: str
    title: str
    url: str


@dataclass(frozen=True, slots=True)
class Habilitation:
    id: str
    consumer: str
    dataset: str
    purposes: tuple[str, ...]
    fields: tuple[str, ...]
    recipients: tuple[str, ...]
    legal_basis: LegalBasis
    retention: str
    derived: tuple[DerivedRule, ...] = ()
    quota: Quota | None = None
    """Exchanges per window under this habilitation, on top of the consumer's quota; None: only the consumer's."""

    def derived_rule(self, field: str) -> DerivedRule | None:
        return next((r for r in self.derived if r.field == field), None)


@dataclass(frozen=True, slots=True)
class Purpose:
    """A purpose habilitations name by `id`, and what citizens read in its place (consent screen, journal, mails)."""

    id: str
    label: str


@dataclass(frozen=True, slots=True)
class AdapterEntry:
    id: str
    provider: str
    kind: str
    datasets: tuple[str, ...]
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Registry:
    organisations: tuple[Organisation, ...] = ()
    keys: tuple[KeyEntry, ...] = ()
    adapters: tuple[AdapterEntry, ...] = ()
    habilitations: tuple[Habilitation, ...] = ()
    purposes: tuple[Purpose, ...] = ()
    version: int = 0
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """What the parser found suspicious but not wrong (e.g. an expired key), each naming its line."""
    _by_kid: dict[str, KeyEntry] = field(default_factory=dict, compare=False, repr=False)
    _hab: dict[tuple[str, str], Habilitation] = field(default_factory=dict, compare=False, repr=False)
    _adapter: dict[str, AdapterEntry] = field(default_factory=dict, compare=False, repr=False)
    _org: dict[str, Organisation] = field(default_factory=dict, compare=False, repr=False)
    _purpose: dict[str, Purpose] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._purpose.update({p.id: p for p in self.purposes})
        self._by_kid.update({k.kid: k for k in self.keys})
        self._hab.update({(h.consumer, h.dataset): h for h in self.habilitations})
        self._org.update({o.siret: o for o in self.organisations})
        for a in self.adapters:
            self._adapter.update(dict.fromkeys(a.datasets, a))

    def key(self, kid: str) -> KeyEntry | None:
        return self._by_kid.get(kid)

    def habilitation(self, consumer: str, dataset: str) -> Habilitation | None:
        return self._hab.get((consumer, dataset))

    def adapter_for(self, dataset: str) -> AdapterEntry | None:
        return self._adapter.get(dataset)

    def organisation(self, siret: str) -> Organisation | None:
        return self._org.get(siret)

    def purpose(self, purpose_id: str) -> Purpose | None:
        return self._purpose.get(purpose_id)

    def digest(self) -> str:
        body = {
            "organisations": [asdict(o) for o in self.organisations],
            "keys": [asdict(k) for k in self.keys],
            "adapters": [asdict(a) for a in self.adapters],
            "habilitations": [asdict(h) for h in self.habilitations],
        }
        if self.purposes:  # absent otherwise, so registries without labels keep their digest
            body["purposes"] = [asdict(p) for p in self.purposes]
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


# -- parsing ------------------------------------------------------------------------------------------------------


def _line_of(text: str, table: str, index: int) -> int | None:
    """Line number (1-based) of the index-th `[[table]]` header: tomllib gives values, not positions."""
    header = re.compile(rf"^[ \t]*\[\[[ \t]*{re.escape(table)}[ \t]*\]\]", re.MULTILINE)
    for i, m in enumerate(header.finditer(text)):
        if i == index:
            return text.count("\n", 0, m.start()) + 1
    return None


class _Entry:
    """Reads one table of the file, turning every mistake into a RegistryError naming where it is."""

    def __init__(self, raw: Any, *, table: str, index: int, text: str, source: str) -> None:
        self.table, self.index, self.source_text, self.source = table, index, text, source
        if not isinstance(raw, Mapping):
            self.fail("must be a table")
        self.raw: Mapping[str, Any] = raw
        self.used: set[str] = set()

    def where(self) -> str:
        line = _line_of(self.source_text, self.table, self.index)
        return f"{self.source}:{line}: [[{self.table}]] #{self.index + 1}" if line else \
            f"{self.source}: [[{self.table}]] #{self.index + 1}"

    def fail(self, message: str) -> NoReturn:
        raise RegistryError(f"{self.where()}: {message}")

    def text(self, key: str, pattern: re.Pattern[str] | None = None, *, default: str | None = None) -> str:
        self.used.add(key)
        value = self.raw.get(key, default)
        if value is None:
            self.fail(f"'{key}' is missing")
        if not isinstance(value, str) or not value.strip():
            self.fail(f"'{key}' must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            self.fail(f"'{key}' = {value!r} is not of the form {pattern.pattern}")
        return str(value)

    def texts(self, key: str, pattern: re.Pattern[str] | None = None, *, default: Sequence[str] | None = None,
             ) -> tuple[str, ...]:
        self.used.add(key)
        value = self.raw.get(key, default)
        if value is None:
            self.fail(f"'{key}' is missing")
        if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) for v in value):
            self.fail(f"'{key}' must be a non-empty list of strings")
        for v in value:
            if pattern is not None and not pattern.match(v):
                self.fail(f"'{key}' has {v!r}, not of the form {pattern.pattern}")
        if len(set(value)) != len(value):
            self.fail(f"'{key}' has duplicates")
        return tuple(value)

    def time(self, key: str) -> datetime | None:
        self.used.add(key)
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            self.fail(f"'{key}' must be a TOML date-time with an offset, e.g. 2026-01-01T00:00:00Z")
        assert isinstance(value, datetime)
        return value

    def quota(self) -> Quota | None:
        self.used.add("quota")
        raw = self.raw.get("quota")
        if raw is None:
            return None
        try:
            return Quota.from_json(raw)
        except QuotaError as exc:
            self.fail(str(exc))

    def table_(self, key: str) -> Mapping[str, Any]:
        self.used.add(key)
        value = self.raw.get(key)
        if not isinstance(value, Mapping):
            self.fail(f"'{key}' must be a table")
        assert isinstance(value, Mapping)
        return value

    def done(self) -> None:
        extra = set(self.raw) - self.used
        if extra:
            self.fail(f"unknown key(s): {', '.join(sorted(extra))}")


def _field_exists(schema: Mapping[str, Any], path: str) -> bool:
    node: Mapping[str, Any] = schema
    for part in path.split("."):
        props = node.get("properties")
        if not isinstance(props, Mapping) or part not in props:
            return False
        node = props[part]
    return True


def parse_registry(text: str, source: str = "registry.toml", *, now: datetime | None = None) -> Registry:
    """The registry `text` describes, or `RegistryError` naming the line; `now` judges keys' expiry (warnings)."""
    now = now or datetime.now(UTC)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"organisations", "adapters", "habilitations", "purposes"}
    if unknown:
        raise RegistryError(f"{source}: unknown top-level table(s): {', '.join(sorted(unknown))}")
    if not doc.get("organisations"):
        # applied, it would remove every organisation, key and habilitation at once: never what anyone meant
        raise RegistryError(f"{source}: the registry has no organisation; an empty registry is refused")
    warnings: list[str] = []

    def entries(table: str) -> list[_Entry]:
        raw = doc.get(table, [])
        if not isinstance(raw, list):
            raise RegistryError(f"{source}: '{table}' must be an array of tables ([[{table}]])")
        return [_Entry(r, table=table, index=i, text=text, source=source) for i, r in enumerate(raw)]

    orgs: dict[str, Organisation] = {}
    keys: dict[str, KeyEntry] = {}
    thumbprints: dict[str, str] = {}
    for e in entries("organisations"):
        siret = e.text("siret", _SIRET)
        if not valid_siret(siret):
            e.fail(f"SIRET {siret} has a wrong check digit (a typo?)")
        if siret in orgs:
            e.fail(f"SIRET {siret} appears twice")
        roles = e.texts("roles")
        if not set(roles) <= {"consumer", "provider"}:
            e.fail("'roles' may contain only 'consumer' and 'provider'")
        redirect_uris = e.texts("redirect_uris", default=[]) if e.raw.get("redirect_uris") else ()
        e.used.add("redirect_uris")
        for uri in redirect_uris:
            parts = urlsplit(uri)
            local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
            if not (parts.scheme == "https" or local) or not parts.hostname or parts.fragment:
                e.fail(f"redirect URI {uri!r} must be https (or http on loopback) without a fragment")
        orgs[siret] = Organisation(siret, e.text("name"), tuple(sorted(roles)), redirect_uris, e.quota())
        e.used.add("keys")
        raw_keys = e.raw.get("keys", [])
        if not isinstance(raw_keys, list):
            e.fail("'keys' must be an array of tables ([[organisations.keys]])")
        for raw_key in raw_keys:
            # reported against the owning organisation's header: keys are nested in it
            k = _Entry(raw_key, table=e.table, index=e.index, text=text, source=source)
            kid = k.text("kid", re.compile(r"^[A-Za-z0-9._:-]{1,128}$"))
            if kid in keys:
                k.fail(f"key id {kid!r} appears twice")
            jwk = dict(k.table_("jwk"))
            if "d" in jwk:
                k.fail(f"key {kid!r} is a private key: the registry holds public keys only")
            if jwk.setdefault("kid", kid) != kid:
                k.fail(f"key {kid!r}: the JWK's own kid {jwk['kid']!r} differs")
            try:
                alg = public_key_from_jwk(jwk, owner=siret).alg
                thumbprint = jwk_thumbprint(jwk)
            except InvalidKey as exc:
                k.fail(f"key {kid!r}: {exc}")
            if thumbprint in thumbprints:
                # one key, two identities: which organisation signed would depend on a kid the signer chooses
                k.fail(f"key {kid!r} is the same public key as key {thumbprints[thumbprint]!r}")
            thumbprints[thumbprint] = kid
            nb, na = k.time("not_before"), k.time("not_after")
            if nb and na and nb >= na:
                k.fail(f"key {kid!r}: not_before must be before not_after")
            if na is not None and na <= now:
                warnings.append(f"{k.where()}: key {kid!r} expired at {na.isoformat()}: it verifies nothing "
                                "(a typo in not_after?); remove it")
            k.done()
            keys[kid] = KeyEntry(kid, siret, alg, jwk, nb, na)
        e.done()

    catalogue = schemas.catalogue()
    adapter_entries: dict[str, AdapterEntry] = {}
    served: dict[str, str] = {}
    for e in entries("adapters"):
        aid = e.text("id", _ID)
        if aid in adapter_entries:
            e.fail(f"adapter id {aid!r} appears twice")
        provider = e.text("provider", _SIRET)
        if provider not in orgs or "provider" not in orgs[provider].roles:
            e.fail(f"provider {provider} is not an organisation with the 'provider' role")
        kind = e.text("kind")
        datasets = e.texts("datasets")
        for d in datasets:
            if d not in catalogue:
                e.fail(f"dataset {d!r} is not in the catalogue ({', '.join(catalogue)})")
            if d in served:
                e.fail(f"dataset {d!r} is already served by adapter {served[d]!r}")
            served[d] = aid
        options = dict(e.table_("options"))
        try:
            adapter_registry.check_options(kind, {**options, "datasets": list(datasets)})
        except ValueError as exc:
            e.fail(f"adapter {aid!r}: {exc}")
        e.done()
        adapter_entries[aid] = AdapterEntry(aid, provider, kind, datasets, options)

    purposes: dict[str, Purpose] = {}
    for e in entries("purposes"):
        pid = e.text("id", _PURPOSE)
        if pid in purposes:
            e.fail(f"purpose {pid!r} appears twice")
        purposes[pid] = Purpose(pid, e.text("label"))
        e.done()

    habs: dict[str, Habilitation] = {}
    pairs: set[tuple[str, str]] = set()
    for e in entries("habilitations"):
        hid = e.text("id", _ID)
        if hid in habs:
            e.fail(f"habilitation id {hid!r} appears twice")
        consumer = e.text("consumer", _SIRET)
        if consumer not in orgs or "consumer" not in orgs[consumer].roles:
            e.fail(f"consumer {consumer} is not an organisation with the 'consumer' role")
        dataset = e.text("dataset")
        if dataset not in catalogue:
            e.fail(f"dataset {dataset!r} is not in the catalogue")
        if dataset not in served:
            e.fail(f"no adapter serves dataset {dataset!r}")
        if (consumer, dataset) in pairs:
            e.fail(f"a habilitation for {consumer} x {dataset} already exists")
        pairs.add((consumer, dataset))
        schema = schemas.load(dataset, schemas.latest(dataset))
        # a habilitation granting only derived answers has no raw fields at all
        fields = e.texts("fields") if "fields" in e.raw or not e.raw.get("derived") else ()
        e.used.add("fields")
        for f in fields:
            if not _field_exists(schema, f):
                e.fail(f"field {f!r} is not in dataset {dataset!r}")
        recipients = e.texts("recipients", _RECIPIENT, default=[consumer])
        for r in recipients:
            if r.split("/")[0] != consumer:
                e.fail(f"recipient {r!r} is not the consumer {consumer} or one of its sub-units")
        basis_raw = e.table_("legal_basis")
        b = _Entry(basis_raw, table=e.table, index=e.index, text=text, source=source)
        basis = LegalBasis(b.text("type"), b.text("title"), b.text("url", re.compile(r"^https://")))
        if basis.type not in LEGAL_BASES:
            e.fail(f"legal_basis.type must be one of {', '.join(LEGAL_BASES)}")
        b.done()
        retention = e.text("retention", _DURATION)
        if retention == "P":
            e.fail("'retention' must give a duration, e.g. P1Y")
        hab_purposes = e.texts("purposes", _PURPOSE)
        # a registry that labels its purposes labels them all: a citizen never reads a purpose by its id
        unlabelled = [p for p in hab_purposes if purposes and p not in purposes]
        if unlabelled:
            e.fail(f"purpose {unlabelled[0]!r} has no [[purposes]] entry (id and label)")
        e.used.add("derived")
        raw_derived = e.raw.get("derived", [])
        if not isinstance(raw_derived, list):
            e.fail("'derived' must be an array of tables ([[habilitations.derived]])")
        derived: list[DerivedRule] = []
        for raw_rule in raw_derived:
            try:
                rule = parse_rule(raw_rule, schema)
            except DerivedRuleError as exc:
                e.fail(f"derived: {exc}")
            if any(r.name == rule.name for r in derived):
                e.fail(f"derived: {rule.name!r} appears twice")
            derived.append(rule)
        quota = e.quota()
        e.done()
        habs[hid] = Habilitation(hid, consumer, dataset, hab_purposes, fields, recipients, basis, retention,
                                 tuple(derived), quota)
    return Registry(
        organisations=tuple(orgs.values()),
        keys=tuple(keys.values()),
        adapters=tuple(adapter_entries.values()),
        habilitations=tuple(habs.values()),
        warnings=tuple(warnings),
        purposes=tuple(purposes.values()),
    )


# -- database -----------------------------------------------------------------------------------------------------


def _rule(raw: Mapping[str, Any]) -> DerivedRule:
    """A rule as stored (already checked at apply time)."""
    if "test" in raw:
        return DerivedRule(raw["name"], raw["source"], op=raw["test"]["op"], value=raw["test"]["value"],
                           question=raw.get("question"))
    brackets = raw["brackets"]
    return DerivedRule(raw["name"], raw["source"], bounds=tuple(brackets["bounds"]), labels=tuple(brackets["labels"]),
                       question=raw.get("question"))


def _quota(raw: Mapping[str, Any] | None) -> Quota | None:
    return None if raw is None else Quota.from_json(raw)


async def load(conn: asyncpg.Connection | asyncpg.Pool) -> Registry:
    """The registry as the database holds it now."""
    q = db.queries()
    version = await conn.fetchval(q["registry_version"])
    orgs = [Organisation(r["siret"], r["name"], tuple(r["roles"]), tuple(r["redirect_uris"]), _quota(r["quota"]))
            for r in await conn.fetch(q["organisations_all"])]
    keys = [KeyEntry(r["kid"], r["siret"], r["alg"], dict(r["jwk"]), r["not_before"], r["not_after"])
            for r in await conn.fetch(q["keys_all"])]
    adapters = [AdapterEntry(r["id"], r["provider"], r["kind"], tuple(r["datasets"]), dict(r["options"]))
                for r in await conn.fetch(q["adapters_all"])]
    habs = [Habilitation(r["id"], r["consumer"], r["dataset"], tuple(r["purposes"]), tuple(r["fields"]),
                         tuple(r["recipients"]),
                         LegalBasis(r["legal_basis_type"], r["legal_basis_title"], r["legal_basis_url"]),
                         r["retention"], tuple(_rule(d) for d in r["derived"]), _quota(r["quota"]))
            for r in await conn.fetch(q["habilitations_all"])]
    purposes = [Purpose(r["id"], r["label"]) for r in await conn.fetch(q["purposes_all"])]
    return Registry(tuple(orgs), tuple(keys), tuple(adapters), tuple(habs), tuple(purposes), version=version)


@dataclass(frozen=True, slots=True)
class Change:
    table: str
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    def __str__(self) -> str:
        parts = [f"+{x}" for x in self.added] + [f"~{x}" for x in self.changed] + [f"-{x}" for x in self.removed]
        return f"{self.table}: " + (", ".join(parts) if parts else "unchanged")


@dataclass(frozen=True, slots=True)
class ApplyReport:
    changes: tuple[Change, ...]
    version: int
    dry_run: bool = False
    """The statements ran and were rolled back: `version` is the one a real run would have made."""

    @property
    def changed(self) -> bool:
        return any(c.added or c.changed or c.removed for c in self.changes)

    def __str__(self) -> str:
        head = f"registry version {self.version}" + ("" if self.changed else " (nothing changed)")
        if self.dry_run and self.changed:
            head += " (dry run: rolled back, nothing changed)"
        return "\n".join([head, *(f"  {c}" for c in self.changes)])


class _RolledBack(Exception):
    """Ends a dry run's transaction after its last statement (the report travels with it)."""

    def __init__(self, report: ApplyReport) -> None:
        self.report = report


def _diff(table: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Change:
    return Change(
        table,
        tuple(sorted(set(new) - set(old))),
        tuple(sorted(k for k in set(new) & set(old) if old[k] != new[k])),
        tuple(sorted(set(old) - set(new))),
    )


async def apply(conn: asyncpg.Connection, wanted: Registry, *, prune: bool = False,
                dry_run: bool = False) -> ApplyReport:
    """Make the database hold exactly `wanted`; idempotent. Raises `RemovalRefused` (changing nothing) when that
    means removing entries and `prune` is false. `dry_run` runs every statement, then rolls them back."""
    try:
        return await _apply(conn, wanted, prune=prune, dry_run=dry_run)
    except _RolledBack as done:
        return done.report


async def _apply(conn: asyncpg.Connection, wanted: Registry, *, prune: bool, dry_run: bool) -> ApplyReport:
    q = db.queries()
    async with conn.transaction():
        await conn.fetchrow(q["registry_lock"])  # serialises concurrent applies
        current = await load(conn)
        org_c = _diff("organisations", {o.siret: o for o in current.organisations},
                      {o.siret: o for o in wanted.organisations})
        key_c = _diff("keys", {k.kid: k for k in current.keys}, {k.kid: k for k in wanted.keys})
        ad_c = _diff("adapters", {a.id: a for a in current.adapters}, {a.id: a for a in wanted.adapters})
        hab_c = _diff("habilitations", {h.id: h for h in current.habilitations},
                      {h.id: h for h in wanted.habilitations})
        pur_c = _diff("purposes", {p.id: p for p in current.purposes}, {p.id: p for p in wanted.purposes})
        report_changes = (org_c, key_c, ad_c, hab_c, pur_c)
        if not any(c.added or c.changed or c.removed for c in report_changes):
            return ApplyReport(report_changes, current.version, dry_run=dry_run)
        if not prune and any(c.removed for c in report_changes):
            raise RemovalRefused(report_changes)
        # dependents go first on removal, last on insertion, so foreign keys hold at every statement
        for hid in hab_c.removed:
            await conn.execute(q["habilitation_delete"], hid)
        for aid in ad_c.removed:
            await conn.execute(q["adapter_delete"], aid)
        for kid in key_c.removed:
            await conn.execute(q["key_delete"], kid)
        for o in wanted.organisations:
            if o.siret in org_c.added or o.siret in org_c.changed:
                await conn.execute(q["organisation_upsert"], o.siret, o.name, list(o.roles), list(o.redirect_uris),
                                   None if o.quota is None else o.quota.to_json())
        for k in wanted.keys:
            if k.kid in key_c.added or k.kid in key_c.changed:
                await conn.execute(q["key_upsert"], k.kid, k.siret, k.alg, k.jwk, k.not_before, k.not_after)
        for a in wanted.adapters:
            if a.id in ad_c.added or a.id in ad_c.changed:
                await conn.execute(q["adapter_upsert"], a.id, a.provider, a.kind, list(a.datasets), a.options)
        for h in wanted.habilitations:
            if h.id in hab_c.added or h.id in hab_c.changed:
                await conn.execute(q["habilitation_upsert"], h.id, h.consumer, h.dataset, list(h.purposes),
                                   list(h.fields), list(h.recipients), h.legal_basis.type, h.legal_basis.title,
                                   h.legal_basis.url, h.retention, [r.to_json() for r in h.derived],
                                   None if h.quota is None else h.quota.to_json())
        for siret in org_c.removed:
            await conn.execute(q["organisation_delete"], siret)
        for p in wanted.purposes:
            if p.id in pur_c.added or p.id in pur_c.changed:
                await conn.execute(q["purpose_upsert"], p.id, p.label)
        for pid in pur_c.removed:
            await conn.execute(q["purpose_delete"], pid)
        version: int = await conn.fetchval(q["registry_bump"], wanted.digest())
        await conn.execute(q["registry_notify"], str(version))  # sent at commit only: a rollback sends nothing
        if dry_run:
            raise _RolledBack(ApplyReport(report_changes, version, dry_run=True))
    return ApplyReport(report_changes, version)
