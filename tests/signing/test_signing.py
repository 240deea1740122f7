"""broker.signing.messages and broker.signing.structured_fields: components, policy, every refusal reason, and
round-trip properties."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from broker.signing import messages
from broker.signing import structured_fields as sf
from broker.signing.keys import PrivateKey, PublicKey, generate_private_key
from broker.signing.messages import SignatureRejected, VerifiedRequest

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
URL = "https://broker.example/v1/exchange?dataset=quotient_familial&v=1"
BODY = b'{"subject": {"family_name": "Martin"}}'
ORG = "13002526500013"
KEYS = {alg: generate_private_key(alg, kid=f"consumer-{alg}") for alg in ("ed25519", "ecdsa-p256-sha256")}


class Nonces:
    """An in-memory `claim_nonce` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, datetime]] = []

    async def __call__(self, kid: str, nonce: str, expires_at: datetime) -> bool:
        fresh = all((k, n) != (kid, nonce) for k, n, _ in self.calls)
        self.calls.append((kid, nonce, expires_at))
        return fresh


@pytest.fixture(params=sorted(KEYS))
def private(request: pytest.FixtureRequest) -> PrivateKey:
    return KEYS[request.param]


def lookup_for(*keys: PublicKey) -> Callable[[str], PublicKey | None]:
    return {k.kid: k for k in keys}.get


def public(private: PrivateKey, **kwargs: Any) -> PublicKey:
    return private.public_key(owner=ORG, **kwargs)


def signed(private: PrivateKey, *, method: str = "POST", url: str = URL, body: bytes = BODY,
           headers: Mapping[str, str] | None = None, **kwargs: Any) -> CIMultiDict[str]:
    h: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"} if headers is None else headers)
    kwargs.setdefault("created", NOW)
    h.update(messages.sign_request(method=method, url=url, headers=h, body=body, private_key=private, **kwargs))
    return h


def sign_custom(private: PrivateKey, headers: CIMultiDict[str], member: str, *, method: str = "POST",
                url: str = URL, label: str = "sig1") -> CIMultiDict[str]:
    """Sign with a hand-written Signature-Input member, to reach the steps after the policy."""
    headers["Signature-Input"] = f"{label}={member}"
    headers["Signature"] = f"{label}=:AA==:"
    base = messages.signature_base(label, headers=headers, method=method, target_uri=url)
    headers["Signature"] = f"{label}=:{base64.b64encode(private.sign(base)).decode()}:"
    return headers


async def verify(headers: Mapping[str, str], lookup: Callable[[str], PublicKey | None], *,
                 method: str = "POST", url: str = URL, body: bytes = BODY, now: datetime = NOW,
                 nonces: Nonces | None = None, max_skew: float = 60) -> VerifiedRequest:
    return await messages.verify_request(
        method=method, target_uri=url, headers=headers, body=body, lookup_key=lookup,
        claim_nonce=nonces or Nonces(), now=now, max_skew=max_skew,
    )


async def reason(headers: Mapping[str, str], lookup: Callable[[str], PublicKey | None], **kwargs: Any) -> str:
    with pytest.raises(SignatureRejected) as exc:
        await verify(headers, lookup, **kwargs)
    assert exc.value.reason in messages.REASONS
    return exc.value.reason


def created_ts() -> int:
    return int(NOW.timestamp())


# ===============================================================================================================
# Structured fields (RFC 8941)
# ===============================================================================================================


@pytest.mark.parametrize(("text", "canonical"), [
    ("a=1, b=2", "a=1, b=2"),
    ("  a=1 ,\tb=2  ", "a=1, b=2"),
    ("a, b;x", "a, b;x"),
    ("a=?1, b=?0", "a, b=?0"),
    ("a=(1 2);p=1", "a=(1 2);p=1"),
    ("a=(  1   2  )", "a=(1 2)"),
    ("a=()", "a=()"),
    ("a=:aGVsbG8=:", "a=:aGVsbG8=:"),
    ("a=:aGVsbG8:", "a=:aGVsbG8=:"),  # RFC 8941 §4.2.7: missing padding tolerated
    ('a="x\\"y\\\\z"', 'a="x\\"y\\\\z"'),
    ("a=foo/bar:baz", "a=foo/bar:baz"),
    ("a=*tok", "a=*tok"),
    ("a=1.50, b=-0.25, c=0.0", "a=1.5, b=-0.25, c=0.0"),
    ("a=-999999999999999", "a=-999999999999999"),
    ("a=1, b=2, a=3", "a=3, b=2"),  # last value, first position
    ("a=1;b;c=?0;d=tok", "a=1;b;c=?0;d=tok"),
    ("*a=1, a-b_c.d*=2", "*a=1, a-b_c.d*=2"),
    ("", ""),
])
def test_dictionary_parse_serialise(text: str, canonical: str) -> None:
    assert sf.serialize_dictionary(sf.parse_dictionary(text)) == canonical


@pytest.mark.parametrize("text", [
    "a=1,", "a=1,  ", ",a=1", "A=1", "a=1 b=2", "a=1;", "a=1;B=2", 'a="unterminated', 'a="bad\\x"',
    'a="tab\there"', "a=1234567890123456", "a=1.2345", "a=1.", "a=1234567890123.1", "a=?2", "a=?",
    "a=:not base64!:", "a=:QQ==QQ==:", "a=:Q:", "a=(1 2", "a=(1,2)", "a=(1 2)x", 'a="é"', "a=-", "a=-a",
    "\ta=1", "a=@date", "a=%\"x\"", "a==1", "a=1.2.3",
])
def test_dictionary_parse_refuses(text: str) -> None:
    with pytest.raises(sf.StructuredFieldError):
        sf.parse_dictionary(text)


def test_parsed_types() -> None:
    d = sf.parse_dictionary('i=1, d=1.5, s="x", t=x, b=:AA==:, f=?0, l=(1 "a");p=?1')
    values = {k: v.value for k, v in d.items() if isinstance(v, sf.Item)}
    assert values == {"i": 1, "d": Decimal("1.5"), "s": "x", "t": "x", "b": b"\0", "f": False}
    assert type(values["s"]) is str and isinstance(values["t"], sf.Token)
    assert d["l"] == sf.InnerList((sf.Item(1), sf.Item("a")), {"p": True})


def test_list_and_item() -> None:
    assert sf.serialize_list(sf.parse_list("1,  (a b);q=1 , ?1")) == "1, (a b);q=1, ?1"
    assert sf.parse_item(' "x";a=1  ') == sf.Item("x", {"a": 1})
    assert sf.parse_list("") == []
    for bad in ("1, 2", "", "1 2", "(1"):
        with pytest.raises(sf.StructuredFieldError):
            sf.parse_item(bad)
    with pytest.raises(sf.StructuredFieldError):
        sf.parse_list("1,,2")


