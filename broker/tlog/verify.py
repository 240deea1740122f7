"""The auditor's verifier, and what a consumer or a citizen checks of a promise and a proof.

`verify_log` recomputes the whole log from its rows and holds it against the signed checkpoints:
1. the latest checkpoint, then every other one, must be signed by a trusted key for this log's origin;
2. every leaf index below the latest checkpoint's size holds exactly one row whose recomputed leaf (RFC 8785 JCS of
   the entry, RFC 9162 leaf hash) is the leaf stored at that index, or the tombstone of a pruned entry;
3. the tree rebuilt from those leaves has, at each checkpoint's size, the root that checkpoint signs. Every
   checkpoint is then a prefix of the one tree the rows define, which is what consistency between successive
   checkpoints means, established here without trusting the broker's proofs;
4. no row has an index beyond the tree, and (against a database) no entry waited longer than the promised merge
   delay.
It never stops at the first finding: an auditor wants the whole list, each naming the leaf index and, when a row is
there to name it, the entry id. It trusts nothing it reads except the verifier keys it is given.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hmac
import itertools
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
import asyncpg
import orjson

from broker.signing import messages
from broker.signing.keys import PrivateKey
from broker.storage import db
from broker.tlog import checkpoint, leaves, merkle, witness
from broker.tlog.checkpoint import Checkpoint, CheckpointError, NoteVerifier
from broker.tlog.jcs import CanonicalizationError
from broker.tlog.leaves import timestamp
from broker.tlog.log import PROMISE_FORMAT, LoggedRow, PgNodeStore, Pruned, leaf_of, logged_rows

Verifiers = str | NoteVerifier | Iterable[str | NoteVerifier]
Progress = Callable[[int, int], None]


class VerificationError(Exception):
    """A promise, proof or answer does not verify. The message says which check failed."""


class SourceError(Exception):
    """The log could not be read (transport, database, or an answer that is not the expected shape)."""


class UnidentifiedDatabase(Exception):
    """The source cannot say which database cluster and timeline it reads, so no horizon can be tied to it (see
    `TombstoneCount`): `reason` says why, `remedy` how to grant what is missing."""

    def __init__(self, reason: str, remedy: str) -> None:
        super().__init__(f"{reason}; {remedy}")
        self.reason = reason
        self.remedy = remedy


# -- Promises and proofs (consumers, citizens) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Promise:
    origin: str
    entry_id: str
    leaf_hash: bytes
    logged_at: str
    max_merge_delay: int


def verify_promise(note: str, verifiers: Verifiers, *, origin: str) -> Promise:
    """The inclusion promise in `note`, if a trusted key signed it for this log; raises otherwise."""
    # 1. The signature, before the text is worth reading.
    try:
        text = checkpoint.open_note(note, verifiers)
    except CheckpointError as exc:
        raise VerificationError(f"the promise's signature does not verify: {exc}") from None
    # 2. The format: six lines, this log.
    lines = text[:-1].split("\n")
    if len(lines) != 6 or lines[0] != PROMISE_FORMAT:
        raise VerificationError(f"not a {PROMISE_FORMAT} note")
    _, promised_origin, entry_id, leaf64, logged_at, mmd = lines
    if promised_origin != origin:
        raise VerificationError("the promise is for another log")
    leaf = _hash(leaf64, "leaf hash")
    if not mmd.isascii() or not mmd.isdigit():
        raise VerificationError("the maximum merge delay is not a number of seconds")
    return Promise(promised_origin, entry_id, leaf, logged_at, int(mmd))


def verify_receipt(receipt: Mapping[str, Any], verifiers: Verifiers, *, origin: str, entry_id: str,
                   data: bytes | None = None, data_sha256: str | None = None) -> Promise:
    """Check the `log` member of a 200 exchange answer: the promise is signed, it is for this entry, and the
    entry it carries hashes to the promised leaf and records the released payload: `data` is the JCS of the data
    received (a v2 entry commits to it with the receipt's `payload_salt`); `data_sha256` is enough for a v1 entry."""
    # 1. The signed promise.
    promise = verify_promise(str(receipt.get("inclusion_promise")), verifiers, origin=origin)
    # 2. It names the entry of this answer.
    if promise.entry_id != entry_id:
        raise VerificationError("the promise is for another entry")
    # 3. The entry carried is the one promised: same leaf, same id, same time.
    entry = receipt.get("entry")
    if not isinstance(entry, dict):
        raise VerificationError("the receipt carries no entry")
    try:
        leaf = leaf_of(entry)
    except CanonicalizationError as exc:
        raise VerificationError(f"the entry is not canonicalizable: {exc}") from None
    if not hmac.compare_digest(leaf, promise.leaf_hash):
        raise VerificationError("the entry does not hash to the promised leaf")
    if entry.get("id") != entry_id or entry.get("logged_at") != promise.logged_at:
        raise VerificationError("the entry's id or time differs from the promise's")
    # 4. The value-level receipt: the entry records exactly the payload the consumer received.
    if data is not None:
        salt = receipt.get("payload_salt")
        try:
            leaves.verify_payload(entry, data, None if salt is None else base64.b64decode(str(salt), validate=True))
        except (ValueError, binascii.Error) as exc:
            raise VerificationError(f"the entry does not record the payload received: {exc}") from None
    elif data_sha256 is not None and entry.get("payload_sha256") != data_sha256:
        raise VerificationError("the entry does not record the payload received")
    return promise


def verify_entry_proof(answer: Mapping[str, Any], verifiers: Verifiers, *, origin: str,
                       leaf_hash: bytes) -> Checkpoint:
    """Check an answer of `GET /v1/log/entries/{id}/proof` for a leaf the caller already trusts (from a verified
    promise or a recomputed entry): the checkpoint is signed, and the proof leads from the leaf to its root."""
    # 1. The checkpoint.
    try:
        signed = checkpoint.verify_checkpoint(str(answer.get("checkpoint")), verifiers, origin=origin)
    except CheckpointError as exc:
        raise VerificationError(f"the checkpoint does not verify: {exc}") from None
    # 2. The proof is for that checkpoint's tree.
    index, size = answer.get("index"), answer.get("tree_size")
    if not isinstance(index, int) or size != signed.size:
        raise VerificationError("the proof is not for the checkpoint's tree size")
    proof = answer.get("inclusion_proof")
    if not isinstance(proof, list):
        raise VerificationError("no inclusion proof")
    # 3. The leaf is in that tree.
    try:
        merkle.verify_inclusion(leaf_hash, index, signed.size, [_hash(p, "proof hash") for p in proof], signed.root)
    except merkle.ProofError as exc:
        raise VerificationError(f"the inclusion proof does not verify: {exc}") from None
    return signed


_DURATION = re.compile(r"P(?=[0-9])(?:([0-9]+)Y)?(?:([0-9]+)M)?(?:([0-9]+)W)?(?:([0-9]+)D)?", re.ASCII)


def add_duration(moment: datetime, duration: str) -> datetime:
    """`moment` + an ISO 8601 duration of years, months, weeks and days (the registry's retentions), in UTC, the
    day of month clamped as PostgreSQL clamps it: the same arithmetic as `log prune`'s."""
    found = _DURATION.fullmatch(duration)
    if found is None:
        raise ValueError(f"not a duration of years, months, weeks and days: {duration!r}")
    years, months, weeks, days = (int(g or 0) for g in found.groups())
    at = moment.astimezone(UTC)
    month = at.month - 1 + months + 12 * years
    year, month = at.year + month // 12, month % 12 + 1
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day) + timedelta(weeks=weeks, days=days)


