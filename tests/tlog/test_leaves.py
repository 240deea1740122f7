"""Leaf formats: v1 and v2 as docs/transparency-log.md defines them, the v2 shape, and its fast canonical form being
exactly RFC 8785 (checked against broker/tlog/jcs.py, itself checked against the RFC's vectors)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.tlog import leaves
from broker.tlog.jcs import canonicalize

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # any Unicode but lone surrogates


def v2(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 2, "id": str(uuid.uuid4()), "logged_at": "2026-11-22T14:57:44.076502Z", "request_id": str(uuid.uuid4()),
        "consumer": "21750001600019", "kid": "k", "dataset": "quotient_familial", "dataset_version": 1,
        "purpose": "p", "recipient": "21750001600019", "habilitation_id": "h", "legal_basis_type": "information",
        "legal_basis_title": "CRPA, article L114-8", "legal_basis_url": "https://legifrance.gouv.fr/",
        "fields_requested": ["quotient_familial"], "fields_released": ["quotient_familial"], "outcome": "released",
        "problem_type": None, "http_status": 200, "latency_us": 12930, "payload_commitment": "ab" * 32,
        "subject_key": "cd" * 32, "retention": "P1Y", "request_signature_sha256": "ef" * 32}
    doc.update(changes)
    return doc


@st.composite
def v2_entries(draw: st.DrawFn) -> dict[str, Any]:
    doc = v2()
    for name in leaves.V2_FIELDS:
        if name in ("dataset_version", "http_status", "latency_us"):
            doc[name] = draw(st.integers(-(2**53) + 1, 2**53 - 1))
        elif name in ("fields_requested", "fields_released"):
            doc[name] = draw(st.lists(TEXT, max_size=4))
        elif name in ("id", "logged_at", "request_id", "outcome", "retention"):
            doc[name] = draw(TEXT)
        else:
            doc[name] = draw(st.none() | TEXT)
    return doc


@settings(max_examples=400, deadline=None)
@given(v2_entries())
def test_the_fast_canonical_form_of_a_v2_entry_is_rfc_8785(doc: dict[str, Any]) -> None:
    leaves.check_v2(doc)
    assert leaves.fast_canonical(doc) == canonicalize(doc)
    assert leaves.fast_canonical(leaves.public_leaf(doc)) == canonicalize(leaves.public_leaf(doc))


def test_both_formats_hash_as_documented() -> None:
    v1 = {"v": 1, "id": "x", "latency_ms": 12.93, "payload_sha256": "00" * 32}
    assert leaves.leaf_of(v1) == hashlib.sha256(b"\x00" + canonicalize(v1)).digest()
    doc = v2()
    public = {"entry": hashlib.sha256(canonicalize(doc)).hexdigest(), "id": doc["id"],
              "legal_basis_type": "information", "logged_at": doc["logged_at"], "retention": "P1Y", "v": 2}
    assert leaves.leaf_data(doc) == canonicalize(public)
    assert leaves.leaf_of(doc) == hashlib.sha256(b"\x00" + canonicalize(public)).digest()
    assert leaves.parse_public_leaf(leaves.leaf_data(doc)) == public
    with pytest.raises(leaves.LeafError):
        leaves.leaf_of({"v": 3, "id": "x"})


@pytest.mark.parametrize("change", [
    {"latency_us": 12.5}, {"latency_us": True}, {"http_status": 2**53}, {"latency_us": None}, {"retention": None},
    {"fields_released": ["a", 1]}, {"consumer": 21750001600019}, {"extra": "x"},
])
def test_the_v2_shape_is_fixed(change: dict[str, Any]) -> None:
    with pytest.raises(leaves.LeafError):
        leaves.check_v2(v2(**change))
    missing = v2()
    del missing["retention"]
    with pytest.raises(leaves.LeafError):
        leaves.check_v2(missing)


def test_a_public_leaf_read_back_must_be_canonical() -> None:
    data = leaves.leaf_data(v2())
    for bad in (data.replace(b",", b", "), json.dumps({**json.loads(data), "v": 1}).encode(), b"[]", b"\xff",
                json.dumps({**json.loads(data), "extra": 1}, sort_keys=True, separators=(",", ":")).encode()):
        with pytest.raises(leaves.LeafError):
            leaves.parse_public_leaf(bad)


def test_the_payload_commitment_is_salted() -> None:
    salt, payload = b"\x01" * 32, b'{"quotient_familial":{"valeur":800}}'
    commitment = leaves.payload_commitment(salt, payload)
    assert commitment == hmac.new(salt, payload, "sha256").hexdigest()
    doc = v2(payload_commitment=commitment)
    leaves.verify_payload(doc, payload, salt)
    for wrong_payload, wrong_salt in ((b'{"quotient_familial":{"valeur":801}}', salt), (payload, b"\x02" * 32),
                                      (payload, None)):
        with pytest.raises(leaves.LeafError):
            leaves.verify_payload(doc, wrong_payload, wrong_salt)
    # unlike v1's plain hash, the commitment of a small value is not found by trying every value without the salt
    assert all(hashlib.sha256(f'{{"quotient_familial":{{"valeur":{v}}}}}'.encode()).hexdigest() != commitment
               for v in range(2000))
    with pytest.raises(ValueError):
        leaves.payload_commitment(b"short", payload)