@pytest.mark.parametrize("value", [
    sf.Token("1abc"), sf.Token("a b"), "tab\t", "é", 10**15, Decimal("1e12"), Decimal("NaN"), 1.5,
])
def test_serialise_refuses(value: Any) -> None:
    with pytest.raises(sf.StructuredFieldError):
        sf.serialize_bare_item(value)


def test_serialise_refuses_bad_keys_and_rounds_decimals() -> None:
    with pytest.raises(sf.StructuredFieldError):
        sf.serialize_dictionary({"Label": sf.Item(1)})
    with pytest.raises(sf.StructuredFieldError):
        sf.serialize_params({"a b": 1})
    assert sf.serialize_bare_item(Decimal("0.0005")) == "0.0"  # half-even
    assert sf.serialize_bare_item(Decimal("0.0015")) == "0.002"
    assert sf.serialize_bare_item(Decimal("-1.2")) == "-1.2"
    assert sf.serialize_bare_item(Decimal("-0.0001")) == "0.0"


@given(st.dictionaries(
    st.from_regex(r"[a-z*][a-z0-9_\-.*]{0,8}", fullmatch=True),
    st.one_of(
        st.integers(-(10**15) + 1, 10**15 - 1), st.booleans(), st.binary(max_size=20),
        st.from_regex(r"[\x20-\x7e]{0,12}", fullmatch=True),
        st.from_regex(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]{0,8}", fullmatch=True).map(sf.Token),
    ),
    max_size=5,
))
def test_dictionary_round_trip(members: dict[str, Any]) -> None:
    dictionary: dict[str, sf.Member] = {k: sf.Item(v) for k, v in members.items()}
    text = sf.serialize_dictionary(dictionary)
    assert sf.parse_dictionary(text) == dictionary
    assert sf.serialize_dictionary(sf.parse_dictionary(text)) == text


# ===============================================================================================================
# Content-Digest (RFC 9530)
# ===============================================================================================================


def test_content_digest_values() -> None:
    assert messages.content_digest(b"") == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    # RFC 9530 §2 example
    assert messages.content_digest(b'{"hello": "world"}') == \
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"


HELLO = b'{"hello": "world"}'
SHA256 = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
SHA512 = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"


@pytest.mark.parametrize("value", [SHA256, SHA512, f"{SHA256}, {SHA512}", f"md5=:AAAA:, {SHA512}",
                                   f'{SHA256};note="x", unixsum=1'])
def test_verify_content_digest_accepts(value: str) -> None:
    messages.verify_content_digest(value, HELLO)


@pytest.mark.parametrize(("value", "why"), [
    (SHA256.replace("X48", "Y48"), "digest-mismatch"),
    (f"{SHA256}, {SHA512.replace('WZD', 'WZE')}", "digest-mismatch"),  # every supported one must match
    ("md5=:AAAA:", "digest-mismatch"),  # nothing supported
    ("", "digest-mismatch"),
    ("sha-256=abc", "malformed"),
    ("SHA-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", "malformed"),
    ("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=", "malformed"),
])
def test_verify_content_digest_refuses(value: str, why: str) -> None:
    with pytest.raises(SignatureRejected) as exc:
        messages.verify_content_digest(value, HELLO)
    assert exc.value.reason == why


# ===============================================================================================================
# Components (RFC 9421 §2.1, §2.2 examples)
# ===============================================================================================================


def base_lines(covered: str, *, method: str | None = "POST", target_uri: str | None = URL,
               headers: list[tuple[str, str]] | None = None, status: int | None = None) -> list[str]:
    h: CIMultiDict[str] = CIMultiDict(headers or [])
    h["Signature-Input"] = f"sig1=({covered});created=1"
    h["Signature"] = "sig1=:AA==:"
    base = messages.signature_base("sig1", headers=h, method=method, target_uri=target_uri, status=status)
    lines = base.decode("ascii").split("\n")
    assert lines[-1] == f'"@signature-params": ({covered});created=1'
    return lines[:-1]


def base_refusal(covered: str, **kwargs: Any) -> str:
    with pytest.raises(SignatureRejected) as exc:
        base_lines(covered, **kwargs)
    return exc.value.reason


RFC_FIELDS = [
    ("Host", "www.example.com"),
    ("Date", "Tue, 20 Apr 2021 02:07:56 GMT"),
    ("X-OWS-Header", "   Leading and trailing whitespace.   "),
    ("X-Obs-Fold-Header", "Obsolete\r\n    line folding."),
    ("Cache-Control", "max-age=60"),
    ("Cache-Control", "   must-revalidate"),
    ("Example-Dict", " a=1,    b=2;x=1;y=2,   c=(a   b   c)"),
    ("X-Empty-Header", ""),
]


def test_rfc9421_2_1_fields() -> None:
    assert base_lines('"host" "date" "x-ows-header" "x-obs-fold-header" "cache-control" "example-dict" '
                      '"x-empty-header"', headers=RFC_FIELDS) == [
        '"host": www.example.com',
        '"date": Tue, 20 Apr 2021 02:07:56 GMT',
        '"x-ows-header": Leading and trailing whitespace.',
        '"x-obs-fold-header": Obsolete line folding.',
        '"cache-control": max-age=60, must-revalidate',
        '"example-dict": a=1,    b=2;x=1;y=2,   c=(a   b   c)',
        '"x-empty-header": ',
    ]


def test_rfc9421_2_1_1_sf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(messages.STRUCTURED_FIELDS, "example-dict", "dictionary")
    assert base_lines('"example-dict";sf', headers=RFC_FIELDS) == [
        '"example-dict";sf: a=1, b=2;x=1;y=2, c=(a b c)']


def test_sf_needs_a_known_type_and_a_valid_value() -> None:
    assert base_refusal('"example-dict";sf', headers=RFC_FIELDS) == "malformed"
    assert base_refusal('"priority";sf', headers=[("Priority", "u=1, i, ")]) == "malformed"
    assert base_lines('"priority";sf', headers=[("Priority", "u=1,   i")]) == ['"priority";sf: u=1, i']


