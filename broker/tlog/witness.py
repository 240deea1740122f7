"""Witnesses: C2SP tlog-cosignature (Ed25519, `cosignature/v1`) and the client side of C2SP tlog-witness.

A witness cosigns a checkpoint once it has checked that it extends the last one it saw from this log: a quorum of
witnesses makes a split view (one tree for a citizen, another for the auditors) visible. The log submits each new
checkpoint with a consistency proof from the witness's last size (`Witnessing`), verifies and stores the
cosignatures, and serves its checkpoints with them appended (signed-note lines: verifiers that do not know a
witness ignore its line).

Invariants:
- a cosignature is stored only after it verified against the configured witness key, over exactly the checkpoint
  submitted;
- `verify_cosigned` returns a checkpoint only if the log's key signed it and at least `quorum` distinct configured
  witnesses cosigned it; a line naming a configured witness (name and key ID) that fails to verify condemns the
  note, as the signed-note spec recommends; a quorum larger than the witnesses given refuses everything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.storage import db
from broker.tlog import checkpoint, merkle
from broker.tlog.checkpoint import Checkpoint, CheckpointError, NoteVerifier

log = structlog.get_logger(__name__)

COSIGNATURE_TYPE = 0x04
COSIGNATURE_HEADER = "cosignature/v1"
MAX_TIMESTAMP = 2**63 - 1
_PREFIX = "— "


class WitnessError(Exception):
    """A cosignature or a cosigned checkpoint that does not verify, or a witness key that is not one."""


class WitnessConflict(WitnessError):
    """409: the witness's latest cosigned size is not the old size sent."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the witness is at size {size}")
        self.size = size


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class Cosigner:
    """A witness's Ed25519 cosignature key (signature type 0x04)."""

    name: str
    key_id: int
    public_key: Ed25519PublicKey = field(repr=False, hash=False, compare=False)  # (name, key ID) names it

    @classmethod
    def from_key(cls, name: str, public_key: Ed25519PublicKey) -> Cosigner:
        return cls(name, cosigner_key_id(name, public_key), public_key)

    @property
    def label(self) -> str:
        """`<name>+<key id hex>`: how the log's tables name this witness key."""
        return f"{self.name}+{self.key_id:08x}"

    def vkey(self) -> str:
        return f"{self.label}+{_b64(bytes([COSIGNATURE_TYPE]) + _raw(self.public_key))}"


def cosigner_key_id(name: str, public_key: Ed25519PublicKey) -> int:
    """SHA-256(<name> || "\\n" || 0x04 || public key)[:4], big-endian (tlog-cosignature §Format)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_TYPE]) + _raw(public_key)).digest()
    return int.from_bytes(digest[:4], "big")


def parse_cosigner_key(vkey: str) -> Cosigner:
    """A witness verifier key `<name>+<key id>+<base64(0x04 || Ed25519 key)>`, its key ID checked."""
    parts = vkey.split("+", 2)
    if len(parts) != 3 or not parts[0] or any(c.isspace() for c in parts[0]):
        raise WitnessError("a witness key is <name>+<key id>+<key>")
    name, id_hex, key64 = parts
    try:
        raw = base64.b64decode(key64, validate=True)
        claimed = int(id_hex, 16) if len(id_hex) == 8 else -1
    except (binascii.Error, ValueError):
        raise WitnessError("a witness key's id is hex and its key base64") from None
    if len(raw) != 33 or raw[0] != COSIGNATURE_TYPE:
        raise WitnessError("not an Ed25519 cosignature key (type 0x04)")
    cosigner = Cosigner.from_key(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
    if cosigner.key_id != claimed:
        raise WitnessError("the key ID does not match the witness name and key")
    return cosigner


def cosignature_message(body: str, timestamp: int) -> bytes:
    """What an Ed25519 cosignature signs: the header line, the time line, then the checkpoint's note text."""
    return f"{COSIGNATURE_HEADER}\ntime {timestamp}\n{body}".encode()


