"""HTTP Message Signatures (RFC 9421) and Content-Digest (RFC 9530) on the broker's exchanges.

Invariants:

- `VerifiedRequest` is constructed only by `verify_request`, once the broker's policy, the clock window, the key,
  the signature, the content digest and the nonce have all been checked. Downstream code takes a `VerifiedRequest`,
  so an unverified request cannot reach an adapter.
- Every refusal is a `SignatureRejected` whose `reason` is a stable code (`REASONS`) with a detail for the server
  log. The HTTP layer shows the caller neither (one opaque 401): probing must teach an attacker nothing.
- Exactly one signature per message: Signature-Input and Signature each hold one label, the same. A second label
  is refused (`several-signatures`) rather than left unverified: a signature the broker does not check is one an
  attacker may add, and "the first that verifies" or "every one must verify" would need the keys of parties the
  broker does not know. A repeated label, a repeated signature parameter or a repeated Content-Digest algorithm
  is refused too (`malformed`), where RFC 8941 alone would let the last one win: a message must not say two
  things at once.
- The nonce is claimed last, after the signature verified, so unauthenticated traffic cannot fill the nonce store.

The signature base is built per RFC 9421 §2.5 byte for byte, for every component RFC 9421 defines except trailers
(`tr`, refused): the derived components, header fields with `sf`, `key`, `bs`, and `req` in responses.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, TypeAlias, cast, get_args
from urllib.parse import unquote_to_bytes

from cryptography.exceptions import InvalidSignature
from multidict import CIMultiDict, CIMultiDictProxy

from broker.signing import structured_fields as sf
from broker.signing.keys import PrivateKey, PrivateKeyObject, PublicKey, algorithm_of, sign_message
from broker.signing.signer import Signer

__all__ = [
    "REASONS",
    "STRUCTURED_FIELDS",
    "Headers",
    "PublicKey",
    "Reason",
    "SignatureRejected",
    "SignedResponse",
    "VerifiedRequest",
    "content_digest",
    "sign_request",
    "sign_response",
    "sign_response_with_base",
    "signature_base",
    "verify_content_digest",
    "verify_request",
    "verify_response",
]

Reason: TypeAlias = Literal[
    "missing-signature",  # no Signature / Signature-Input field
    "malformed",  # the fields or a component identifier break RFC 8941 / RFC 9421, or repeat a key
    "several-signatures",  # more than one label: the broker accepts exactly one signature
    "components-missing",  # no label covers what the policy requires
    "params-missing",  # the signature lacks created / keyid / nonce
    "component-absent",  # a covered component is not in the message (header, query parameter)
    "unknown-key",
    "key-not-valid-now",  # outside the key's not-before / not-after
    "alg-mismatch",  # the alg parameter names another algorithm than the key's
    "bad-signature",
    "digest-mismatch",  # Content-Digest does not match the body, or has no supported algorithm
    "created-out-of-window",
    "expired",
    "nonce-replay",
]
REASONS: Final[frozenset[str]] = frozenset(get_args(Reason))


class SignatureRejected(Exception):
    """A signature (or digest) did not verify. `reason` is a stable code, `detail` a message for server logs;
    neither is for the caller."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


# Header collections: a multidict (`CIMultiDictProxy` / `CIMultiDict`, as aiohttp gives), whose `getall` yields
# every line of a repeated field, or any other mapping (a dict in the SDK), whose keys are matched ignoring case.
Headers: TypeAlias = Mapping[str, str]

# Field name -> structured type, for the `sf` parameter (RFC 9421 §2.1.1): a verifier must know a field's type to
# re-serialise it, and a field missing here cannot be covered with `sf`.
STRUCTURED_FIELDS: Final[Mapping[str, sf.FieldType]] = {
    "accept-ch": "list",
    "accept-signature": "dictionary",
    "cache-status": "list",
    "cdn-cache-control": "dictionary",
    "client-cert": "item",
    "client-cert-chain": "list",
    "content-digest": "dictionary",
    "priority": "dictionary",
    "proxy-status": "list",
    "repr-digest": "dictionary",
    "signature": "dictionary",
    "signature-input": "dictionary",
    "want-content-digest": "dictionary",
    "want-repr-digest": "dictionary",
}

_NO_LINES: Final[list[str]] = []
_URI_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?", re.DOTALL)
_FIELD_NAME_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_METHOD_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OBS_FOLD_RE: Final = re.compile(r"\r?\n[ \t]+")
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}
_DERIVED_REQUEST: Final = frozenset(
    {"@method", "@target-uri", "@authority", "@scheme", "@request-target", "@path", "@query", "@query-param"})
