"""The evidence of an exchange, as X-Road's message log keeps it: what lets an auditor, or a court, prove later that
an administration asked for this citizen's data at that time, and what the broker answered.

For each access-log entry, in the transaction of its row: the consumer's exact request signature, its RFC 9421
signature base and the key that verified it (by RFC 7638 thumbprint in `key_history`, where keys are retired,
never deleted), and the broker's signature of its answer with that signature base. Bases carry the bodies' digests,
never the bodies: the request names the citizen in clear and the answer holds the values, and neither is kept.

Bindings, checked by `verify_evidence` with no access to the broker:
- the request signature verifies over its base with the key; the key is the consumer's (`owner`), with the kid its
  base's `keyid` names, valid when the signature was `created`;
- a v2 entry commits to the request (`request_signature_sha256`), and the entry is in the log (inclusion proof to a
  checkpoint signed by the log's key, cosigned by enough witnesses);
- the answer's signature verifies with the broker's key, and its base covers the request's signature
  (`"signature";req`), so the answer is to that very request.
Evidence is kept as long as the entry's body: `log prune` removes both together.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web
from cryptography.exceptions import InvalidSignature

from broker.signing import messages
from broker.signing import structured_fields as sf
from broker.signing.keys import InvalidKey, PublicKey, jwk_thumbprint, public_key_from_jwk
from broker.storage import db
from broker.tlog import leaves, merkle
from broker.tlog.checkpoint import NoteVerifier
from broker.tlog.witness import WitnessError, verify_cosigned

FORMAT = "dlnuf.org/exchange-evidence/v1"
BROKER_OWNER = "broker"


class EvidenceError(Exception):
    """Evidence that does not verify; the message says which binding failed."""


class UnknownEvidence(LookupError):
    """No evidence is kept for this entry (unknown, pruned, or logged before evidence was kept)."""


def _q() -> dict[str, str]:
    return db.queries("broker.tlog", "tlog.sql")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# The columns `Evidence.args()` fills, in its order.
COLUMNS = ("entry_id", "logged_at", "request_label", "request_signature", "request_signature_base", "request_key",
           "response_status", "response_signature", "response_signature_base", "response_key")


@dataclass(frozen=True, slots=True)
class Evidence:
    """What is stored for one entry. The request part is None when the request's signature did not verify."""

    entry_id: uuid.UUID
    logged_at: datetime
    request_label: str | None
    request_signature: bytes | None
    request_signature_base: bytes | None
    request_key: str | None
    response_status: int
    response_signature: bytes
    response_signature_base: bytes
    response_key: str

    def args(self) -> tuple[object, ...]:
        return (self.entry_id, self.logged_at, self.request_label, self.request_signature,
                self.request_signature_base, self.request_key, self.response_status, self.response_signature,
                self.response_signature_base, self.response_key)

    @property
    def size(self) -> int:
        """Bytes of evidence proper (signatures, bases, key references), for the storage figures."""
        return sum(len(x) for x in (self.request_signature or b"", self.request_signature_base or b"",
                                    (self.request_key or "").encode(), self.response_signature,
                                    self.response_signature_base, self.response_key.encode()))


def sign_with_evidence(response: web.Response, *, request: messages.VerifiedRequest | None, private_key: Any,
                       broker_key: PublicKey, entry_id: uuid.UUID, logged_at: datetime,
                       now: datetime) -> Evidence:
    """Sign `response` now (its headers get Content-Digest, Signature-Input and Signature, so the signing middleware
    leaves it alone) and return the evidence of the exchange, to be committed with the entry."""
    body = response.body
    if not isinstance(body, bytes):
        raise TypeError("evidence needs a response with a bytes body")
    signed = messages.sign_response_with_base(status=response.status, headers=response.headers, body=body,
                                              request=request, private_key=private_key, now=now)
    response.headers.update(signed.headers)
    return Evidence(
        entry_id=entry_id, logged_at=logged_at,
        request_label=None if request is None else request.label,
        request_signature=None if request is None else request.signature,
        request_signature_base=None if request is None else request.signature_base,
        request_key=None if request is None else _thumbprint(request.key),
        response_status=response.status, response_signature=signed.signature,
        response_signature_base=signed.signature_base, response_key=_thumbprint(broker_key),
    )


