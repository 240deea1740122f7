"""RFC 9421 Appendix B.2 and the httpsig-go request files (shared/vectors/rfc9421, MIT, remitly-oss/httpsig-go).

Every signature base is compared byte for byte. Algorithms the broker refuses (RSA-PSS, HMAC) are checked with
`cryptography` / `hmac` directly on our base, which is what proves the base right; the broker's own verdict on each
signed file follows from its policy and is asserted too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from multidict import CIMultiDict

from broker.signing import messages
from broker.signing.keys import InvalidKey, PrivateKey, PublicKey

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "rfc9421"
CREATED = datetime.fromtimestamp(1618884473, UTC)  # the `created` of every B.2 example


class Message:
    """An HTTP/1.1 message file: request line or status line, fields, and a body of Content-Length bytes."""

    def __init__(self, name: str) -> None:
        raw = (VECTORS / name).read_bytes()
        head, _, rest = raw.partition(b"\n\n")
        start, *field_lines = head.decode("ascii").split("\n")
        self.headers: CIMultiDict[str] = CIMultiDict()
        for line in field_lines:
            field_name, _, value = line.partition(":")
            self.headers.add(field_name, value.strip())
        self.body = rest[: int(self.headers.get("Content-Length", "0"))]
        first, second, _ = start.split(" ", 2)
        self.method: str | None = None
        self.target_uri: str | None = None
        self.status: int | None = None
        if first.startswith("HTTP/"):
            self.status = int(second)
        else:
            self.method = first
            self.target_uri = "https://" + self.headers["Host"] + second

    def base(self, label: str) -> bytes:
        return messages.signature_base(label, headers=self.headers, method=self.method,
                                      target_uri=self.target_uri, status=self.status)

    def signature(self, label: str) -> bytes:
        value = self.headers["Signature"]
        for member in value.split(","):
            name, _, encoded = member.strip().partition("=")
            if name == label:
                return base64.b64decode(encoded.strip(":"))
        raise KeyError(label)


def _der_from_pem_text(name: str) -> bytes:
    # Some key files of the set have their PEM lines joined with spaces; rebuild the DER from the base64 alone.
    lines = (VECTORS / name).read_text("ascii").strip().splitlines()
    return base64.b64decode("".join("".join(lines[1:-1]).split()))


def rsa_pss_public_key() -> rsa.RSAPublicKey:
    key = serialization.load_der_public_key(_der_from_pem_text("test-key-rsa-pss.pub"))
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def ed25519_private_key() -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((VECTORS / "test-key-ed25519.key").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def p256_public_key() -> PublicKey:
    key = serialization.load_pem_public_key((VECTORS / "test-key-ecc-p256.pub").read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return PublicKey(kid="test-key-ecc-p256", alg="ecdsa-p256-sha256", owner="rfc9421", key=key)


def expected_base(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def verify_rsa_pss_sha512(signature: bytes, base: bytes) -> None:
    rsa_pss_public_key().verify(
        signature, base, padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64), hashes.SHA512())


def lookup_nothing(kid: str) -> PublicKey | None:
    return None


async def claim_always(kid: str, nonce: str, expires_at: datetime) -> bool:
    return True


async def broker_verdict(message: Message) -> str:
    assert message.method is not None and message.target_uri is not None
    with pytest.raises(messages.SignatureRejected) as exc:
        await messages.verify_request(
            method=message.method, target_uri=message.target_uri, headers=message.headers, body=message.body,
            lookup_key=lookup_nothing, claim_nonce=claim_always, now=CREATED,
        )
    return exc.value.reason


# ---------------------------------------------------------------------------------------------------------------
# B.2.1 - B.2.6: bases byte for byte, signatures checked on our bases
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signed", "label", "sigbase"), [
    ("b21_request_signed.txt", "sig-b21", "b21_request_sigbase.txt"),
    ("b22_request_signed.txt", "sig-b22", "b22_request_sigbase.txt"),
    ("b23_request_signed.txt", "sig-b23", "b23_request_sigbase.txt"),
    ("b24_response_signed.txt", "sig-b24", "b24_response_sigbase.txt"),
    ("b25_request_signed.txt", "sig-b25", "b25_request_sigbase.txt"),
    ("b26_request_signed.txt", "sig-b26", "b26_request_sigbase.txt"),
])
def test_signature_base_is_byte_identical(signed: str, label: str, sigbase: str) -> None:
    assert Message(signed).base(label) == expected_base(sigbase)


@pytest.mark.parametrize(("signed", "label"), [
    ("b21_request_signed.txt", "sig-b21"),
    ("b22_request_signed.txt", "sig-b22"),
    ("b23_request_signed.txt", "sig-b23"),
])
def test_rsa_pss_signatures_verify_on_our_base(signed: str, label: str) -> None:
    message = Message(signed)
    verify_rsa_pss_sha512(message.signature(label), message.base(label))


def test_b24_p256_response_verifies_with_broker_key_code() -> None:
    message = Message("b24_response_signed.txt")
    p256_public_key().verify(message.signature("sig-b24"), message.base("sig-b24"))


def test_b24_p256_signature_refused_on_another_base() -> None:
    message = Message("b24_response_signed.txt")
    with pytest.raises(InvalidSignature):
        p256_public_key().verify(message.signature("sig-b24"), message.base("sig-b24") + b" ")


def test_b24_response_carries_the_corrected_content_digest() -> None:
    # The RFC prints a wrong Content-Digest for the test response (erratum); the files carry the right one.
    message = Message("b24_response_signed.txt")
    messages.verify_content_digest(message.headers["Content-Digest"], message.body)


def test_b24_not_accepted_as_a_broker_response_without_request_binding() -> None:
    message = Message("b24_response_signed.txt")
    with pytest.raises(messages.SignatureRejected) as exc:
        messages.verify_response(
            status=200, headers=message.headers, body=message.body,
            request_headers=Message("b21_request_signed.txt").headers,
            lookup_key={"test-key-ecc-p256": p256_public_key()}.get, now=CREATED,
        )
    assert exc.value.reason == "components-missing"


def test_b25_hmac_signature_matches_our_base() -> None:
    message = Message("b25_request_signed.txt")
    secret = base64.b64decode((VECTORS / "test-shared-secret").read_text("ascii"))
    assert hmac.new(secret, message.base("sig-b25"), hashlib.sha256).digest() == message.signature("sig-b25")


def test_b26_ed25519_signature_is_byte_identical() -> None:
    message = Message("b26_request_signed.txt")
    key = PrivateKey(kid="test-key-ed25519", alg="ed25519", private_key=ed25519_private_key())
    assert key.sign(message.base("sig-b26")) == message.signature("sig-b26")


def test_b26_ed25519_verifies_with_the_published_public_key() -> None:
    message = Message("b26_request_signed.txt")
    public = serialization.load_pem_public_key((VECTORS / "test-key-ed25519.pub").read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    key = PublicKey(kid="test-key-ed25519", alg="ed25519", owner="rfc9421", key=public)
    key.verify(message.signature("sig-b26"), message.base("sig-b26"))


@pytest.mark.parametrize(("signed", "reason"), [
    ("b21_request_signed.txt", "components-missing"),  # covers nothing
    ("b22_request_signed.txt", "components-missing"),  # no @method
    ("b23_request_signed.txt", "params-missing"),  # covers enough, but has no nonce
    ("b25_request_signed.txt", "components-missing"),
    ("b26_request_signed.txt", "components-missing"),  # no @query, and a body without content-digest
])
async def test_broker_policy_refuses_the_rfc_requests(signed: str, reason: str) -> None:
    assert await broker_verdict(Message(signed)) == reason


@pytest.mark.parametrize("name", ["test-key-rsa.pub", "key-rsa-v15.pub", "test-key-ecc-p384.pub"])
def test_broker_refuses_keys_of_other_algorithms(name: str) -> None:
    key = serialization.load_pem_public_key((VECTORS / name).read_bytes())
    for alg in ("ed25519", "ecdsa-p256-sha256"):
        with pytest.raises(InvalidKey):
            PublicKey(kid="k", alg=alg, owner="o", key=key)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# The other request files
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rfc-test-request.txt", "request1.txt"])
def test_rfc_request_digest_matches(name: str) -> None:
    message = Message(name)
    messages.verify_content_digest(message.headers["Content-Digest"], message.body)


def test_rfc_response_digest_matches() -> None:
    message = Message("rfc-test-response.txt")
    messages.verify_content_digest(message.headers["Content-Digest"], message.body)


def test_request_bad_digest_detected() -> None:
    message = Message("request_bad_digest.txt")
    with pytest.raises(messages.SignatureRejected) as exc:
        messages.verify_content_digest(message.headers["Content-Digest"], message.body)
    assert exc.value.reason == "digest-mismatch"


def sign_file(message: Message, covered: str, *, nonce: str = "n-1", label: str = "sig1") -> None:
    """Sign the file's message as is with the RFC's Ed25519 test key, covering `covered`."""
    message.headers["Signature-Input"] = (
        f'{label}=({covered});created=1618884473;keyid="test-key-ed25519";nonce="{nonce}"')
    message.headers["Signature"] = f"{label}=:AA==:"  # placeholder, so the label is complete while computing
    signature = ed25519_private_key().sign(message.base(label))
    message.headers["Signature"] = f"{label}=:{base64.b64encode(signature).decode()}:"


def rfc_ed25519_lookup(kid: str) -> PublicKey | None:
    if kid != "test-key-ed25519":
        return None
    return PublicKey(kid=kid, alg="ed25519", owner="rfc9421", key=ed25519_private_key().public_key())


async def broker_verify(message: Message) -> messages.VerifiedRequest:
    assert message.method is not None and message.target_uri is not None
    return await messages.verify_request(
        method=message.method, target_uri=message.target_uri, headers=message.headers, body=message.body,
        lookup_key=rfc_ed25519_lookup, claim_nonce=claim_always, now=CREATED,
    )


async def test_request_file_signed_by_policy_is_accepted() -> None:
    message = Message("request1.txt")
    sign_file(message, '"@method" "@target-uri" "content-digest" "content-type"')
    verified = await broker_verify(message)
    assert verified.organisation == "rfc9421"
    assert verified.signature_base.startswith(b'"@method": POST\n"@target-uri": https://example.com/foo?param=')


async def test_request_bad_digest_refused_after_signature_verifies() -> None:
    # The signature covers the Content-Digest field as sent, so it verifies; the body then betrays the digest.
    message = Message("request_bad_digest.txt")
    sign_file(message, '"@method" "@authority" "@path" "@query" "content-digest"')
    with pytest.raises(messages.SignatureRejected) as exc:
        await broker_verify(message)
    assert exc.value.reason == "digest-mismatch"


def test_request_multivalue_lines_are_combined() -> None:
    message = Message("request_multivalue.txt")
    sign_file(message, '"one"')
    assert message.base("sig1").split(b"\n")[0] == b'"one": multivalue1, multivalue2'


async def test_request_multivalue_verifies_and_detects_a_changed_line() -> None:
    message = Message("request_multivalue.txt")
    message.headers["Content-Digest"] = messages.content_digest(message.body)
    sign_file(message, '"@method" "@target-uri" "content-digest" "one"')
    await broker_verify(message)
    message.headers.popall("One")
    message.headers.add("One", "multivalue2")
    message.headers.add("One", "multivalue1")
    with pytest.raises(messages.SignatureRejected) as exc:
        await broker_verify(message)
    assert exc.value.reason == "bad-signature"


async def test_request_no_digest_refused_by_policy() -> None:
    message = Message("request_no_digest.txt")
    sign_file(message, '"@method" "@target-uri" "content-type"')
    with pytest.raises(messages.SignatureRejected) as exc:
        await broker_verify(message)
    assert exc.value.reason == "components-missing"


def test_request_no_digest_cannot_cover_the_absent_field() -> None:
    message = Message("request_no_digest.txt")
    message.headers["Signature-Input"] = 'sig1=("@method" "content-digest");created=1;keyid="k";nonce="n"'
    message.headers["Signature"] = "sig1=:AA==:"
    with pytest.raises(messages.SignatureRejected) as exc:
        message.base("sig1")
    assert exc.value.reason == "component-absent"


def test_request_repeated_components_refused() -> None:
    message = Message("request_repeated_components.txt")
    message.headers["Signature-Input"] = 'sig1=("one" "two" "one" "three");created=1618884473'
    message.headers["Signature"] = "sig1=:AA==:"
    with pytest.raises(messages.SignatureRejected) as exc:
        message.base("sig1")
    assert exc.value.reason == "malformed"


def test_request_distinct_components_with_equal_values_are_fine() -> None:
    message = Message("request_repeated_components.txt")
    message.headers["Signature-Input"] = 'sig1=("one" "two" "three");created=1618884473'
    message.headers["Signature"] = "sig1=:AA==:"
    assert message.base("sig1") == (
        b'"one": value1\n"two": value2\n"three": value2\n'
        b'"@signature-params": ("one" "two" "three");created=1618884473'
    )


def test_verify_request1_b21_signature_is_valid_on_our_base() -> None:
    message = Message("verify_request1.txt")
    assert message.base("sig-b21") == expected_base("b21_request_sigbase.txt")
    verify_rsa_pss_sha512(message.signature("sig-b21"), message.base("sig-b21"))


async def test_verify_request1_refused_by_broker_policy() -> None:
    assert await broker_verdict(Message("verify_request1.txt")) == "components-missing"


def test_verify_request2_one_valid_one_invalid() -> None:
    message = Message("verify_request2.txt")
    verify_rsa_pss_sha512(message.signature("sig-b21"), message.base("sig-b21"))
    assert message.base("bad-sig") == (
        b'"@authority": example.com\n'
        b'"@signature-params": ("@authority");created=1618884473;keyid="test-key-rsa-pss"'
    )
    with pytest.raises(InvalidSignature):
        verify_rsa_pss_sha512(message.signature("bad-sig"), message.base("bad-sig"))


async def test_verify_request2_refused_by_broker_policy() -> None:
    # One valid and one invalid signature (the RFC's own pair): the broker accepts exactly one signature, so it
    # refuses the message before judging either.
    assert await broker_verdict(Message("verify_request2.txt")) == "several-signatures"