_FIELD_PARAMS: Final = frozenset({"sf", "key", "bs", "req"})
_DIGEST_ALGORITHMS: Final = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
# application/x-www-form-urlencoded percent-encode set (WHATWG URL §5.2): all but ASCII alphanumerics and *-._
_FORM_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._")
_FORM_ENCODE: Final = tuple(chr(b) if b in _FORM_SAFE else f"%{b:02X}" for b in range(256))
_MAX_NONCE: Final = 128
_LAST_DATETIME_TS: Final = 253_402_300_799  # 9999-12-31T23:59:59Z

# Fixed identifiers of the components the broker signs, serialised once.
_C_METHOD: Final = sf.Item("@method")
_C_TARGET_URI: Final = sf.Item("@target-uri")
_C_STATUS: Final = sf.Item("@status")
_C_CONTENT_DIGEST: Final = sf.Item("content-digest")
_C_CONTENT_TYPE: Final = sf.Item("content-type")
_C_AUTHORIZATION: Final = sf.Item("authorization")
_ID_METHOD: Final = '"@method"'
_ID_TARGET_URI: Final = '"@target-uri"'
_ID_TARGET_PARTS: Final = ('"@authority"', '"@path"', '"@query"')
_ID_STATUS: Final = '"@status"'
_ID_CONTENT_DIGEST: Final = '"content-digest"'
_ID_CONTENT_TYPE: Final = '"content-type"'


def _malformed(detail: str) -> SignatureRejected:
    return SignatureRejected("malformed", detail)


def _absent(detail: str) -> SignatureRejected:
    return SignatureRejected("component-absent", detail)


# ---------------------------------------------------------------------------------------------------------------
# Content-Digest (RFC 9530)
# ---------------------------------------------------------------------------------------------------------------


def content_digest(body: bytes) -> str:
    """The Content-Digest field value for `body`: `sha-256=:<base64>:`."""
    return "sha-256=:" + binascii.b2a_base64(hashlib.sha256(body).digest(), newline=False).decode("ascii") + ":"


def verify_content_digest(field_value: str, body: bytes) -> None:
    """Check a Content-Digest value against `body`: at least one of sha-256 / sha-512 present, and every one of
    them present must match. Other algorithms are ignored (RFC 9530 §2: unknown ones are skipped). An algorithm
    given twice is refused: which of the two would a reader trust?"""
    try:
        digests = sf.parse_dictionary(field_value, unique_keys=True)
    except sf.StructuredFieldError as exc:
        raise _malformed(f"Content-Digest: {exc}") from None
    checked = 0
    for name, algorithm in _DIGEST_ALGORITHMS.items():
        member = digests.get(name)
        if member is None:
            continue
        if not isinstance(member, sf.Item) or not isinstance(member.value, bytes):
            raise _malformed(f"Content-Digest {name} is not a byte sequence")
        if not hmac.compare_digest(member.value, algorithm(body).digest()):
            raise SignatureRejected("digest-mismatch", f"Content-Digest {name} does not match the body")
        checked += 1
    if not checked:
        raise SignatureRejected("digest-mismatch", "Content-Digest has neither sha-256 nor sha-512")


# ---------------------------------------------------------------------------------------------------------------
# Messages and component values (RFC 9421 §2)
# ---------------------------------------------------------------------------------------------------------------


