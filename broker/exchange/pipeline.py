"""The exchange pipeline: a signed request in, a logged and signed answer out.

Read `handle_exchange` top to bottom: each numbered step either passes or raises, and every outcome of a request
whose signature verified, released or refused, goes through step 8 (the access log) before anything is answered.
Invariants: no data leaves before its log entry is committed; if the entry cannot be committed the answer is 503
and carries no data. A request refused before its signature verified is not an access-log entry: nobody is
accountable for it, and anyone could grow the permanent log with it; it goes to the bounded store of
unauthenticated attempts (broker/service/attempts.py).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson
import structlog
from aiohttp import web

import schemas
from adapters.base import AdapterError, AdapterQuery, ProviderCircuitOpen
from adapters.identity import SubjectError
from adapters.subjects import (
    FRANCE_CONNECT,
    PIVOT_IDENTITY,
    FranceConnectOutsideConsent,
    Subject,
    parse_subject,
    subject_key,
)
from broker.errors import (
    BodyTooLarge,
    BrokerError,
    FranceConnectNeedsConsent,
    InvalidProviderAnswer,
    InvalidRequest,
    InvalidSubject,
    LogUnavailable,
    QuotaExceeded,
    SubjectKindNotAccepted,
    UnknownDataset,
    UnsupportedMediaType,
)
from broker.exchange import authz
from broker.exchange.consent_gate import bearer_token, consent_from_token, verify_consent_covers
from broker.service import contract
from broker.service.attempts import source_of
from broker.service.middleware import VERIFIED
from broker.service.problems import REQUEST_ID, detail_for, problem_for, problem_response, retry_after
from broker.service.quotas import Usage
from broker.service.state import STATE, BrokerState
from broker.service.urls import issuer, target_uri
from broker.signing import messages
from broker.signing.keys import PrivateKey, PublicKey
from broker.storage.db import DatabaseUnavailable
from broker.tlog import accesslog, evidence
from broker.tlog.groupcommit import LOG_WRITER
from broker.tlog.jcs import CanonicalizationError, canonicalize
from broker.tlog.log import TLOG
from consent.basis import BasisRefused, verify_basis
from consent.records import use as use_consent
from consent.sealing import CONSENT_SEAL
from consent.tokens import InvalidToken
from schemas.validation import InvalidDocument, InvalidParameters

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Everything a step may raise on purpose; each maps to a problem type in broker/service/problems.py.
REFUSALS = (BrokerError, AdapterError, BasisRefused, InvalidToken, InvalidDocument, InvalidParameters,
            messages.SignatureRejected,
            DatabaseUnavailable)


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """The JSON body of `POST /v1/exchanges`, checked for shape (not for permission)."""

    dataset: str
    version: int
    purpose: str
    recipient: str
    fields: tuple[str, ...]
    subject: Subject | None
    """None when an access token stands for a consent: the broker then takes the citizen from the consent."""
    france_connect: bool = False
    """With an access token, `{"france_connect": {}}` as subject: ask the provider in FranceConnect mode, with the
    citizen's FranceConnect access token sealed in the consent, rather than by pivot identity."""
    context: str = ""
    """The framework of the call (« Marchés publics », « Aide aux associations »), and `object` the procedure's
    reference: API Entreprise requires both on every call, to trace it back; logged in the access log."""
    object: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """What the provider needs beyond the subject (a month, a fiscal year); checked at step 2 against the
    schema's `x-parameters`."""

    @property
    def subject_kind(self) -> str:
        """The kind of subject the provider will be asked about: a consent's citizen is a pivot identity unless
        FranceConnect mode is asked."""
        if self.subject is not None:
            return self.subject.kind
        return FRANCE_CONNECT if self.france_connect else PIVOT_IDENTITY

    @classmethod
    def parse(cls, body: bytes, *, with_token: bool = False) -> ExchangeRequest:
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidRequest("the body is not valid JSON") from None
        # The shape is the published schema's, compiled (broker/service/contract.py): no second copy to drift.
        try:
            contract.verify("ExchangeRequest", raw)
        except contract.ContractViolation as exc:
            if exc.path[:1] == ("parameters",):
                raise InvalidParameters(str(exc)) from None
            if exc.path[:1] != ("subject",):
                raise InvalidRequest(str(exc)) from None
            if not with_token:
                _subject(raw["subject"])  # its own message says more than "fails oneOf"
            raise InvalidSubject(str(exc)) from None
        dataset, version = raw["dataset"], raw.get("version")
        if version is None:
            try:
                version = schemas.latest(dataset)
            except schemas.UnknownDataset:
                raise UnknownDataset(f"dataset {dataset!r} is not in the catalogue") from None
        if version not in schemas.catalogue().get(dataset, ()):
            raise UnknownDataset(f"dataset {dataset!r} version {version} is not in the catalogue")
        subject: Subject | None = None
        france_connect = False
        if with_token:
            if raw.get("subject", {FRANCE_CONNECT: {}}) != {FRANCE_CONNECT: {}}:
                raise InvalidSubject("with an access token the consent names the citizen: send no subject, or "
                                     "{\"france_connect\": {}} for FranceConnect mode")
            france_connect = "subject" in raw
        elif "subject" not in raw:
            raise InvalidSubject("subject is missing")
        else:
            # what the schema cannot say: a calendar date, a check digit, printable in Python's sense
            subject = _subject(raw["subject"])
        return cls(dataset, version, raw["purpose"], raw["recipient"], tuple(raw["fields"]), subject, france_connect,
                   _text(raw, "context"), _text(raw, "object"), dict(raw.get("parameters", {})))

    def verify_subject_kind(self) -> None:
        """Raise `SubjectKindNotAccepted` unless the dataset version declares this kind of subject (`x-subjects`)."""
        accepted = schemas.subject_kinds(self.dataset, self.version)
        if self.subject_kind not in accepted:
            raise SubjectKindNotAccepted(f"{self.dataset} v{self.version} cannot be asked about a "
                                         f"{self.subject_kind} subject (accepted: {', '.join(sorted(accepted))})")


