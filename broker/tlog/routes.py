"""HTTP routes of the transparency log and the citizen journal, and the context running the integrator and outbox.

Public (hashes and signed notes only): the log's description and key, checkpoints, inclusion and consistency
proofs, an entry's proof by id. Signed (RFC 9421, as exchanges): entries by range for the organisations in
`DLNUF_LOG_AUDITORS`, since entries name consumers, subject keys and payload hashes; a citizen's journal for the
organisations in `DLNUF_JOURNAL_CLIENTS`, until citizens log in themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import io
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web

from adapters.identity import SubjectError
from adapters.subjects import Subject, parse_subject, subject_key
from broker.errors import InvalidRequest, InvalidSubject, NotAuthorized, TooManyAttempts
from broker.service import contract
from broker.service.attempts import source_of
from broker.service.middleware import VERIFIED
from broker.service.problems import HTTP_PROBLEMS, REQUEST_ID, problem_for, problem_response
from broker.service.state import STATE
from broker.service.urls import target_uri
from broker.signing import messages
from broker.storage import db
from broker.storage.db import DatabaseUnavailable
from broker.tlog import evidence, outbox, tiles, tlogproof, witness
from broker.tlog.groupcommit import LOG_WRITER, GroupCommit
from broker.tlog.log import (
    PROMISE_FORMAT,
    TLOG,
    AmbiguousEntry,
    BeyondTree,
    Journal,
    JournalFilter,
    NoteSigner,
    NotYetIntegrated,
    PgNodeStore,
    TransparencyLog,
    UnknownEntry,
    b64,
    load_or_create_note_key,
)

log = structlog.get_logger(__name__)

MAX_ENTRIES = 1000
MAX_CHECKPOINTS = 1000
MAX_JOURNAL = 5000
_LEAP_SECOND = re.compile(r"(T[0-9]{2}:[0-9]{2}):60")
_MAX_INT = 2**63 - 1
NOTE_TYPE = "text/plain; charset=utf-8"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DB_FAILURES: tuple[type[BaseException], ...] = (DatabaseUnavailable, *db.DB_ERRORS)


def _answering_problems(handler: Handler) -> Handler:
    """Render this module's refusals as problems (the problem middleware knows only the broker's errors)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        request_id = request.get(REQUEST_ID)
        try:
            return await handler(request)
        except (messages.SignatureRejected, TooManyAttempts) as exc:
            # before any signature verified: an unauthenticated attempt, stored and counted as such
            return request.app[STATE].attempts.refuse(request, exc, request_id=request_id or "-")
        except NotAuthorized as exc:
            log.warning("log request not authorized", reason=exc.reason)
            return problem_response(problem_for(exc), request_id=request_id)
        except (UnknownEntry, NotYetIntegrated) as exc:
            return problem_response(HTTP_PROBLEMS[404], detail=str(exc), request_id=request_id)
        except (BeyondTree, AmbiguousEntry) as exc:
            return problem_response(problem_for(InvalidRequest(str(exc))), detail=str(exc), request_id=request_id)
        except _DB_FAILURES as exc:
            log.warning("log request failed", error=f"{type(exc).__name__}: {exc}")
            return problem_response(problem_for(DatabaseUnavailable()), request_id=request_id)

    return wrapped


def _int_param(request: web.Request, name: str, default: int | None = None, *, low: int = 0) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise InvalidRequest(f"query parameter {name} is required")
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= _MAX_INT:
        raise InvalidRequest(f"query parameter {name} must be an integer from {low} to {_MAX_INT}")
    return int(raw)


async def _verified(request: web.Request, body: bytes, allowed: frozenset[str], what: str) -> messages.VerifiedRequest:
    """The request's verified signature, from an organisation in `allowed` (an empty set refuses everyone)."""
    state = request.app[STATE]
    state.attempts.verify_source(source_of(request))
    verified = await messages.verify_request(
        method=request.method, target_uri=target_uri(request, state.config.public_url), headers=request.headers,
        body=body, lookup_key=state.lookup_key, claim_nonce=state.claim_nonce, now=datetime.now(UTC),
        max_skew=state.config.max_skew,
    )
    request[VERIFIED] = verified  # the signed answer is then bound to this request
    if verified.organisation not in allowed:
        raise NotAuthorized("not authorized", reason=f"{verified.organisation} may not read {what}")
    return verified