def test_rfc9421_2_1_2_key() -> None:
    headers = [("Example-Dict", " a=1, b=2;x=1;y=2, c=(a b c), d")]
    assert base_lines('"example-dict";key="a" "example-dict";key="d" "example-dict";key="b" '
                      '"example-dict";key="c"', headers=headers) == [
        '"example-dict";key="a": 1',
        '"example-dict";key="d": ?1',
        '"example-dict";key="b": 2;x=1;y=2',
        '"example-dict";key="c": (a b c)',
    ]
    assert base_refusal('"example-dict";key="zz"', headers=headers) == "component-absent"
    assert base_refusal('"example-dict";key=a', headers=headers) == "malformed"
    assert base_refusal('"x";key="a"', headers=[("X", "not a dictionary!")]) == "malformed"


def test_rfc9421_2_1_3_bs() -> None:
    headers = [("Example-Header", "value, with, lots"), ("Example-Header", "of, commas")]
    assert base_lines('"example-header" "example-header";bs', headers=headers) == [
        '"example-header": value, with, lots, of, commas',
        '"example-header";bs: :dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:',
    ]


def test_non_ascii_field_needs_bs() -> None:
    headers = [("X-Name", "Fran\u00e7ois")]
    assert base_refusal('"x-name"', headers=headers) == "malformed"
    assert base_lines('"x-name";bs', headers=headers) == ['"x-name";bs: :RnJhbsOnb2lz:']


@pytest.mark.parametrize("covered", [
    '"x";bs;sf', '"x";bs;key="a"', '"x";tr', '"x";foo', '"x";sf=1', '"X"', '"x y"', '""',
    '"x";req',  # req outside a response
])
def test_field_identifier_refusals(covered: str) -> None:
    assert base_refusal(covered, headers=[("X", "a=1")]) == "malformed"


def test_absent_field() -> None:
    assert base_refusal('"x-missing"') == "component-absent"


def test_line_break_inside_a_value_refused() -> None:
    assert base_refusal('"x"', headers=[("X", "a\nb")]) == "malformed"
    assert base_refusal('"@target-uri"', target_uri="https://example.com/\n\"@method\": GET") == "malformed"


@pytest.mark.parametrize(("covered", "uri", "value"), [
    ('"@target-uri"', "https://www.example.com/path?param=value", "https://www.example.com/path?param=value"),
    ('"@authority"', "https://www.example.com/path?param=value", "www.example.com"),
    ('"@authority"', "https://WWW.Example.COM:443/x", "www.example.com"),
    ('"@authority"', "http://example.com:80/x", "example.com"),
    ('"@authority"', "http://example.com:443/x", "example.com:443"),
    ('"@authority"', "https://example.com:8443/x", "example.com:8443"),
    ('"@authority"', "https://user@example.com/x", "example.com"),
    ('"@authority"', "https://[2001:DB8::1]:443/x", "[2001:db8::1]"),
    ('"@authority"', "https://[2001:db8::1]:8443/x", "[2001:db8::1]:8443"),
    ('"@scheme"', "https://www.example.com/path?param=value", "https"),
    ('"@scheme"', "HTTP://www.example.com/", "http"),
    ('"@request-target"', "https://www.example.com/path?param=value", "/path?param=value"),
    ('"@request-target"', "https://www.example.com", "/"),
    ('"@request-target"', "https://www.example.com/p?", "/p?"),
    ('"@path"', "https://www.example.com/path?param=value", "/path"),
    ('"@path"', "https://www.example.com", "/"),
    ('"@path"', "https://www.example.com/a%2Fb/../c", "/a%2Fb/../c"),
    ('"@query"', "https://www.example.com/path?param=value&foo=bar&baz=batman", "?param=value&foo=bar&baz=batman"),
    ('"@query"', "https://www.example.com/path?queryString", "?queryString"),
    ('"@query"', "https://www.example.com/path", "?"),
    ('"@query"', "https://www.example.com/path?", "?"),
    ('"@query"', "https://www.example.com/path?a=1#frag", "?a=1"),
])
def test_rfc9421_2_2_derived(covered: str, uri: str, value: str) -> None:
    assert base_lines(covered, target_uri=uri) == [f"{covered}: {value}"]


def test_rfc9421_2_2_1_method() -> None:
    assert base_lines('"@method"', method="POST") == ['"@method": POST']


@pytest.mark.parametrize(("name", "value"), [("baz", "batman"), ("qux", ""), ("param", "value")])
def test_rfc9421_2_2_8_query_param(name: str, value: str) -> None:
    uri = "https://www.example.com/path?param=value&foo=bar&baz=batman&qux="
    assert base_lines(f'"@query-param";name="{name}"', target_uri=uri) == [
        f'"@query-param";name="{name}": {value}']


@pytest.mark.parametrize(("name", "value"), [
    ("var", "this%20is%20a%20big%0Amultiline%20value"),
    ("bar", "with%20plus%20whitespace"),
    ("fa%C3%A7ade%22%3A%20", "something"),
])
def test_rfc9421_2_2_8_query_param_encoding(name: str, value: str) -> None:
    uri = ("https://www.example.com/parameters?var=this%20is%20a%20big%0Amultiline%20value&"
           "bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something")
    assert base_lines(f'"@query-param";name="{name}"', target_uri=uri) == [
        f'"@query-param";name="{name}": {value}']


@pytest.mark.parametrize(("covered", "uri", "why"), [
    ('"@query-param";name="missing"', "https://e.example/?a=1", "component-absent"),
    ('"@query-param";name="a"', "https://e.example/?a=1&a=2", "malformed"),
    ('"@query-param";name="a"', "https://e.example/?a=1&%61=2", "malformed"),
    ('"@query-param"', "https://e.example/?a=1", "malformed"),
    ('"@query-param";name=a', "https://e.example/?a=1", "malformed"),
    ('"@query-param";name="a";x', "https://e.example/?a=1", "malformed"),
    ('"@authority"', "/relative", "malformed"),
    ('"@method";req', "https://e.example/", "malformed"),
    ('"@status"', "https://e.example/", "malformed"),
    ('"@foo"', "https://e.example/", "malformed"),
    ('"@signature-params"', "https://e.example/", "malformed"),
])
def test_derived_refusals(covered: str, uri: str, why: str) -> None:
    assert base_refusal(covered, target_uri=uri) == why


def test_status_only_in_responses() -> None:
    assert base_lines('"@status"', method=None, target_uri=None, status=200) == ['"@status": 200']
    assert base_refusal('"@method"', method=None, target_uri=None, status=200) == "malformed"
    assert base_refusal('"@status";req', method=None, target_uri=None, status=200) == "malformed"


def test_duplicate_components_refused_but_parameters_distinguish() -> None:
    headers = [("X", "a=1")]
    assert base_refusal('"x" "x"', headers=headers) == "malformed"
    assert base_refusal('"x";key="a" "x";key="a"', headers=headers) == "malformed"
    assert base_refusal('"x";sf;key="a" "x";key="a";sf', headers=headers) == "malformed"
    assert base_lines('"x" "x";key="a"', headers=headers) == ['"x": a=1', '"x";key="a": 1']