def cosign(name: str, key: Ed25519PrivateKey, body: str, timestamp: int) -> str:
    """A cosignature line over the checkpoint note text `body` (what a witness returns)."""
    signature = key.sign(cosignature_message(body, timestamp))
    key_id = cosigner_key_id(name, key.public_key()).to_bytes(4, "big")
    return f"{_PREFIX}{name} {_b64(key_id + timestamp.to_bytes(8, 'big') + signature)}"


@dataclass(frozen=True, slots=True)
class Cosignature:
    cosigner: Cosigner
    timestamp: int
    line: str


def _signature_lines(note: str) -> tuple[str, list[str]]:
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise WitnessError("not a signed note")
    return note[: split + 1], note[split + 2 : -1].split("\n")


def _match(line: str, cosigners: dict[tuple[str, int], Cosigner]) -> tuple[Cosigner, bytes] | None:
    if not line.startswith(_PREFIX):
        raise WitnessError("a signature line starts with an em dash and a space")
    name, _, blob = line[len(_PREFIX):].partition(" ")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise WitnessError("a signature line is not base64") from None
    if len(raw) < 4:
        raise WitnessError("a signature line is too short")
    cosigner = cosigners.get((name, int.from_bytes(raw[:4], "big")))
    return None if cosigner is None else (cosigner, raw[4:])


def verify_cosignature(line: str, body: str, cosigner: Cosigner) -> Cosignature:
    """The cosignature in `line`, by `cosigner`, over the checkpoint note text `body`; raises `WitnessError`."""
    found = _match(line, {(cosigner.name, cosigner.key_id): cosigner})
    if found is None:
        raise WitnessError("the line is not by this witness key")
    _, payload = found
    if len(payload) != 8 + 64:
        raise WitnessError("an Ed25519 cosignature is a timestamp and a 64-byte signature")
    timestamp = int.from_bytes(payload[:8], "big")
    if timestamp > MAX_TIMESTAMP:
        raise WitnessError("the cosignature's timestamp exceeds 2^63 - 1")
    try:
        cosigner.public_key.verify(payload[8:], cosignature_message(body, timestamp))
    except InvalidSignature:
        raise WitnessError(f"the cosignature of {cosigner.name} does not verify") from None
    return Cosignature(cosigner, timestamp, line)


def _cosigners(witnesses: Iterable[str | Cosigner]) -> dict[tuple[str, int], Cosigner]:
    found = [parse_cosigner_key(w) if isinstance(w, str) else w for w in witnesses]
    return {(c.name, c.key_id): c for c in found}


def cosignatures(note: str, witnesses: Iterable[str | Cosigner]) -> list[Cosignature]:
    """Every verified cosignature in `note` by one of `witnesses`; lines of other keys are ignored, a bad line of a
    known witness raises."""
    known = _cosigners(witnesses)
    body, lines = _signature_lines(note)
    found: dict[Cosigner, Cosignature] = {}
    for line in lines:
        matched = _match(line, known)
        if matched is not None:
            cosig = verify_cosignature(line, body, matched[0])
            found.setdefault(cosig.cosigner, cosig)
    return list(found.values())


def verify_cosigned(note: str, log_verifiers: str | NoteVerifier | Iterable[str | NoteVerifier], *, origin: str,
                    witnesses: Iterable[str | Cosigner] = (), quorum: int = 0) -> Checkpoint:
    """The checkpoint in `note` if the log signed it and `quorum` of `witnesses` cosigned it; raises otherwise."""
    known = list(witnesses)
    # 1. The policy: k of n, where an impossible k refuses rather than passes.
    if quorum > len(_cosigners(known)):
        raise WitnessError(f"a quorum of {quorum} needs at least as many witness keys")
    # 2. The log's own signature.
    try:
        signed = checkpoint.verify_checkpoint(note, log_verifiers, origin=origin)
    except CheckpointError as exc:
        raise WitnessError(f"the checkpoint does not verify: {exc}") from None
    # 3. The cosignatures.
    found = cosignatures(note, known)
    if len(found) < quorum:
        raise WitnessError(f"{len(found)} of the {quorum} witness cosignatures required")
    return signed