def _field_lines(headers: Headers, name: str) -> list[str]:
    """All field lines of `name` (lowercase), in order."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return cast(list[str], getall(name, _NO_LINES))
    return [v for k, v in headers.items() if k.lower() == name]


class _Message:
    """One HTTP message as the signature base sees it; `request` is the request a response answers."""

    __slots__ = ("_dictionaries", "_uri", "headers", "is_request", "method", "overrides", "request", "status",
                 "target_uri")

    def __init__(
        self, headers: Headers, *, is_request: bool, method: str | None = None, target_uri: str | None = None,
        status: int | None = None, request: _Message | None = None, overrides: Mapping[str, str] | None = None,
        dictionaries: dict[str, dict[str, sf.Member]] | None = None,
    ) -> None:
        self.headers = headers
        self.is_request = is_request
        self.method = method
        self.target_uri = target_uri
        self.status = status
        self.request = request
        # fields the signer is adding (Content-Digest), which the caller's headers do not hold yet
        self.overrides = overrides
        self._uri: tuple[str, str, str, str | None] | None = None
        # Dictionary fields already parsed from these very lines (a verified request's Signature, parsed when it
        # was verified): a response's `"signature";req;key=...` then costs no second parse. A message's fields do
        # not change while it is in use, so what was parsed once stays true.
        self._dictionaries = dictionaries

    def field_lines(self, name: str) -> list[str]:
        if self.overrides is not None and name in self.overrides:
            return [self.overrides[name]]
        return _field_lines(self.headers, name)

    def uri(self) -> tuple[str, str, str, str | None]:
        """(scheme, authority, path, query or None) of the target URI, split without any normalisation."""
        if self._uri is None:
            m = _URI_RE.fullmatch(self.target_uri or "")
            if m is None:
                raise _malformed(f"target URI {self.target_uri!r} is not an absolute http(s) URI")
            self._uri = (m.group(1), m.group(2), m.group(3), m.group(4))
        return self._uri

    def dictionary(self, name: str, lines: list[str]) -> dict[str, sf.Member]:
        """The field `name`, whose lines are `lines`, parsed as a dictionary (raises `StructuredFieldError`)."""
        if self._dictionaries is None:
            self._dictionaries = {}
        parsed = self._dictionaries.get(name)
        if parsed is None:
            parsed = self._dictionaries[name] = sf.parse_dictionary(", ".join(lines))
        return parsed


def _component_value(component: sf.Item, msg: _Message) -> str:
    name = cast(str, component.value)
    params = component.params
    if "req" in params:
        if params["req"] is not True or msg.request is None:
            raise _malformed(f"{name}: 'req' is only for a response, naming its request's components")
        msg = msg.request
    if name.startswith("@"):
        return _derived_value(name, params, msg)
    return _field_value(name, params, msg)


def _derived_value(name: str, params: sf.Params, msg: _Message) -> str:
    allowed = ("req", "name") if name == "@query-param" else ("req",)
    for p in params:
        if p not in allowed:
            raise _malformed(f"{name}: unknown parameter {p!r}")
    if name == "@status":
        if "req" in params or msg.status is None:
            raise _malformed("@status is a response component")
        return str(msg.status)
    if name not in _DERIVED_REQUEST:
        raise _malformed(f"unknown derived component {name!r}")
    if not msg.is_request:
        raise _malformed(f"{name} is a request component (in a response, use 'req')")
    if name == "@method":
        if msg.method is None:
            raise _absent("@method of the request is unknown")
        return msg.method
    if msg.target_uri is None:
        raise _absent(f"{name}: the request's target URI is unknown")
    if name == "@target-uri":
        return msg.target_uri
    scheme, authority, path, query = msg.uri()
    if name == "@authority":
        return _normalise_authority(scheme.lower(), authority)
    if name == "@scheme":
        return scheme.lower()
    if name == "@path":
        return path or "/"
    if name == "@query":
        return "?" + (query or "")
    if name == "@request-target":
        # origin-form, the form the broker's clients use
        return (path or "/") + ("" if query is None else "?" + query)
    return _query_param(params, query)


def _normalise_authority(scheme: str, authority: str) -> str:
    # RFC 9421 §2.2.3: the authority of the target URI, lowercase, without userinfo or the scheme's default port.
    host_port = authority.rpartition("@")[2].lower()
    if host_port.startswith("["):
        end = host_port.find("]") + 1
        host, port = host_port[:end], host_port[end + 1 :]
    else:
        host, _, port = host_port.partition(":")
    if not port or port == _DEFAULT_PORTS.get(scheme):
        return host
    return host + ":" + port


def _form_canonical(raw: str) -> str:
    # WHATWG application/x-www-form-urlencoded parsing ("+" is a space, lenient percent-decoding, UTF-8 with
    # replacement), then re-encoding with the urlencoded percent-encode set and %20 for space (RFC 9421 §2.2.8).
    data = unquote_to_bytes(raw.replace("+", " ")).decode("utf-8", "replace").encode("utf-8")
    return "".join([_FORM_ENCODE[b] for b in data])


def _query_param(params: sf.Params, query: str | None) -> str:
    wanted = params.get("name")
    if not isinstance(wanted, str) or isinstance(wanted, sf.Token):
        raise _malformed("@query-param needs a string 'name' parameter")
    values = []
    for part in (query or "").split("&"):
        if part:
            name, _, value = part.partition("=")
            if _form_canonical(name) == wanted:
                values.append(value)
    if not values:
        raise _absent(f"query parameter {wanted!r} is not in the target URI")
    if len(values) > 1:
        # RFC 9421 §2.2.8: a repeated parameter MUST NOT be covered by name (@query covers it).
        raise _malformed(f"query parameter {wanted!r} occurs more than once")
    return _form_canonical(values[0])


def _field_value(name: str, params: sf.Params, msg: _Message) -> str:
    for p, v in params.items():
        if p not in _FIELD_PARAMS:
            raise _malformed(f"{name}: unsupported parameter {p!r}")
        if p != "key" and v is not True:
            raise _malformed(f"{name}: parameter {p!r} is a flag")
    if _FIELD_NAME_RE.fullmatch(name) is None:
        raise _malformed(f"{name!r} is not a lowercase field name")
    if "bs" in params and ("sf" in params or "key" in params):
        raise _malformed(f"{name}: 'bs' excludes 'sf' and 'key'")
    lines = msg.field_lines(name)
    if not lines:
        raise _absent(f"field {name!r} is not in the message")
    if "key" in params:
        key = params["key"]
        if not isinstance(key, str) or isinstance(key, sf.Token):
            raise _malformed(f"{name}: 'key' must be a string")
        try:
            member = msg.dictionary(name, lines).get(key)
        except sf.StructuredFieldError as exc:
            raise _malformed(f"{name} is not a dictionary: {exc}") from None
        if member is None:
            raise _absent(f"{name} has no member {key!r}")
        return sf.serialize_member(member)
    if "sf" in params:
        field_type = STRUCTURED_FIELDS.get(name)
        if field_type is None:
            raise _malformed(f"{name}: structured type unknown, cannot be covered with 'sf'")
        try:
            return sf.serialize(sf.parse(", ".join(lines), field_type))
        except sf.StructuredFieldError as exc:
            raise _malformed(f"{name} is not a valid structured {field_type}: {exc}") from None
    if "bs" in params:
        return ", ".join(
            ":" + binascii.b2a_base64(line.strip(" \t").encode("utf-8", "surrogateescape"),
                                      newline=False).decode("ascii") + ":"
            for line in lines
        )
    value = lines[0].strip(" \t") if len(lines) == 1 else ", ".join(line.strip(" \t") for line in lines)
    if "\n" in value:
        value = _OBS_FOLD_RE.sub(" ", value)
    return value


# ---------------------------------------------------------------------------------------------------------------
# Signature inputs and the signature base (RFC 9421 §2.3, §2.5)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)  # not frozen: built once per request on the hot path, and never changed after
class _Signature:
    """One label of Signature-Input with its Signature, checked for shape (not yet for policy or validity)."""

    label: str
    components: tuple[sf.Item, ...]
    ids: tuple[str, ...]  # serialised component identifiers, the left-hand side of each base line
    params: sf.Params
    params_value: str  # the @signature-params value: the inner list, re-serialised
    signature: bytes
    created: int | None
    expires: int | None
    keyid: str | None
    nonce: str | None
    alg: str | None


def _make_signature(label: str, inner: sf.Member, signature: bytes) -> _Signature:
    if not isinstance(inner, sf.InnerList):
        raise _malformed(f"Signature-Input {label!r} is not an inner list")
    seen: set[object] = set()
    ids = []
    for item in inner.items:
        if type(item.value) is not str:  # a token is not a string
            raise _malformed(f"Signature-Input {label!r}: component identifiers are strings")
        if item.value == "@signature-params":
            raise _malformed("@signature-params cannot be a covered component")
        ident = sf.serialize_item(item)
        # Parameters in another order make the same component: compare them as a set when there are several.
        identity: object = ident if len(item.params) < 2 else (item.value, frozenset(item.params.items()))
        if identity in seen:
            raise _malformed(f"Signature-Input {label!r} covers {item.value!r} twice")
        seen.add(identity)
        ids.append(ident)
    params = inner.params
    ints: dict[str, int | None] = {}
    strings: dict[str, str | None] = {}
    # Exact types: a boolean is not an integer, a token is not a string.
    for p in ("created", "expires"):
        v = params.get(p)
        if v is not None and type(v) is not int:
            raise _malformed(f"Signature-Input {label!r}: {p} must be an integer")
        ints[p] = v
    for p in ("keyid", "nonce", "alg", "tag"):
        v = params.get(p)
        if v is not None and type(v) is not str:
            raise _malformed(f"Signature-Input {label!r}: {p} must be a string")
        strings[p] = v
    return _Signature(
        label=label, components=inner.items, ids=tuple(ids), params=params,
        # the inner list re-serialised, reusing the component identifiers just serialised
        params_value="(" + " ".join(ids) + ")" + sf.serialize_params(params), signature=signature,
        created=ints["created"], expires=ints["expires"],
        keyid=strings["keyid"], nonce=strings["nonce"], alg=strings["alg"],
    )


def _signature_dictionaries(headers: Headers) -> tuple[dict[str, sf.Member], dict[str, sf.Member]]:
    """Signature-Input and Signature as dictionaries; a label (or a parameter of one) given twice is malformed."""
    inputs_lines = _field_lines(headers, "signature-input")
    signature_lines = _field_lines(headers, "signature")
    if not inputs_lines or not signature_lines:
        raise SignatureRejected("missing-signature", "no Signature-Input or no Signature field")
    try:
        return (sf.parse_dictionary(", ".join(inputs_lines), unique_keys=True),
                sf.parse_dictionary(", ".join(signature_lines), unique_keys=True))
    except sf.StructuredFieldError as exc:
        raise _malformed(f"Signature-Input / Signature: {exc}") from None


def _the_signature(inputs: dict[str, sf.Member], signatures: dict[str, sf.Member]) -> _Signature:
    """The message's one signature (see the module's invariants: a second label is refused, not ignored), from its
    Signature-Input and Signature dictionaries."""
    if len(inputs) > 1 or len(signatures) > 1:
        raise SignatureRejected("several-signatures", f"labels {', '.join(sorted({*inputs, *signatures}))}: "
                                "the broker accepts exactly one signature")
    [sig] = _matched_signatures(inputs, signatures)
    return sig


def _parse_signature_fields(headers: Headers) -> list[_Signature]:
    """Every label present in both Signature-Input and Signature, in Signature-Input order."""
    return _matched_signatures(*_signature_dictionaries(headers))


def _matched_signatures(inputs: dict[str, sf.Member], signatures: dict[str, sf.Member]) -> list[_Signature]:
    out = []
    for label, inner in inputs.items():
        member = signatures.get(label)
        if member is None:
            continue
        if not isinstance(member, sf.Item) or not isinstance(member.value, bytes):
            raise _malformed(f"Signature {label!r} is not a byte sequence")
        out.append(_make_signature(label, inner, member.value))
    if not out:
        raise _malformed("no label is in both Signature-Input and Signature")
    return out


def _build_base(components: Iterable[sf.Item], ids: Iterable[str], params_value: str, msg: _Message) -> bytes:
    lines = []
    for component, ident in zip(components, ids, strict=True):
        value = _component_value(component, msg)
        if "\n" in value or "\r" in value:
            raise _malformed(f"{ident}: a component value cannot contain a line break")
        lines.append(ident + ": " + value)
    lines.append('"@signature-params": ' + params_value)
    try:
        return "\n".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise _malformed("the signature base is not ASCII (cover such fields with 'bs')") from None


def signature_base(
    label: str, *, headers: Headers, method: str | None = None, target_uri: str | None = None,
    status: int | None = None, request_headers: Headers | None = None, request_method: str | None = None,
    request_target_uri: str | None = None,
) -> bytes:
    """The RFC 9421 signature base of `label` in the message's own Signature-Input, for diagnostics and tests.

    Give `method` and `target_uri` for a request, `status` for a response; for a response's `req` components, the
    request's headers, method and target URI. Raises `SignatureRejected` (malformed, component-absent).
    """
    sig = next((s for s in _parse_signature_fields(headers) if s.label == label), None)
    if sig is None:
        raise _malformed(f"no signature labelled {label!r}")
    request = None
    if request_headers is not None:
        request = _Message(request_headers, is_request=True, method=request_method, target_uri=request_target_uri)
    msg = _Message(headers, is_request=status is None, method=method, target_uri=target_uri, status=status,
                   request=request)
    return _build_base(sig.components, sig.ids, sig.params_value, msg)


# ---------------------------------------------------------------------------------------------------------------
# Verification steps: each returns None or raises SignatureRejected
# ---------------------------------------------------------------------------------------------------------------


def _verify_request_policy(sig: _Signature, *, has_body: bool) -> None:
    ids = set(sig.ids)
    missing = []
    if _ID_METHOD not in ids:
        missing.append("@method")
    if _ID_TARGET_URI not in ids and not all(i in ids for i in _ID_TARGET_PARTS):
        missing.append("@target-uri (or @authority, @path and @query)")
    if has_body and _ID_CONTENT_DIGEST not in ids:
        missing.append("content-digest")
    if missing:
        raise SignatureRejected("components-missing", f"{sig.label!r} does not cover {', '.join(missing)}")
    _verify_required_params(sig, ("created", "keyid", "nonce"))
    if sig.nonce is not None and not 0 < len(sig.nonce) <= _MAX_NONCE:
        raise _malformed(f"{sig.label!r}: nonce must be 1 to {_MAX_NONCE} characters")


def _verify_required_params(sig: _Signature, required: tuple[str, ...]) -> None:
    absent = [p for p in required if p not in sig.params]
    if absent:
        raise SignatureRejected("params-missing", f"{sig.label!r} lacks {', '.join(absent)}")
    if sig.keyid == "":
        raise _malformed(f"{sig.label!r}: keyid is empty")


def _verify_window(sig: _Signature, now_ts: float, max_skew: float) -> None:
    created = cast(int, sig.created)
    if abs(now_ts - created) > max_skew:
        raise SignatureRejected("created-out-of-window",
                                f"created {created} is {now_ts - created:+.0f}s from now (allowed ±{max_skew}s)")
    if sig.expires is not None and now_ts > sig.expires:
        raise SignatureRejected("expired", f"expired at {sig.expires}, now {now_ts:.0f}")


def _verify_key(sig: _Signature, lookup_key: Callable[[str], PublicKey | None], now: datetime) -> PublicKey:
    keyid = cast(str, sig.keyid)
    key = lookup_key(keyid)
    if key is None:
        raise SignatureRejected("unknown-key", f"no key {keyid!r}")
    if not key.is_valid_at(now):
        raise SignatureRejected("key-not-valid-now",
                                f"key {keyid!r} is valid from {key.not_before} to {key.not_after}")
    if sig.alg is not None and sig.alg != key.alg:
        raise SignatureRejected("alg-mismatch", f"alg {sig.alg!r} but key {keyid!r} is {key.alg}")
    return key


def _verify_signature(sig: _Signature, key: PublicKey, base: bytes) -> None:
    try:
        key.verify(sig.signature, base)
    except InvalidSignature:
        raise SignatureRejected("bad-signature", f"{sig.label!r} does not verify with key {key.kid!r}") from None


def _verify_body_digest(msg: _Message, body: bytes) -> None:
    lines = msg.field_lines("content-digest")
    if not lines:
        raise _absent("no Content-Digest field")
    verify_content_digest(", ".join(lines), body)


def _aware_timestamp(now: datetime) -> float:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.timestamp()


def _to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(min(max(ts, 0), _LAST_DATETIME_TS), UTC)


# ---------------------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------------------

_GUARD: Final = object()


@dataclass(frozen=True, slots=True, eq=False)  # identity: two verifications are two events
class VerifiedRequest:
    """A request whose signature the broker verified; only `verify_request` can make one.

    The guard is an init-only argument, so `dataclasses.replace()` cannot copy it either: changing any field needs
    a new verification.
    """

    method: str
    target_uri: str
    headers: CIMultiDictProxy[str]  # a private copy: what was verified cannot change under the pipeline
    body: bytes
    key: PublicKey
    label: str
    created: datetime
    expires: datetime | None
    nonce: str
    signature: bytes  # the verified signature, from the Signature field
    signature_params: str  # the @signature-params value, i.e. the Signature-Input member
    signature_base: bytes  # what was signed, kept for the message log
    _covered: tuple[str, ...] = field(repr=False)  # the serialised identifiers of the covered components
    # `headers` as a signature base reads them, holding the dictionaries parsed to verify them (the answer's base
    # covers this request's Signature: it is not parsed a second time)
    _message: _Message = field(repr=False)
    _guard: InitVar[object]

    def __post_init__(self, _guard: object) -> None:
        if _guard is not _GUARD:
            raise TypeError("a VerifiedRequest is made only by broker.signing.verify_request")

    @property
    def organisation(self) -> str:
        return self.key.owner

    def covers(self, component: str) -> bool:
        """Whether the verified signature covered this component (e.g. "authorization"), without parameters."""
        return f'"{component}"' in self._covered

    @property
    def kid(self) -> str:
        return self.key.kid

    @property
    def alg(self) -> str:
        return self.key.alg


async def verify_request(
    *,
    method: str,
    target_uri: str,
    headers: Headers,
    body: bytes,
    lookup_key: Callable[[str], PublicKey | None],
    claim_nonce: Callable[[str, str, datetime], Awaitable[bool]],
    now: datetime,
    max_skew: float = 60,
) -> VerifiedRequest:
    """Verify a consumer's signed request against the broker's policy, or raise `SignatureRejected`.

    Policy: one signature (one label), which covers `@method`, and `@target-uri` or all of `@authority`, `@path`,
    `@query`, and `content-digest` when the body is not empty; it has `created`, `keyid` and `nonce`; `created`
    is within `max_skew` seconds of `now` either way, `expires` (if any) is not past; the key is known, valid at
    `now`, and of the `alg` named (if any). `target_uri` is the absolute URI the consumer addressed, as it wrote it (the
    broker's public base URL followed by the raw path and query). `claim_nonce(keyid, nonce, expires_at)` returns
    False when the nonce was already used with that key; `expires_at` is when the signature stops being acceptable,
    after which the nonce may be forgotten.
    """
    now_ts = _aware_timestamp(now)
    # 1. Parse Signature-Input and Signature: exactly one label, nothing repeated.
    inputs, signatures = _signature_dictionaries(headers)
    sig = _the_signature(inputs, signatures)
    # 2. The broker's policy on covered components and parameters.
    _verify_request_policy(sig, has_body=bool(body))
    # 3. Freshness: created within the window, not expired.
    _verify_window(sig, now_ts, max_skew)
    # 4. The key: known, valid now, of the algorithm the signature names.
    key = _verify_key(sig, lookup_key, now)
    # 5. The signature over the base rebuilt from this message.
    # Signature was parsed with unique keys, so equal to what RFC 8941's "last wins" would give a base covering it.
    msg = _Message(headers, is_request=True, method=method, target_uri=target_uri,
                   dictionaries={"signature": signatures})
    base = _build_base(sig.components, sig.ids, sig.params_value, msg)
    _verify_signature(sig, key, base)
    # 6. The body against the (now authenticated) Content-Digest.
    if body or _ID_CONTENT_DIGEST in sig.ids:
        _verify_body_digest(msg, body)
    # 7. The nonce, last: only signed requests reach the nonce store.
    created = cast(int, sig.created)
    acceptable_until = created + max_skew if sig.expires is None else min(created + max_skew, sig.expires)
    nonce = cast(str, sig.nonce)
    if not await claim_nonce(key.kid, nonce, _to_datetime(acceptable_until)):
        raise SignatureRejected("nonce-replay", f"nonce {nonce!r} already used with key {key.kid!r}")
    copy = CIMultiDictProxy(CIMultiDict(headers))
    # The message verified, now reading the private copy (the same lines), keeps the parsed Signature for the
    # answer's `"signature";req` (and only it: what a request holds lives as long as its exchange).
    msg.headers = copy
    return VerifiedRequest(
        method=method, target_uri=target_uri, headers=copy, body=body,
        key=key, label=sig.label, created=_to_datetime(created),
        expires=None if sig.expires is None else _to_datetime(sig.expires), nonce=nonce,
        signature=sig.signature, signature_params=sig.params_value, signature_base=base,
        _covered=sig.ids, _message=msg, _guard=_GUARD,
    )


def _signing_key(private_key: PrivateKey | PrivateKeyObject, kid: str | None, alg: str | None
                 ) -> tuple[PrivateKeyObject | Signer, str, str]:
    key_object: PrivateKeyObject | Signer
    if isinstance(private_key, PrivateKey):
        if kid is not None and kid != private_key.kid:
            raise ValueError(f"kid {kid!r} contradicts the key's kid {private_key.kid!r}")
        key_object, kid, key_alg = private_key.private_key, private_key.kid, private_key.alg
    else:
        if not kid:
            raise ValueError("kid is required with a bare key object")
        key_object, key_alg = private_key, algorithm_of(private_key)
    if alg is not None and alg != key_alg:
        raise ValueError(f"alg {alg!r} but the key is {key_alg}")
    return key_object, kid, key_alg


def _sign(label: str, components: list[sf.Item], params: sf.Params, msg: _Message,
          key: PrivateKeyObject | Signer) -> tuple[dict[str, str], bytes, bytes]:
    """The Signature-Input and Signature fields, the signature base and the signature."""
    try:
        ids = [sf.serialize_item(c) for c in components]
        # The inner list serialised once (it was three times: identifiers, @signature-params, Signature-Input):
        # what sf.serialize_inner_list gives, from the identifiers just serialised.
        params_value = "(" + " ".join(ids) + ")" + sf.serialize_params(params)
        base = _build_base(components, ids, params_value, msg)
        label = sf.serialize_key(label)
    except (sf.StructuredFieldError, SignatureRejected) as exc:
        raise ValueError(f"cannot sign: {exc}") from None
    signature = sign_message(key, base)
    fields = {"Signature-Input": label + "=" + params_value,
              "Signature": label + "=" + sf.serialize_bare_item(signature)}
    return fields, base, signature


def sign_request(
    *,
    method: str,
    url: str,
    headers: Headers,
    body: bytes,
    private_key: PrivateKey | PrivateKeyObject,
    kid: str | None = None,
    alg: str | None = None,
    created: datetime | None = None,
    nonce: str | None = None,
    expires: datetime | None = None,
    label: str = "sig1",
) -> dict[str, str]:
    """The headers to set on a request so the broker accepts it: Content-Digest (when there is a body),
    Signature-Input and Signature, covering @method, @target-uri, content-digest, content-type and
    authorization (each if set: an access token is then bound to this signed request).

    `url` is the absolute URI exactly as it will be sent. `kid` is needed only with a bare key object. The
    returned fields replace any of the same name. Raises `ValueError` for arguments that cannot be signed.
    """
    key_object, kid, key_alg = _signing_key(private_key, kid, alg)
    if _METHOD_RE.fullmatch(method) is None:
        raise ValueError(f"invalid method {method!r}")
    if _URI_RE.fullmatch(url) is None:
        raise ValueError(f"url {url!r} is not absolute")
    components = [_C_METHOD, _C_TARGET_URI]
    added: dict[str, str] = {}
    if body:
        added["Content-Digest"] = content_digest(body)
        components.append(_C_CONTENT_DIGEST)
    if _field_lines(headers, "content-type"):
        components.append(_C_CONTENT_TYPE)
    if _field_lines(headers, "authorization"):
        components.append(_C_AUTHORIZATION)
    params: sf.Params = {
        "created": int(time.time()) if created is None else int(_aware_timestamp(created)),
        "keyid": kid,
        "nonce": secrets.token_urlsafe(16) if nonce is None else nonce,
        "alg": key_alg,
    }
    if expires is not None:
        params["expires"] = int(_aware_timestamp(expires))
    overrides = {"content-digest": added["Content-Digest"]} if body else None
    msg = _Message(headers, is_request=True, method=method, target_uri=url, overrides=overrides)
    added.update(_sign(label, components, params, msg, key_object)[0])
    return added


# ---------------------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedResponse:
    """A response's signature with what was signed, for the evidence of an exchange: the base kept is the very
    bytes signed, not a rebuild of them."""

    headers: dict[str, str]  # Content-Digest, Signature-Input, Signature
    label: str
    signature: bytes
    signature_base: bytes


def sign_response(
    *,
    status: int,
    headers: Headers,
    body: bytes,
    request: VerifiedRequest | None,
    private_key: PrivateKey | PrivateKeyObject,
    kid: str | None = None,
    now: datetime,
    label: str = "sig1",
) -> dict[str, str]:
    """The headers to set on a response: Content-Digest, Signature-Input and Signature, covering @status,
    content-digest, content-type (if set) and, when the request was verified, the request's signature
    (`"signature";req;key="<its label>"`, RFC 9421 §2.4), which binds this answer to that request.

    `request` is None for a request that did not verify (a refusal is signed too, without the binding).
    """
    return sign_response_with_base(status=status, headers=headers, body=body, request=request,
                                   private_key=private_key, kid=kid, now=now, label=label).headers


def sign_response_with_base(
    *,
    status: int,
    headers: Headers,
    body: bytes,
    request: VerifiedRequest | None,
    private_key: PrivateKey | PrivateKeyObject,
    kid: str | None = None,
    now: datetime,
    label: str = "sig1",
) -> SignedResponse:
    """`sign_response`, also giving the signature and its base (what the exchange's evidence keeps)."""
    key_object, kid, key_alg = _signing_key(private_key, kid, None)
    if not 100 <= status <= 999:
        raise ValueError(f"invalid status {status}")
    digest = content_digest(body)
    components = [_C_STATUS, _C_CONTENT_DIGEST]
    if _field_lines(headers, "content-type"):
        components.append(_C_CONTENT_TYPE)
    request_msg = None
    if request is not None:
        components.append(sf.Item("signature", {"req": True, "key": request.label}))
        request_msg = request._message
    params: sf.Params = {"created": int(_aware_timestamp(now)), "keyid": kid, "alg": key_alg}
    msg = _Message(headers, is_request=False, status=status, request=request_msg,
                   overrides={"content-digest": digest})
    fields, base, signature = _sign(label, components, params, msg, key_object)
    return SignedResponse(headers={"Content-Digest": digest, **fields}, label=label, signature=signature,
                          signature_base=base)


def _is_request_signature(component: sf.Item, request_labels: Iterable[str]) -> bool:
    params = component.params
    key = params.get("key")
    return (
        component.value == "signature" and len(params) == 2 and params.get("req") is True
        and isinstance(key, str) and key in request_labels
    )


def _verify_response_policy(sig: _Signature, *, has_content_type: bool, request_labels: frozenset[str],
                            bound: bool) -> None:
    ids = set(sig.ids)
    missing = [i for i in (_ID_STATUS, _ID_CONTENT_DIGEST) if i not in ids]
    if has_content_type and _ID_CONTENT_TYPE not in ids:
        missing.append(_ID_CONTENT_TYPE)
    if bound and not any(_is_request_signature(c, request_labels) for c in sig.components):
        missing.append('"signature";req;key=<a label of the request>')
    if missing:
        raise SignatureRejected("components-missing", f"{sig.label!r} does not cover {', '.join(missing)}")
    _verify_required_params(sig, ("created", "keyid"))


def verify_response(
    *,
    status: int,
    headers: Headers,
    body: bytes,
    request_headers: Headers,
    lookup_key: Callable[[str], PublicKey | None],
    now: datetime,
    max_skew: float = 60,
    bound: bool = True,
) -> None:
    """Verify the broker's signed answer to a request (for the SDK), or raise `SignatureRejected`.

    `request_headers` are the headers the client sent (at least its Signature field). The response's one signature
    must cover @status, content-digest, content-type when the response has one, and the request's signature with
    `req`; it must have `created` and `keyid`; the digest must match the body.

    `bound=False` drops the last requirement, for the one kind of answer that cannot carry it: a refusal of a
    request the broker could not verify (unsigned, unknown key...), which proves the broker said it, not that it
    said it to this request. Never use it for an answer that carries data.
    """
    now_ts = _aware_timestamp(now)
    request_signatures = _field_lines(request_headers, "signature")
    try:
        request_signature = sf.parse_dictionary(", ".join(request_signatures))
    except sf.StructuredFieldError as exc:
        raise _malformed(f"the request's Signature field: {exc}") from None
    request_labels = frozenset(request_signature)
    has_content_type = bool(_field_lines(headers, "content-type"))
    # 1. Parse: exactly one label; 2. the policy.
    sig = _the_signature(*_signature_dictionaries(headers))
    _verify_response_policy(sig, has_content_type=has_content_type, request_labels=request_labels, bound=bound)
    # 3. Freshness.
    _verify_window(sig, now_ts, max_skew)
    # 4. The key.
    key = _verify_key(sig, lookup_key, now)
    # 5. The signature, over a base that includes the request's signature.
    msg = _Message(headers, is_request=False, status=status,
                   request=_Message(request_headers, is_request=True, dictionaries={"signature": request_signature}))
    _verify_signature(sig, key, _build_base(sig.components, sig.ids, sig.params_value, msg))
    # 6. The body.
    _verify_body_digest(msg, body)