def test_signature_params_reserialised_canonically() -> None:
    h = CIMultiDict({"Signature-Input": 'sig1=(  "@method"   );created=1;keyid="k"', "Signature": "sig1=:AA==:"})
    base = messages.signature_base("sig1", headers=h, method="GET", target_uri=URL)
    assert base == b'"@method": GET\n"@signature-params": ("@method");created=1;keyid="k"'


# ===============================================================================================================
# verify_request: acceptance
# ===============================================================================================================


async def test_round_trip(private: PrivateKey) -> None:
    headers = signed(private)
    nonces = Nonces()
    verified = await verify(CIMultiDictProxy(headers), lookup_for(public(private)), nonces=nonces)
    assert (verified.organisation, verified.kid, verified.alg) == (ORG, private.kid, private.alg)
    assert (verified.method, verified.target_uri, verified.body, verified.label) == ("POST", URL, BODY, "sig1")
    assert verified.created == NOW and verified.expires is None
    assert verified.signature_params == headers["Signature-Input"].removeprefix("sig1=")
    assert verified.signature_base.endswith(b'"@signature-params": ' + verified.signature_params.encode())
    assert verified.signature == base64.b64decode(headers["Signature"].removeprefix("sig1=").strip(":"))
    assert nonces.calls == [(private.kid, verified.nonce, NOW + timedelta(seconds=60))]


def test_sign_request_covers_what_the_broker_requires(private: PrivateKey) -> None:
    added = messages.sign_request(method="POST", url=URL, headers={"content-type": "application/json"}, body=BODY,
                                 private_key=private, created=NOW, nonce="n1",
                                 expires=NOW + timedelta(seconds=30))
    assert added == {
        "Content-Digest": messages.content_digest(BODY),
        "Signature-Input": f'sig1=("@method" "@target-uri" "content-digest" "content-type");'
                           f'created={created_ts()};keyid="{private.kid}";nonce="n1";alg="{private.alg}";'
                           f"expires={created_ts() + 30}",
        "Signature": added["Signature"],
    }


async def test_get_without_body_or_content_type(private: PrivateKey) -> None:
    headers = signed(private, method="GET", body=b"", headers={})
    assert "Content-Digest" not in headers
    assert headers["Signature-Input"].startswith('sig1=("@method" "@target-uri");')
    await verify(headers, lookup_for(public(private)), method="GET", body=b"")


async def test_plain_dict_headers_and_bare_key_object(private: PrivateKey) -> None:
    headers = {"content-type": "application/json"}
    headers.update(messages.sign_request(method="POST", url=URL, headers=headers, body=BODY,
                                        private_key=private.private_key, kid=private.kid, created=NOW))
    await verify(headers, lookup_for(public(private)))


async def test_authority_path_query_instead_of_target_uri(private: PrivateKey) -> None:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Digest": messages.content_digest(BODY)})
    sign_custom(private, headers, f'("@method" "@authority" "@path" "@query" "content-digest");created={created_ts()}'
                                  f';keyid="{private.kid}";nonce="n"')
    await verify(headers, lookup_for(public(private)))


async def test_expires_honoured_and_bounds_nonce_memory(private: PrivateKey) -> None:
    headers = signed(private, expires=NOW + timedelta(seconds=10))
    nonces = Nonces()
    verified = await verify(headers, lookup_for(public(private)), now=NOW + timedelta(seconds=10), nonces=nonces)
    assert verified.expires == NOW + timedelta(seconds=10)
    assert nonces.calls[0][2] == NOW + timedelta(seconds=10)


async def test_verified_headers_are_a_private_copy(private: PrivateKey) -> None:
    headers = signed(private)
    verified = await verify(headers, lookup_for(public(private)))
    headers["Content-Type"] = "text/evil"
    assert verified.headers["Content-Type"] == "application/json"
    assert isinstance(verified.headers, CIMultiDictProxy)


# ===============================================================================================================
# verify_request: every refusal
# ===============================================================================================================


async def test_missing_signature(private: PrivateKey) -> None:
    lookup = lookup_for(public(private))
    headers = signed(private)
    assert await reason({}, lookup) == "missing-signature"
    assert await reason({"Signature-Input": headers["Signature-Input"]}, lookup) == "missing-signature"
    assert await reason({"Signature": headers["Signature"]}, lookup) == "missing-signature"


@pytest.mark.parametrize(("signature_input", "signature"), [
    ('sig1=("@method" "@target-uri"', "sig1=:AA==:"),  # syntax
    ('sig1=("@method")', "sig1=AA"),  # Signature member not a byte sequence
    ("sig1=1", "sig1=:AA==:"),  # Signature-Input member not an inner list
    ("sig1=(@method)", "sig1=:AA==:"),  # tokens, not strings
    ('sig1=("@method");created="1"', "sig1=:AA==:"),
    ('sig1=("@method");created=?1', "sig1=:AA==:"),
    ('sig1=("@method");keyid=k', "sig1=:AA==:"),
    ('sig1=("@method");nonce=1', "sig1=:AA==:"),
    ('sig1=("@method");alg=ed25519', "sig1=:AA==:"),
    ('sig1=("@method")', "sig2=:AA==:"),  # no label in both
    ('sig1=("@method" "@method")', "sig1=:AA==:"),
])
async def test_malformed(private: PrivateKey, signature_input: str, signature: str) -> None:
    headers = {"Signature-Input": signature_input, "Signature": signature}
    assert await reason(headers, lookup_for(public(private))) == "malformed"


async def test_malformed_nonce_or_keyid(private: PrivateKey) -> None:
    lookup = lookup_for(public(private))
    assert await reason(signed(private, nonce="x" * 129), lookup) == "malformed"
    assert await reason(signed(private, nonce=""), lookup) == "malformed"
    member = f'("@method" "@target-uri");created={created_ts()};keyid="";nonce="n"'
    headers = sign_custom(private, CIMultiDict(), member)
    assert await reason(headers, lookup, body=b"") == "malformed"


@pytest.mark.parametrize("covered", [
    '"@target-uri" "content-digest"',  # no @method
    '"@method" "content-digest"',  # no target
    '"@method" "@authority" "@path" "content-digest"',  # no @query
    '"@method" "@target-uri"',  # a body without content-digest
    '"@method";req "@target-uri" "content-digest"',  # a parameter makes it another component
])
async def test_components_missing(private: PrivateKey, covered: str) -> None:
    headers = {"Signature-Input": f'sig1=({covered});created={created_ts()};keyid="{private.kid}";nonce="n"',
               "Signature": "sig1=:AA==:", "Content-Digest": messages.content_digest(BODY)}
    assert await reason(headers, lookup_for(public(private))) == "components-missing"


