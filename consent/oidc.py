"""OpenID Connect relying party for the citizen login: FranceConnect v2, FranceConnect+ or any certified OP.

What the broker asks of its OP and accepts from it is a `RelyingParty` (scopes, claims mapping, acr, client
authentication, algorithms, encryption), filled from a preset and the operator's settings (`broker.config`); nothing
below is specific to FranceConnect but its defaults.

`OidcClient.authorization_request()` gives the URL to send the browser to, with a fresh ``state``, ``nonce`` and
PKCE S256 verifier that the caller keeps with the browser; `OidcClient.finish()` takes the authorization response
back and returns a `LoginResult` only once every check below passed, in this order:

0. the response's ``iss`` (RFC 9207) is the OP's issuer, and is present when the OP says it sends it (mix-up);
1. the code is exchanged at the token endpoint (``client_secret_basic``, ``client_secret_post`` or
   ``private_key_jwt``, the PKCE verifier, the same redirect URI);
2. the id_token, decrypted first when it is a JWE (RSA-OAEP-256 / ECDH-ES with A256GCM, as FranceConnect+ sends;
   required when the relying party has decryption keys), has a signature that verifies against the OP's JWKS
   (fetched and cached, fetched again once when the kid is unknown, for key rotation), with an algorithm of the
   allow-list that the key is for: never ``none``, never HS*;
3. its claims verify (`verify_id_token_claims`): ``iss`` (the discovered issuer, compared exactly), ``aud`` (and
   ``azp``), ``exp``, ``iat``, ``nonce``, and ``acr`` when the relying party requires some;
4. userinfo, when used, is fetched with the access token (JSON, or a JWT verified like step 2, encrypted or not) and
   must be about the same ``sub`` (OpenID Connect Core §5.3.2);
5. the pivot identity is built from the id_token's claims overlaid with userinfo's, under the configured claim
   names (`adapters.identity.PivotIdentity` checks every format).

Discovery (``<issuer without a trailing />/.well-known/openid-configuration``, OpenID Connect Discovery §4) is
cached for `METADATA_TTL` seconds and must name exactly the configured issuer, trailing slash included.

Errors: one base, `LoginError`; the OP misbehaving or unreachable gives `ProviderError` (transport, error
answers) or `CodeRejected` (the token endpoint refused the code: replayed, expired); untrusted data failing a check
gives `InvalidIdToken` or `InvalidUserinfo`; the citizen cancelling gives `LoginDenied`; the browser coming back
with another login's state gives `StateMismatch`. Messages are for the server log only: they may say which check
failed, which a citizen or an attacker has no use for.

Invariant: a `LoginResult` only exists for an id_token whose signature and claims verified, together with userinfo
about the same subject when userinfo is used.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson
from joserfc.jwk import KeySet

from adapters.identity import PivotIdentity, SubjectError
from broker.signing import jose
from broker.signing.keys import PrivateKey

PIVOT_CLAIMS: Final = ("given_name", "family_name", "birthdate", "gender", "birthplace", "birthcountry",
                       "preferred_name", "email")
"""What the broker reads of a citizen, by its name in the pivot identity (and FranceConnect's claim names)."""
SCOPES = ("openid", "given_name", "family_name", "birthdate", "gender", "birthplace", "birthcountry",
          "preferred_name", "email")
"""FranceConnect's: one scope per claim."""
ACR_VALUES = ("eidas1",)
ACCEPTED_ACR = frozenset({"eidas1", "eidas2", "eidas3"})
"""We ask for eidas1, the floor; an OP may authenticate more strongly."""
ALGORITHMS = frozenset({"ES256", "RS256"})
"""What FranceConnect signs with. Symmetric algorithms would let anyone holding the client secret forge tokens."""
ASYMMETRIC: Final = frozenset({"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                               "EdDSA", "Ed25519"})
"""Every algorithm an operator may allow for id_tokens and userinfo: asymmetric only."""
ENCRYPTION_ALGS: Final = frozenset({"RSA-OAEP-256", "RSA-OAEP", "ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A256KW"})
ENCRYPTION_ENCS: Final = frozenset({"A256GCM", "A128GCM", "A128CBC-HS256", "A256CBC-HS512"})
TOKEN_AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post", "private_key_jwt")
MAX_SKEW = 60.0
"""Seconds of clock difference with the OP tolerated on ``exp`` and ``iat``."""
MAX_ID_TOKEN_AGE = 600.0
"""An id_token issued longer ago than this is refused even if unexpired: it was just issued, or it is replayed."""
METADATA_TTL = 3600.0
TIMEOUT = 10.0
ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class LoginError(Exception):
    """The login did not complete. The message is for the server log, never for the citizen."""


class ProviderError(LoginError):
    """The OP could not be reached, or answered an error or something malformed."""


class CodeRejected(ProviderError):
    """The token endpoint refused the code: already used, expired, or not ours."""


class LoginDenied(LoginError):
    """The OP sent the citizen back with an error (``access_denied`` when they cancelled)."""

    def __init__(self, error: str) -> None:
        super().__init__(f"the OP answered error={error}")
        self.error = error


class StateMismatch(LoginError):
    """The callback's state is not the one this browser started a login with (or that login expired)."""


class InvalidIdToken(LoginError):
    """The id_token's encryption, signature, algorithm or claims did not verify; or the response's iss is wrong."""


class InvalidUserinfo(LoginError):
    """Userinfo did not verify, is about another subject, or lacks a well-formed pivot identity."""


@dataclass(frozen=True, slots=True)
class RelyingParty:
    """What the broker asks of its OP and accepts from it. The defaults are FranceConnect v2's."""

    scopes: tuple[str, ...] = SCOPES
    acr_values: tuple[str, ...] = ACR_VALUES
    """Sent as ``acr_values``; empty: not sent."""
    accepted_acr: frozenset[str] = ACCEPTED_ACR
    """The id_token's ``acr`` must be one of them; empty: not checked (an OP that sends none)."""
    claims: Mapping[str, str] = field(default_factory=lambda: {name: name for name in PIVOT_CLAIMS})
    """Pivot identity member -> the OP's claim name."""
    userinfo: bool = True
    """Read userinfo too (FranceConnect puts the identity there); False: the id_token's claims only."""
    auth_method: str = "client_secret_post"
    id_token_algs: frozenset[str] = ALGORITHMS
    encryption_algs: frozenset[str] = frozenset()
    """JWE key management algorithms accepted; empty with no decryption keys: id_token and userinfo are plain."""
    encryption_encs: frozenset[str] = frozenset({"A256GCM"})
    france_connect: bool = True
    """The OP is FranceConnect (or FranceConnect+): its access token is kept, sealed, for providers'
    FranceConnect-mode endpoints, which ask FranceConnect whom it names. Another OP's token is dropped."""

    def __post_init__(self) -> None:
        if "openid" not in self.scopes:
            raise ValueError("the scopes must include openid")
        if self.auth_method not in TOKEN_AUTH_METHODS:
            raise ValueError(f"auth_method must be one of {', '.join(TOKEN_AUTH_METHODS)}")
        if not self.id_token_algs or not self.id_token_algs <= ASYMMETRIC:
            raise ValueError(f"id_token algorithms must be among {', '.join(sorted(ASYMMETRIC))}")
        if not self.encryption_algs <= ENCRYPTION_ALGS or not self.encryption_encs <= ENCRYPTION_ENCS:
            raise ValueError("unsupported JWE algorithm or encryption")
        missing = set(PIVOT_CLAIMS) - set(self.claims)
        if missing:
            raise ValueError(f"no claim name for {', '.join(sorted(missing))}")


def verify_state(expected: str, received: str) -> None:
    """Return None when the callback's state is the one the login started with; raise `StateMismatch` otherwise."""
    if not expected or not hmac.compare_digest(expected.encode(), received.encode()):
        raise StateMismatch("state differs from the one this login started with")


def discovery_url(issuer: str) -> str:
    """OpenID Connect Discovery §4: a terminating / of the issuer is removed before the well-known path."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str | None
    jwks_uri: str
    end_session_endpoint: str | None
    iss_parameter_supported: bool = False
    """RFC 9207: the OP sends ``iss`` in its authorization responses, so one without it is refused."""

    @classmethod
    def from_json(cls, raw: Any, *, issuer: str) -> ProviderMetadata:
        if not isinstance(raw, Mapping):
            raise ProviderError("discovery document is not an object")
        # OpenID Connect Discovery §4.3: the issuer in the document must be exactly the one we asked
        if raw.get("issuer") != issuer:
            raise ProviderError(f"discovery names issuer {raw.get('issuer')!r}, expected {issuer!r}")

        def optional(name: str) -> str | None:
            return _endpoint(raw, name) if raw.get(name) is not None else None

        return cls(issuer=issuer, authorization_endpoint=_endpoint(raw, "authorization_endpoint"),
                   token_endpoint=_endpoint(raw, "token_endpoint"), userinfo_endpoint=optional("userinfo_endpoint"),
                   jwks_uri=_endpoint(raw, "jwks_uri"), end_session_endpoint=optional("end_session_endpoint"),
                   iss_parameter_supported=raw.get("authorization_response_iss_parameter_supported") is True)


def _endpoint(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise ProviderError(f"discovery: {name} is missing or not an http(s) URL")
    return value


def verify_response_issuer(meta: ProviderMetadata, iss: str | None) -> None:
    """Return None when the authorization response's ``iss`` (RFC 9207 §2.4) is acceptable; raise `InvalidIdToken`.
    It must be the issuer, exactly, when present; it must be present when the OP advertises it."""
    if iss is None:
        if meta.iss_parameter_supported:
            raise InvalidIdToken("the authorization response lacks iss, which the OP says it sends (RFC 9207)")
        return
    if not hmac.compare_digest(iss.encode(), meta.issuer.encode()):
        raise InvalidIdToken(f"the authorization response's iss {iss[:200]!r} is not {meta.issuer!r} (RFC 9207)")


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """Where to send the browser, and what to keep with it until the callback (secret: never in a URL of ours)."""

    url: str
    state: str
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class LoginResult:
    identity: PivotIdentity = field(repr=False)
    issuer: str
    sub: str
    """The OP's pairwise identifier of the citizen for our client."""
    acr: str
    """The id_token's ``acr``; empty when the OP sends none."""
    id_token: str = field(repr=False)
    """Kept as the ``id_token_hint`` of the OP logout: the signed id_token, decrypted when it came encrypted (the
    OP could not read the JWE we received: RP-Initiated Logout §2 wants the signed one)."""
    email: str | None = field(default=None, repr=False)
    france_connect_token: str | None = field(default=None, repr=False)
    """FranceConnect's access token, when the OP is FranceConnect; None otherwise."""


def pkce_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="&".join(q for q in (parts.query, urlencode(params)) if q)))


def _seconds(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidIdToken(f"{name} is missing or not a number")
    return float(value)


def verify_id_token_claims(claims: Mapping[str, Any], *, issuer: str, client_id: str, nonce: str, now: datetime,
                           accepted_acr: Collection[str] = ACCEPTED_ACR) -> None:
    """Return None when the (signature-verified) claims are for us, now, and this login; raise `InvalidIdToken`."""
    # 1. issued by our OP, for our client (OpenID Connect Core §3.1.3.7, points 2 to 5)
    if claims.get("iss") != issuer:
        raise InvalidIdToken(f"iss is {claims.get('iss')!r}, expected {issuer!r}")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise InvalidIdToken(f"aud {aud!r} does not name our client")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise InvalidIdToken("several audiences and azp is not our client")
    # 2. fresh: not expired, not issued in the future, not issued long ago (a replay of an old token)
    t = now.timestamp()
    if _seconds(claims, "exp") + MAX_SKEW <= t:
        raise InvalidIdToken("expired")
    iat = _seconds(claims, "iat")
    if iat > t + MAX_SKEW:
        raise InvalidIdToken("issued in the future")
    if t - iat > MAX_ID_TOKEN_AGE:
        raise InvalidIdToken("issued too long ago")
    # 3. for this login: the nonce we sent with this browser's authorization request
    got = claims.get("nonce")
    if not isinstance(got, str) or not nonce or not hmac.compare_digest(got.encode(), nonce.encode()):
        raise InvalidIdToken("nonce differs from the one this login sent")
    # 4. authenticated at least at the level we asked (when we ask one), and about someone
    if accepted_acr and claims.get("acr") not in accepted_acr:
        raise InvalidIdToken(f"acr {claims.get('acr')!r} is not one of {sorted(accepted_acr)}")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidIdToken("sub is missing")


class _UnknownKey(Exception):
    pass


def decode_signed(token: str, keys: Mapping[str, Mapping[str, Any]], *, issuer: str, audience: str,
                  error: type[LoginError], algorithms: Collection[str] = ALGORITHMS) -> dict[str, Any]:
    """Verify a JWS against the OP's keys (by kid) and return its claims; `iss` and `aud` are checked here too.
    Raises `error` for anything wrong, except an unknown kid, which raises `_UnknownKey` so the caller may fetch
    the JWKS again (the OP may have rotated its key)."""
    try:
        header, _ = jose.peek(token)
    except jose.JoseError as exc:
        raise error(f"not a JWS: {exc}") from None
    alg = header.get("alg")
    # the algorithm comes from our allow-list, checked before any key is looked at: "none" and HS* never pass
    if alg not in algorithms or alg not in ASYMMETRIC:
        raise error(f"algorithm {alg!r} is not allowed")
    kid = header.get("kid")
    if kid is None and len(keys) == 1:
        kid = next(iter(keys))
    if not isinstance(kid, str) or kid not in keys:
        raise _UnknownKey(f"unknown kid {kid!r}")
    jwk = dict(keys[kid])
    if jwk.get("alg", alg) != alg:
        raise error(f"key {kid} is for {jwk.get('alg')}, the token says {alg}")
    try:
        # joserfc refuses a key of the wrong type for the algorithm (an EC key for RS256)
        _, claims = jose.verify(token, jose.import_jwk(jwk), algorithms=[alg])
    except jose.JoseError as exc:
        raise error(str(exc)) from None
    # times are checked by the caller against its injectable clock
    if claims.get("iss") != issuer:
        raise error(f"Issuer {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    if audience not in ([aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []):
        raise error(f"Audience {aud!r} does not name {audience!r}")
    return claims


def pivot_identity(claims: Mapping[str, Any], mapping: Mapping[str, str] | None = None) -> PivotIdentity:
    """The pivot identity in the OP's claims, read under `mapping`'s names (FranceConnect's by default).
    FranceConnect sends birthplace "" for people born abroad; a missing birthplace means the same."""
    names = mapping or {name: name for name in PIVOT_CLAIMS}
    raw: dict[str, Any] = {name: claims.get(names[name]) for name in
                           ("family_name", "given_name", "birthdate", "gender", "birthcountry")}
    raw["birthplace"] = claims.get(names["birthplace"]) or ""
    raw["preferred_name"] = claims.get(names["preferred_name"]) or ""
    array = claims.get("given_name_array")  # FranceConnect v2: a first name with a space in it stays one
    if isinstance(array, list) and array:
        raw["given_name_array"] = array
    try:
        return PivotIdentity.from_json(raw)
    except SubjectError as exc:
        raise InvalidUserinfo(f"pivot identity: {exc}") from None


class OidcClient:
    """One OpenID Provider, one registered client. Shares the application's `aiohttp.ClientSession`.

    `client_secret` for the ``client_secret_*`` methods, `client_key` for ``private_key_jwt``; `decryption_keys`
    (our private JWKs) when the OP encrypts: then an id_token or a userinfo that is not a JWE is refused."""

    def __init__(self, http: aiohttp.ClientSession, *, issuer: str, client_id: str, redirect_uri: str,
                 client_secret: str | None = None, client_key: PrivateKey | None = None,
                 decryption_keys: KeySet | None = None, rp: RelyingParty | None = None, timeout: float = TIMEOUT,
                 metadata_ttl: float = METADATA_TTL) -> None:
        self.http = http
        self.issuer = issuer
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.rp = rp or RelyingParty()
        if self.rp.auth_method == "private_key_jwt" and client_key is None:
            raise ValueError("private_key_jwt needs the client's key")
        if self.rp.auth_method != "private_key_jwt" and not client_secret:
            raise ValueError(f"{self.rp.auth_method} needs the client secret")
        if self.rp.encryption_algs and decryption_keys is None:
            raise ValueError("encrypted id_tokens need decryption keys")
        self._secret = client_secret
        self._client_key = client_key
        self._decryption_keys = decryption_keys
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._metadata_ttl = metadata_ttl
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._keys: dict[str, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OidcClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    @property
    def encrypted(self) -> bool:
        return bool(self.rp.encryption_algs)

    # --------------------------------------------------------------------------------------- transport

    async def _json(self, method: str, url: str, *, what: str, **kwargs: Any) -> tuple[int, str, Any]:
        """(status, content type, body): JSON decoded, or text for application/jwt. Only `ProviderError` escapes."""
        try:
            async with self.http.request(method, url, timeout=self._timeout, allow_redirects=False,
                                         **kwargs) as resp:
                body = await resp.read()
                ctype = resp.content_type
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError(f"{what}: {type(exc).__name__}: {exc}") from None
        if ctype == "application/jwt":
            return status, ctype, body.decode("ascii", "replace").strip()
        try:
            return status, ctype, orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProviderError(f"{what}: HTTP {status}, not JSON ({ctype})") from None

    async def metadata(self) -> ProviderMetadata:
        """The discovery document, cached for `metadata_ttl` seconds."""
        async with self._lock:
            if self._metadata is None or time.monotonic() - self._metadata_at > self._metadata_ttl:
                status, _, raw = await self._json("GET", discovery_url(self.issuer), what="discovery")
                if status != 200:
                    raise ProviderError(f"discovery: HTTP {status}")
                self._metadata = ProviderMetadata.from_json(raw, issuer=self.issuer)
                self._metadata_at = time.monotonic()
                self._keys = None  # the jwks_uri may have changed with the document
            return self._metadata

    async def _fetch_keys(self, meta: ProviderMetadata) -> dict[str, dict[str, Any]]:
        status, _, raw = await self._json("GET", meta.jwks_uri, what="jwks")
        if status != 200 or not isinstance(raw, Mapping) or not isinstance(raw.get("keys"), list):
            raise ProviderError(f"jwks: HTTP {status}, not a JWK set")
        keys = {k["kid"]: k for k in raw["keys"]
                if isinstance(k, dict) and isinstance(k.get("kid"), str) and k.get("use", "sig") == "sig"
                and k.get("kty") in ("EC", "RSA", "OKP")}
        self._keys = keys
        return keys

    async def _verify_signed(self, token: str, *, error: type[LoginError]) -> dict[str, Any]:
        meta = await self.metadata()
        keys = self._keys if self._keys is not None else await self._fetch_keys(meta)
        algorithms = self.rp.id_token_algs
        try:
            return decode_signed(token, keys, issuer=meta.issuer, audience=self.client_id, error=error,
                                 algorithms=algorithms)
        except _UnknownKey:
            pass
        # the OP may have rotated its key since we cached the set: fetch it once more, then give up
        try:
            return decode_signed(token, await self._fetch_keys(meta), issuer=meta.issuer, audience=self.client_id,
                                 error=error, algorithms=algorithms)
        except _UnknownKey as exc:
            raise error(str(exc)) from None

    def _decrypt(self, token: str, *, error: type[LoginError]) -> str:
        """The nested JWS of a JWE for us; a JWS passes through, unless we expect encryption (then refused)."""
        if token.count(".") != 4:
            if self.encrypted:
                raise error("not encrypted, though the OP is expected to encrypt (a JWE of 5 parts)")
            return token
        if self._decryption_keys is None:
            raise error("encrypted, and the relying party has no decryption key")
        try:
            _, plaintext = jose.decrypt(token, self._decryption_keys, algorithms=self.rp.encryption_algs,
                                        encryptions=self.rp.encryption_encs)
        except jose.JoseError as exc:
            raise error(f"does not decrypt: {exc}") from None
        try:
            return plaintext.decode("ascii")
        except UnicodeDecodeError:
            raise error("the decrypted content is not a compact JWS") from None

    async def _verify_jwt(self, token: str, *, error: type[LoginError]) -> tuple[dict[str, Any], str]:
        """The claims of a (possibly encrypted) signed JWT, and the signed JWT itself."""
        signed = self._decrypt(token, error=error)
        return await self._verify_signed(signed, error=error), signed

    def _client_auth(self, meta: ProviderMetadata, form: dict[str, str]) -> dict[str, str]:
        """Add the client authentication to a token request's form; the headers it needs."""
        method = self.rp.auth_method
        if method == "client_secret_post":
            form.update(client_id=self.client_id, client_secret=self._secret or "")
            return {}
        if method == "client_secret_basic":
            # RFC 6749 §2.3.1: form-urlencoded before base64 (what FranceConnect and oidc-provider decode)
            pair = f"{quote(self.client_id, safe='')}:{quote(self._secret or '', safe='')}"
            return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        assert self._client_key is not None
        now = int(time.time())
        # OpenID Connect Core §9: aud is the token endpoint; certified OPs accept the issuer too
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": meta.token_endpoint, "iat": now,
                  "exp": now + 60, "jti": secrets.token_urlsafe(24)}
        form.update(client_id=self.client_id, client_assertion_type=ASSERTION_TYPE,
                    client_assertion=jose.sign_jwt(claims, self._client_key, typ=None))
        return {}

    # --------------------------------------------------------------------------------------- the flow

    async def authorization_request(self) -> AuthorizationRequest:
        meta = await self.metadata()
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        params = {"response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
                  "scope": " ".join(self.rp.scopes), "state": state, "nonce": nonce,
                  "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"}
        if self.rp.acr_values:
            params["acr_values"] = " ".join(self.rp.acr_values)
        return AuthorizationRequest(url=_with_query(meta.authorization_endpoint, params), state=state, nonce=nonce,
                                    code_verifier=verifier)

    async def finish(self, *, code: str, code_verifier: str, nonce: str, iss: str | None = None,
                     now: datetime | None = None) -> LoginResult:
        """Exchange the code and verify everything (see the module docstring); raise a `LoginError` leaf."""
        now = now or datetime.now(UTC)
        meta = await self.metadata()
        # 0. the authorization response came from our OP (RFC 9207), before its code goes anywhere
        verify_response_issuer(meta, iss)
        # 1. the code, for the token endpoint, with our client authentication and the PKCE verifier
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "code_verifier": code_verifier}
        headers = self._client_auth(meta, form)
        status, _, tokens = await self._json("POST", meta.token_endpoint, what="token", data=form, headers=headers)
        if status == 400 and isinstance(tokens, Mapping) and tokens.get("error") == "invalid_grant":
            raise CodeRejected(f"token endpoint: invalid_grant ({tokens.get('error_description')})")
        if status != 200 or not isinstance(tokens, Mapping):
            error = tokens.get("error") if isinstance(tokens, Mapping) else None
            raise ProviderError(f"token endpoint: HTTP {status} {error or ''}".strip())
        id_token, access_token = tokens.get("id_token"), tokens.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str) or \
                str(tokens.get("token_type", "")).lower() != "bearer":
            raise ProviderError("token endpoint: no id_token, no access_token or not a Bearer token")
        # 2. and 3. the id_token: decryption, signature, then claims
        claims, signed_id_token = await self._verify_jwt(id_token, error=InvalidIdToken)
        verify_id_token_claims(claims, issuer=meta.issuer, client_id=self.client_id, nonce=nonce, now=now,
                               accepted_acr=self.rp.accepted_acr)
        # 4. userinfo, about the same subject
        identity_claims: dict[str, Any] = dict(claims)
        if self.rp.userinfo:
            identity_claims.update(await self._userinfo(meta, access_token, sub=claims["sub"]))
        # 5. the pivot identity
        email = identity_claims.get(self.rp.claims["email"])
        acr = claims.get("acr")
        return LoginResult(identity=pivot_identity(identity_claims, self.rp.claims), issuer=meta.issuer,
                           sub=claims["sub"], acr=acr if isinstance(acr, str) else "", id_token=signed_id_token,
                           email=email if isinstance(email, str) and email else None,
                           france_connect_token=access_token if self.rp.france_connect else None)

    async def _userinfo(self, meta: ProviderMetadata, access_token: str, *, sub: str) -> Mapping[str, Any]:
        if meta.userinfo_endpoint is None:
            raise ProviderError("discovery has no userinfo_endpoint, and the relying party reads userinfo")
        status, ctype, info = await self._json("GET", meta.userinfo_endpoint, what="userinfo",
                                               headers={"Authorization": f"Bearer {access_token}"})
        if status != 200:
            raise ProviderError(f"userinfo: HTTP {status}")
        if ctype == "application/jwt":
            info, _ = await self._verify_jwt(info, error=InvalidUserinfo)
        elif self.encrypted:
            raise InvalidUserinfo("userinfo is plain JSON, though the OP is expected to encrypt it")
        if not isinstance(info, Mapping):
            raise InvalidUserinfo("userinfo is not an object")
        if info.get("sub") != sub:
            raise InvalidUserinfo("userinfo is about another sub than the id_token")
        return info

    async def end_session_url(self, *, id_token_hint: str, post_logout_redirect_uri: str, state: str) -> str | None:
        """Where to send the browser to end the OP's session too; None when the OP has no end_session_endpoint."""
        meta = await self.metadata()
        if meta.end_session_endpoint is None:
            return None
        return _with_query(meta.end_session_endpoint, {
            "id_token_hint": id_token_hint, "post_logout_redirect_uri": post_logout_redirect_uri, "state": state,
            "client_id": self.client_id,
        })
