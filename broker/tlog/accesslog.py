"""The access log: one row per exchange attempt, refused ones included.

Invariant: the pipeline commits an entry before any data leaves; `commit` either returns after COMMIT or raises
`LogUnavailable`, and then the caller answers 503 with no data. A released entry's notification outbox row, and the
exchange's evidence (`broker.tlog.evidence`), are committed in the same transaction: a citizen is never told of an
exchange that was not logged, nor not told of one that was, and no entry is without its evidence.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import orjson
import structlog

from broker.errors import LogUnavailable
from broker.registry import Habilitation
from broker.storage import db, ids
from broker.storage.batch import CONNECTION_ERRORS, RowsRefused
from broker.tlog import leaves
from broker.tlog.evidence import COLUMNS as EVIDENCE_COLUMNS
from broker.tlog.evidence import Evidence
from broker.tlog.jcs import JsonValue

log = structlog.get_logger(__name__)


# The columns `args()` fills, in its order: the fields of both leaf formats (`broker.tlog.leaves`), the format,
# and what the row keeps outside any leaf (the dataset parameters).
COLUMNS = (
    "id", "logged_at", "request_id", "consumer", "kid", "dataset", "dataset_version", "purpose", "recipient",
    "habilitation_id", "legal_basis_type", "legal_basis_title", "legal_basis_url", "fields_requested",
    "fields_released", "outcome", "problem_type", "http_status", "latency_ms", "payload_sha256", "subject_key",
    "leaf_version", "retention", "latency_us", "payload_salt", "payload_commitment", "request_signature_sha256",
    "call_context", "call_object", "parameters",
)


@dataclass(slots=True)
class LogEntry:
    """Filled in step by step as the pipeline learns more, then committed once."""

    request_id: str
    id: uuid.UUID = field(default_factory=ids.uuid7)  # time-ordered: the log's indexes grow at their right edge
    logged_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    consumer: str | None = None
    kid: str | None = None
    dataset: str | None = None
    dataset_version: int | None = None
    purpose: str | None = None
    recipient: str | None = None
    habilitation: Habilitation | None = None
    fields_requested: tuple[str, ...] = ()
    fields_released: tuple[str, ...] = ()
    outcome: str = "refused"
    problem_type: str | None = None
    http_status: int = 0
    latency_ms: float = 0.0
    payload_sha256: str | None = None
    subject_key: str | None = None
    leaf_version: int = leaves.V2
    default_retention: str = "P1Y"
    """The retention of an entry without a habilitation (DLNUF_LOG_RETENTION): it goes into a v2 leaf."""
    payload_salt: bytes | None = None
    payload_commitment: str | None = None
    request_signature_sha256: str | None = None
    # The call context the consumer gave (API Entreprise's `context` and `object`): not in the leaf, which already
    # commits to the request signature, hence to the body that carries them.
    call_context: str | None = None
    call_object: str | None = None
    parameters: dict[str, object] | None = None
    """The dataset parameters the request sent (None: none); in the row, not in the leaf, for the same reason
    (migration 0020)."""
    _leaf: tuple[tuple[object, ...], dict[str, JsonValue], bytes] | None = field(
        default=None, repr=False, compare=False)

    @property
    def retention(self) -> str:
        return self.habilitation.retention if self.habilitation is not None else self.default_retention

    def record_payload(self, payload: bytes) -> None:
        """Record the released payload (its JCS bytes): a fresh salt and the salted commitment in v2, the plain
        SHA-256 in v1."""
        if self.leaf_version == leaves.V2:
            self.payload_salt = secrets.token_bytes(leaves.SALT_SIZE)
            self.payload_commitment = leaves.payload_commitment(self.payload_salt, payload)
            self.payload_sha256 = None
        else:
            self.payload_sha256 = hashlib.sha256(payload).hexdigest()

    def clear_payload(self) -> None:
        self.payload_sha256 = self.payload_salt = self.payload_commitment = None

    def bind_request(self, signature: bytes) -> None:
        """Commit the entry to the consumer's verified request signature (v2): the evidence is then bound to it."""
        self.request_signature_sha256 = hashlib.sha256(signature).hexdigest()

    def args(self) -> tuple[object, ...]:
        hab = self.habilitation
        v2 = self.leaf_version == leaves.V2
        latency_us = round(self.latency_ms * 1000)
        return (
            self.id, self.logged_at, self.request_id, self.consumer, self.kid, self.dataset, self.dataset_version,
            self.purpose, self.recipient,
            hab.id if hab else None,
            hab.legal_basis.type if hab else None,
            hab.legal_basis.title if hab else None,
            hab.legal_basis.url if hab else None,
            list(self.fields_requested), list(self.fields_released), self.outcome, self.problem_type,
            self.http_status, None if v2 else self.latency_ms, self.payload_sha256, self.subject_key,
            self.leaf_version, self.retention if v2 else None, latency_us if v2 else None,
            self.payload_salt if v2 else None, self.payload_commitment if v2 else None,
            self.request_signature_sha256 if v2 else None, self.call_context, self.call_object,
            self.parameters or None,
        )

    def row(self) -> dict[str, object]:
        """The row as committed, by column name."""
        return dict(zip(COLUMNS, self.args(), strict=True))

    def leaf(self) -> bytes:
        """The RFC 9162 leaf hash of the entry as it stands: its receipt's, and the row's `leaf_hash` (migration
        0028). Computed once per state of the entry: a change after a receipt (a refusal at the last step) gives
        the leaf of what is then committed."""
        return self.document_and_leaf()[1]

    def document_and_leaf(self) -> tuple[dict[str, JsonValue], bytes]:
        """The entry's document (its leaf format's fields) and its leaf hash, computed once per state; the document
        is shared: read it, do not change it."""
        args = self.args()
        if self._leaf is None or self._leaf[0] != args:
            document = leaves.entry_document(dict(zip(COLUMNS, args, strict=True)))
            self._leaf = (args, document, leaves.leaf_of(document))
        return self._leaf[1], self._leaf[2]