@pytest.mark.parametrize("params", [
    'keyid="k";nonce="n"', "created={ts};nonce=\"n\"", 'created={ts};keyid="k"',
])
async def test_params_missing(private: PrivateKey, params: str) -> None:
    headers = {"Signature-Input": 'sig1=("@method" "@target-uri" "content-digest");' + params.format(ts=created_ts()),
               "Signature": "sig1=:AA==:"}
    assert await reason(headers, lookup_for(public(private))) == "params-missing"


async def test_component_absent(private: PrivateKey) -> None:
    headers = CIMultiDict({"X-Consumer-Ref": "42", "Content-Digest": messages.content_digest(BODY)})
    sign_custom(private, headers, f'("@method" "@target-uri" "content-digest" "x-consumer-ref");'
                                  f'created={created_ts()};keyid="{private.kid}";nonce="n"')
    await verify(headers, lookup_for(public(private)))
    del headers["X-Consumer-Ref"]
    assert await reason(headers, lookup_for(public(private))) == "component-absent"


async def test_unknown_key(private: PrivateKey) -> None:
    assert await reason(signed(private), lookup_for()) == "unknown-key"


async def test_key_not_valid_now(private: PrivateKey) -> None:
    headers = signed(private)
    early = public(private, not_before=NOW + timedelta(seconds=1))
    late = public(private, not_before=NOW - timedelta(days=1), not_after=NOW)
    assert await reason(headers, lookup_for(early)) == "key-not-valid-now"
    assert await reason(headers, lookup_for(late)) == "key-not-valid-now"
    await verify(headers, lookup_for(public(private, not_after=NOW + timedelta(seconds=1))))


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512", "hmac-sha256"])
async def test_alg_mismatch(private: PrivateKey, alg: str) -> None:
    headers = CIMultiDict({"Content-Digest": messages.content_digest(BODY)})
    sign_custom(private, headers, f'("@method" "@target-uri" "content-digest");created={created_ts()};'
                                  f'keyid="{private.kid}";nonce="n";alg="{alg}"')
    if alg == private.alg:
        await verify(headers, lookup_for(public(private)))
    else:
        assert await reason(headers, lookup_for(public(private))) == "alg-mismatch"


async def test_key_algorithm_not_signature_choice(private: PrivateKey) -> None:
    # The same kid registered with a key of the other algorithm: refused, never verified "as" the sender says.
    other = next(k for k in KEYS.values() if k.alg != private.alg)
    impostor = PublicKey(kid=private.kid, alg=other.alg, owner=ORG, key=other.private_key.public_key())
    assert await reason(signed(private), lookup_for(impostor)) == "alg-mismatch"


async def test_bad_signature_wrong_key(private: PrivateKey) -> None:
    other = generate_private_key(private.alg, kid=private.kid)
    assert await reason(signed(other), lookup_for(public(private))) == "bad-signature"


@pytest.mark.parametrize(("change", "why"), [
    ({"method": "PUT"}, "bad-signature"),
    ({"url": URL.replace("/v1/exchange", "/v1/exchangE")}, "bad-signature"),
    ({"url": URL.replace("v=1", "v=2")}, "bad-signature"),
    ({"url": URL.replace("broker.example", "evil.example")}, "bad-signature"),
    ({"url": URL.replace("https:", "http:")}, "bad-signature"),
    ({"body": BODY.replace(b"Martin", b"Dupont")}, "digest-mismatch"),
    ({"body": BODY + b" "}, "digest-mismatch"),
])
async def test_tampered_request(private: PrivateKey, change: dict[str, Any], why: str) -> None:
    assert await reason(signed(private), lookup_for(public(private)), **change) == why


async def test_tampered_headers(private: PrivateKey) -> None:
    lookup = lookup_for(public(private))
    for name, value in [
        ("Content-Type", "text/plain"),
        ("Content-Digest", messages.content_digest(b"other")),
        ("Signature-Input", signed(private)["Signature-Input"].replace(f"created={created_ts()}",
                                                                      f"created={created_ts() + 1}")),
    ]:
        headers = signed(private)
        headers[name] = value
        assert await reason(headers, lookup) == "bad-signature", name
    headers = signed(private)
    headers.add("Content-Type", "text/plain")  # a second line changes the combined value
    assert await reason(headers, lookup) == "bad-signature"


async def test_uncovered_header_may_change(private: PrivateKey) -> None:
    headers = signed(private)
    headers["User-Agent"] = "anything"
    await verify(headers, lookup_for(public(private)))


@pytest.mark.parametrize(("offset", "max_skew", "why"), [
    (60, 60, None), (-60, 60, None), (61, 60, "created-out-of-window"), (-61, 60, "created-out-of-window"),
    (3600, 60, "created-out-of-window"), (120, 300, None),
])
async def test_created_window(private: PrivateKey, offset: int, max_skew: float, why: str | None) -> None:
    headers = signed(private)
    now = NOW + timedelta(seconds=offset)
    if why is None:
        await verify(headers, lookup_for(public(private)), now=now, max_skew=max_skew)
    else:
        assert await reason(headers, lookup_for(public(private)), now=now, max_skew=max_skew) == why


async def test_expired(private: PrivateKey) -> None:
    headers = signed(private, expires=NOW + timedelta(seconds=10))
    assert await reason(headers, lookup_for(public(private)), now=NOW + timedelta(seconds=11)) == "expired"


async def test_nonce_replay(private: PrivateKey) -> None:
    headers, nonces, lookup = signed(private), Nonces(), lookup_for(public(private))
    await verify(headers, lookup, nonces=nonces)
    assert await reason(headers, lookup, nonces=nonces) == "nonce-replay"
    await verify(signed(private), lookup, nonces=nonces)  # a fresh nonce is fine


@pytest.mark.parametrize("spoil", ["signature", "body", "key", "window"])
async def test_nonce_not_claimed_for_unverified_requests(private: PrivateKey, spoil: str) -> None:
    headers, nonces, kwargs = signed(private), Nonces(), dict[str, Any]()
    lookup = lookup_for(public(private))
    if spoil == "signature":
        headers["Signature"] = "sig1=:" + base64.b64encode(bytes(64)).decode() + ":"
    elif spoil == "body":
        kwargs["body"] = b"{}"
    elif spoil == "key":
        lookup = lookup_for()
    else:
        kwargs["now"] = NOW + timedelta(hours=1)
    with pytest.raises(SignatureRejected):
        await verify(headers, lookup, nonces=nonces, **kwargs)
    assert nonces.calls == []