def _hash(text: object, what: str) -> bytes:
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(f"the {what} is not base64") from None
    if len(raw) != merkle.HASH_SIZE:
        raise VerificationError(f"the {what} is not {merkle.HASH_SIZE} bytes")
    return raw


# -- The whole log (auditors) --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    """modified, moved, missing, deleted, duplicate, extra, unreadable, tree, checkpoint, root, witness or late."""
    detail: str
    index: int | None = None
    entry_id: str | None = None

    def __str__(self) -> str:
        where = "" if self.index is None else f" index {self.index}"
        who = "" if self.entry_id is None else f" entry {self.entry_id}"
        return f"{self.kind}{where}{who}: {self.detail}"


@dataclass(frozen=True, slots=True)
class PrunedEntry:
    index: int
    entry_id: str
    logged_at: datetime


@dataclass(slots=True)
class Report:
    origin: str
    tree_size: int = 0
    entries: int = 0
    checkpoints: int = 0
    pruned: list[PrunedEntry] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    resumed_from: int = 0
    """The size an incremental verification started from (0: a full one)."""
    resume: Resume | None = None
    """Where the next incremental verification may start, when this one found nothing."""
    witnessed_size: int | None = None
    """The largest checkpoint the witness quorum cosigned (with witnesses given)."""
    unidentified: str | None = None
    """Why the database could not be identified, when it could not: every tombstone below the size resumed from was
    then checked again, and `resume` records no horizon."""

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "origin": self.origin, "tree_size": self.tree_size, "resumed_from": self.resumed_from,
            "witnessed_size": self.witnessed_size, "unidentified": self.unidentified,
            "entries_checked": self.entries,
            "checkpoints_checked": self.checkpoints,
            "pruned": [{"index": p.index, "entry_id": p.entry_id, "logged_at": p.logged_at.isoformat()}
                       for p in self.pruned],
            "findings": [{"kind": f.kind, "index": f.index, "entry_id": f.entry_id, "detail": f.detail}
                         for f in self.findings],
        }


@dataclass(frozen=True, slots=True)
class Resume:
    """What an incremental verification starts from: the tree a previous run verified, as its right edge (log2(n)
    hashes, enough to extend it and recompute every later root), the checkpoint it verified, when, and where the
    tombstones it checked end: the database's horizon then (see `TombstoneCount`) and how many tombstones were
    written below it. Kept by the auditor (`log verify --state FILE`), never read from the broker."""

    size: int
    edge: tuple[bytes, ...]
    checkpoint: str
    verified_at: datetime
    tombstones: int
    """How many tombstones were written below `horizon`."""
    first_v2: int | None
    database: str
    """The database cluster's system identifier and timeline ("" when unknown: the source could not say, or the role
    could not read them): a horizon means something in that cluster's history only, and one recorded with "" is
    taken by no later run."""
    horizon: int
    """The horizon of the verified snapshot (0 when unknown: every tombstone is checked)."""

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "edge": [base64.b64encode(h).decode() for h in self.edge],
                "checkpoint": self.checkpoint, "verified_at": self.verified_at.isoformat(),
                "tombstones": self.tombstones, "first_v2": self.first_v2, "database": self.database,
                "horizon": self.horizon}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Resume:
        # A state recorded before tombstones had a horizon has neither member: its next run checks every tombstone.
        return cls(int(raw["size"]), tuple(base64.b64decode(h, validate=True) for h in raw["edge"]),
                   str(raw["checkpoint"]), datetime.fromisoformat(str(raw["verified_at"])), int(raw["tombstones"]),
                   None if raw.get("first_v2") is None else int(raw["first_v2"]), str(raw.get("database", "")),
                   int(raw.get("horizon", 0)))


