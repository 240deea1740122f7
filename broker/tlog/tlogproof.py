"""Offline proofs of inclusion in the C2SP tlog-proof format (`c2sp.org/tlog-proof@v1`).

A proof holds the entry's index, its RFC 9162 inclusion proof and the checkpoint (with the witnesses' cosignatures)
it leads to: with the log's verifier key and the witnesses' keys, anyone checks it anywhere, without the broker.
The optional `extra` line carries, for a v2 entry, its public leaf (what the tree hashes, public in the entry
bundles anyway); the entry itself stays with those entitled to it (the consumer's answer, the citizen's journal),
who check that it hashes to the proved leaf. The extra data is not trusted: the leaf it gives must be proved too.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from broker.tlog import leaves, merkle
from broker.tlog.checkpoint import Checkpoint, NoteVerifier
from broker.tlog.jcs import JsonValue
from broker.tlog.witness import Cosigner, WitnessError, verify_cosigned

HEADER = "c2sp.org/tlog-proof@v1"
MAX_PROOF = 63
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)


class ProofFormatError(ValueError):
    """Not a tlog-proof."""


class ProofError(Exception):
    """A tlog-proof that does not verify; the message names the step."""


@dataclass(frozen=True, slots=True)
class TlogProof:
    index: int
    proof: tuple[bytes, ...]
    checkpoint: str
    extra: bytes | None = None

    def text(self) -> str:
        lines = [HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode("ascii"))
        lines.append(f"index {self.index}")
        lines.extend(base64.b64encode(h).decode("ascii") for h in self.proof)
        return "\n".join(lines) + "\n\n" + self.checkpoint


def _b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProofFormatError(f"the {what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ProofFormatError(f"the {what} is not canonical base64")
    return raw


def parse(text: str) -> TlogProof:
    """Parse a tlog-proof, strictly: header, optional extra, index, hashes, a blank line, the checkpoint."""
    head, sep, note = text.partition("\n\n")
    if not sep or not note:
        raise ProofFormatError("no blank line before the checkpoint")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise ProofFormatError(f"the first line is not {HEADER}")
    rest = lines[1:]
    extra = None
    if rest and rest[0].startswith("extra "):
        extra = _b64(rest.pop(0)[len("extra "):], "extra data")
    if not rest or not rest[0].startswith("index ") or not _DECIMAL.fullmatch(rest[0][len("index "):]):
        raise ProofFormatError("an index line `index <decimal>` must follow")
    index = int(rest[0][len("index "):])
    hashes = rest[1:]
    if len(hashes) > MAX_PROOF:
        raise ProofFormatError("too many proof lines")
    proof = []
    for h in hashes:
        raw = _b64(h, "proof hash")
        if len(raw) != merkle.HASH_SIZE:
            raise ProofFormatError("a proof hash is 32 bytes")
        proof.append(raw)
    return TlogProof(index, tuple(proof), note, extra)


def make(index: int, proof: Sequence[bytes], checkpoint: str, public_leaf: bytes | None = None) -> str:
    return TlogProof(index, tuple(proof), checkpoint, public_leaf).text()


def verify(text: str, log_verifiers: str | NoteVerifier | Iterable[str | NoteVerifier], *, origin: str,
           entry: Mapping[str, JsonValue] | None = None, witnesses: Iterable[str | Cosigner] = (),
           quorum: int = 0) -> tuple[TlogProof, Checkpoint]:
    """Verify a tlog-proof for `entry` (or, without it, for the public leaf in its extra data); raises `ProofError`.

    The steps of tlog-proof §Verifying: 1. the leaf hash, 2. the checkpoint's origin and log signature, 3. the
    witnesses' cosignatures (k of n), 4. the inclusion proof."""
    try:
        found = parse(text)
    except ProofFormatError as exc:
        raise ProofError(f"not a tlog-proof: {exc}") from None
    # 1. The leaf: from the entry the verifier holds, or from the public leaf carried (then checked for shape).
    try:
        if entry is not None:
            leaf = leaves.leaf_of(entry)
            if found.extra is not None and entry.get("v") == leaves.V2 and \
                    not hmac.compare_digest(leaves.leaf_data(entry), found.extra):
                raise ProofError("the extra data is not this entry's public leaf")
        elif found.extra is not None:
            leaves.parse_public_leaf(found.extra)
            leaf = merkle.leaf_hash(found.extra)
        else:
            raise ProofError("no entry given, and the proof carries no public leaf")
    except ValueError as exc:
        raise ProofError(f"the leaf cannot be computed: {exc}") from None
    # 2. and 3. The checkpoint: this log, its key, and enough witnesses.
    try:
        signed = verify_cosigned(found.checkpoint, log_verifiers, origin=origin, witnesses=witnesses, quorum=quorum)
    except WitnessError as exc:
        raise ProofError(str(exc)) from None
    # 4. The leaf is in that tree.
    try:
        merkle.verify_inclusion(leaf, found.index, signed.size, list(found.proof), signed.root)
    except merkle.MerkleError as exc:
        raise ProofError(f"the inclusion proof does not verify: {exc}") from None
    return found, signed