def _logged_at(request: web.Request) -> datetime | None:
    """The entry's `logged_at` (its receipt's, or its journal line's), which names it when a row in another month
    reuses its id."""
    return _moment(request.query.get("logged_at"), "logged_at")


def _proof_json(proof: list[bytes]) -> list[str]:
    return [b64(h) for h in proof]


# -- Public routes ----------------------------------------------------------------------------------------------


@_answering_problems
async def log_info(request: web.Request) -> web.Response:
    tlog = request.app[TLOG]
    latest = await tlog.latest_checkpoint()
    return web.json_response({
        "origin": tlog.origin,
        "verifier_key": tlog.signer.verifier.vkey(),
        "max_merge_delay": tlog.max_merge_delay,
        "tree_size": 0 if latest is None else latest.size,
        "inclusion_promise_format": PROMISE_FORMAT,
        # C2SP tlog-tiles under <prefix>/tile/..., <prefix>/checkpoint; entry bundles from this index on
        "tiles_prefix": "/v1/log",
        "public_entries_from": await tiles.public_from(tlog.pool),
        "witnesses": [w.cosigner.vkey() for w in request.app[WITNESSES]],
        "witness_quorum": tlog.witness_quorum,
        "tlog_proof_format": tlogproof.HEADER,
    })


@_answering_problems
async def latest_checkpoint(request: web.Request) -> web.Response:
    latest = await request.app[TLOG].latest_checkpoint()
    if latest is None:
        return problem_response(HTTP_PROBLEMS[404], detail="the log has no checkpoint yet")
    return web.Response(text=latest.note, content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


@_answering_problems
async def checkpoint_at(request: web.Request) -> web.Response:
    raw = request.match_info["size"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > _MAX_INT:
        raise InvalidRequest("the size is a non-negative integer")
    found = await request.app[TLOG].checkpoint_at(int(raw))
    if found is None:
        return problem_response(HTTP_PROBLEMS[404], detail=f"no checkpoint at size {raw}")
    # The signed text never changes; with witnesses, their cosignature lines may still be appended to it.
    cache = "public, max-age=60" if request.app[WITNESSES] else "public, max-age=31536000, immutable"
    return web.Response(text=found.note, content_type="text/plain", charset="utf-8", headers={"Cache-Control": cache})


@_answering_problems
async def list_checkpoints(request: web.Request) -> web.Response:
    """Checkpoints of size `start` and up, oldest first: auditors replay the log's history from here."""
    start = _int_param(request, "start", 0)
    limit = min(_int_param(request, "limit", 100, low=1), MAX_CHECKPOINTS)
    found = await request.app[TLOG].checkpoints_after(start - 1, limit)
    return web.json_response({"checkpoints": [
        {"size": c.size, "note": c.note, "created_at": c.created_at.isoformat()} for c in found]})


@_answering_problems
async def inclusion_proof(request: web.Request) -> web.Response:
    tlog = request.app[TLOG]
    index = _int_param(request, "index")
    size = _int_param(request, "tree_size", low=1)
    proof = await tlog.inclusion_proof(index, size)
    return web.json_response({"index": index, "tree_size": size, "inclusion_proof": _proof_json(proof)})


@_answering_problems
async def consistency_proof(request: web.Request) -> web.Response:
    first = _int_param(request, "first", low=1)
    second = _int_param(request, "second", low=1)
    proof = await request.app[TLOG].consistency_proof(first, second)
    return web.json_response({"first": first, "second": second, "consistency_proof": _proof_json(proof)})


@_answering_problems
async def entry_proof(request: web.Request) -> web.Response:
    """An entry's inclusion proof by its id and `logged_at`: what a consumer holding an inclusion promise asks
    for."""
    try:
        entry_id = uuid.UUID(request.match_info["entry_id"])
    except ValueError:
        raise InvalidRequest("the entry id is a UUID") from None
    size = _int_param(request, "tree_size", low=1) if "tree_size" in request.query else None
    found = await request.app[TLOG].entry_proof(entry_id, size, logged_at=_logged_at(request))
    return web.json_response({
        "entry_id": str(entry_id), "index": found.index, "tree_size": found.tree_size,
        "leaf_hash": b64(found.leaf_hash), "inclusion_proof": _proof_json(found.proof), "checkpoint": found.checkpoint,
    })


_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


@_answering_problems
async def tile(request: web.Request) -> web.StreamResponse:
    """C2SP tlog-tiles: a hash tile, read from the node store, or an entry bundle of public leaves. Immutable."""
    tlog = request.app[TLOG]
    cache = request.app[TILE_CACHE]
    try:
        ref = tiles.parse_tile_path(request.match_info["level"], request.match_info["rest"])
        data = cache.get(ref.path)
        if data is None:
            latest = await tlog.latest_checkpoint()
            size = 0 if latest is None else latest.size
            if ref.level < 0:
                # Entry bundles SHOULD be compressed at the HTTP layer: once, when read, not at every request.
                data = gzip.compress(await tiles.entry_bundle(tlog.pool, ref, size), compresslevel=6, mtime=0)
            else:
                data = await tiles.hash_tile(tlog.pool, ref, size)
            cache.put(ref.path, data)
    except tiles.TileError as exc:
        return problem_response(HTTP_PROBLEMS[404], detail=str(exc), request_id=request.get(REQUEST_ID))
    headers = dict(_IMMUTABLE)
    if ref.level < 0:
        headers["Vary"] = "Accept-Encoding"
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():
            headers["Content-Encoding"] = "gzip"
        else:
            data = gzip.decompress(data)
    return web.Response(body=data, content_type="application/octet-stream", headers=headers)


@_answering_problems
async def entry_tlog_proof(request: web.Request) -> web.Response:
    """An entry's offline proof, C2SP tlog-proof: index, inclusion proof, the cosigned checkpoint; for a v2 entry
    its public leaf as extra data."""
    try:
        entry_id = uuid.UUID(request.match_info["entry_id"])
    except ValueError:
        raise InvalidRequest("the entry id is a UUID") from None
    tlog = request.app[TLOG]
    size = _int_param(request, "tree_size", low=1) if "tree_size" in request.query else None
    found = await tlog.entry_proof(entry_id, size, logged_at=_logged_at(request))
    if found.checkpoint is None:
        raise NotYetIntegrated(f"no checkpoint was signed at size {found.tree_size}")
    text = tlogproof.make(found.index, found.proof, found.checkpoint, await tlog.public_leaf(found.index))
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="{entry_id}.tlog-proof"'})


# -- Signed routes ----------------------------------------------------------------------------------------------


@_answering_problems
async def list_entries(request: web.Request) -> web.Response:
    """Entries [start, end) for auditors: the rows, pruned entries' tombstones, and the stored leaf hashes."""
    tlog = request.app[TLOG]
    await _verified(request, b"", request.app[STATE].config.log_auditors, "log entries")
    start = _int_param(request, "start")
    end = _int_param(request, "end")
    if end < start or end - start > MAX_ENTRIES:
        raise InvalidRequest(f"ask for start <= end, at most {MAX_ENTRIES} entries at a time")
    rows = await tlog.rows(start, end)
    return web.Response(body=orjson.dumps({"entries": [r.to_json() for r in rows]}), content_type="application/json")


def _moment(raw: object, name: str) -> datetime | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidRequest(f"{name} must be a date (YYYY-MM-DD) or an RFC 3339 date-time")
    try:
        if len(raw) == 10:
            return datetime.combine(date.fromisoformat(raw), datetime.min.time(), UTC)
        # RFC 3339 (the document's `date-time`) allows a lower-case t and z, and a leap second (read as :59)
        moment = datetime.fromisoformat(_LEAP_SECOND.sub(r"\1:59", raw.upper()))
    except ValueError:
        raise InvalidRequest(f"{name} must be a date (YYYY-MM-DD) or an RFC 3339 date-time") from None
    if moment.tzinfo is None:
        raise InvalidRequest(f"{name} must give its UTC offset (e.g. 2026-01-31T00:00:00Z)")
    try:
        # the driver sends it in UTC: 0001-01-01T00:00:00+01:00 is then before year 1, which it fails to encode,
        # and that failure read as the database's (503). Within years 1 to 9999 in UTC, timestamptz holds it.
        moment.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest(f"{name} is out of range: in UTC it must fall within years 1 to 9999") from None
    return moment


def _journal_request(body: bytes) -> tuple[Subject, JournalFilter, str]:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    # the shape is the published schema's (broker/service/contract.py); what follows reads values it let through
    try:
        contract.verify("JournalRequest", raw)
    except contract.ContractViolation as exc:
        if exc.path[:1] != ("subject",):
            raise InvalidRequest(str(exc)) from None
        try:  # its own message says more than "fails oneOf"
            parse_subject(raw["subject"])
        except SubjectError as detail:
            raise InvalidSubject(str(detail)) from None
        raise InvalidSubject(str(exc)) from None
    try:
        subject = parse_subject(raw["subject"])
    except SubjectError as exc:
        raise InvalidSubject(str(exc)) from None
    wanted = JournalFilter(since=_moment(raw.get("since"), "since"), until=_moment(raw.get("until"), "until"),
                           consumer=raw.get("consumer"), dataset=raw.get("dataset"), limit=raw.get("limit", 500))
    return subject, wanted, raw.get("format", "json")


CSV_COLUMNS = ("logged_at", "consumer", "consumer_name", "dataset", "dataset_version", "purpose", "recipient",
                "fields_requested", "fields_released", "legal_basis_type", "legal_basis_title", "legal_basis_url",
                "outcome", "problem_type", "payload_sha256", "id", "log_index", "tree_size", "leaf_hash",
                "inclusion_proof")


def journal_csv(journal: Journal, names: Mapping[str, str]) -> str:
    """A journal as RFC 4180 CSV, one line per entry (lists space-separated): also the citizen portal's export."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(CSV_COLUMNS)
    for e in journal.entries:
        values: dict[str, Any] = dict(e.entry)
        values.update(
            consumer_name=names.get(str(values.get("consumer")), ""), log_index=e.index,
            tree_size=journal.checkpoint.size if e.proof is not None else None, leaf_hash=b64(e.leaf_hash),
            inclusion_proof=" ".join(_proof_json(e.proof or [])),
            fields_requested=" ".join(str(f) for f in values["fields_requested"]),
            fields_released=" ".join(str(f) for f in values["fields_released"]),
        )
        writer.writerow(["" if values.get(c) is None else values[c] for c in CSV_COLUMNS])
    return out.getvalue()


def journal_document(journal: Journal, names: Mapping[str, str], origin: str) -> dict[str, Any]:
    """A journal as JSON, each entry with what verifies it against the checkpoint: also the portal's export."""
    return {
        "origin": origin,
        "checkpoint": journal.checkpoint.note,
        "tree_size": journal.checkpoint.size,
        "truncated": journal.truncated,
        "entries": [{
            "entry": e.entry, "consumer_name": names.get(str(e.entry["consumer"])), "leaf_hash": b64(e.leaf_hash),
            "index": e.index, "inclusion_proof": None if e.proof is None else _proof_json(e.proof),
            # the salt of a v2 entry's payload commitment: with the data the consumer holds, it proves what was sent
            "payload_salt": None if e.payload_salt is None else b64(e.payload_salt),
        } for e in journal.entries],
    }


@_answering_problems
async def journal(request: web.Request) -> web.Response:
    """A citizen's journal, asked by a trusted organisation on the citizen's behalf."""
    state = request.app[STATE]
    body = await request.read()
    await _verified(request, body, state.config.journal_clients, "citizen journals")
    subject, wanted, fmt = _journal_request(body)
    found = await request.app[TLOG].journal(subject_key(state.subject_secret, subject), wanted)
    registry = state.registry.current
    names = {o.siret: o.name for o in registry.organisations}
    if fmt == "csv":
        return web.Response(text=journal_csv(found, names), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": 'attachment; filename="journal.csv"'})
    return web.Response(content_type="application/json",
                        body=orjson.dumps(journal_document(found, names, request.app[TLOG].origin)))


# -- Wiring -----------------------------------------------------------------------------------------------------


WITNESSES = web.AppKey("tlog_witnesses", tuple[witness.Witness, ...])
TILE_CACHE = web.AppKey("tlog_tile_cache", tiles.TileCache)
NOTE_KEY = web.AppKey("tlog_note_key", NoteSigner)
"""The log's key as the app loaded it (a key file's, or a signer plug-in's); absent: read from its file here."""


async def tlog_ctx(app: web.Application) -> AsyncIterator[None]:
    """The log for this process: its key, its integrator, its witnesses' cosigning, and the notification outbox
    worker if a webhook is set. Runs after the state context (it needs the pool) and stops before it."""
    state = app[STATE]
    config = state.config
    witnesses = tuple(witness.Witness(witness.parse_cosigner_key(vkey), url) for vkey, url in config.log_witnesses)
    note_key = app[NOTE_KEY] if NOTE_KEY in app else load_or_create_note_key(config.log_key_file, config.log_origin)
    tlog = TransparencyLog(state.pool, note_key,
                           max_merge_delay=config.log_max_merge_delay, batch=config.log_batch, metrics=state.metrics,
                           witness_quorum=config.log_witness_quorum)
    app[TLOG] = tlog
    app[LOG_WRITER] = writer = GroupCommit(state.pool, on_commit=state.metrics.access_log_commit)
    app[WITNESSES] = witnesses
    app[TILE_CACHE] = tiles.TileCache()
    with contextlib.suppress(*db.DB_ERRORS):  # the integrator signs it on its first round instead
        await tlog.ensure_checkpoint()
    with contextlib.suppress(*db.DB_ERRORS):  # the evidence of answers names this key: keep it in the history
        await evidence.remember_key(state.pool, state.signing_key.public_key(owner=evidence.BROKER_OWNER),
                                    evidence.BROKER_OWNER)
    tasks = [asyncio.create_task(tlog.run(config.log_interval))]
    session = None
    if witnesses:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        cosigning = witness.Witnessing(state.pool, witnesses, session, PgNodeStore(state.pool))
        tasks.append(asyncio.create_task(cosigning.run(config.log_interval)))
    worker = outbox.from_config(config, state.pool, state.signing_key, state.metrics)
    if worker is not None:
        tasks.append(asyncio.create_task(worker.run()))
    yield
    await writer.close()  # what the last exchanges queued is committed before the pool closes
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if worker is not None:
        await worker.close()
    if session is not None:
        await session.close()
    # A last round, so this process's final entries do not wait for another process (or the next start): it waits
    # for a round another process holds, which may have missed them (processes of `serve --workers` stop together).
    with contextlib.suppress(TimeoutError, *db.DB_ERRORS):
        async with asyncio.timeout(5):
            await tlog.drain(wait=True)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/log", log_info)
    router.add_get("/v1/log/checkpoint", latest_checkpoint)
    router.add_get("/v1/log/checkpoints", list_checkpoints)
    router.add_get("/v1/log/checkpoints/{size}", checkpoint_at)
    router.add_get("/v1/log/proof/inclusion", inclusion_proof)
    router.add_get("/v1/log/proof/consistency", consistency_proof)
    router.add_get("/v1/log/entries", list_entries)
    router.add_get("/v1/log/entries/{entry_id}/proof", entry_proof)
    router.add_get("/v1/log/entries/{entry_id}/tlog-proof", entry_tlog_proof)
    router.add_get("/v1/log/tile/{level}/{rest:.+}", tile)
    router.add_post("/v1/journal", journal)
