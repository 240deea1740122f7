"""The links in mails act without a login: confirming an address, unsubscribing. Each carries a token naming one
subscription, signed so that it cannot be forged or moved to another subscription or another action.

Token: base64url(subscription id (16 bytes) || HMAC-SHA-256(key, action || id)[:16]). The key is derived from the
broker's subject-key secret (HMAC with a label of its own), so no new secret file is needed and every broker process
shares it. A subscription that is deleted (unsubscribed) or replaced (a new address gets a new id) makes its old
links worthless; the unsubscribe link of a mail keeps working as long as the subscription it was sent for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid

CONFIRM = "confirm"
UNSUBSCRIBE = "unsubscribe"
SETTINGS_PATH = "/citizen/notifications"
CONFIRM_PATH = SETTINGS_PATH + "/confirmer/"
UNSUBSCRIBE_PATH = SETTINGS_PATH + "/desabonnement/"
"""The pages the links lead to (`broker.citizen.portal.notifications`), followed by the token."""
_LABEL = b"dlnuf/mail-links/v1"
_MAC = 16


class InvalidLink(ValueError):
    """A link token that is malformed, forged, or made for another action."""


def link_key(subject_secret: bytes) -> bytes:
    return hmac.new(subject_secret, _LABEL, hashlib.sha256).digest()


def _mac(key: bytes, action: str, subscription_id: uuid.UUID) -> bytes:
    return hmac.new(key, action.encode() + b"\0" + subscription_id.bytes, hashlib.sha256).digest()[:_MAC]


def sign(key: bytes, action: str, subscription_id: uuid.UUID) -> str:
    raw = subscription_id.bytes + _mac(key, action, subscription_id)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def verify(key: bytes, action: str, token: str) -> uuid.UUID:
    """The subscription a token names for `action`; raise `InvalidLink` otherwise."""
    if not 40 <= len(token) <= 48 or not token.isascii():
        raise InvalidLink("malformed link token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidLink("malformed link token") from None
    # Only the spelling `sign` makes: the last character of 32 bytes in base64 carries 2 spare bits, and the decoder
    # drops characters outside the alphabet, so other strings would name the same bytes: one link, one token.
    if len(raw) != 16 + _MAC or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
        raise InvalidLink("malformed link token")
    subscription_id = uuid.UUID(bytes=raw[:16])
    if not hmac.compare_digest(raw[16:], _mac(key, action, subscription_id)):
        raise InvalidLink("link token does not verify")
    return subscription_id
