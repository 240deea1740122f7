"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, signed with Ed25519.

The text is byte for byte what Go's `golang.org/x/mod/sumdb/note` signs and opens, and the key strings are its
formats (`<name>+<key id hex>+<base64(0x01 || public key)>`, and `PRIVATE+KEY+...` for the signer), so auditors
can check the broker's checkpoints with the Go tools, and the broker can be checked against Go's test vectors.

Invariants:
- `verify_checkpoint` returns a `Checkpoint` only when a trusted key signed the exact note text it was parsed
  from; `parse_checkpoint` checks syntax only, and its result is as untrusted as its input;
- signatures from keys the caller does not trust are ignored, as the signed-note spec requires (they may be
  witnesses' cosignatures or a rotated key), but a trusted key whose signature fails condemns the whole note;
- everything is refused that the specs refuse and a little more: base64 must be canonical, and a root hash
  must be 32 bytes, since this log's tree is RFC 9162 SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.signing.signer import Signer

ED25519_TYPE = 0x01
ROOT_HASH_SIZE = 32
# Go's note.Open refuses more; the spec requires accepting at least 16.
MAX_SIGNATURES = 100
MAX_TREE_SIZE = 2**64 - 1

_SIGNATURE_PREFIX = "— "  # em dash U+2014, space
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_KEY_ID = re.compile(r"[0-9a-fA-F]{8}", re.ASCII)


class CheckpointError(Exception):
    """Base of every refusal here. Messages name the failed check, never echo the input."""


class MalformedCheckpointError(CheckpointError):
    """Not a signed note, or its text is not a checkpoint body."""


class UntrustedCheckpointError(CheckpointError):
    """No signature from a trusted key (or not the expected origin): the text must be ignored."""


class InvalidSignatureError(CheckpointError):
    """A trusted key's signature does not verify: the note was altered, or forged."""


class InvalidKeyError(CheckpointError, ValueError):
    """A key name or key string is not in the note format."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The note text: what is signed, final newline included."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return "".join(line + "\n" for line in lines)


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted Ed25519 note key, named as in its signature lines."""

    name: str
    key_id: int
    public_key: Ed25519PublicKey

    @classmethod
    def from_key(cls, name: str, public_key: Ed25519PublicKey) -> NoteVerifier:
        return cls(name=name, key_id=key_id(name, public_key), public_key=public_key)

    def vkey(self) -> str:
        """The Go `note` verifier key string."""
        return f"{self.name}+{self.key_id:08x}+{_b64(bytes([ED25519_TYPE]) + _raw(self.public_key))}"


# -- Keys ---------------------------------------------------------------------------------------------------


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    """Standard base64, canonical only: one encoding per byte string, so nothing can hide in padding bits."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedCheckpointError("bad base64") from None
    if _b64(data) != text:
        raise MalformedCheckpointError("non-canonical base64")
    return data


def _check_key_name(name: str) -> None:
    # Signed-note key names: non-empty, no Unicode spaces, no plus (it separates the fields of a key string).
    if not name or "+" in name or any(c.isspace() or c < " " for c in name):
        raise InvalidKeyError("a note key name must be non-empty, without spaces, plus signs or controls")


def key_id(name: str, public_key: Ed25519PublicKey) -> int:
    """C2SP signed-note key ID: the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key), big-endian."""
    _check_key_name(name)
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_TYPE]) + _raw(public_key)).digest()
    return int.from_bytes(digest[:4], "big")


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string auditors configure: `<name>+<key id hex>+<base64(0x01 || public key)>`."""
    return NoteVerifier.from_key(name, public_key).vkey()


def _split_key(text: str, fields: int) -> list[str]:
    parts = text.split("+", fields - 1)
    if len(parts) != fields:
        raise InvalidKeyError("a note key string has too few fields")
    return parts


