"""A C2SP tlog-witness, written for the tests strictly from the specs (tlog-witness, tlog-cosignature, signed-note,
RFC 9162 §2.1.4.2), with nothing of broker/: no existing witness (litewitness, the transparency-dev witness) can run
here without Go. It keeps, per origin, the latest cosigned size and root, checks and updates them atomically, and
answers each status code the spec names."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from dataclasses import dataclass, field

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

EMPTY_ROOT = hashlib.sha256(b"").digest()


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def consistent(first: int, second: int, proof: list[bytes], first_hash: bytes, second_hash: bytes) -> bool:
    """RFC 9162 §2.1.4.2, step by step."""
    if first == second:
        return not proof and first_hash == second_hash
    if first == 0 or first > second:
        return False
    if first & (first - 1) == 0:  # 1. a power of 2: prepend first_hash
        proof = [first_hash, *proof]
    if not proof:
        return False
    fn, sn = first - 1, second - 1  # 2.
    while fn & 1:  # 3.
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]  # 4.
    for c in proof[1:]:  # 5.
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            if not fn & 1:
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0  # 6.


@dataclass
class SpecWitness:
    name: str
    log_keys: dict[str, tuple[str, Ed25519PublicKey]]
    """origin -> (the log's key name, its Ed25519 note key)."""
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    state: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    requests: list[tuple[int, str]] = field(default_factory=list)
    """(status answered, origin) of every request, for the tests."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def vkey(self) -> str:
        """tlog-cosignature: `<name>+<key id>+base64(0x04 || key)`."""
        raw = _raw(self.key.public_key())
        key_id = hashlib.sha256(self.name.encode() + b"\n\x04" + raw).digest()[:4]
        typed = base64.b64encode(b"\x04" + raw).decode()
        return f"{self.name}+{key_id.hex()}+{typed}"

    def cosign(self, body: str, timestamp: int) -> str:
        message = f"cosignature/v1\ntime {timestamp}\n{body}".encode()
        key_id = hashlib.sha256(self.name.encode() + b"\n\x04" + _raw(self.key.public_key())).digest()[:4]
        blob = key_id + timestamp.to_bytes(8, "big") + self.key.sign(message)
        return f"\u2014 {self.name} {base64.b64encode(blob).decode()}\n"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/add-checkpoint", self.add_checkpoint)
        return app

    def _answer(self, status: int, origin: str, text: str = "", content_type: str = "text/plain") -> web.Response:
        self.requests.append((status, origin))
        return web.Response(status=status, text=text, content_type=content_type)

    async def add_checkpoint(self, request: web.Request) -> web.Response:
        raw = (await request.read()).decode("utf-8")
        head, sep, note = raw.partition("\n\n")
        lines = head.split("\n")
        if not sep or not lines[0].startswith("old ") or not lines[0][4:].isdigit() or len(lines) - 1 > 63:
            return self._answer(400, "")
        old = int(lines[0][4:])
        try:
            proof = [base64.b64decode(x, validate=True) for x in lines[1:]]
        except ValueError:
            return self._answer(400, "")
        # the checkpoint: a signed note whose text is origin, size, root
        split = note.rfind("\n\n")
        text, signatures = note[: split + 1], note[split + 2:].rstrip("\n").split("\n")
        origin, size_text, root64 = text.rstrip("\n").split("\n")[:3]
        if origin not in self.log_keys:
            return self._answer(404, origin)
        key_name, log_key = self.log_keys[origin]
        key_id = hashlib.sha256(key_name.encode() + b"\n\x01" + _raw(log_key)).digest()[:4]
        verified = False
        for line in signatures:
            _, name, blob64 = line.split(" ")
            blob = base64.b64decode(blob64)
            if name == key_name and blob[:4] == key_id:
                try:
                    log_key.verify(blob[4:], text.encode())
                except InvalidSignature:
                    return self._answer(403, origin)
                verified = True
        if not verified:
            return self._answer(403, origin)
        size, root = int(size_text), base64.b64decode(root64)
        if old > size:
            return self._answer(400, origin)
        async with self.lock:  # check and persist atomically
            latest_size, latest_root = self.state.get(origin, (0, EMPTY_ROOT))
            if old != latest_size:
                return self._answer(409, origin, f"{latest_size}\n", "text/x.tlog.size")
            if size == 0 and root != EMPTY_ROOT:
                return self._answer(422, origin)
            if old == 0 and proof:
                return self._answer(422, origin)
            if old and not consistent(old, size, proof, latest_root, root):
                return self._answer(422, origin)
            self.state[origin] = (size, root)
        return self._answer(200, origin, self.cosign(text, int(time.time())))