@dataclass(slots=True)
class Waits:
    """What one exchange waited for on its path, in seconds (None: the step did not run): its nonce claim, its
    provider call, its access-log commit. They go to the metrics and to the exchange's log line, so that a slow
    exchange says where its time went (docs/operations.md, "Where an exchange's time goes")."""

    claim: float | None = None
    provider: float | None = None
    log: float | None = None
    adapter: str | None = None
    provider_outcome: str = "answered"
    """How the provider call ended: "answered", or the slug of the adapter's failure (a subject the provider does
    not know is answered fast, a timeout after the adapter's whole delay: neither is the provider's usual pace)."""

    async def timed(self, step: Literal["provider", "log"], call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except AdapterError as exc:
            if step == "provider":
                self.provider_outcome = exc.slug
            raise
        finally:
            setattr(self, step, time.perf_counter() - started)

    def log_fields(self) -> dict[str, float]:
        return {f"{step}_ms": round(seconds * 1000, 3)
                for step, seconds in (("claim", self.claim), ("provider", self.provider), ("log", self.log))
                if seconds is not None}

    def observe(self, state: BrokerState) -> None:
        state.metrics.exchange_waits(adapter=self.adapter, provider=self.provider, claim=self.claim, log=self.log,
                                     provider_outcome=self.provider_outcome)


def _text(raw: Mapping[str, Any], name: str) -> str:
    """An optional free-text member (its length checked by the schema): printable, surrounding spaces dropped."""
    value = raw.get(name, "")
    if not value.isprintable():
        raise InvalidRequest(f"{name} must be printable")
    return str(value.strip())


def _subject(raw: Any) -> Subject:
    try:
        return parse_subject(raw)
    except FranceConnectOutsideConsent as exc:
        raise FranceConnectNeedsConsent(str(exc)) from None
    except SubjectError as exc:
        raise InvalidSubject(str(exc)) from None


async def handle_exchange(request: web.Request) -> web.Response:
    state = request.app[STATE]
    started = time.perf_counter()
    now = datetime.now(UTC)
    entry = accesslog.LogEntry(request_id=request[REQUEST_ID], default_retention=state.config.log_retention)
    usage = Usage()
    waits = Waits()
    meter = None
    try:
        # 0. An address that caused too many refusals before any signature verified is turned away at once.
        state.attempts.verify_source(source_of(request))
        body = await _read_body(request, state.config.max_body)

        # 1. Verify the signature: who signs, with a live key, fresh, not replayed, body as digested. The nonce
        #    claim also counts the exchange against its quotas, in the same statement, whose commit does not wait
        #    for the WAL flush: step 8's synchronous commit flushes it before anything is answered (quotas.py).
        meter = state.quota_meter(_dataset_of(body))
        verified = await messages.verify_request(
            method=request.method,
            target_uri=target_uri(request, state.config.public_url),
            headers=request.headers,
            body=body,
            lookup_key=state.lookup_key,
            claim_nonce=meter.claim,
            now=now,
            max_skew=state.config.max_skew,
        )
        request[VERIFIED] = verified
        waits.claim = meter.waited
        entry.consumer, entry.kid = verified.key.owner, verified.key.kid
        usage = meter.usage
        entry.bind_request(verified.signature)

        # 2. Read what is asked (shape only; permission comes next).
        token = bearer_token(request)
        ask = ExchangeRequest.parse(body, with_token=token is not None)
        entry.dataset, entry.dataset_version, entry.purpose = ask.dataset, ask.version, ask.purpose
        entry.recipient, entry.fields_requested = ask.recipient, ask.fields
        entry.call_context, entry.call_object = ask.context or None, ask.object or None
        if ask.subject is not None:
            entry.subject_key = subject_key(state.subject_secret, ask.subject)
        ask.verify_subject_kind()  # after the key: a business's journal shows refusals too
        entry.parameters = dict(ask.parameters)
        state.validators.verify_parameters(ask.dataset, ask.version, entry.parameters)

        # 2b. Over a quota (the consumer's, or this habilitation's), nothing more is done, nor asked of a provider.
        usage.verify_within()

        # 3. Load the habilitation of this consumer for this dataset.
        registry = state.registry.current
        hab = authz.find_habilitation(registry, verified.key.owner, ask.dataset)
        entry.habilitation = hab

        # 4. Check purpose, fields and recipient against it, then its legal basis for this subject: a consent
        #    (presented as a key-bound access token) for a consent basis, no objection for a proactive one.
        authz.verify_allowed(hab, purpose=ask.purpose, fields=ask.fields, recipient=ask.recipient)
        consent = None
        subject = ask.subject
        if hab.legal_basis.type == "consent":
            consent = await consent_from_token(state, verified, token, now=now,
                                               issuer=issuer(request, state.config.public_url), dataset=ask.dataset,
                                               purpose=ask.purpose, recipient=ask.recipient)
            entry.subject_key = consent.subject_key  # a refusal from here on is logged against this citizen
            verify_consent_covers(consent, verified, dataset=ask.dataset, purpose=ask.purpose,
                                  recipient=ask.recipient, fields=ask.fields, now=now)
            if ask.france_connect:
                subject = state.sealer.open_france_connect(consent.identity_ciphertext, CONSENT_SEAL)
                if subject is None:
                    raise FranceConnectNeedsConsent("this consent was not given after a FranceConnect login: ask "
                                                    "without FranceConnect mode")
            else:
                subject = state.sealer.open_identity(consent.identity_ciphertext, CONSENT_SEAL)
        elif token is not None:
            raise InvalidRequest("an access token is only for habilitations whose legal basis is consent")
        assert subject is not None and entry.subject_key is not None
        await verify_basis(hab.legal_basis.type, subject_key=entry.subject_key, consumer=hab.consumer,
                           dataset=ask.dataset, has_objection=state.has_objection, consent_present=consent is not None)

        # 5. Call the provider through its adapter (only AdapterError escapes).
        adapter = state.adapters.for_dataset(ask.dataset)
        waits.adapter = adapter.name
        document = await waits.timed("provider", adapter.fetch(AdapterQuery(
            dataset=ask.dataset, version=ask.version, subject=subject, fields=frozenset(ask.fields),
            request_id=entry.request_id, recipient=ask.recipient, call_context=ask.context, call_object=ask.object,
            parameters=ask.parameters,
        )))

        # 6. Validate the whole answer against the dataset schema: an invalid answer is never released.
        state.validators.verify(ask.dataset, ask.version, document)

        # 7. Keep only the authorised, requested fields (raw, or derived answers computed here from raw values).
        data = authz.release(hab, document, ask.fields)
        released = tuple(f for f in ask.fields if _present(data, f))
        try:
            data_bytes = canonicalize(data)
        except CanonicalizationError as exc:
            # e.g. an integer beyond 2**53 that JSON readers would silently round: not releasable as is
            raise InvalidProviderAnswer("provider answer invalid", reason=f"not canonicalizable: {exc}") from None
        payload_sha256 = hashlib.sha256(data_bytes).hexdigest()
        answer: dict[str, Any] = {
            "request_id": entry.request_id,
            "log_entry_id": str(entry.id),
            "dataset": ask.dataset,
            "version": ask.version,
            "fields_released": released,
            "data_sha256": payload_sha256,
            "data": orjson.Fragment(data_bytes),
        }

        # 8. Count the consent's use (atomic: revoked, expired or used up in the meantime refuses here), then
        #    commit the access-log entry with the exchange's evidence; only then may the data leave.
        if consent is not None:
            await use_consent(state.pool, consent, now)
        entry.outcome, entry.http_status = "released", 200
        entry.fields_released = released
        entry.record_payload(data_bytes)
        entry.latency_ms = (time.perf_counter() - started) * 1000
        # 9. The consumer's receipt: the entry and the log's signed promise to include it (like a CT SCT). The leaf
        #    does not depend on the commit, so the answer is complete, and signed, before it: its signature goes
        #    into the evidence committed with the entry.
        answer["log"] = request.app[TLOG].receipt(entry)
        response = web.Response(status=200, body=orjson.dumps(answer), content_type="application/json",
                                headers=usage.headers())
        await waits.timed("log", request.app[LOG_WRITER].commit(entry, _sign_with_evidence(request, state, response,
                                                                                          entry)))
    except REFUSALS as exc:
        if VERIFIED not in request:
            state.metrics.exchange("-", problem_for(exc).slug, time.perf_counter() - started)
            if meter is not None and meter.waited is not None:  # a replay, or a claim the database failed
                state.metrics.exchange_waits(adapter=None, provider=None, claim=meter.waited, log=None)
            return state.attempts.refuse(request, exc, request_id=entry.request_id)
        if isinstance(exc, QuotaExceeded):
            for policy in usage.exceeded_policies():
                state.metrics.quota_refusals.labels(policy).inc()
        return await _refuse(request, state, entry, exc, started, waits,
                             headers={**usage.headers(), **retry_after(exc)})

    # 10. The response was signed above, covering this request's signature; the signing middleware leaves it as is.
    #     The log line and the metrics wait for the next turn of the event loop, after aiohttp has handed the answer
    #     to the transport in this task's step: latency, not CPU, saved on every exchange's path (the call keeps
    #     this context, and so the request id).
    asyncio.get_running_loop().call_soon(_released, state, ask.dataset, entry.consumer, released,
                                         time.perf_counter() - started, waits)
    return response


def _released(state: BrokerState, dataset: str, consumer: str | None, fields: Sequence[str], seconds: float,
              waits: Waits) -> None:
    state.metrics.exchange(dataset, "released", seconds)
    waits.observe(state)
    log.info("exchange released", dataset=dataset, consumer=consumer, fields=fields, ms=round(seconds * 1000, 3),
             **waits.log_fields())


def _dataset_of(body: bytes) -> str | None:
    """The dataset the body names, for the quota count; None when it names none (step 2 then refuses it)."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    dataset = raw.get("dataset") if isinstance(raw, dict) else None
    return dataset if isinstance(dataset, str) else None


async def _refuse(request: web.Request, state: BrokerState, entry: accesslog.LogEntry, exc: Exception,
                  started: float, waits: Waits, *, headers: dict[str, str]) -> web.Response:
    problem = problem_for(exc)
    reason = getattr(exc, "reason", None) or str(exc)
    if isinstance(exc, ProviderCircuitOpen):
        waits.provider = None  # no call was made: not a provider latency
    refused = problem.slug
    entry.outcome = "failed" if problem.status >= 500 else "refused"
    entry.problem_type, entry.http_status = problem.uri, problem.status
    entry.fields_released = ()
    entry.clear_payload()
    entry.latency_ms = (time.perf_counter() - started) * 1000
    response = problem_response(problem, detail=detail_for(exc), request_id=entry.request_id,
                                headers=headers or None)
    if not isinstance(exc, LogUnavailable):
        try:
            # The refusal is signed now, so that its signature is in the evidence committed with the entry.
            await waits.timed("log", request.app[LOG_WRITER].commit(entry, _sign_with_evidence(request, state,
                                                                                              response, entry)))
        except LogUnavailable as log_exc:
            # a refusal carries no data, but an unlogged one must say so: 503, as any unlogged exchange
            problem, exc = problem_for(log_exc), log_exc
            response = problem_response(problem, detail=detail_for(exc), request_id=entry.request_id)
    seconds = time.perf_counter() - started
    # after the commit, so that the line has the whole time and the commit's, as a released exchange's has
    log.warning("exchange refused", problem=refused, reason=reason, consumer=entry.consumer, dataset=entry.dataset,
                ms=round(seconds * 1000, 3), **waits.log_fields())
    state.metrics.exchange(entry.dataset or "-", problem.slug, seconds)
    waits.observe(state)
    if isinstance(exc, AdapterError):
        adapter = state.registry.current.adapter_for(entry.dataset or "")
        state.metrics.provider_errors.labels(adapter.id if adapter else "-", exc.slug).inc()
    return response


@functools.lru_cache(maxsize=4)
def _broker_public_key(key: PrivateKey) -> PublicKey:
    """The public half of the broker's answer key, derived once per key rather than once per answer."""
    return key.public_key(owner=evidence.BROKER_OWNER)


def _sign_with_evidence(request: web.Request, state: BrokerState, response: web.Response,
                        entry: accesslog.LogEntry) -> evidence.Evidence:
    key = state.signing_key
    return evidence.sign_with_evidence(response, request=request.get(VERIFIED), private_key=key,
                                       broker_key=_broker_public_key(key), entry_id=entry.id,
                                       logged_at=entry.logged_at, now=datetime.now(UTC))


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the body exceeds {limit} bytes")
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"the body exceeds {limit} bytes") from None


def _present(data: Mapping[str, Any], path: str) -> bool:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
