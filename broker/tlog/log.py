"""The transparency log: access-log rows sequenced into an RFC 9162 tree stored in PostgreSQL, with signed checkpoints.

Leaves (`broker.tlog.leaves`): v1 hashes the entry's JCS, v2 a public leaf committing to it; the subject appears only
as its keyed `subject_key`. The leaf does not depend on its index, so the pipeline can compute it, and sign an
inclusion promise over it, before the row is committed.

Sequencing. Every broker process runs an integrator. A round locks the single `tlog_head` row (FOR UPDATE SKIP
LOCKED: a process that finds it locked leaves the round to the holder), takes the committed entries of the queue
(`tlog_queue`, written with each entry) in insertion order, gives them the next indices (`tlog_entries`, taking them
off the queue), stores the new tree nodes, advances the head and signs a checkpoint, all in one transaction. The
access-log row itself is never updated (migration 0031). Hence:
- indices are contiguous and unique: one integrator at a time, and indices, nodes, head and checkpoint commit
  together or not at all (the primary key of `tlog_entries` backs this up, across months and pruning);
- a row committed before a round starts gets a lower index than any row committed after it ends; within one round,
  rows are in insertion order;
- a checkpoint never names a size whose nodes are not all readable, and nodes never change once written;
- while one broker process runs, a row is integrated at most one interval plus one round after its commit
  (`dlnuf_tlog_integration_lag_seconds`); the promise given to consumers (`log_max_merge_delay`) leaves room for
  restarts. The spine's invariant is untouched: the row is committed before the data leaves, integrated after.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.observability.metrics import Metrics
from broker.signing import ed25519
from broker.signing.signer import Signer
from broker.storage import db
from broker.storage.secretfile import create_once
from broker.tlog import checkpoint, leaves, merkle, partitions
from broker.tlog.accesslog import LogEntry
from broker.tlog.jcs import JsonValue

# re-exported: where verifiers found them before leaves had a module of their own
from broker.tlog.leaves import entry_document as entry_document
from broker.tlog.leaves import leaf_data as leaf_data
from broker.tlog.leaves import leaf_of as leaf_of
from broker.tlog.leaves import timestamp as timestamp

log = structlog.get_logger(__name__)

PROMISE_FORMAT = "dlnuf.org/inclusion-promise/v1"
_SIGNATURE_PREFIX = "— "  # C2SP signed-note signature lines start with an em dash and a space


class TransparencyLogError(Exception):
    """Base of the log's own refusals."""


class NoteKeyError(TransparencyLogError):
    """The note key file is unreadable, or belongs to another log."""


class UnknownEntry(TransparencyLogError):
    """No entry has this id."""


class AmbiguousEntry(TransparencyLogError):
    """Several entries have this id (a row reused it in another month): the caller must name one by its logged_at.
    The message is safe to show."""


class NotYetIntegrated(TransparencyLogError):
    """The entry is committed but has no index yet: ask again after the maximum merge delay."""


class BeyondTree(TransparencyLogError, ValueError):
    """A size or index the published tree does not have. The message is safe to show."""


def _q() -> dict[str, str]:
    return db.queries("broker.tlog", "tlog.sql")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- Note key -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSigner:
    """The log's Ed25519 signed-note key. Its name is the log's origin, as sum.golang.org does."""

    name: str
    private_key: Signer = field(repr=False)
    """The key file's Ed25519 key, or a `Signer` whose key stays in an HSM (broker/signing/signer.py)."""

    @property
    def verifier(self) -> checkpoint.NoteVerifier:
        return checkpoint.NoteVerifier.from_key(self.name, checkpoint.ed25519_public(self.private_key))

    def sign_checkpoint(self, size: int, root: bytes) -> str:
        return checkpoint.sign_checkpoint(self.name, size, root, self.private_key, self.name)

    def sign_note(self, text: str) -> str:
        """A C2SP signed note of `text` (which ends with a newline). `checkpoint.sign_checkpoint` signs only
        checkpoint bodies; promises are notes of their own format, opened with `checkpoint.open_note`."""
        if not text.endswith("\n") or "\n\n" in text:
            raise ValueError("a note text ends with one newline and has no blank line")
        data = text.encode("utf-8")
        # one per exchange: a key file's key signs through libsodium (broker/signing/ed25519.py) with its key ID
        # computed once; an HSM's Signer signs itself
        key = self.private_key
        if isinstance(key, Ed25519PrivateKey):
            key_id, signature = _note_key_id(self.name, key), ed25519.sign(key, data)
        else:
            key_id = checkpoint.key_id(self.name, checkpoint.ed25519_public(key)).to_bytes(4, "big")
            signature = key.sign(data)
        return f"{text}\n{_SIGNATURE_PREFIX}{self.name} {b64(key_id + signature)}\n"


