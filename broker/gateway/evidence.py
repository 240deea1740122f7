"""What makes a released answer of the broker acceptable: the checks run after its signature verified, bound to the
request the gateway signed.

`verify_release` returns the answer's ids or raises `AnswerUnverified` naming the check that failed:
1. shape: the members of a released exchange are there, with their types;
2. payload: `data_sha256` is the SHA-256 of the RFC 8785 canonical JSON of exactly the `data` received;
3. promise: the transparency log's inclusion promise is signed by a trusted log key, for this log, for this entry,
   and the entry carried hashes to the promised leaf and records that payload (`tlog.verify.verify_receipt`: a v2
   entry's salted commitment, with the receipt's salt; a v1 entry's hash);
4. entry: the entry is this exchange's: this consumer and key, the broker's request id, the dataset and version,
   released, with the fields the answer says it released.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from broker.gateway.errors import AnswerUnverified
from broker.tlog import checkpoint
from broker.tlog.checkpoint import NoteVerifier
from broker.tlog.jcs import CanonicalizationError, canonicalize
from broker.tlog.verify import VerificationError, verify_receipt

Check = Literal["signature", "shape", "payload", "promise", "entry"]


class Unverified(AnswerUnverified):
    def __init__(self, check: Check, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check: Check = check
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LogTrust:
    """The transparency log the gateway trusts: its origin (the name of its keys) and its verifier keys."""

    origin: str
    verifiers: tuple[NoteVerifier, ...]

    @classmethod
    def of(cls, vkeys: Iterable[str]) -> LogTrust:
        verifiers = tuple(checkpoint.parse_verifier_key(v) for v in vkeys)
        origins = {v.name for v in verifiers}
        if len(origins) != 1:
            raise ValueError(f"the log keys must name one log, got {sorted(origins) or 'none'}")
        return cls(origins.pop(), verifiers)


@dataclass(frozen=True, slots=True)
class Release:
    request_id: str
    log_entry_id: uuid.UUID
    inclusion_promise: str


_MEMBERS: dict[str, type | tuple[type, ...]] = {
    "request_id": str, "log_entry_id": str, "dataset": str, "version": int, "fields_released": list,
    "data_sha256": str, "data": dict, "log": dict,
}


def verify_release(answer: Mapping[str, Any], *, trust: LogTrust, consumer: str, kid: str) -> Release:
    # 1. Shape.
    for name, kind in _MEMBERS.items():
        if not isinstance(answer.get(name), kind):
            raise Unverified("shape", f"{name} is missing or not a {kind}")
    try:
        entry_id = uuid.UUID(answer["log_entry_id"])
    except ValueError:
        raise Unverified("shape", "log_entry_id is not a UUID") from None
    # 2. The payload hash is of the data received.
    try:
        canonical = canonicalize(answer["data"])
        digest = hashlib.sha256(canonical).hexdigest()
    except CanonicalizationError as exc:
        raise Unverified("payload", f"data is not canonicalizable: {exc}") from None
    if not hmac.compare_digest(digest, answer["data_sha256"]):
        raise Unverified("payload", "data_sha256 is not the hash of data")
    # 3. The log's promise, for this entry, whose entry records this payload.
    receipt = answer["log"]
    try:
        verify_receipt(receipt, trust.verifiers, origin=trust.origin, entry_id=str(entry_id), data=canonical)
    except VerificationError as exc:
        raise Unverified("promise", str(exc)) from None
    # 4. The entry is this exchange's.
    entry = receipt["entry"]
    expected = {"consumer": consumer, "kid": kid, "request_id": answer["request_id"], "dataset": answer["dataset"],
                "dataset_version": answer["version"], "outcome": "released",
                "fields_released": answer["fields_released"]}
    wrong = sorted(k for k, v in expected.items() if entry.get(k) != v)
    if wrong:
        raise Unverified("entry", f"the logged entry differs from this exchange on {', '.join(wrong)}")
    return Release(answer["request_id"], entry_id, str(receipt["inclusion_promise"]))