async def test_naive_now_is_a_programming_error(private: PrivateKey) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await verify(signed(private), lookup_for(public(private)), now=datetime(2026, 3, 1, 12))


# ===============================================================================================================
# Exactly one signature, nothing repeated (issue 13: a second label used to be left unverified)
# ===============================================================================================================


def add_label(headers: CIMultiDict[str], label: str, member: str, signature: bytes = b"\0" * 64,
              first: bool = False) -> None:
    inputs, sigs = headers["Signature-Input"], headers["Signature"]
    extra_input, extra_sig = f"{label}={member}", f"{label}=:{base64.b64encode(signature).decode()}:"
    headers["Signature-Input"] = f"{extra_input}, {inputs}" if first else f"{inputs}, {extra_input}"
    headers["Signature"] = f"{extra_sig}, {sigs}" if first else f"{sigs}, {extra_sig}"


@pytest.mark.parametrize("first", [True, False], ids=["added-first", "added-last"])
async def test_a_valid_signature_plus_an_invalid_one_is_refused(private: PrivateKey, first: bool) -> None:
    headers = signed(private, label="good")
    await verify(CIMultiDict(headers), lookup_for(public(private)))
    member = headers["Signature-Input"].removeprefix("good=")
    add_label(headers, "bad", member, first=first)  # meets the policy, does not verify
    assert await reason(headers, lookup_for(public(private))) == "several-signatures"


async def test_two_valid_signatures_are_refused_too(private: PrivateKey) -> None:
    one, two = signed(private, label="one"), signed(private, label="two", nonce="other")
    headers = CIMultiDict({"Content-Type": "application/json", "Content-Digest": one["Content-Digest"],
                           "Signature-Input": f'{one["Signature-Input"]}, {two["Signature-Input"]}',
                           "Signature": f'{one["Signature"]}, {two["Signature"]}'})
    assert await reason(headers, lookup_for(public(private))) == "several-signatures"


async def test_a_gateway_label_beside_the_consumers_is_refused(private: PrivateKey) -> None:
    headers = signed(private, label="consumer")
    add_label(headers, "gateway", f'("@authority");created={created_ts()};keyid="gw"', first=True)
    assert await reason(headers, lookup_for(public(private))) == "several-signatures"


async def test_an_input_without_its_signature_is_refused(private: PrivateKey) -> None:
    headers = signed(private)
    headers["Signature-Input"] = f'orphan=("@method");created=1, {headers["Signature-Input"]}'
    assert await reason(headers, lookup_for(public(private))) == "several-signatures"


@pytest.mark.parametrize("where", ["same-line", "two-lines"])
async def test_a_repeated_label_is_refused_not_last_wins(private: PrivateKey, where: str) -> None:
    good = signed(private)
    forged = 'sig1=("@method" "@target-uri" "content-digest");created=1;keyid="x";nonce="n"'
    # RFC 8941 alone keeps the last value: the good label second would verify, and the first would be unread
    headers = CIMultiDict({k: v for k, v in good.items() if k not in ("Signature-Input", "Signature")})
    if where == "same-line":
        headers["Signature-Input"] = f'{forged}, {good["Signature-Input"]}'
        headers["Signature"] = f'sig1=:AA==:, {good["Signature"]}'
    else:
        headers.add("Signature-Input", forged)
        headers.add("Signature-Input", good["Signature-Input"])
        headers["Signature"] = good["Signature"]
    assert sf.parse_dictionary(headers.getall("Signature-Input")[-1])["sig1"]  # the last one alone is fine
    assert await reason(headers, lookup_for(public(private))) == "malformed"


async def test_a_repeated_signature_parameter_is_refused(private: PrivateKey) -> None:
    member = (f'("@method" "@target-uri" "content-digest");created={created_ts()};keyid="{private.kid}";'
              f'nonce="a";nonce="b"')
    headers = CIMultiDict({"Content-Digest": messages.content_digest(BODY)})
    headers["Signature-Input"] = f"sig1={member}"
    headers["Signature"] = "sig1=:AA==:"
    assert await reason(headers, lookup_for(public(private))) == "malformed"


@pytest.mark.parametrize("digest", [
    "sha-256=:{good}:, sha-256=:{bad}:",
    "sha-256=:{bad}:, sha-256=:{good}:",
])
async def test_a_repeated_digest_algorithm_is_refused(private: PrivateKey, digest: str) -> None:
    good = messages.content_digest(BODY).removeprefix("sha-256=:").removesuffix(":")
    bad = base64.b64encode(b"\1" * 32).decode()
    value = digest.format(good=good, bad=bad)
    with pytest.raises(SignatureRejected) as exc:
        messages.verify_content_digest(value, BODY)
    assert exc.value.reason == "malformed"
    # on a request, signed over the crafted field: the refusal is the repetition, not the signature
    headers = CIMultiDict({"Content-Type": "application/json", "Content-Digest": value})
    sign_custom(private, headers, f'("@method" "@target-uri" "content-digest");created={created_ts()};'
                                  f'keyid="{private.kid}";nonce="n"')
    assert await reason(headers, lookup_for(public(private))) == "malformed"


def test_structured_fields_keep_last_wins_by_default() -> None:
    # RFC 8941 §4.2.2: the generic parser stays conformant; only the signature policy asks for unique keys
    assert sf.parse_dictionary("a=1, a=2") == {"a": sf.Item(2)}
    assert sf.parse_dictionary("a=1;p=1;p=2") == {"a": sf.Item(1, {"p": 2})}
    with pytest.raises(sf.StructuredFieldError, match="repeated"):
        sf.parse_dictionary("a=1, a=2", unique_keys=True)
    with pytest.raises(sf.StructuredFieldError, match="repeated"):
        sf.parse_dictionary("a=(1;p=1;p=2)", unique_keys=True)
    with pytest.raises(sf.StructuredFieldError, match="repeated"):
        sf.parse_dictionary("a=(1);p=1;p=2", unique_keys=True)
    with pytest.raises(sf.StructuredFieldError, match="repeated"):
        sf.parse_dictionary("a;p, a", unique_keys=True)
    assert sf.parse_dictionary("a=1;p=1, b;p=2", unique_keys=True) == {"a": sf.Item(1, {"p": 1}),
                                                                          "b": sf.Item(True, {"p": 2})}


# ===============================================================================================================
# VerifiedRequest cannot be forged
# ===============================================================================================================