@functools.lru_cache(maxsize=4096)
def _thumbprint(key: PublicKey) -> str:
    """A key's RFC 7638 thumbprint: the broker's signs every answer and a consumer's many requests, and hashing
    its JWK each time cost about a sixth of a signature. Keys compare by value, so a rotated key gets its own;
    the size bounds the memory to a few thousand keys (the registry's consumers and the broker's)."""
    return jwk_thumbprint(key.to_jwk())


async def remember_key(pool: asyncpg.Pool, key: PublicKey, owner: str) -> None:
    """Keep a key in the history (the broker's response key at start: registry keys get there by trigger)."""
    jwk = key.to_jwk()
    await pool.execute(_q()["key_history_remember"], jwk_thumbprint(jwk), key.kid, owner, key.alg,
                       {k: v for k, v in jwk.items() if k not in ("nbf", "exp")}, key.not_before, key.not_after)


# -- Export -----------------------------------------------------------------------------------------------------


def _key_json(row: Mapping[str, Any] | None, prefix: str) -> dict[str, Any] | None:
    if row is None or row[f"{prefix}_jwk"] is None:
        return None

    def when(v: datetime | None) -> str | None:
        return None if v is None else leaves.timestamp(v)

    return {"jwk": dict(row[f"{prefix}_jwk"]), "kid": row[f"{prefix}_kid"], "owner": row[f"{prefix}_owner"],
            "not_before": when(row[f"{prefix}_not_before"]), "not_after": when(row[f"{prefix}_not_after"]),
            "retired_at": when(row[f"{prefix}_retired_at"])}


async def export(conn: asyncpg.Connection | asyncpg.Pool, entry_id: uuid.UUID) -> dict[str, Any]:
    """The evidence of one entry as a self-contained document (without the log's proof: the caller adds it)."""
    row = await conn.fetchrow(_q()["evidence_export"], entry_id)
    if row is None:
        raise UnknownEvidence(f"no evidence is kept for entry {entry_id}")
    request = None
    if row["request_signature"] is not None:
        request = {"label": row["request_label"], "signature": _b64(bytes(row["request_signature"])),
                   "signature_base": bytes(row["request_signature_base"]).decode("ascii"),
                   "key": _key_json(row, "req")}
    return {
        "format": FORMAT,
        "entry": leaves.entry_document(row),
        "request": request,
        "response": {"status": row["response_status"], "signature": _b64(bytes(row["response_signature"])),
                     "signature_base": bytes(row["response_signature_base"]).decode("ascii"),
                     "key": _key_json(row, "resp")},
    }


# -- Offline verification ---------------------------------------------------------------------------------------


def _base_lines(base: str) -> dict[str, str]:
    lines: dict[str, str] = {}
    for line in base.split("\n"):
        name, sep, value = line.partition(": ")
        if not sep:
            raise EvidenceError("a signature base line is `<component>: <value>`")
        lines[name] = value
    if '"@signature-params"' not in lines:
        raise EvidenceError("a signature base ends with its @signature-params")
    return lines


def _params(base_lines: Mapping[str, str]) -> sf.Params:
    try:
        inner = sf.parse_dictionary("x=" + base_lines['"@signature-params"'])["x"]
    except sf.StructuredFieldError:
        raise EvidenceError("the @signature-params line is not a structured inner list") from None
    return inner.params


def _check_signature(part: Mapping[str, Any], what: str) -> tuple[PublicKey, bytes, dict[str, str], sf.Params]:
    key_info = part.get("key")
    if not isinstance(key_info, Mapping):
        raise EvidenceError(f"the {what} key is not in the evidence (not in the key history)")
    try:
        key = public_key_from_jwk(key_info["jwk"], owner=str(key_info["owner"]), kid=str(key_info["kid"]))
        signature = base64.b64decode(str(part["signature"]), validate=True)
        base = str(part["signature_base"])
    except (KeyError, ValueError, InvalidKey) as exc:
        raise EvidenceError(f"the {what} part is malformed: {exc}") from None
    lines = _base_lines(base)
    params = _params(lines)
    if params.get("keyid") != key.kid:
        raise EvidenceError(f"the {what} signature names key {params.get('keyid')!r}, not {key.kid!r}")
    try:
        key.verify(signature, base.encode("ascii"))
    except (InvalidSignature, UnicodeEncodeError):
        raise EvidenceError(f"the {what} signature does not verify over its signature base") from None
    return key, signature, lines, params