def _typed_key(name: str, id_hex: str, key64: str) -> bytes:
    _check_key_name(name)
    if not _KEY_ID.fullmatch(id_hex):
        raise InvalidKeyError("a note key ID is 8 hexadecimal digits")
    try:
        key = _unb64(key64)
    except MalformedCheckpointError:
        raise InvalidKeyError("a note key is not canonical base64") from None
    if len(key) != 33 or key[0] != ED25519_TYPE:
        raise InvalidKeyError("not an Ed25519 note key")
    return key[1:]


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Parse a Go `note` verifier key string, checking that its key ID matches its name and key."""
    name, id_hex, key64 = _split_key(vkey, 3)
    raw_key = _typed_key(name, id_hex, key64)
    try:
        public_key = Ed25519PublicKey.from_public_bytes(raw_key)
    except ValueError as exc:
        raise InvalidKeyError("not an Ed25519 public key") from exc
    verifier = NoteVerifier.from_key(name, public_key)
    if verifier.key_id != int(id_hex, 16):
        raise InvalidKeyError("the key ID does not match the key name and key")
    return verifier


def ed25519_public(signer: Signer) -> Ed25519PublicKey:
    """A note signer's public key, which must be Ed25519 (the only note signature type the log writes)."""
    public = signer.public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise InvalidKeyError(f"a note key is Ed25519, not {type(public).__name__}")
    return public


def signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """The Go `note` signer key string, `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>`. Secret."""
    seed = private_key.private_bytes_raw()
    return f"PRIVATE+KEY+{name}+{key_id(name, private_key.public_key()):08x}+{_b64(bytes([ED25519_TYPE]) + seed)}"


def parse_signer_key(skey: str) -> tuple[str, Ed25519PrivateKey]:
    """Parse a Go `note` signer key string into the key name and the private key."""
    private, key, name, id_hex, key64 = _split_key(skey, 5)
    if (private, key) != ("PRIVATE", "KEY"):
        raise InvalidKeyError("not a note signer key")
    private_key = Ed25519PrivateKey.from_private_bytes(_typed_key(name, id_hex, key64))
    if key_id(name, private_key.public_key()) != int(id_hex, 16):
        raise InvalidKeyError("the key ID does not match the key name and key")
    return name, private_key


# -- Signing ------------------------------------------------------------------------------------------------


def sign_checkpoint(
    origin: str,
    size: int,
    root: bytes,
    private_key: Signer,
    key_name: str,
    *,
    extensions: Iterable[str] = (),
) -> str:
    """The signed checkpoint note for the tree of `size` leaves with `root`, signed by `key_name`.

    The log must never sign two checkpoints that no consistency proof links; that is the caller's duty (sign
    only roots computed by the appender from the stored tree).
    """
    checkpoint = Checkpoint(origin=origin, size=size, root=bytes(root), extensions=tuple(extensions))
    body = checkpoint.body()
    # Refuse to sign what no verifier would accept (a newline in the origin, a short root...), rather than
    # publish a signature over it.
    _check_text(body)
    if _parse_body(body) != checkpoint:
        raise MalformedCheckpointError("the checkpoint fields do not make a valid body")
    key = key_id(key_name, ed25519_public(private_key)).to_bytes(4, "big")
    signature = private_key.sign(body.encode("utf-8"))  # the Signer's: a key file's, or an HSM's
    return f"{body}\n{_SIGNATURE_PREFIX}{key_name} {_b64(key + signature)}\n"


# -- Parsing and verifying ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Signature:
    name: str
    key_id: int
    signature: bytes


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise MalformedCheckpointError("a note is text")
    if any(c < " " and c != "\n" for c in text):
        raise MalformedCheckpointError("a note holds no control characters but newlines")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedCheckpointError("a note is valid UTF-8") from None