async def test_verified_request_cannot_be_constructed_or_copied_with_changes(private: PrivateKey) -> None:
    verified = await verify(signed(private), lookup_for(public(private)))
    fields = {f.name: getattr(verified, f.name) for f in dataclasses.fields(verified)}
    with pytest.raises(TypeError):
        VerifiedRequest(**fields)
    with pytest.raises(TypeError):
        VerifiedRequest(**fields, _guard=object())
    with pytest.raises(ValueError, match="InitVar"):
        dataclasses.replace(verified, body=b'{"subject": "someone else"}')  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.body = b"{}"  # type: ignore[misc]


# ===============================================================================================================
# sign_request argument checks
# ===============================================================================================================


@pytest.mark.parametrize("kwargs", [
    {"alg": "rsa-pss-sha512"},
    {"kid": "another-kid"},
    {"method": "PO ST"},
    {"url": "/v1/exchange"},
    {"url": "https://broker.example/caf\u00e9"},
    {"label": "Sig1"},
    {"nonce": 'with "quotes\u00e9'},
    {"created": datetime(2026, 3, 1)},
])
def test_sign_request_refuses(private: PrivateKey, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"method": "POST", "url": URL, "headers": {}, "body": BODY, "private_key": private}
    with pytest.raises(ValueError):
        messages.sign_request(**(args | kwargs))


def test_sign_request_bare_key_needs_kid(private: PrivateKey) -> None:
    with pytest.raises(ValueError, match="kid"):
        messages.sign_request(method="POST", url=URL, headers={}, body=b"", private_key=private.private_key)


def test_sign_request_fresh_nonce_and_current_time(private: PrivateKey) -> None:
    a = messages.sign_request(method="GET", url=URL, headers={}, body=b"", private_key=private)
    b = messages.sign_request(method="GET", url=URL, headers={}, body=b"", private_key=private)
    assert a["Signature-Input"] != b["Signature-Input"]
    created = int(a["Signature-Input"].split("created=")[1].split(";")[0])
    assert abs(created - datetime.now(UTC).timestamp()) < 5


# ===============================================================================================================
# Responses
# ===============================================================================================================

RESPONSE_BODY = b'{"data": {"quotient_familial": 1024}}'


async def verified_request(private: PrivateKey) -> tuple[VerifiedRequest, CIMultiDict[str]]:
    headers = signed(private)
    return await verify(headers, lookup_for(public(private))), headers


def broker_key() -> PrivateKey:
    return KEYS["ed25519"]


def broker_lookup() -> Callable[[str], PublicKey | None]:
    return lookup_for(broker_key().public_key(owner="broker"))


def signed_response(request: VerifiedRequest | None, *, status: int = 200, body: bytes = RESPONSE_BODY,
                    content_type: str | None = "application/json") -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    if content_type is not None:
        headers["Content-Type"] = content_type
    key = broker_key()
    headers.update(messages.sign_response(status=status, headers=headers, body=body, request=request,
                                         private_key=key.private_key, kid=key.kid, now=NOW))
    return headers


def response_reason(headers: Mapping[str, str], request_headers: Mapping[str, str], *, status: int = 200,
                    body: bytes = RESPONSE_BODY, now: datetime = NOW,
                    lookup: Callable[[str], PublicKey | None] | None = None) -> str:
    with pytest.raises(SignatureRejected) as exc:
        messages.verify_response(status=status, headers=headers, body=body, request_headers=request_headers,
                                lookup_key=lookup or broker_lookup(), now=now)
    return exc.value.reason


async def test_response_round_trip(private: PrivateKey) -> None:
    request, request_headers = await verified_request(private)
    headers = signed_response(request)
    assert headers["Signature-Input"] == (
        'sig1=("@status" "content-digest" "content-type" "signature";req;key="sig1");'
        f'created={created_ts()};keyid="{broker_key().kid}";alg="ed25519"')
    assert headers["Content-Digest"] == messages.content_digest(RESPONSE_BODY)
    messages.verify_response(status=200, headers=headers, body=RESPONSE_BODY, request_headers=request_headers,
                            lookup_key=broker_lookup(), now=NOW)


async def test_response_signed_with_p256_broker_key() -> None:
    request, request_headers = await verified_request(KEYS["ed25519"])
    key = KEYS["ecdsa-p256-sha256"]
    headers: CIMultiDict[str] = CIMultiDict()
    headers.update(messages.sign_response(status=204, headers=headers, body=b"", request=request,
                                         private_key=key, now=NOW))
    assert '"content-type"' not in headers["Signature-Input"]
    messages.verify_response(status=204, headers=headers, body=b"", request_headers=request_headers,
                            lookup_key=lookup_for(key.public_key(owner="broker")), now=NOW)


async def test_response_refusals(private: PrivateKey) -> None:
    request, request_headers = await verified_request(private)
    headers = signed_response(request)
    assert response_reason(headers, request_headers, status=201) == "bad-signature"
    assert response_reason(headers, request_headers, body=b"{}") == "digest-mismatch"
    assert response_reason(headers, request_headers, now=NOW + timedelta(minutes=5)) == "created-out-of-window"
    assert response_reason(headers, request_headers, lookup=lookup_for()) == "unknown-key"
    changed = CIMultiDict(headers)
    changed["Content-Type"] = "text/html"
    assert response_reason(changed, request_headers) == "bad-signature"
    assert response_reason({}, request_headers) == "missing-signature"


async def test_response_bound_to_its_request(private: PrivateKey) -> None:
    request, _ = await verified_request(private)
    _, other_request_headers = await verified_request(private)
    # same label "sig1", another request: the covered request signature differs
    assert response_reason(signed_response(request), other_request_headers) == "bad-signature"


async def test_response_without_binding_refused(private: PrivateKey) -> None:
    _, request_headers = await verified_request(private)
    headers = signed_response(None)
    assert '"signature";req' not in headers["Signature-Input"]
    assert response_reason(headers, request_headers) == "components-missing"


async def test_response_unbound_only_when_asked(private: PrivateKey) -> None:
    # a refusal of a request the broker could not verify is signed without the binding: bound=False accepts it,
    # and still refuses an answer bound to another request, or altered
    request, _ = await verified_request(private)
    _, request_headers = await verified_request(private)
    unbound = signed_response(None, status=401)
    messages.verify_response(status=401, headers=unbound, body=RESPONSE_BODY, request_headers=request_headers,
                            lookup_key=broker_lookup(), now=NOW, bound=False)
    for status, headers, body in ((401, signed_response(request, status=401), RESPONSE_BODY),
                                  (401, unbound, b"{}"), (403, unbound, RESPONSE_BODY)):
        with pytest.raises(SignatureRejected):
            messages.verify_response(status=status, headers=headers, body=body, request_headers=request_headers,
                                    lookup_key=broker_lookup(), now=NOW, bound=False)