def verify_evidence(document: Mapping[str, Any], *, log_verifiers: Iterable[str | NoteVerifier], origin: str,
                    witnesses: Iterable[str] = (), quorum: int = 0,
                    broker_keys: Iterable[Mapping[str, Any]] | None = None) -> None:
    """Return None if the evidence holds together and its entry is in the log; raise `EvidenceError` otherwise.

    `broker_keys` are the broker's public JWKs the verifier trusts (its published JWKS); None trusts the one in
    the document, which then proves only that the document is self-consistent."""
    # 1. The shape and the entry.
    if document.get("format") != FORMAT:
        raise EvidenceError(f"not a {FORMAT} document")
    entry = document.get("entry")
    request, response = document.get("request"), document.get("response")
    if not isinstance(entry, dict) or not isinstance(response, Mapping):
        raise EvidenceError("the evidence has no entry or no response")
    try:
        leaf = leaves.leaf_of(entry)
    except ValueError as exc:
        raise EvidenceError(f"the entry is not an entry: {exc}") from None
    # 2. The request: the consumer's signature, with the consumer's key, valid when it signed.
    req_signature = None
    if request is not None:
        key, req_signature, _, params = _check_signature(request, "request")
        if key.owner != entry.get("consumer") or key.kid != entry.get("kid"):
            raise EvidenceError("the request was signed by another organisation or key than the entry names")
        created = params.get("created")
        if not isinstance(created, int) or not key.is_valid_at(datetime.fromtimestamp(created, UTC)):
            raise EvidenceError("the request key was not valid when the request was signed")
        if entry.get("v") == leaves.V2:
            committed = hashlib.sha256(req_signature).hexdigest()
            if not hmac.compare_digest(str(entry.get("request_signature_sha256")), committed):
                raise EvidenceError("the entry does not commit to this request signature")
    elif entry.get("v") == leaves.V2 and entry.get("request_signature_sha256") is not None:
        raise EvidenceError("the entry commits to a request signature the evidence does not hold")
    # 3. The answer: the broker's signature, bound to the request's.
    broker_key, _, lines, _ = _check_signature(response, "response")
    if broker_keys is not None:
        pinned = {jwk_thumbprint(k) for k in broker_keys}
        if jwk_thumbprint(broker_key.to_jwk()) not in pinned:
            raise EvidenceError("the answer was signed by a key that is not among the broker keys given")
    if lines.get('"@status"') != str(response.get("status")) or response.get("status") != entry.get("http_status"):
        raise EvidenceError("the answer's signed status differs from the entry's")
    if req_signature is not None:
        bound = [v for k, v in lines.items() if k.startswith('"signature";req')]
        if bound != [f":{_b64(req_signature)}:"]:
            raise EvidenceError("the answer is not bound to the request's signature")
    # 4. The entry is in the log, under a checkpoint with enough witnesses.
    proof = document.get("log")
    if not isinstance(proof, Mapping):
        raise EvidenceError("the evidence carries no inclusion proof")
    try:
        signed = verify_cosigned(str(proof.get("checkpoint")), log_verifiers, origin=origin, witnesses=witnesses,
                                 quorum=quorum)
        hashes = [base64.b64decode(str(h), validate=True) for h in proof.get("inclusion_proof") or []]
        index = proof.get("index")
        if not isinstance(index, int):
            raise EvidenceError("the proof has no index")
        merkle.verify_inclusion(leaf, index, signed.size, hashes, signed.root)
    except (WitnessError, merkle.MerkleError, ValueError) as exc:
        raise EvidenceError(f"the entry is not proved in the log: {exc}") from None