def _json_value(value: object) -> str:
    # orjson writes uuids, aware datetimes (RFC 3339, microseconds), lists and dicts itself; bytea goes as PostgreSQL's
    # hex input form, which jsonb_populate_recordset casts back to the same bytes.
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    raise TypeError(f"{type(value).__name__} is not a column value")


def _json_rows(columns: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    try:
        return orjson.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=_json_value).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:  # e.g. a lone surrogate in a string: about the rows
        raise RowsRefused(str(exc)) from exc


async def write(conn: asyncpg.Connection, items: Sequence[tuple[LogEntry, Evidence | None]]) -> None:
    """Write entries, the outbox rows of the released ones and their evidence with one statement (tlog.sql
    `log_batch_insert`), outside any explicit transaction: one round trip, one implicit transaction and its
    synchronous commit, all or nothing. Each row carries its leaf hash (`LogEntry.leaf`)."""
    entries = _json_rows((*COLUMNS, "leaf_hash"), [(*entry.args(), entry.leaf()) for entry, _ in items])
    evidence = _json_rows(EVIDENCE_COLUMNS, [ev.args() for _, ev in items if ev is not None])
    await conn.fetchrow(db.queries("broker.tlog", "tlog.sql")["log_batch_insert"], entries, evidence)


_COMMIT_ERRORS: tuple[type[BaseException], ...] = (*db.DB_ERRORS, RowsRefused)


async def commit(pool: asyncpg.Pool, entry: LogEntry, evidence: Evidence | None = None) -> None:
    """Commit the entry, its outbox row if released, and the exchange's evidence, in one transaction (the pipeline
    goes through `broker.tlog.groupcommit`, which writes concurrent exchanges' entries together)."""
    try:
        async with pool.acquire() as conn:
            try:
                await write(conn, [(entry, evidence)])
            except CONNECTION_ERRORS:
                conn.terminate()  # as in db.fetchval: a connection the server dropped must not go back to the pool
                raise
    except _COMMIT_ERRORS as exc:
        log.error("access log commit failed", error=f"{type(exc).__name__}: {exc}", entry_id=str(entry.id))
        raise LogUnavailable("access log commit failed") from exc


# The consent screen's preview (`broker.citizen.oauth`) is logged like any access, under the administration that
# asked, with these purpose and recipient: the values were shown to the citizen alone, nothing was transmitted.
PREVIEW_PURPOSE = "apercu-consentement"
CITIZEN_RECIPIENT = "citoyen"


def is_preview(purpose: object, recipient: object) -> bool:
    return purpose == PREVIEW_PURPOSE and recipient == CITIZEN_RECIPIENT
