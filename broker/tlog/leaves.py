"""Entries and leaves of the transparency log, in both formats; a tree mixes them (v1 first, then v2).

v1: the leaf is SHA-256(0x00 || JCS(entry)), the entry being every access-log column, `payload_sha256` the plain
SHA-256 of the released payload (so a small payload can be recovered from it by trying every value), `latency_ms`
a float. Kept so that old leaves still verify.

v2: the tree hashes a small *public leaf*, not the entry:

    public leaf = JCS({"entry": hex SHA-256(JCS(entry)), "id", "legal_basis_type", "logged_at", "retention", "v": 2})
    leaf hash   = SHA-256(0x00 || public leaf)

The public leaf is what the tlog-tiles entry bundles serve: the entry id (time-ordered since December 2026), when,
under which kind of legal basis, how long the body may be kept, and a hash of the entry. It names no administration
and no citizen (a small commune asking about a rare dataset at a given minute could point at a person), and the
entry cannot be guessed from its hash: the entry holds the broker-drawn `request_id` (122 random bits) and the keyed
`subject_key`. Retention and time being in the tree, `log verify` can check a pruning even after the body is gone.
The entry's payload is a salted commitment, `payload_commitment` = hex HMAC-SHA-256(salt, JCS(released data)); the
32-byte salt goes to the consumer (with the data) and to the citizen (in the journal), never into the leaf, so the
log no longer reveals a small value.

The v2 entry has a fixed shape (`V2_FIELDS`): strings, nulls, integers below 2**53 and lists of strings, no float.
Its JCS is then exactly `json.dumps(sort_keys, compact, ensure_ascii=False)` (`fast_canonical`), which C-accelerated
serialisers can produce: the hot path needs no pure-Python JCS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from broker.tlog import merkle
from broker.tlog.jcs import MAX_SAFE_INTEGER, CanonicalizationError, JsonValue, canonicalize

V1 = 1
V2 = 2

V1_FIELDS = (
    "id", "logged_at", "request_id", "consumer", "kid", "dataset", "dataset_version", "purpose", "recipient",
    "habilitation_id", "legal_basis_type", "legal_basis_title", "legal_basis_url", "fields_requested",
    "fields_released", "outcome", "problem_type", "http_status", "latency_ms", "payload_sha256", "subject_key",
)
V2_FIELDS = (
    "id", "logged_at", "request_id", "consumer", "kid", "dataset", "dataset_version", "purpose", "recipient",
    "habilitation_id", "legal_basis_type", "legal_basis_title", "legal_basis_url", "fields_requested",
    "fields_released", "outcome", "problem_type", "http_status", "latency_us", "payload_commitment", "subject_key",
    "retention", "request_signature_sha256",
)
_V2_INTEGERS = frozenset({"dataset_version", "http_status", "latency_us"})
_V2_LISTS = frozenset({"fields_requested", "fields_released"})
_V2_REQUIRED = frozenset({"id", "logged_at", "request_id", "outcome", "http_status", "latency_us", "retention"})
PUBLIC_FIELDS = ("entry", "id", "legal_basis_type", "logged_at", "retention", "v")
SALT_SIZE = 32


class LeafError(ValueError):
    """An entry that is not of a known format, or not of its format's shape. The message names the member."""


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, the precision PostgreSQL keeps: one spelling per instant."""
    if moment.tzinfo is None:
        raise ValueError("a log timestamp must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(value: object) -> JsonValue:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, tuple | list):
        return list(value)
    return value  # type: ignore[return-value]


def entry_document(row: Mapping[str, Any]) -> dict[str, JsonValue]:
    """The entry of an access-log row, in the row's leaf format (`leaf_version`, 1 when absent)."""
    version = row.get("leaf_version") or V1
    fields = V2_FIELDS if version == V2 else V1_FIELDS
    document: dict[str, JsonValue] = {"v": version}
    for column in fields:
        document[column] = _json(row[column])
    return document