async def test_response_content_type_must_be_covered_when_present(private: PrivateKey) -> None:
    request, request_headers = await verified_request(private)
    headers = signed_response(request, content_type=None)
    messages.verify_response(status=200, headers=headers, body=RESPONSE_BODY, request_headers=request_headers,
                            lookup_key=broker_lookup(), now=NOW)
    headers["Content-Type"] = "text/html"
    assert response_reason(headers, request_headers) == "components-missing"


async def test_response_req_components_reach_the_request(private: PrivateKey) -> None:
    request, request_headers = await verified_request(private)
    headers = signed_response(request)
    base = messages.signature_base("sig1", headers=headers, status=200, request_headers=request_headers)
    request_signature = request_headers["Signature"].removeprefix("sig1=")
    assert f'"signature";req;key="sig1": {request_signature}'.encode() in base
    headers["Signature-Input"] = 'sig1=("@method";req "content-type";req "@status");created=1'
    base = messages.signature_base("sig1", headers=headers, status=200, request_headers=request_headers,
                                  request_method="POST", request_target_uri=URL)
    assert base.split(b"\n")[:3] == [b'"@method";req: POST', b'"content-type";req: application/json',
                                     b'"@status": 200']
    with pytest.raises(SignatureRejected) as exc:
        messages.signature_base("sig1", headers=headers, status=200, request_headers=request_headers)
    assert exc.value.reason == "component-absent"  # the SDK did not say which method it used


@pytest.mark.parametrize("bound", [True, False])
async def test_signed_response_keeps_the_very_base_it_signed(private: PrivateKey, bound: bool) -> None:
    # the evidence stores this base instead of rebuilding it: it must be what a verifier rebuilds from the answer
    request, request_headers = await verified_request(private)
    key = broker_key()
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    kept = messages.sign_response_with_base(status=200, headers=headers, body=RESPONSE_BODY,
                                            request=request if bound else None, private_key=key, now=NOW)
    assert kept.headers == messages.sign_response(status=200, headers=headers, body=RESPONSE_BODY,
                                                  request=request if bound else None, private_key=key, now=NOW)
    headers.update(kept.headers)
    assert kept.label == "sig1"
    assert sf.parse_dictionary(headers["Signature"])["sig1"] == sf.Item(kept.signature)
    assert kept.signature_base == messages.signature_base(
        "sig1", headers=headers, status=200, request_headers=request_headers if bound else None)
    broker_lookup()(key.kid).verify(kept.signature, kept.signature_base)  # type: ignore[union-attr]


async def test_response_binds_the_request_signature_member_as_sent(private: PrivateKey) -> None:
    # the request's Signature, parsed once when it was verified, serves the answer's `"signature";req`: with a
    # parameter on the member and odd spacing, the value is still the member re-serialised (RFC 9421 §2.1.2)
    headers = signed(private)
    member = headers["Signature"].removeprefix("sig1=")
    headers["Signature"] = f"sig1={member};  p=1"
    request = await verify(headers, lookup_for(public(private)))
    response = signed_response(request)
    base = messages.signature_base("sig1", headers=response, status=200, request_headers=headers)
    assert f'"signature";req;key="sig1": {member};p=1\n'.encode() in base
    messages.verify_response(status=200, headers=response, body=RESPONSE_BODY, request_headers=headers,
                             lookup_key=broker_lookup(), now=NOW)


def test_sign_response_refuses_bad_status() -> None:
    with pytest.raises(ValueError):
        messages.sign_response(status=42, headers={}, body=b"", request=None, private_key=broker_key(), now=NOW)


# ===============================================================================================================
# Properties
# ===============================================================================================================

SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%2F", min_size=0, max_size=12)
QUERY = st.lists(st.tuples(SEGMENT, SEGMENT), max_size=4).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv))


@st.composite
def requests(draw: st.DrawFn) -> tuple[PrivateKey, str, str, bytes, dict[str, str]]:
    private = KEYS[draw(st.sampled_from(sorted(KEYS)))]
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]))
    path = "/" + "/".join(draw(st.lists(SEGMENT, max_size=4)))
    query = draw(st.one_of(st.none(), QUERY))
    url = "https://broker.example" + path + ("" if query is None else "?" + query)
    body = draw(st.binary(max_size=300))
    headers = draw(st.sampled_from([{}, {"Content-Type": "application/json"}, {"content-type": "text/plain"}]))
    return private, method, url, body, headers


def run_verify(private: PrivateKey, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> None:
    asyncio.run(verify(headers, lookup_for(public(private)), method=method, url=url, body=body))


def run_reason(private: PrivateKey, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> str:
    try:
        run_verify(private, method, url, body, headers)
    except SignatureRejected as exc:
        return exc.reason
    raise AssertionError("accepted")


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(requests())
def test_property_round_trip(request: tuple[PrivateKey, str, str, bytes, dict[str, str]]) -> None:
    private, method, url, body, headers = request
    signed_headers = signed(private, method=method, url=url, body=body, headers=headers)
    run_verify(private, method, url, body, signed_headers)


@PROPERTY
@given(requests(), st.data())
def test_property_flipped_signature_byte_fails(request: tuple[PrivateKey, str, str, bytes, dict[str, str]],
                                               data: st.DataObject) -> None:
    private, method, url, body, headers = request
    signed_headers = signed(private, method=method, url=url, body=body, headers=headers)
    signature = bytearray(base64.b64decode(signed_headers["Signature"].removeprefix("sig1=").strip(":")))
    index = data.draw(st.integers(0, len(signature) - 1))
    signature[index] ^= data.draw(st.integers(1, 255))
    signed_headers["Signature"] = f"sig1=:{base64.b64encode(bytes(signature)).decode()}:"
    assert run_reason(private, method, url, body, signed_headers) == "bad-signature"


@PROPERTY
@given(requests(), st.data())
def test_property_flipped_body_byte_fails(request: tuple[PrivateKey, str, str, bytes, dict[str, str]],
                                          data: st.DataObject) -> None:
    private, method, url, body, headers = request
    body = body or b"x"
    signed_headers = signed(private, method=method, url=url, body=body, headers=headers)
    flipped = bytearray(body)
    index = data.draw(st.integers(0, len(flipped) - 1))
    flipped[index] ^= data.draw(st.integers(1, 255))
    assert run_reason(private, method, url, bytes(flipped), signed_headers) == "digest-mismatch"