@functools.lru_cache(maxsize=8)
def _note_key_id(name: str, private_key: Ed25519PrivateKey) -> bytes:
    """The note key's ID, computed once per key: each exchange's promise is a note (keys hash by identity)."""
    return checkpoint.key_id(name, private_key.public_key()).to_bytes(4, "big")


def load_or_create_note_key(path: Path, origin: str) -> NoteSigner:
    """The log's note key from its file (Go `note` signer format), generated (mode 0600) if absent.

    A dedicated key, not the broker's response key: one key per message format, so no note can ever be read as
    an HTTP signature base or the reverse, and the log key can be rotated or kept offline on its own. Several
    processes may start at once: `broker.secretfile.create_once` makes one of them win whole.
    """
    try:
        raw = create_once(path, lambda: f"{checkpoint.signer_key(origin, Ed25519PrivateKey.generate())}\n".encode())
        name, key = checkpoint.parse_signer_key(raw.decode("ascii").strip())
    except (OSError, UnicodeDecodeError, checkpoint.CheckpointError) as exc:
        raise NoteKeyError(f"{path}: not a readable note signer key ({type(exc).__name__})") from None
    if name != origin:
        # A log's key is named after its origin; serving another log's key would make its checkpoints unverifiable.
        raise NoteKeyError(f"{path} is the key of log {name!r}, not of {origin!r}: set DLNUF_LOG_ORIGIN or "
                           "DLNUF_LOG_KEY to match")
    return NoteSigner(name, key)


# -- Node store ---------------------------------------------------------------------------------------------------