# -- Submitting checkpoints ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Witness:
    cosigner: Cosigner
    url: str
    """The submission prefix: checkpoints go to <url>/add-checkpoint."""


def add_checkpoint_body(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The tlog-witness add-checkpoint request: old size line, proof lines, a blank line, the checkpoint."""
    return "".join([f"old {old_size}\n", *(f"{_b64(h)}\n" for h in proof), "\n", note]).encode()


async def add_checkpoint(session: aiohttp.ClientSession, witness: Witness, old_size: int, proof: Sequence[bytes],
                         note: str) -> list[Cosignature]:
    """Submit `note` to the witness; its verified cosignatures. `WitnessConflict` carries the witness's size."""
    async with session.post(f"{witness.url}/add-checkpoint", data=add_checkpoint_body(old_size, proof, note),
                            headers={"Content-Type": "text/plain; charset=utf-8"}) as resp:
        text = (await resp.read()).decode("utf-8", errors="replace")
        if resp.status == 409 and resp.content_type == "text/x.tlog.size":
            size = text.strip()
            if not size.isascii() or not size.isdigit():
                raise WitnessError("the witness's 409 does not give its size")
            raise WitnessConflict(int(size))
        if resp.status != 200:
            raise WitnessError(f"the witness answered {resp.status}: {text[:200]}")
    body, _ = _signature_lines(note)
    found = [verify_cosignature(line, body, witness.cosigner)
             for line in text.split("\n") if line and _match(line, {(witness.cosigner.name,
                                                                     witness.cosigner.key_id): witness.cosigner})]
    if not found:
        raise WitnessError("the witness returned no cosignature by its configured key")
    return found


_FAILURES: tuple[type[BaseException], ...] = (WitnessError, aiohttp.ClientError, TimeoutError, merkle.MerkleError,
                                              *db.DB_ERRORS)


class Witnessing:
    """Submits the latest checkpoint to every witness that has not cosigned it, and stores the cosignatures."""

    def __init__(self, pool: asyncpg.Pool, witnesses: Sequence[Witness], session: aiohttp.ClientSession,
                 nodes: merkle.NodeReader) -> None:
        self.pool = pool
        self.nodes = nodes
        self.witnesses = witnesses
        self.session = session
        self.sizes: dict[Cosigner, int] = {}  # each witness's size as last known (the 409 tells when it is stale)

    async def _submit(self, witness: Witness, size: int, note: str, node_store: merkle.NodeReader) -> None:
        old = self.sizes.get(witness.cosigner)
        if old is None:
            old = await self.pool.fetchval(_q()["tlog_cosigned_size"], witness.cosigner.label) or 0
        for _ in range(2):  # once more after a 409 names the witness's real size
            if old == size:
                self.sizes[witness.cosigner] = size
                return
            if old > size:
                raise WitnessError(f"the witness is at size {old}, beyond this log's {size}: a fork, or a rollback")
            proof = [] if old == 0 else await merkle.consistency_proof(old, size, node_store)
            try:
                found = await add_checkpoint(self.session, witness, old, proof, note)
            except WitnessConflict as conflict:
                old = conflict.size
                continue
            for cosig in found:
                await self.pool.execute(_q()["tlog_cosignature_insert"], size, witness.cosigner.label, cosig.line,
                                        cosig.timestamp)
            self.sizes[witness.cosigner] = size
            return

    async def round(self) -> None:
        row = await self.pool.fetchrow(_q()["tlog_checkpoint_bare_latest"])
        if row is None:
            return
        size, note = row["size"], row["note"]
        for witness in self.witnesses:
            try:
                await self._submit(witness, size, note, self.nodes)
            except _FAILURES as exc:
                log.warning("witness did not cosign", witness=witness.cosigner.name, size=size,
                            error=f"{type(exc).__name__}: {exc}")

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad round stop the cosigning of the next checkpoints
                log.exception("witness round failed")
            await asyncio.sleep(interval)


def _q() -> dict[str, str]:
    return db.queries("broker.tlog", "tlog.sql")
