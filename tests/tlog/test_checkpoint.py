"""Checkpoints: the exact bytes, an Ed25519 check independent of our verifier, Go interoperability, refusals."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.tlog import checkpoint as cp
from broker.tlog.checkpoint import (
    Checkpoint,
    CheckpointError,
    InvalidKeyError,
    InvalidSignatureError,
    MalformedCheckpointError,
    NoteVerifier,
    UntrustedCheckpointError,
)

ORIGIN = "dlnuf.example.gouv.fr/log"
ROOT = hashlib.sha256(b"some tree").digest()
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))

# golang.org/x/mod/sumdb/note's own test keys and signed note (note_test.go, BSD-style licence).
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_ENOCH = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
GO_ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# A tree head published by sum.golang.org, signed by the key the Go toolchain ships with: a checkpoint
# produced by Go's note package in production, not by this code.
SUMDB_VERIFIER = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_CHECKPOINT = (
    "go.sum database tree\n31700353\nqINS1GRFhWHwdkUeqLEoP4yEMkTBBzxBkGwGQlVlVcs=\n\n"
    "— sum.golang.org Az3grnmrIUEDFqHzAElIQCPNoRFRAAdFo47fooyWKMHb89k11GJh5zHIfNCOBmwn/C3YI8oW9/C8DJ87F61QqspBYwM=\n"
)


URLSAFE_ROOT = base64.urlsafe_b64encode(bytes([0xFF] * 32)).decode()


def raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def signed(key: Ed25519PrivateKey = KEY, name: str = ORIGIN, size: int = 42, root: bytes = ROOT) -> str:
    return cp.sign_checkpoint(ORIGIN, size, root, key, name)


def vkey(key: Ed25519PrivateKey = KEY, name: str = ORIGIN) -> str:
    return cp.verifier_key(name, key.public_key())


def sign_raw(body: str, key: Ed25519PrivateKey = KEY, name: str = ORIGIN) -> str:
    """A note signed without going through `sign_checkpoint`, to get bodies it would refuse to sign."""
    key_hash = cp.key_id(name, key.public_key()).to_bytes(4, "big")
    sig = base64.b64encode(key_hash + key.sign(body.encode())).decode()
    return f"{body}\n— {name} {sig}\n"


# -- The format, checked independently ----------------------------------------------------------------------


def test_signature_checks_with_plain_ed25519_over_the_body() -> None:
    note = signed()
    body, _, signature_block = note.rpartition("\n\n")
    body += "\n"
    # The body, byte for byte, as the C2SP tlog-checkpoint spec lays it out.
    assert body == f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n"
    # One signature line: em dash, space, key name, space, base64(key ID || signature), newline.
    assert signature_block.endswith("\n") and signature_block.count("\n") == 1
    dash, name, b64 = signature_block[:-1].split(" ")
    assert dash == "\u2014"
    assert name == ORIGIN
    blob = base64.b64decode(b64, validate=True)
    public = raw(KEY.public_key())
    assert blob[:4] == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + public).digest()[:4]
    # cryptography directly, not our verifier; raises InvalidSignature on failure.
    Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], body.encode())


def test_round_trip() -> None:
    expected = Checkpoint(origin=ORIGIN, size=42, root=ROOT)
    assert cp.verify_checkpoint(signed(), vkey()) == expected
    assert cp.verify_checkpoint(signed(), NoteVerifier.from_key(ORIGIN, KEY.public_key())) == expected
    assert cp.verify_checkpoint(signed(), [vkey(OTHER_KEY, "other"), vkey()], origin=ORIGIN) == expected
    assert cp.parse_checkpoint(signed()) == expected


def test_extension_lines_and_the_empty_tree() -> None:
    note = cp.sign_checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest(), KEY, ORIGIN, extensions=["ext 1", "x"])
    checkpoint = cp.verify_checkpoint(note, vkey())
    assert checkpoint.size == 0
    assert checkpoint.extensions == ("ext 1", "x")
    assert note.startswith(checkpoint.body())


# -- Go interoperability ------------------------------------------------------------------------------------


def test_go_key_strings() -> None:
    name, key = cp.parse_signer_key(GO_SIGNER)
    assert name == "PeterNeumann"
    assert cp.key_id(name, key.public_key()) == 0xC74F20A3
    assert cp.verifier_key(name, key.public_key()) == GO_VERIFIER
    assert cp.signer_key(name, key) == GO_SIGNER
    assert cp.parse_verifier_key(GO_VERIFIER).vkey() == GO_VERIFIER


def test_go_signed_note() -> None:
    # Ed25519 is deterministic, so our signature over Go's test note must be Go's, to the byte.
    _, key = cp.parse_signer_key(GO_SIGNER)
    key_hash = (0xC74F20A3).to_bytes(4, "big")
    ours = base64.b64encode(key_hash + key.sign(GO_TEXT.encode())).decode()
    assert GO_PETER_SIG.split()[-1] == ours
    note = GO_TEXT + "\n" + GO_PETER_SIG + GO_ENOCH_SIG
    assert cp.open_note(note, GO_VERIFIER) == GO_TEXT  # Enoch's is unknown here, so skipped
    assert cp.open_note(note, [GO_VERIFIER, GO_ENOCH]) == GO_TEXT
    with pytest.raises(UntrustedCheckpointError):
        cp.open_note(note, [])
    with pytest.raises(InvalidSignatureError):
        cp.open_note(GO_TEXT + "\n" + GO_PETER_SIG[:60] + "ABCD" + GO_PETER_SIG[60:], GO_VERIFIER)
    with pytest.raises(MalformedCheckpointError):
        cp.open_note(GO_TEXT + "\n" + GO_PETER_SIG * 101, GO_VERIFIER)
    # Signed, but not a checkpoint.
    with pytest.raises(MalformedCheckpointError):
        cp.verify_checkpoint(note, GO_VERIFIER)


@pytest.mark.parametrize(
    "note",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + GO_PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + GO_PETER_SIG,
        "\udcff" + GO_TEXT + "\n" + GO_PETER_SIG,
        GO_TEXT + "\n" + "— Bad Name " + GO_PETER_SIG.split()[-1] + "\n",
        GO_TEXT + "\n" + GO_PETER_SIG + "Unexpected line.\n",
    ],
)
def test_go_malformed_notes(note: str) -> None:
    with pytest.raises(MalformedCheckpointError):
        cp.open_note(note, GO_VERIFIER)


def test_a_checkpoint_signed_by_sum_golang_org() -> None:
    checkpoint = cp.verify_checkpoint(SUMDB_CHECKPOINT, SUMDB_VERIFIER, origin="go.sum database tree")
    assert checkpoint.size == 31700353
    assert checkpoint.root == base64.b64decode("qINS1GRFhWHwdkUeqLEoP4yEMkTBBzxBkGwGQlVlVcs=")
    with pytest.raises(InvalidSignatureError):
        cp.verify_checkpoint(SUMDB_CHECKPOINT.replace("31700353", "31700354"), SUMDB_VERIFIER)


def test_go_verifier_key_manglings_are_refused() -> None:
    # As Go's TestNewVerifier: every proper substring and every one-character change must be refused.
    b = GO_VERIFIER
    variants = {b[i:j] for i in range(len(b) + 1) for j in range(i + 1, len(b) + 1)} - {b}
    variants |= {b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :] for i in range(len(b))}
    variants |= {
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # wrong key length
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # unknown algorithm
    }
    for variant in variants:
        with pytest.raises(InvalidKeyError):
            cp.parse_verifier_key(variant)


def test_go_signer_key_manglings_are_refused() -> None:
    b = GO_SIGNER
    for variant in {b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :] for i in range(len(b))} | {b[:-4], b[5:]}:
        with pytest.raises(InvalidKeyError):
            cp.parse_signer_key(variant)


# -- Refusals -----------------------------------------------------------------------------------------------


def test_wrong_key() -> None:
    with pytest.raises(UntrustedCheckpointError):
        cp.verify_checkpoint(signed(), vkey(OTHER_KEY))


def test_a_key_with_the_right_name_and_id_but_the_wrong_key() -> None:
    impostor = NoteVerifier(name=ORIGIN, key_id=cp.key_id(ORIGIN, KEY.public_key()), public_key=OTHER_KEY.public_key())
    with pytest.raises(InvalidSignatureError):
        cp.verify_checkpoint(signed(), impostor)


@pytest.mark.parametrize(
    ("old", "new"),
    [("\n42\n", "\n43\n"), (ORIGIN + "\n", "dlnuf.example.gouv.fr/other\n"), (base64.b64encode(ROOT).decode(), "")],
)
def test_altered_body(old: str, new: str) -> None:
    note = signed()
    if not new:
        new = base64.b64encode(hashlib.sha256(b"another tree").digest()).decode()
    with pytest.raises(InvalidSignatureError):
        cp.verify_checkpoint(note.replace(old, new, 1), vkey())


def test_any_one_character_change_is_refused() -> None:
    note = signed()
    for i, c in enumerate(note):
        for replacement in {"A", "\n", " ", "+", chr(ord(c) + 1)} - {c}:
            with pytest.raises(CheckpointError):
                cp.verify_checkpoint(note[:i] + replacement + note[i + 1 :], vkey())


def test_missing_trailing_newline() -> None:
    with pytest.raises(MalformedCheckpointError):
        cp.verify_checkpoint(signed()[:-1], vkey())


def test_unknown_key_name() -> None:
    note = signed(name="someone.else.example")
    with pytest.raises(UntrustedCheckpointError):
        cp.verify_checkpoint(note, vkey())
    # The same key under another name is another key: its key ID differs too.
    with pytest.raises(UntrustedCheckpointError):
        cp.verify_checkpoint(note.replace("— someone.else.example ", f"— {ORIGIN} "), vkey())


@pytest.mark.parametrize("bad", ["!!!!", "AAAA", "QUJD", "QUJDRA=", "QUJDRA==="])
def test_bad_base64_in_the_signature(bad: str) -> None:
    body = signed().split("\n\n")[0]
    with pytest.raises(MalformedCheckpointError):
        cp.verify_checkpoint(f"{body}\n\n— {ORIGIN} {bad}\n", vkey())


def test_non_canonical_base64_is_refused() -> None:
    note = signed()
    sig = note.split(" ")[-1].strip()
    # The last character before the padding carries unused bits; setting one decodes to the same bytes.
    assert sig.endswith("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stem = sig.rstrip("=")
    tweaked = stem[:-1] + alphabet[alphabet.index(stem[-1]) | 1] + sig[len(stem) :]
    assert tweaked != sig and base64.b64decode(tweaked) == base64.b64decode(sig)
    with pytest.raises(MalformedCheckpointError):
        cp.verify_checkpoint(note.replace(sig, tweaked), vkey())


@pytest.mark.parametrize(
    "body",
    [
        f"{ORIGIN}\n42\n",
        f"\n42\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n042\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n+42\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n4_2\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n٤٢\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n{2**64}\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT[:20]).decode()}\n",
        f"{ORIGIN}\n42\n{URLSAFE_ROOT}\n",
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n\nextension after an empty line\n",
    ],
)
def test_signed_bodies_that_are_not_checkpoints(body: str) -> None:
    with pytest.raises(MalformedCheckpointError):
        cp.verify_checkpoint(sign_raw(body), vkey())


def test_one_bad_trusted_signature_condemns_the_note() -> None:
    good = signed()
    forged_line = signed(key=KEY, size=43).split("\n\n")[1]
    with pytest.raises(InvalidSignatureError):
        cp.verify_checkpoint(good + forged_line, vkey())
    body, good_line = good.split("\n\n")
    with pytest.raises(InvalidSignatureError):
        cp.verify_checkpoint(f"{body}\n\n{forged_line}{good_line}", vkey())


def test_other_signatures_are_ignored() -> None:
    # A witness cosignature (another key) alongside the log's: fine, whatever it is.
    witness = signed(key=OTHER_KEY, name="witness.example").split("\n\n")[1]
    assert cp.verify_checkpoint(signed() + witness, vkey()).size == 42
    garbage = "— witness.example AAAAAAAAAAAAAAAAAAAA\n"
    assert cp.verify_checkpoint(signed() + garbage, vkey()).size == 42


def test_origin_and_trust_list() -> None:
    with pytest.raises(UntrustedCheckpointError):
        cp.verify_checkpoint(signed(), vkey(), origin="another.example/log")
    with pytest.raises(UntrustedCheckpointError):
        cp.verify_checkpoint(signed(), [])
    impostor = NoteVerifier(name=ORIGIN, key_id=cp.key_id(ORIGIN, KEY.public_key()), public_key=OTHER_KEY.public_key())
    with pytest.raises(InvalidKeyError):
        cp.verify_checkpoint(signed(), [vkey(), impostor])


@pytest.mark.parametrize(
    ("origin", "size", "root", "name"),
    [
        ("", 1, ROOT, ORIGIN),
        ("two\nlines", 1, ROOT, ORIGIN),
        ("tab\there", 1, ROOT, ORIGIN),
        (ORIGIN, -1, ROOT, ORIGIN),
        (ORIGIN, 2**64, ROOT, ORIGIN),
        (ORIGIN, 1, ROOT[:31], ORIGIN),
        (ORIGIN, 1, ROOT, "a name"),
        (ORIGIN, 1, ROOT, "a+b"),
        (ORIGIN, 1, ROOT, ""),
    ],
)
def test_signing_refuses_what_no_verifier_would_accept(origin: str, size: int, root: bytes, name: str) -> None:
    with pytest.raises(CheckpointError):
        cp.sign_checkpoint(origin, size, root, KEY, name)