def check_v2(document: Mapping[str, object]) -> None:
    """Raise `LeafError` unless `document` has exactly the v2 shape."""
    if set(document) != {"v", *V2_FIELDS}:
        raise LeafError("a v2 entry has exactly the v2 members")
    for name in V2_FIELDS:
        value = document[name]
        if value is None:
            if name in _V2_REQUIRED:
                raise LeafError(f"{name} is required")
        elif name in _V2_INTEGERS:
            if type(value) is not int or not -MAX_SAFE_INTEGER < value < MAX_SAFE_INTEGER:
                raise LeafError(f"{name} is an integer below 2**53")
        elif name in _V2_LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise LeafError(f"{name} is a list of strings")
        elif not isinstance(value, str):
            raise LeafError(f"{name} is a string")


def fast_canonical(document: Mapping[str, object]) -> bytes:
    """The RFC 8785 form of a document of v2 shape (ASCII keys; strings, small integers, lists of strings), by the
    standard library's C encoder: JCS sorts keys by UTF-16 code units, which equals code point order for ASCII, and
    escapes exactly as `json` does with ensure_ascii=False. Lone surrogates are refused by the UTF-8 encoding."""
    try:
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalizationError("a string is not valid Unicode") from None


def public_leaf(document: Mapping[str, object]) -> dict[str, JsonValue]:
    """The public leaf of a v2 entry (see the module docstring)."""
    check_v2(document)
    return {
        "entry": hashlib.sha256(fast_canonical(document)).hexdigest(),
        "id": document["id"],  # type: ignore[dict-item]
        "legal_basis_type": document["legal_basis_type"],  # type: ignore[dict-item]
        "logged_at": document["logged_at"],  # type: ignore[dict-item]
        "retention": document["retention"],  # type: ignore[dict-item]
        "v": V2,
    }


def leaf_data(document: Mapping[str, JsonValue]) -> bytes:
    """The bytes the tree hashes for this entry: the JCS of a v1 entry, the public leaf of a v2 one."""
    version = document.get("v")
    if version == V2:
        return fast_canonical(public_leaf(document))
    if version == V1:
        return canonicalize(document)
    raise LeafError("unknown entry format")


def leaf_of(document: Mapping[str, JsonValue]) -> bytes:
    """The RFC 9162 leaf hash of an entry of either format."""
    return merkle.leaf_hash(leaf_data(document))


def parse_public_leaf(data: bytes) -> dict[str, Any]:
    """A public leaf read back (from a tombstone or an entry bundle): checked to be exactly the canonical bytes of
    a public leaf, so that what is read is what the tree hashed."""
    try:
        found = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LeafError("a public leaf is JSON") from None
    if not isinstance(found, dict) or tuple(sorted(found)) != PUBLIC_FIELDS or found["v"] != V2:
        raise LeafError("not a v2 public leaf")
    if not all(isinstance(found[k], str) for k in ("entry", "id", "logged_at", "retention")):
        raise LeafError("a public leaf's members are strings")
    if fast_canonical(found) != data:
        raise LeafError("a public leaf is in canonical form")
    return found


def payload_commitment(salt: bytes, payload: bytes) -> str:
    """The salted commitment to a released payload (its JCS bytes): hex HMAC-SHA-256 keyed by the salt."""
    if len(salt) != SALT_SIZE:
        raise ValueError(f"a payload salt is {SALT_SIZE} bytes")
    return hmac.new(salt, payload, hashlib.sha256).hexdigest()


def verify_payload(document: Mapping[str, JsonValue], payload: bytes, salt: bytes | None) -> None:
    """Return None if the entry records exactly `payload` (JCS bytes of the data received), else raise
    `LeafError`. A v2 entry needs the salt that came with the data."""
    if document.get("v") == V2:
        if salt is None or len(salt) != SALT_SIZE:
            raise LeafError("a v2 entry's payload is checked with its 32-byte salt")
        expected = payload_commitment(salt, payload)
        if not hmac.compare_digest(str(document.get("payload_commitment")), expected):
            raise LeafError("the entry does not commit to this payload")
        return
    if not hmac.compare_digest(str(document.get("payload_sha256")), hashlib.sha256(payload).hexdigest()):
        raise LeafError("the entry does not record this payload")