@dataclass(frozen=True, slots=True)
class TombstoneCount:
    """Which tombstones a verification has checked, told apart by the transaction that wrote each (`written_by`,
    migration 0039), not by `pruned_at`: that is the clock of the machine that ran `log prune`, read before it
    writes, and a tombstone dated before the last verification was never checked by it, lawful or backdated.
    The horizon of a snapshot (its xmin) is the lowest transaction id still running when it was taken: every
    transaction below it had ended, so every tombstone that will ever be committed with `written_by` below it is in
    that snapshot, and was checked by the verification that read it (or an earlier one). A prune committed just
    before that snapshot is in it; one still running when it was taken, or run since on whatever clock, has its
    transaction at or above the horizon: the next verification checks its tombstones, and counts only the others.
    So no lawful prune changes the count below a recorded horizon; a tombstone whose `written_by` was set by hand
    does, as does one removed."""

    before: int
    """How many tombstones were written below the horizon asked about (the last verification's)."""
    recorded: int
    """How many below this snapshot's horizon: what the next verification will hold its `before` to."""
    fresh: list[tuple[int, bytes | None, Pruned]]
    """The tombstones written at or above the horizon asked about, for the indices asked about: (index, leaf stored at
    that index, tombstone)."""


class LogSource(Protocol):
    """Where `verify_log` reads a log: its database, or a running broker's API."""

    async def latest(self) -> tuple[int, str] | None:
        """The latest checkpoint: its size as the source claims it, and the signed note."""

    async def checkpoints(self, start: int, limit: int) -> Sequence[tuple[int, str]]:
        """Up to `limit` checkpoints of size `start` and more, smallest first."""

    async def rows(self, start: int, end: int) -> Sequence[LoggedRow]:
        """What is held for leaf indices [start, end), in index order."""

    async def rows_beyond(self, size: int, limit: int) -> Sequence[tuple[int, str]]:
        """(index, entry id) of rows whose index is `size` or more."""

    async def late(self, max_merge_delay: float, since: datetime | None) -> Sequence[tuple[str, datetime]]:
        """(entry id, logged at) of entries still not integrated after the merge delay; with `since`, only those
        logged since then."""

    async def stored_root(self, size: int) -> bytes | None:
        """The root of the stored tree at `size`, or None when the source does not expose its nodes."""

    async def held_below(self, size: int) -> int | None:
        """How many indices below `size` hold a row or a tombstone (None: the source cannot say)."""

    async def indexed_below(self, size: int) -> int | None:
        """How many indices below `size` have their line naming their entry (None: the source cannot say)."""

    async def horizon(self) -> tuple[str, int] | None:
        """The database (its cluster's identifier) and the horizon of the snapshot read (None: the source cannot
        say); see `TombstoneCount`. Raises `UnidentifiedDatabase` when it reads a database it cannot identify."""

    async def tombstones(self, after: int, horizon: int, below: int) -> TombstoneCount | None:
        """The tombstones written below the horizon `after` and below `horizon` (counts), and those written at or above
        `after` for indices below `below` (None: the source cannot say)."""


class _Tree:
    """The tree rebuilt from recomputed leaves, appended incrementally; its nodes are not kept."""

    def __init__(self) -> None:
        self.size = 0
        self.edge: tuple[bytes, ...] = ()

    def extend(self, leaves: Sequence[bytes]) -> None:
        if leaves:
            result = merkle.append_leaves(self.size, self.edge, leaves)
            self.size, self.edge = result.size, result.edge

    @property
    def root(self) -> bytes:
        return merkle.root_from_edge(self.size, self.edge)