class PgNodeStore:
    """A `merkle.NodeReader` over `tlog_nodes`: a whole proof is one indexed query."""

    def __init__(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        self._conn = conn

    async def get_nodes(self, ids: Sequence[merkle.NodeId], /) -> list[bytes]:
        if not ids:
            return []
        rows = await self._conn.fetch(_q()["tlog_nodes_get"], [n.level for n in ids], [n.index for n in ids])
        found = {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}
        try:
            return [found[(n.level, n.index)] for n in ids]
        except KeyError as exc:
            raise merkle.MissingNodeError(f"no stored node {exc.args[0]}") from None


async def write_nodes(conn: asyncpg.Connection, nodes: Sequence[tuple[merkle.NodeId, bytes]]) -> None:
    # COPY: a round of a thousand leaves writes about two thousand nodes, in one round trip.
    await conn.copy_records_to_table("tlog_nodes", records=[(n.level, n.index, h) for n, h in nodes],
                                     columns=["level", "idx", "hash"])


# -- Stored data --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    note: str
    created_at: datetime

    @classmethod
    def of(cls, row: asyncpg.Record) -> StoredCheckpoint:
        return cls(size=row["size"], note=row["note"], created_at=row["created_at"])


@dataclass(frozen=True, slots=True)
class Pruned:
    entry_id: str
    logged_at: datetime
    pruned_at: datetime
    leaf_data: bytes | None = None
    """A v2 entry's public leaf, kept by the tombstone: it must hash to the stored leaf."""
    habilitation_id: str | None = None
    habilitation_retention: str | None = None
    """A v1 entry's retention as the registry now has it (a v1 leaf does not carry its own)."""


@dataclass(frozen=True, slots=True)
class LoggedRow:
    """What the database holds for one leaf index: the stored leaf, and the row or the tombstone (neither: the
    row was deleted). An index can come more than once if someone tampered with the indices."""

    index: int
    stored_leaf: bytes | None
    entry: dict[str, JsonValue] | None
    pruned: Pruned | None

    def to_json(self) -> dict[str, Any]:
        p = self.pruned
        return {
            "index": self.index,
            "leaf_hash": b64(self.stored_leaf) if self.stored_leaf is not None else None,
            "entry": self.entry,
            "pruned": None if p is None else {
                "entry_id": p.entry_id, "logged_at": timestamp(p.logged_at), "pruned_at": timestamp(p.pruned_at),
                "leaf_data": None if p.leaf_data is None else b64(p.leaf_data), "habilitation_id": p.habilitation_id,
                "habilitation_retention": p.habilitation_retention},
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LoggedRow:
        """Parse `to_json`'s output (from a broker the caller does not trust: shapes are checked, the caller
        checks the content)."""
        index, leaf, entry, pruned = raw.get("index"), raw.get("leaf_hash"), raw.get("entry"), raw.get("pruned")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError("index is not a non-negative integer")
        if entry is not None and not isinstance(entry, dict):
            raise ValueError("entry is not an object")
        parsed = None
        if pruned is not None:
            if not isinstance(pruned, dict):
                raise ValueError("pruned is not an object")
            data = pruned.get("leaf_data")
            parsed = Pruned(str(pruned["entry_id"]), datetime.fromisoformat(str(pruned["logged_at"])),
                            datetime.fromisoformat(str(pruned["pruned_at"])),
                            None if data is None else base64.b64decode(str(data), validate=True),
                            _opt_str(pruned.get("habilitation_id")), _opt_str(pruned.get("habilitation_retention")))
        return cls(index=index, stored_leaf=None if leaf is None else base64.b64decode(str(leaf), validate=True),
                   entry=entry, pruned=parsed)


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


async def logged_rows(conn: asyncpg.Connection | asyncpg.Pool, start: int, end: int) -> list[LoggedRow]:
    out = []
    found = await conn.fetch(_q()["tlog_range"], start, end)
    strays = [r["stray_id"] for r in found if r["stray_id"] is not None]
    moved = {r["id"]: r for r in await conn.fetch(_q()["tlog_rows_by_id"], strays)} if strays else {}
    for r in found:
        pruned = None
        if r["pruned_entry_id"] is not None:
            data = r["pruned_leaf_data"]
            pruned = Pruned(str(r["pruned_entry_id"]), r["pruned_logged_at"], r["pruned_at"],
                            None if data is None else bytes(data), r["pruned_habilitation"],
                            r["pruned_habilitation_retention"])
        out.append(LoggedRow(
            index=r["log_index"],
            stored_leaf=bytes(r["stored_leaf"]) if r["stored_leaf"] is not None else None,
            entry=(entry_document(r) if r["id"] is not None
                   else entry_document(moved[r["stray_id"]]) if r["stray_id"] in moved else None),
            pruned=pruned,
        ))
    return out


@dataclass(frozen=True, slots=True)
class JournalFilter:
    since: datetime | None = None
    until: datetime | None = None
    consumer: str | None = None
    dataset: str | None = None
    limit: int = 500


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One entry about a subject. `index` and `proof` are None until it is integrated; the proof is against the
    journal's checkpoint."""

    entry: dict[str, JsonValue]
    leaf_hash: bytes
    index: int | None
    proof: list[bytes] | None
    payload_salt: bytes | None = None
    """The salt of a v2 entry's payload commitment: the citizen's, as the consumer's."""


@dataclass(frozen=True, slots=True)
class Journal:
    checkpoint: StoredCheckpoint
    entries: list[JournalEntry]
    truncated: bool


@dataclass(frozen=True, slots=True)
class EntryProof:
    index: int
    tree_size: int
    leaf_hash: bytes
    proof: list[bytes]
    checkpoint: str | None
    """The signed checkpoint of `tree_size`, if one was published at exactly that size."""


@dataclass(frozen=True, slots=True)
class PrunedEntry:
    index: int
    entry_id: str
    logged_at: datetime
    partition: str | None = None
    """The monthly partition dropped whole with this entry; None for an entry deleted on its own."""


# -- The log ------------------------------------------------------------------------------------------------------


class TransparencyLog:
    def __init__(self, pool: asyncpg.Pool, signer: NoteSigner, *, max_merge_delay: float, batch: int = 1000,
                 metrics: Metrics | None = None, witness_quorum: int = 0) -> None:
        self.pool = pool
        self.witness_quorum = witness_quorum
        """Proofs for consumers and citizens lead to the latest checkpoint this many witnesses cosigned."""
        self.signer = signer
        self.origin = signer.name
        self.max_merge_delay = math.ceil(max_merge_delay)
        self.batch = batch
        self.metrics = metrics
        self._warned_default = False

    # Sequencing ------------------------------------------------------------------------------------------------

    async def integrate(self, *, wait: bool = False) -> int:
        """One round: integrate up to `batch` committed rows; 0 when there are none or another process holds the
        round (with `wait`, once that process's round is over, this one is done)."""
        q = _q()
        async with self.pool.acquire() as conn, conn.transaction():
            size = await conn.fetchval(q["tlog_head_lock_wait" if wait else "tlog_head_lock"])
            if size is None:
                return 0
            rows = await conn.fetch(q["tlog_pending"], self.batch)
            if not rows:
                return 0
            edge = await PgNodeStore(conn).get_nodes(merkle.right_edge_ids(size))
            # The leaf the committing broker stored with the row (its receipt's; `log verify` recomputes each):
            # only it is read, not the entry's columns. Rows from before migration 0028 have none, and are read
            # whole and canonicalized here, off the event loop.
            # An entry is (id, logged_at): id alone is unique only within a month.
            leaves_of: dict[tuple[object, object], bytes] = {
                (r["id"], r["logged_at"]): r["leaf_hash"] for r in rows if r["leaf_hash"] is not None}
            if len(leaves_of) < len(rows):
                bare = [r for r in rows if (r["id"], r["logged_at"]) not in leaves_of]
                old = await conn.fetch(q["tlog_pending_entries"], [r["id"] for r in bare],
                                       [r["logged_at"] for r in bare])
                leaves_of.update(await asyncio.to_thread(
                    lambda: {(r["id"], r["logged_at"]): leaf_of(entry_document(r)) for r in old}))
            result = merkle.append_leaves(size, edge, [leaves_of[(r["id"], r["logged_at"])] for r in rows])
            await write_nodes(conn, result.nodes)
            await conn.execute(q["tlog_assign"], [r["id"] for r in rows], [r["logged_at"] for r in rows],
                               list(range(size, result.size)), [r["leaf_version"] == leaves.V1 for r in rows])
            await conn.execute(q["tlog_dequeue"], [r["seq"] for r in rows])
            await conn.execute(q["tlog_head_update"], result.size)
            await conn.execute(q["tlog_checkpoint_insert"], result.size,
                               self.signer.sign_checkpoint(result.size, result.root))
        if self.metrics is not None:
            now = time.time()
            for r in rows:
                latency = r["latency_us"] / 1e6 if r["latency_us"] is not None else r["latency_ms"] / 1000
                self.metrics.tlog_lag.observe(max(0.0, now - r["logged_at"].timestamp() - latency))
            self.metrics.tlog_size.set(result.size)
        return len(rows)

    async def drain(self, *, wait: bool = False) -> int:
        """Integrate until nothing is pending (or another process holds the round; with `wait`, until nothing is
        pending once it is over: a stopping process's last round)."""
        total = 0
        while (n := await self.integrate(wait=wait)) == self.batch:
            total += n
        return total + n

    async def ensure_checkpoint(self) -> None:
        """Sign the current size if no checkpoint names it (a new log's empty tree): the latest checkpoint URL
        answers from the first start."""
        q = _q()
        async with self.pool.acquire() as conn, conn.transaction():
            size = await conn.fetchval(q["tlog_head_lock"])
            if size is None or await conn.fetchval(q["tlog_checkpoint_at"], size) is not None:
                return
            root = await merkle.tree_root(size, PgNodeStore(conn))
            await conn.execute(q["tlog_checkpoint_insert"], size, self.signer.sign_checkpoint(size, root))

    async def observe(self) -> None:
        row = await self.pool.fetchrow(_q()["tlog_status"])
        if row["default_rows"] and not self._warned_default:
            log.warning("access-log rows in the default partition: their month has no partition; run `python -m "
                        "broker log partitions` as the owner role (docs/operations.md)", rows=row["default_rows"])
        self._warned_default = bool(row["default_rows"])
        if self.metrics is not None:
            self.metrics.log_default_rows.set(row["default_rows"])
            oldest = row["oldest_pending"]
            self.metrics.tlog_pending_age.set(0 if oldest is None else max(0.0, time.time() - oldest.timestamp()))
            self.metrics.tlog_size.set(row["size"])

    async def run(self, interval: float) -> None:
        """The integrator of this process: a round every `interval` seconds, draining backlogs at once."""
        started = False
        while True:
            try:
                if not started:  # the database may have been down when the process started
                    await self.ensure_checkpoint()
                    started = True
                await self.drain()
                await self.observe()
            except asyncio.CancelledError:
                raise
            except db.DB_ERRORS as exc:
                log.warning("log integration interrupted", error=f"{type(exc).__name__}: {exc}")
            except Exception:
                # e.g. a row that cannot be canonicalized: keep trying, and the pending-age gauge will alert
                log.exception("log integration failed")
            await asyncio.sleep(interval)

    # Promises -------------------------------------------------------------------------------------------------

    def promise(self, entry_id: str, leaf: bytes, logged_at: str) -> str:
        """The signed inclusion promise (docs/transparency-log.md): this log will include this leaf, for this entry,
        within `max_merge_delay` seconds of `logged_at`."""
        lines = [PROMISE_FORMAT, self.origin, entry_id, b64(leaf), logged_at, str(self.max_merge_delay)]
        return self.signer.sign_note("".join(line + "\n" for line in lines))

    def receipt(self, entry: LogEntry) -> dict[str, JsonValue]:
        """What a 200 exchange answer carries about its committed log entry: the entry, its leaf hash, and the
        signed promise."""
        document, leaf = entry.document_and_leaf()
        receipt: dict[str, JsonValue] = {
            "entry": document, "leaf_hash": b64(leaf),
            "inclusion_promise": self.promise(str(entry.id), leaf, str(document["logged_at"]))}
        if entry.payload_salt is not None:
            # the salt of the payload commitment: with the data, it proves what was released (never in the leaf)
            receipt["payload_salt"] = b64(entry.payload_salt)
        return receipt

    # Reading --------------------------------------------------------------------------------------------------

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = await self.pool.fetchrow(_q()["tlog_checkpoint_latest"])
        return None if row is None else StoredCheckpoint.of(row)

    async def witnessed_checkpoint(self, conn: asyncpg.Connection | asyncpg.Pool | None = None
                                   ) -> StoredCheckpoint | None:
        """The latest checkpoint with the witness quorum's cosignatures (the latest of all without witnesses)."""
        row = await (conn or self.pool).fetchrow(_q()["tlog_checkpoint_latest_cosigned"], self.witness_quorum)
        return None if row is None else StoredCheckpoint.of(row)

    async def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        row = await self.pool.fetchrow(_q()["tlog_checkpoint_at"], size)
        return None if row is None else StoredCheckpoint.of(row)

    async def checkpoints_after(self, size: int, limit: int) -> list[StoredCheckpoint]:
        return [StoredCheckpoint.of(r) for r in await self.pool.fetch(_q()["tlog_checkpoints_after"], size, limit)]

    async def _published_size(self) -> int:
        latest = await self.latest_checkpoint()
        return 0 if latest is None else latest.size

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        published = await self._published_size()
        if size > published:
            raise BeyondTree(f"tree_size {size} is beyond the latest checkpoint ({published})")
        if not 0 <= index < size:
            raise BeyondTree(f"index {index} is not a leaf of the tree of size {size}")
        return await merkle.inclusion_proof(index, size, PgNodeStore(self.pool))

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        published = await self._published_size()
        if second > published:
            raise BeyondTree(f"tree size {second} is beyond the latest checkpoint ({published})")
        if not 0 < first <= second:
            raise BeyondTree("a consistency proof needs 0 < first <= second")
        return await merkle.consistency_proof(first, second, PgNodeStore(self.pool))

    async def entry_index(self, entry_id: uuid.UUID, logged_at: datetime | None = None) -> int:
        """The leaf index of the entry `entry_id` logged at `logged_at`, pruned or not; without `logged_at`, of the
        only entry with that id, integrated or not (`AmbiguousEntry` when there are several). `UnknownEntry` or
        `NotYetIntegrated` otherwise."""
        found = await self.pool.fetch(_q()["tlog_entry_index"], entry_id, logged_at)
        if len(found) > 1:
            raise AmbiguousEntry(f"several entries have id {entry_id}: name the one you mean by its logged_at "
                                 "(as in its receipt or journal)")
        if not found:
            raise UnknownEntry(f"no entry {entry_id}" if logged_at is None
                               else f"no entry {entry_id} logged at {timestamp(logged_at)}")
        if found[0]["log_index"] is None:
            raise NotYetIntegrated(f"entry {entry_id} is not integrated yet")
        return int(found[0]["log_index"])

    async def entry_proof(self, entry_id: uuid.UUID, tree_size: int | None = None, *,
                          logged_at: datetime | None = None) -> EntryProof:
        """An entry's leaf hash and inclusion proof in the tree of `tree_size` (default: the latest checkpoint's),
        with one query for the leaf and the proof's nodes. The entry as `entry_index` finds it."""
        index = await self.entry_index(entry_id, logged_at)
        found = await (self.witnessed_checkpoint() if tree_size is None else self.checkpoint_at(tree_size))
        size = tree_size if tree_size is not None else (0 if found is None else found.size)
        if index >= size:
            raise NotYetIntegrated(f"entry {entry_id} is not in the tree of size {size} yet")
        published = await self._published_size()
        if size > published:
            raise BeyondTree(f"tree_size {size} is beyond the latest checkpoint ({published})")
        plan = merkle.plan_inclusion(index, size)
        leaf, *hashes = await PgNodeStore(self.pool).get_nodes([merkle.NodeId(0, index), *plan.node_ids])
        return EntryProof(index, size, leaf, plan.assemble(hashes), None if found is None else found.note)

    async def public_leaf(self, index: int) -> bytes | None:
        """The public leaf of the v2 entry at `index` (from its row, or its tombstone once pruned); None for a v1
        entry."""
        row = await self.pool.fetchrow(_q()["tlog_public_leaf"], index)
        if row is None:
            return None
        if row["pruned_leaf_data"] is not None:
            return bytes(row["pruned_leaf_data"])
        return leaf_data(entry_document(row)) if row["leaf_version"] == 2 else None

    async def rows(self, start: int, end: int) -> list[LoggedRow]:
        """Leaf indices [start, end) of the published tree, for auditors."""
        published = await self._published_size()
        if not 0 <= start <= end <= published:
            raise BeyondTree(f"entries [{start}, {end}) are not within the published tree (size {published})")
        return await logged_rows(self.pool, start, end)

    async def journal(self, subject_key: str, wanted: JournalFilter) -> Journal:
        """One subject's entries, each with its inclusion proof in the tree of the latest checkpoint, read from
        one snapshot. Everything a citizen portal needs given a subject key; it knows nothing of HTTP."""
        q = _q()
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            found = await self.witnessed_checkpoint(conn)
            if found is None:
                raise BeyondTree("the log has no checkpoint yet")
            cp = found
            rows = await conn.fetch(q["tlog_journal"], subject_key, wanted.since, wanted.until, wanted.consumer,
                                    wanted.dataset, wanted.limit + 1)
            rows, truncated = rows[: wanted.limit], len(rows) > wanted.limit
            plans = {r["log_index"]: merkle.plan_inclusion(r["log_index"], cp.size)
                     for r in rows if r["log_index"] is not None and r["log_index"] < cp.size}
            # Every proof's nodes in one query: a journal costs one round trip, not one per entry.
            ids = list(dict.fromkeys(n for plan in plans.values() for n in plan.node_ids))
            hashes = dict(zip(ids, await PgNodeStore(conn).get_nodes(ids), strict=True))
        entries = []
        for r in rows:
            document = entry_document(r)
            plan = plans.get(r["log_index"])
            proof = None if plan is None else plan.assemble([hashes[n] for n in plan.node_ids])
            salt = r["payload_salt"]
            entries.append(JournalEntry(document, leaf_of(document), r["log_index"] if plan else None, proof,
                                        None if salt is None else bytes(salt)))
        return Journal(cp, entries, truncated)


# -- Retention ----------------------------------------------------------------------------------------------------


async def prune(pool: asyncpg.Pool, *, now: datetime, default_retention: str, dry_run: bool = False,
                batch: int = 1000) -> list[PrunedEntry]:
    """Remove the bodies of integrated entries past their retention: the one a v2 entry carries, else its
    habilitation's, else `default_retention`. Each leaf stays in the tree and a tombstone names the entry, so proofs
    and `log verify` still hold. A monthly partition whose every entry is past its retention goes whole (its
    tombstones, then DETACH and DROP: no row-by-row delete); the other entries one by one. Returns what was (or,
    with `dry_run`, would be) pruned."""
    whole = await _prune_partitions(pool, now=now, default_retention=default_retention, dry_run=dry_run,
                                    batch=batch)
    single = await _prune_rows(pool, now=now, default_retention=default_retention, dry_run=dry_run, batch=batch)
    if dry_run:  # nothing was dropped: the row path saw the whole partitions' entries too
        listed = {p.entry_id for p in whole}
        single = [p for p in single if p.entry_id not in listed]
    return whole + single


async def _write_tombstones(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record], now: datetime) -> None:
    # A v2 tombstone keeps the public leaf: its retention stays checkable, its entry bundle unchanged.
    public = [leaf_data(entry_document(r)) if r["leaf_version"] == 2 else None for r in rows]
    await conn.execute(_q()["tlog_prune_tombstones"], [r["log_index"] for r in rows], [r["id"] for r in rows],
                       [r["logged_at"] for r in rows], [r["habilitation_id"] for r in rows], now, public)


async def _prune_partitions(pool: asyncpg.Pool, *, now: datetime, default_retention: str, dry_run: bool,
                            batch: int) -> list[PrunedEntry]:
    """Months that ended, and hold nothing to keep, go whole: one transaction each, which writes every
    tombstone, then lets `access_log_drop_partition` check them, remove the evidence and the outbox rows, detach
    and drop. The detach locks access_log for the end of that transaction only."""
    q = _q()
    done: list[PrunedEntry] = []
    for part in await partitions.listing(pool):
        if part.lower is None or part.upper is None or part.upper > now:
            continue
        async with pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(q["partition_keeps_something"], part.lower, part.upper, now, default_retention):
                continue
            found: list[PrunedEntry] = []
            after: tuple[datetime | None, uuid.UUID | None] = (None, None)
            while rows := await conn.fetch(q["partition_rows"], part.lower, part.upper, *after, batch):
                after = (rows[-1]["logged_at"], rows[-1]["id"])
                found.extend(PrunedEntry(r["log_index"], str(r["id"]), r["logged_at"], part.name) for r in rows)
                if not dry_run:
                    await _write_tombstones(conn, rows, now)
            if not dry_run:
                await conn.fetchval(q["partition_drop"], part.name)
        log.info("access-log partition pruned" if not dry_run else "access-log partition prunable",
                 partition=part.name, entries=len(found))
        done.extend(found)
    return done


async def _prune_rows(pool: asyncpg.Pool, *, now: datetime, default_retention: str, dry_run: bool,
                      batch: int) -> list[PrunedEntry]:
    q = _q()
    done: list[PrunedEntry] = []
    while True:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(q["tlog_prune_serial"])
            rows = await conn.fetch(q["tlog_prune_candidates"], now, default_retention,
                                    2**62 if dry_run else batch)
            found = [PrunedEntry(r["log_index"], str(r["id"]), r["logged_at"]) for r in rows]
            if not dry_run and rows:
                ids, times = [r["id"] for r in rows], [r["logged_at"] for r in rows]
                await _write_tombstones(conn, rows, now)
                await conn.execute(q["tlog_prune_evidence"], ids, times)
                await conn.execute(q["tlog_prune_outbox"], ids, times)
                await conn.execute(q["tlog_prune_delete"], ids, times)
        done.extend(found)
        if dry_run or len(rows) < batch:
            return done


TLOG = web.AppKey("tlog", TransparencyLog)
