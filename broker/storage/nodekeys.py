"""The keys every broker node must share, checked against the fingerprints recorded in PostgreSQL.

Several nodes on one database must sign with the same response key and log key and derive the same subject keys:
otherwise `log verify` fails whichever key it trusts, and a citizen's journal splits in two. The operator
distributes the key files (or plugs the same HSM key, broker/signing/signer.py); the database is where the nodes
compare them. Invariant: a node serves only with keys whose fingerprints are the database's current ones; the
first node records them (one INSERT per key, so two nodes starting at once agree on one winner).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from broker.storage import db

_SECRET_LABEL = b"dlnuf/node-key-fingerprint/v1"


class KeyMismatch(Exception):
    """This node's key is not the one the database knows."""


@dataclass(frozen=True, slots=True)
class NodeKey:
    name: str
    """What the operator calls it: "signing key (DLNUF_SIGNING_KEY)", ..."""
    fingerprint: str
    where: str
    """The file (or HSM reference) it came from, for the message."""


def secret_fingerprint(secret: bytes) -> str:
    """A secret's fingerprint: an HMAC under the secret itself, which says whether two secrets are equal and nothing
    else about them."""
    return hmac.new(secret, _SECRET_LABEL, hashlib.sha256).hexdigest()[:32]


def public_fingerprint(public: str) -> str:
    return hashlib.sha256(public.encode("utf-8")).hexdigest()[:32]


def _queries() -> dict[str, str]:
    return db.queries("broker.storage", "nodekeys.sql")


async def verify(conn: asyncpg.Connection | asyncpg.Pool, keys: Mapping[str, NodeKey]) -> None:
    """None when every key is the database's current one (recording those it does not know yet), else
    `KeyMismatch` naming each key that differs."""
    wrong = []
    for name, key in keys.items():
        await conn.execute(_queries()["node_key_record"], name, key.fingerprint)
        current = await conn.fetchrow(_queries()["node_key_current"], name)
        if current["fingerprint"] == key.fingerprint:
            continue
        retired = await conn.fetchval(_queries()["node_key_retired"], name, key.fingerprint)
        state = (f"retired on {retired:%Y-%m-%d %H:%M} UTC" if retired is not None
                 else f"not the one recorded on {current['recorded_at']:%Y-%m-%d %H:%M} UTC "
                      f"(fingerprint {current['fingerprint']})")
        wrong.append(f"the {key.name} in {key.where} (fingerprint {key.fingerprint}) is {state}")
    if wrong:
        raise KeyMismatch(
            "this node's keys differ from those the database knows: " + "; ".join(wrong) + ". Every node must use "
            "the same key files: copy them from a running node, or, to change a key on purpose, "
            "`python -m broker keys rotate` (docs/operations.md, « Keys of several nodes »)")


async def rotate(conn: asyncpg.Connection, keys: Mapping[str, NodeKey], names: list[str]) -> list[str]:
    """Make this node's keys `names` the current ones, the previous ones retired; the messages of what changed."""
    done = []
    async with conn.transaction():
        for name in names:
            key = keys[name]
            old = await conn.fetchval(_queries()["node_key_retire"], name)
            await conn.execute(_queries()["node_key_adopt"], name, key.fingerprint)
            if old != key.fingerprint:
                done.append(f"{key.name}: {old or 'none'} -> {key.fingerprint}")
    return done