class _Verification:
    def __init__(self, source: LogSource, verifiers: Verifiers, origin: str, report: Report, *,
                 default_retention: str = "P1Y", now: datetime | None = None, witnesses: Sequence[str] = (),
                 quorum: int = 0) -> None:
        self.source = source
        self.default_retention = default_retention
        self.now = now
        self.first_v2: int | None = None  # index of the first v2 leaf seen (rows or tombstones)
        self.witnesses = list(witnesses)
        self.quorum = quorum
        self.verifiers = list(verifiers) if not isinstance(verifiers, str | NoteVerifier) else [verifiers]
        self.origin = origin
        self.report = report
        self.tree = _Tree()
        self.broken_at: int | None = None  # first index whose leaf is unknown: no root can be checked beyond
        self.due: dict[int, list[tuple[str, Checkpoint]]] = {}  # size -> checkpoints to hold the tree against
        self.mismatched: list[tuple[int, str, bytes]] = []  # (index, entry id, recomputed leaf)
        self.logged_at: dict[bytes, int] = {}  # stored leaf -> index, for mismatched and missing indices

    def find(self, kind: str, detail: str, index: int | None = None, entry_id: str | None = None) -> None:
        self.report.findings.append(Finding(kind, detail, index, entry_id))

    def open_checkpoint(self, note: str, label: str, claimed_size: int | None = None) -> Checkpoint | None:
        """The checkpoint in `note` if a trusted key signed it for this log, else None and a finding."""
        at = "" if claimed_size is None else f" at size {claimed_size}"
        try:
            signed = checkpoint.verify_checkpoint(note, self.verifiers, origin=self.origin)
        except CheckpointError as exc:
            self.find("checkpoint", f"{label}{at} does not verify: {exc}")
            return None
        if claimed_size is not None and signed.size != claimed_size:
            self.find("checkpoint", f"{label}{at} signs size {signed.size}")
        if self.witnesses:
            try:
                cosigned = len(witness.cosignatures(note, self.witnesses))
            except witness.WitnessError as exc:
                self.find("checkpoint", f"{label}{at} carries a bad witness cosignature: {exc}")
                return signed
            if cosigned >= self.quorum and signed.size > (self.report.witnessed_size or -1):
                self.report.witnessed_size = signed.size
        return signed

    def expect(self, label: str, signed: Checkpoint) -> None:
        self.due.setdefault(signed.size, []).append((label, signed))

    def check_roots(self) -> None:
        """Hold the tree, at its current size, against every checkpoint of that size."""
        for label, signed in self.due.pop(self.tree.size, []):
            if not hmac.compare_digest(self.tree.root, signed.root):
                hint = " (see the entry findings)" if self.report.findings else ""
                self.find("root", f"the entries below {signed.size} do not hash to the root {label} signs{hint}")

    def leaf_for(self, index: int, group: list[LoggedRow]) -> bytes | None:
        """The leaf the rows at `index` say was logged there, recording what is wrong with them."""
        stored = group[0].stored_leaf
        if stored is None:
            self.find("tree", "no leaf is stored at this index: proofs cannot be served for it", index)
        present = [r for r in group if r.entry is not None]
        if self.first_v2 is None and any((r.entry or {}).get("v") == leaves.V2 or (r.pruned and r.pruned.leaf_data)
                                         for r in group):
            self.first_v2 = index
        if not present:
            pruned = next((r.pruned for r in group if r.pruned is not None), None)
            if pruned is not None:
                self.report.pruned.append(PrunedEntry(index, pruned.entry_id, pruned.logged_at))
                self.check_tombstone(index, stored, pruned)
            else:
                self.find("missing", "no row and no pruning tombstone: the entry was deleted", index)
                if stored is not None:
                    self.logged_at[stored] = index
            return stored
        recomputed: list[tuple[str, bytes | None]] = []
        for row in present:
            entry = row.entry or {}
            entry_id = str(entry.get("id"))
            try:
                recomputed.append((entry_id, leaf_of(entry)))
            except CanonicalizationError as exc:
                self.find("unreadable", f"the row cannot be canonicalized: {exc}", index, entry_id)
                recomputed.append((entry_id, None))
        if len(present) > 1:
            ids = ", ".join(i for i, _ in recomputed)
            self.find("duplicate", f"{len(present)} rows claim this index: {ids}", index)
        for entry_id, leaf in recomputed:
            if leaf is not None and stored is not None and not hmac.compare_digest(leaf, stored):
                self.mismatched.append((index, entry_id, leaf))
                self.logged_at[stored] = index
        computed = [leaf for _, leaf in recomputed if leaf is not None]
        matching = [leaf for leaf in computed if stored is not None and hmac.compare_digest(leaf, stored)]
        if matching or computed:
            return (matching or computed)[0]
        return stored

    def check_tombstone(self, index: int, stored: bytes | None, pruned: Pruned) -> None:
        """A tombstone stands for a lawful pruning only if the entry's retention had run out when it was written; any
        other is a deletion. A v2 tombstone keeps the public leaf, which must be the leaf logged at this index: its
        id, time and retention are then the signed tree's. A v1 leaf carries no retention: the tombstone's own time
        is held against its habilitation's retention as the registry now has it (or the default)."""
        def deleted(detail: str) -> None:
            self.find("deleted", f"{detail}: the entry was deleted, not pruned", index, pruned.entry_id)

        if pruned.leaf_data is None and self.first_v2 is not None and index > self.first_v2:
            # Brokers write v2 only once they do: a tombstone without the public leaf after that hides its retention.
            deleted(f"a tombstone without the public leaf after the first v2 entry (index {self.first_v2})")
            return
        if self.now is not None and pruned.pruned_at > self.now:
            deleted(f"the tombstone is dated {timestamp(pruned.pruned_at)}, after this verification")
            return
        logged_at, retention = pruned.logged_at, pruned.habilitation_retention or self.default_retention
        if pruned.leaf_data is not None:
            if stored is not None and not hmac.compare_digest(merkle.leaf_hash(pruned.leaf_data), stored):
                deleted("the tombstone's public leaf is not the leaf logged at this index")
                return
            try:
                public = leaves.parse_public_leaf(pruned.leaf_data)
            except leaves.LeafError as exc:
                deleted(f"the tombstone's public leaf is unreadable ({exc})")
                return
            if public["id"] != pruned.entry_id or public["logged_at"] != timestamp(pruned.logged_at):
                deleted("the tombstone names another entry or time than the leaf logged at this index")
                return
            retention = public["retention"]
        try:
            expiry = add_duration(logged_at, retention)
        except ValueError:
            deleted(f"the retention {retention!r} is not an ISO 8601 duration")
            return
        if pruned.pruned_at < expiry:
            deleted(f"pruned at {timestamp(pruned.pruned_at)}, before its retention ({retention} from "
                    f"{timestamp(logged_at)}) ran out at {timestamp(expiry)}")

    def add_leaves(self, leaves: list[tuple[int, bytes | None]]) -> None:
        """Append leaves in index order, stopping at every checkpoint size to compare roots."""
        batch: list[bytes] = []
        for index, leaf in leaves:
            if self.broken_at is not None:
                return
            if leaf is None:
                self.tree.extend(batch)
                batch = []
                self.broken_at = index
                self.find("tree", "the leaf is unknown: roots of larger trees cannot be checked", index)
                return
            batch.append(leaf)
            if self.tree.size + len(batch) in self.due:
                self.tree.extend(batch)
                batch = []
                self.check_roots()
        self.tree.extend(batch)

    def classify_mismatches(self) -> None:
        """A row whose leaf was logged at another index was moved (reordered, or shifted by an insertion); one
        whose leaf was never logged was modified (or inserted)."""
        for index, entry_id, leaf in self.mismatched:
            origin = self.logged_at.get(leaf)
            if origin is not None and origin != index:
                self.find("moved", f"the row was logged at index {origin}", index, entry_id)
            else:
                self.find("modified", "the row does not hash to the leaf logged at this index", index, entry_id)


