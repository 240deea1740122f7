"""Signed consent receipts: a JWS by the broker's key that the citizen downloads and anyone verifies with the
broker's public JWKS (`/.well-known/jwks.json`).

The payload names its members after ISO/IEC TS 27560 (consent record information structure) and the W3C Data
Privacy Vocabulary (DPV) where they have a name; the data subject appears only as the keyed subject hash.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from broker.signing import jose
from broker.signing.keys import PrivateKey, PublicKey
from consent.records import Consent

RECEIPT_TYPE = "dlnuf-consent-receipt+jwt"


def receipt_claims(consent: Consent, *, issuer: str, provider_name: str, now: datetime) -> dict[str, Any]:
    return {
        "iss": issuer,
        "iat": int(now.timestamp()),
        "jti": str(uuid.uuid4()),
        "schema_version": "ISO/IEC TS 27560:2023",
        "record_id": str(consent.id),
        "data_subject": {"identifier_type": "keyed-hash", "identifier": consent.subject_key},
        "dpv:hasDataController": {"name": consent.controller_name, "siret": consent.controller},
        "dpv:hasRecipient": consent.recipient,
        "dpv:hasDataSource": {"name": provider_name, "siret": consent.provider},
        "dpv:hasPurpose": consent.purpose,
        "dpv:hasPersonalData": list(consent.fields),
        "personal_data_refused": list(consent.fields_refused),
        "dpv:hasLegalBasis": {"type": "dpv:Consent", "title": consent.legal_basis_title,
                              "url": consent.legal_basis_url},
        "dataset": {"id": consent.dataset, "version": consent.dataset_version},
        "state": consent.state_at(now),
        "collection_method": consent.method,
        "frequency": consent.frequency,
        "max_uses": consent.max_uses,
        "uses": consent.uses,
        "given_at": (consent.decided_at or consent.created_at).isoformat(),
        "expiry": consent.expires_at.isoformat(),
        "revoked_at": consent.revoked_at.isoformat() if consent.revoked_at else None,
    }


def sign_receipt(consent: Consent, *, key: PrivateKey, issuer: str, provider_name: str, now: datetime) -> str:
    claims = receipt_claims(consent, issuer=issuer, provider_name=provider_name, now=now)
    return jose.sign_jwt(claims, key, typ=RECEIPT_TYPE)


def verify_receipt(receipt: str, keys: dict[str, PublicKey]) -> dict[str, Any]:
    """Verify with the broker's published keys; raise `jose.JoseError` when it does not verify."""
    header, _ = jose.peek(receipt)
    if header.get("typ") != RECEIPT_TYPE:
        raise jose.JoseError("not a DLNUF consent receipt")
    key = keys.get(str(header.get("kid")))
    if key is None:
        raise jose.JoseError("unknown key")
    _, claims = jose.verify(receipt, key, algorithms=jose.algorithms_for(key))
    return claims