def _split_note(text: str) -> tuple[str, list[_Signature]]:
    """C2SP signed-note syntax: the text (final newline included), a blank line, one or more signature lines."""
    _check_text(text)
    split = text.rfind("\n\n")
    if split < 0:
        raise MalformedCheckpointError("no blank line before the signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block.endswith("\n"):
        raise MalformedCheckpointError("the signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedCheckpointError("too many signatures")
    signatures = []
    for line in lines:
        if not line.startswith(_SIGNATURE_PREFIX):
            raise MalformedCheckpointError("a signature line starts with an em dash and a space")
        name, _, b64 = line[len(_SIGNATURE_PREFIX) :].partition(" ")
        try:
            _check_key_name(name)
        except InvalidKeyError:
            raise MalformedCheckpointError("bad key name in a signature line") from None
        raw = _unb64(b64)
        if len(raw) < 5:
            raise MalformedCheckpointError("a signature is a key ID and at least one byte")
        signatures.append(_Signature(name, int.from_bytes(raw[:4], "big"), raw[4:]))
    return body, signatures


def _parse_body(body: str) -> Checkpoint:
    """C2SP tlog-checkpoint note text: origin, tree size, root hash, then optional extension lines."""
    if not body.endswith("\n"):
        raise MalformedCheckpointError("a checkpoint body ends with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise MalformedCheckpointError("a checkpoint body is at least three lines, none empty")
    origin, size_text, root_text, *extensions = lines
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > MAX_TREE_SIZE:
        raise MalformedCheckpointError("the tree size is not a decimal without leading zeros")
    root = _unb64(root_text)
    if len(root) != ROOT_HASH_SIZE:
        raise MalformedCheckpointError(f"the root hash is not {ROOT_HASH_SIZE} bytes")
    return Checkpoint(origin=origin, size=int(size_text), root=root, extensions=tuple(extensions))


def parse_checkpoint(text: str) -> Checkpoint:
    """The checkpoint in a signed note, WITHOUT checking any signature: for display and triage only."""
    body, _ = _split_note(text)
    return _parse_body(body)


def _trusted(verifiers: str | NoteVerifier | Iterable[str | NoteVerifier]) -> dict[tuple[str, int], NoteVerifier]:
    if isinstance(verifiers, str | NoteVerifier):
        verifiers = [verifiers]
    trusted: dict[tuple[str, int], NoteVerifier] = {}
    for v in verifiers:
        verifier = parse_verifier_key(v) if isinstance(v, str) else v
        known = trusted.setdefault((verifier.name, verifier.key_id), verifier)
        if _raw(known.public_key) != _raw(verifier.public_key):
            # Two keys with one name and ID: whoever built this list has been fooled; refuse to guess.
            raise InvalidKeyError("two trusted keys share a name and key ID")
    return trusted


def open_note(text: str, verifiers: str | NoteVerifier | Iterable[str | NoteVerifier]) -> str:
    """The text of a signed note (final newline included) if a trusted key signed it; raises otherwise.

    Go's `note.Open` rules: signatures by unknown keys are skipped, every signature by a trusted key must
    verify, and at least one must exist.
    """
    trusted = _trusted(verifiers)
    if not trusted:
        # An empty trust list must refuse everything, never mean "trust anyone".
        raise UntrustedCheckpointError("no trusted keys")
    # 1. Signed-note syntax.
    body, signatures = _split_note(text)
    message = body.encode("utf-8")
    # 2. Every signature by a trusted key must verify, repeated ones too (Go skips repeats; the spec says a
    #    known key's signature MUST be verified). Others are not ours to judge: witnesses, rotated keys.
    verified = 0
    for sig in signatures:
        verifier = trusted.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        try:
            verifier.public_key.verify(sig.signature, message)
        except InvalidSignature:
            raise InvalidSignatureError("a trusted key's signature does not verify") from None
        verified += 1
    # 3. At least one did.
    if not verified:
        raise UntrustedCheckpointError("no signature from a trusted key")
    return body


def verify_checkpoint(
    text: str,
    verifiers: str | NoteVerifier | Iterable[str | NoteVerifier],
    *,
    origin: str | None = None,
) -> Checkpoint:
    """The checkpoint in `text`, if a trusted key signed it; raises a `CheckpointError` otherwise.

    `verifiers` are the trusted keys, as `NoteVerifier`s or verifier key strings. Pass `origin` to also require
    the log's identity: a key that signs for several logs would otherwise let one log's checkpoint pass for
    another's.
    """
    # 1. The signature, before the text is worth reading.
    checkpoint = _parse_body(open_note(text, verifiers))
    # 2. The log the caller asked about.
    if origin is not None and checkpoint.origin != origin:
        raise UntrustedCheckpointError("the checkpoint is for another log")
    return checkpoint