async def verify_log(source: LogSource, verifiers: Verifiers, *, origin: str, max_merge_delay: float | None = None,
                     held_checkpoints: Sequence[str] = (), page: int = 1000,
                     progress: Progress | None = None, default_retention: str = "P1Y",
                     now: datetime | None = None, resume: Resume | None = None, witnesses: Sequence[str] = (),
                     quorum: int = 0) -> Report:
    """Verify the whole log `source` holds; see the module docstring for the steps. `held_checkpoints` are
    checkpoints the auditor kept from earlier runs: the log must still extend each of them. `default_retention`
    (DLNUF_LOG_RETENTION) is the retention of v1 entries without a habilitation; `now` dates this verification.

    With `resume` (a previous run's `report.resume`), only what came since is verified: the tree is extended from
    the verified edge, so every new checkpoint's root, recomputed from the new rows, proves it extends the last
    verified one (consistency without trusting the broker's proofs); the tombstones the last run did not see are
    checked, and counts show whether older rows, their lines in tlog_entries or tombstones were deleted since, or a
    tombstone was slipped among those already checked. Edits to older rows are not seen: run a full pass now and
    then.

    With `witnesses` and a `quorum`, every checkpoint's cosignatures by them are checked (a bad one is a finding),
    and the largest checkpoint `quorum` of them cosigned is reported: up to it, no split view without them."""
    report = Report(origin)
    if quorum > len(set(witnesses)):
        raise ValueError("the witness quorum cannot exceed the number of witness keys")
    v = _Verification(source, verifiers, origin, report, default_retention=default_retention, now=now,
                      witnesses=witnesses, quorum=quorum)
    # 1. The latest checkpoint fixes the tree to verify; those the auditor holds must be prefixes of it.
    latest = await source.latest()
    if latest is None:
        v.find("checkpoint", "the log has no checkpoint")
        return report
    size, latest_note = latest
    report.tree_size = size
    latest_signed = v.open_checkpoint(latest_note, "the latest checkpoint", size)
    for n, note in enumerate(held_checkpoints, 1):
        held = v.open_checkpoint(note, f"held checkpoint #{n}")
        if held is not None and held.size > size:
            v.find("checkpoint", f"held checkpoint #{n} has size {held.size}, but the log now has {size}: "
                                 "entries were removed, or the log was forked")
        elif held is not None:
            v.expect(f"held checkpoint #{n}", held)
    first = 0
    if resume is not None:
        prev = v.open_checkpoint(resume.checkpoint, "the checkpoint of the last verification", resume.size)
        if prev is None or prev.size != resume.size:
            return report
        try:
            recorded = merkle.root_from_edge(resume.size, resume.edge)
        except merkle.MerkleError:
            recorded = b""
        if not hmac.compare_digest(recorded, prev.root):
            v.find("checkpoint", "the state of the last verification does not match its checkpoint")
            return report
        if resume.size > size:
            v.find("checkpoint", f"the log has {size} entries, fewer than the {resume.size} verified last time: "
                                 "entries were removed, or the log was forked")
            return report
        v.tree.size, v.tree.edge, v.first_v2, first = resume.size, resume.edge, resume.first_v2, resume.size
        report.resumed_from = first
    checkpoints = _pages(source, size, first)
    next_checkpoint = await anext(checkpoints, None)

    async def due_up_to(end: int) -> None:
        """Open every checkpoint up to size `end`, so the tree stops at their sizes as it grows."""
        nonlocal next_checkpoint
        while next_checkpoint is not None and next_checkpoint[0] <= end:
            claimed, note = next_checkpoint
            signed = v.open_checkpoint(note, "the checkpoint", claimed)
            if signed is not None:
                report.checkpoints += 1
                if signed.size <= size:
                    v.expect("the checkpoint", signed)
            next_checkpoint = await anext(checkpoints, None)

    await due_up_to(first)
    v.check_roots()
    # 2. and 3. Every leaf index, in order, page by page.
    for start in range(first, size, page):
        end = min(start + page, size)
        await due_up_to(end)
        by_index: dict[int, list[LoggedRow]] = {}
        for row in await source.rows(start, end):
            by_index.setdefault(row.index, []).append(row)
        page_leaves: list[tuple[int, bytes | None]] = []
        for index in range(start, end):
            group = by_index.get(index)
            if group is None:
                v.find("missing", "the source returned nothing for this index", index)
                page_leaves.append((index, None))
            else:
                page_leaves.append((index, v.leaf_for(index, group)))
        v.add_leaves(page_leaves)
        report.entries = end - first
        if progress is not None:
            progress(end, size)
    await due_up_to(2**63)
    if v.broken_at is None:
        for label, signed in itertools.chain.from_iterable(v.due.values()):
            v.find("root", f"{label} of size {signed.size} was never reached")
    v.classify_mismatches()
    # The stored tree, which serves the proofs, must lead to the same root.
    stored = await source.stored_root(size)
    if stored is not None and latest_signed is not None and not hmac.compare_digest(stored, latest_signed.root):
        v.find("tree", "the stored tree's root differs from the latest checkpoint's: its proofs will not verify")
    # 4. Nothing beyond the tree, nothing late.
    for index, entry_id in await source.rows_beyond(size, 1000):
        v.find("extra", f"the row has an index beyond the latest checkpoint (size {size})", index, entry_id)
    if max_merge_delay is not None:
        # Resuming, the last run found every entry logged before its time minus the merge delay integrated (or it
        # would have left no state), and an index once given stays (tlog_entries only grows; a line removed is
        # counted missing in step 5): only the entries logged since need looking at. An hour of margin for the
        # clocks of this machine and of the database.
        since = None if resume is None else resume.verified_at - timedelta(seconds=max_merge_delay, hours=1)
        for entry_id, logged_at in await source.late(max_merge_delay, since):
            v.find("late", f"logged at {logged_at.isoformat()}, still not integrated after {max_merge_delay:g} s",
                   None, entry_id)
    # 5. Incremental: below the last verified size, every index still has its line and holds a row or a tombstone,
    #    and every tombstone the last run did not check is lawful. Which those are, the database says, not a clock
    #    (`TombstoneCount`). A horizon is that of one cluster's transactions on one timeline: in another cluster (the
    #    log moved by logical replication or a restored dump), on another timeline (a restore to an earlier point,
    #    whose transaction ids are handed out again; a failover) or below the recorded one (a standby that has not
    #    replayed as far), every tombstone below is checked again, and the count starts afresh.
    #    Without the database's identity (a role that may not read it) the pass is still sound, as for another
    #    database: the edge it extends is bound to signed checkpoints, the counts of lines and of indices held below
    #    are held to the verified size, not to a horizon; only the tombstone count needs one, and a horizon from an
    #    unknown cluster or timeline could be another history's (a restore or a failover hands transaction ids out
    #    again: a tombstone written with a reused id below it would be counted, never checked). So none is used:
    #    every tombstone below is checked, the count starts afresh, and the state records no horizon ("", 0), which
    #    no later run takes, identified or not.
    try:
        here = await source.horizon()
    except UnidentifiedDatabase as exc:
        here = ("", 0)
        report.unidentified = (f"the database cannot be identified ({exc.reason}): each run checks every tombstone "
                               "again, instead of counting those an earlier run checked, and the state records no "
                               f"horizon. To have them counted, {exc.remedy}")
    same = resume is not None and here is not None and here[0] != "" and here[0] == resume.database \
        and here[1] >= resume.horizon
    after = resume.horizon if resume is not None and same else 0
    tombstones = None if here is None else await source.tombstones(after, here[1], first)
    if resume is not None:
        indexed = await source.indexed_below(first)
        if indexed is not None and indexed < first:
            v.find("missing", f"{first - indexed} indices below {first} lost their line in tlog_entries since the last "
                              "verification: their entries have no index any more (a full verification names them)")
        elif indexed is not None and indexed > first:
            v.find("duplicate", f"tlog_entries has {indexed - first} more lines below {first} than indices: an index "
                                "was given twice (a full verification names it)")
        present = await source.held_below(first)
        if present is not None and present < first:
            v.find("missing", f"{first - present} entries below {first} were deleted since the last verification "
                              "(a full verification names them)")
        if tombstones is not None:
            for index, stored_leaf, tombstone in tombstones.fresh:
                v.report.pruned.append(PrunedEntry(index, tombstone.entry_id, tombstone.logged_at))
                v.check_tombstone(index, stored_leaf, tombstone)
            expected = resume.tombstones if same else 0
            if tombstones.before < expected:
                v.find("deleted", f"{expected - tombstones.before} tombstones were removed since the last "
                                  "verification")
            elif tombstones.before > expected:
                v.find("deleted", f"{tombstones.before - expected} tombstones appeared among those the last "
                                  "verification checked, written with a transaction id set by hand (a full "
                                  "verification checks every tombstone)")
    if quorum and report.witnessed_size is None:
        v.find("witness", f"no checkpoint verified here carries {quorum} of the {len(witnesses)} witnesses' "
                          "cosignatures")
    report.findings.sort(key=lambda f: (f.index is None, f.index or 0, f.kind))
    if report.ok and latest_signed is not None and v.broken_at is None:
        report.resume = Resume(size, v.tree.edge, latest_note, now or datetime.now(UTC),
                               0 if tombstones is None else tombstones.recorded, v.first_v2,
                               "" if here is None else here[0], 0 if here is None else here[1])
    return report


async def _pages(source: LogSource, size: int, start: int = 0, limit: int = 1000) -> AsyncIterator[tuple[int, str]]:
    """Every checkpoint from `start` up to `size`, smallest first, a page at a time."""
    while True:
        found = list(await source.checkpoints(start, limit))
        for claimed, note in found:
            if claimed > size:
                return
            yield claimed, note
        if len(found) < limit:
            return
        start = found[-1][0] + 1


# -- Sources -------------------------------------------------------------------------------------------------------


def _q() -> dict[str, str]:
    return db.queries("broker.tlog", "tlog.sql")


class DatabaseSource:
    """The log in its database. Use it inside one REPEATABLE READ transaction: the verdict is then about one
    snapshot, even while brokers keep appending."""

    READS = ("access_log", "habilitations", "tlog_checkpoints", "tlog_cosignatures", "tlog_entries", "tlog_nodes",
             "tlog_pruned", "tlog_queue")
    """The tables this source's statements read (tests/tlog/test_unidentified.py holds the list to them)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def check_readable(self) -> None:
        """Raise `SourceError` naming every table of `READS` the session cannot find, may not read, or reads through
        row-level security: asked before anything is read, so that an auditor's role short of a grant learns all it
        lacks at once, rather than one table at a time, late in a long pass."""
        row = await self.conn.fetchrow(_q()["tlog_auditor_grants"], list(self.READS))
        role, problems = row["role"], []
        if row["absent"]:
            problems.append(f"finds no table {', '.join(row['absent'])} (a database the broker has not migrated, or "
                            "a schema not on the role's search_path or without USAGE for it)")
        if row["missing"]:
            tables = ", ".join(row["missing"])
            problems.append(f"may not read {tables}: an auditor's role needs SELECT on the log's tables (as the "
                            f"owner: GRANT SELECT ON {tables} TO {role};)")
        if row["filtered"]:
            problems.append(f"reads {', '.join(row['filtered'])} through row-level security: the pass would see only "
                            "the rows a policy shows it, and call the others deleted (disable it on the log's tables, "
                            f"or as a superuser: ALTER ROLE {role} BYPASSRLS;)")
        if problems:
            raise SourceError(f"the role {role} " + "; it ".join(problems))

    async def latest(self) -> tuple[int, str] | None:
        row = await self.conn.fetchrow(_q()["tlog_checkpoint_latest"])
        return None if row is None else (row["size"], row["note"])

    async def checkpoints(self, start: int, limit: int) -> list[tuple[int, str]]:
        return [(r["size"], r["note"]) for r in await self.conn.fetch(_q()["tlog_checkpoints_after"], start - 1, limit)]

    async def rows(self, start: int, end: int) -> list[LoggedRow]:
        return await logged_rows(self.conn, start, end)

    async def rows_beyond(self, size: int, limit: int) -> list[tuple[int, str]]:
        return [(r["log_index"], str(r["id"])) for r in await self.conn.fetch(_q()["tlog_rows_outside"], size, limit)]

    async def late(self, max_merge_delay: float, since: datetime | None) -> list[tuple[str, datetime]]:
        if since is None:
            rows = await self.conn.fetch(_q()["tlog_pending_late"], max_merge_delay, 1000)
        else:
            rows = await self.conn.fetch(_q()["tlog_pending_late_since"], max_merge_delay, 1000, since)
        return [(str(r["id"]), r["logged_at"]) for r in rows]

    async def stored_root(self, size: int) -> bytes | None:
        try:
            return await merkle.tree_root(size, PgNodeStore(self.conn))
        except merkle.MissingNodeError:
            return None

    async def held_below(self, size: int) -> int | None:
        return int(await self.conn.fetchval(_q()["tlog_held_below"], size))

    async def indexed_below(self, size: int) -> int | None:
        return int(await self.conn.fetchval(_q()["tlog_indexed_below"], size))

    async def horizon(self) -> tuple[str, int] | None:
        if not self.conn.is_in_transaction():
            # outside the verification's transaction the horizon would be another snapshot's than the one read
            raise RuntimeError("DatabaseSource.horizon must run inside the verification's REPEATABLE READ transaction")
        try:
            # A savepoint: the error would otherwise abort the verification's transaction, and its snapshot with it.
            async with self.conn.transaction():
                row = await self.conn.fetchrow(_q()["tlog_horizon"])
        except asyncpg.InsufficientPrivilegeError as exc:  # pg_control_*() revoked from PUBLIC (managed servers)
            grants = await self.conn.fetchrow(_q()["tlog_horizon_grants"])
            missing = ", ".join(grants["missing"]) or "pg_control_system(), pg_control_checkpoint()"
            raise UnidentifiedDatabase(str(exc), "grant the role what it lacks (as a superuser): GRANT EXECUTE ON "
                                       f"FUNCTION {missing} TO {grants['role']};") from None
        return str(row["database"]), int(row["horizon"])

    async def tombstones(self, after: int, horizon: int, below: int) -> TombstoneCount:
        counts = await self.conn.fetchrow(_q()["tlog_tombstone_counts"], after, horizon)
        fresh = []
        for r in await self.conn.fetch(_q()["tlog_tombstones_after"], after, below):
            data = r["leaf_data"]
            fresh.append((r["log_index"], None if r["stored_leaf"] is None else bytes(r["stored_leaf"]),
                          Pruned(str(r["entry_id"]), r["logged_at"], r["pruned_at"],
                                 None if data is None else bytes(data), r["habilitation_id"],
                                 r["habilitation_retention"])))
        return TombstoneCount(int(counts["before"]), int(counts["recorded"]), fresh)


class HttpSource:
    """A running broker's API. Entries need an auditor's key (`DLNUF_LOG_AUDITORS`); checkpoints are public."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, key: PrivateKey | None) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.key = key

    async def _get(self, path: str, params: Mapping[str, int] | None = None, *, signed: bool = False) -> bytes:
        url = self.base_url + path + ("?" + urlencode(params) if params else "")
        headers: dict[str, str] = {}
        if signed:
            if self.key is None:
                raise SourceError("reading entries needs an auditor's key (--key)")
            headers.update(messages.sign_request(method="GET", url=url, headers=headers, body=b"",
                                                private_key=self.key))
        try:
            async with self.session.get(url, headers=headers) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise SourceError(f"GET {path}: {resp.status} {body[:300].decode(errors='replace')}")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SourceError(f"GET {path}: {type(exc).__name__}: {exc}") from None

    async def _json(self, path: str, params: Mapping[str, int] | None = None, *, signed: bool = False) -> Any:
        try:
            return orjson.loads(await self._get(path, params, signed=signed))
        except orjson.JSONDecodeError:
            raise SourceError(f"GET {path}: not JSON") from None

    async def info(self) -> dict[str, Any]:
        found: dict[str, Any] = await self._json("/v1/log")
        return found

    async def latest(self) -> tuple[int, str] | None:
        note = (await self._get("/v1/log/checkpoint")).decode("utf-8", errors="replace")
        try:
            return checkpoint.parse_checkpoint(note).size, note
        except CheckpointError as exc:
            raise SourceError(f"the latest checkpoint is not a checkpoint: {exc}") from None

    async def checkpoints(self, start: int, limit: int) -> list[tuple[int, str]]:
        found = await self._json("/v1/log/checkpoints", {"start": start, "limit": limit})
        try:
            return [(int(c["size"]), str(c["note"])) for c in found["checkpoints"]]
        except (KeyError, TypeError, ValueError):
            raise SourceError("GET /v1/log/checkpoints: unexpected shape") from None

    async def rows(self, start: int, end: int) -> list[LoggedRow]:
        found = await self._json("/v1/log/entries", {"start": start, "end": end}, signed=True)
        try:
            return [LoggedRow.from_json(r) for r in found["entries"]]
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise SourceError("GET /v1/log/entries: unexpected shape") from None

    async def rows_beyond(self, size: int, limit: int) -> list[tuple[int, str]]:
        return []  # the API serves the published tree only

    async def late(self, max_merge_delay: float, since: datetime | None) -> list[tuple[str, datetime]]:
        return []  # pending entries are not published

    async def stored_root(self, size: int) -> bytes | None:
        return None

    async def held_below(self, size: int) -> int | None:
        return None  # the API serves ranges of entries, not counts: a full verification reads them all

    async def indexed_below(self, size: int) -> int | None:
        return None

    async def horizon(self) -> tuple[str, int] | None:
        return None

    async def tombstones(self, after: int, horizon: int, below: int) -> None:
        return None


def describe(report: Report, *, list_pruned: int = 20) -> str:
    """The human verdict."""
    since = f" (incremental, from {report.resumed_from})" if report.resumed_from else ""
    lines = [f"log {report.origin}: {report.entries} of {report.tree_size} entries{since} and "
             f"{report.checkpoints} checkpoints checked"]
    if report.pruned:
        shown = ", ".join(f"{p.index} ({p.entry_id})" for p in report.pruned[:list_pruned])
        more = f" and {len(report.pruned) - list_pruned} more" if len(report.pruned) > list_pruned else ""
        lines.append(f"pruned (bodies removed, leaves kept and verified): {len(report.pruned)}: {shown}{more}")
    if report.witnessed_size is not None:
        lines.append(f"witnessed: the checkpoint of size {report.witnessed_size} carries the witness quorum's "
                     "cosignatures")
    if report.ok:
        lines.append("OK: every entry present, in order, hashing to every signed checkpoint")
    else:
        lines.append(f"FAILED: {len(report.findings)} finding(s)")
        lines.extend(f"  {f}" for f in report.findings)
    return "\n".join(lines)

