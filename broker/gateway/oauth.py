"""The consent flow's client-authenticated calls, forwarded: the form service posts the standard OAuth form without
any client authentication, the gateway authenticates as the organisation (RFC 7523 `private_key_jwt`) and hands the
broker's answer back unchanged.

Built against the standards, not one broker's habits:

- the endpoints come from the broker's authorization server metadata (RFC 8414, at
  `/.well-known/oauth-authorization-server` plus the issuer's path), whose `issuer` must equal the broker URL;
- the client assertion's `aud` is that issuer, as a single string (draft-ietf-oauth-rfc7523bis, FAPI 2.0: one
  audience for every endpoint, none an attacker can make the client sign for another server);
- its `alg` is one the metadata lists in `token_endpoint_auth_signing_alg_values_supported`: for an Ed25519 key the
  fully-specified `Ed25519` (RFC 9864) when listed, else `EdDSA`;
- it lives 60 seconds, carries a fresh `jti` (recorded like a nonce) and the key's `kid`.

A broker that publishes no metadata (404) is reached the pre-RFC 8414 way, which RFC 7523 §3 allows: the token
endpoint at `{broker}/oauth/token`, `aud` that URL, `EdDSA`; no pushed authorization requests. The server log says so
once. The access token that comes back is bound to the organisation key (`cnf.jkt`): the form service holds it, but
only the gateway can use it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog

from broker.gateway.errors import AnswerUnverified, BrokerUnreachable, NotOffered
from broker.signing import jose
from broker.signing.keys import PrivateKey

log = structlog.get_logger(__name__)

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME: Final = 60
METADATA_TTL: Final = 3600.0
Endpoint = Literal["token", "par"]

_ALGS: Final = {"ed25519": ("Ed25519", "EdDSA"), "ecdsa-p256-sha256": ("ES256",)}


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    issuer: str
    token_endpoint: str
    par_endpoint: str | None
    signing_algs: tuple[str, ...] | None
    """`token_endpoint_auth_signing_alg_values_supported`; None when the server does not say."""
    audience: str
    discovered: bool
    """False for a broker without RFC 8414 metadata (the pre-metadata convention)."""

    def endpoint(self, which: Endpoint) -> str:
        if which == "token":
            return self.token_endpoint
        if self.par_endpoint is None:
            raise NotOffered("the broker offers no pushed authorization requests (RFC 9126)")
        return self.par_endpoint

    def algorithm(self, key: PrivateKey) -> str:
        mine = _ALGS[key.alg]
        if self.signing_algs is None:
            return mine[-1]  # the widest known name
        for alg in mine:
            if alg in self.signing_algs:
                return alg
        raise AnswerUnverified(f"the broker accepts none of {', '.join(mine)} for client assertions "
                               f"(it lists {', '.join(self.signing_algs)})")


def metadata_url(issuer: str) -> str:
    """RFC 8414 §3.1: the well-known suffix goes between the host and the issuer's path."""
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path.rstrip('/')}"


def _parse_metadata(issuer: str, doc: Any) -> ServerMetadata:
    if not isinstance(doc, dict):
        raise AnswerUnverified("the authorization server metadata is not a JSON object")
    if doc.get("issuer") != issuer:
        # RFC 8414 §3.3: metadata naming another issuer must not be used
        raise AnswerUnverified(f"the authorization server metadata names issuer {doc.get('issuer')!r}, "
                               f"not {issuer!r}")
    token_endpoint = doc.get("token_endpoint")
    if not isinstance(token_endpoint, str) or not token_endpoint.startswith(("https://", "http://")):
        raise AnswerUnverified("the authorization server metadata has no token_endpoint")
    methods = doc.get("token_endpoint_auth_methods_supported")
    if isinstance(methods, list) and "private_key_jwt" not in methods:
        raise AnswerUnverified("the authorization server does not take private_key_jwt")
    par = doc.get("pushed_authorization_request_endpoint")
    algs = doc.get("token_endpoint_auth_signing_alg_values_supported")
    return ServerMetadata(
        issuer=issuer, token_endpoint=token_endpoint, par_endpoint=par if isinstance(par, str) else None,
        signing_algs=tuple(str(a) for a in algs) if isinstance(algs, list) else None, audience=issuer,
        discovered=True)


def _without_metadata(issuer: str) -> ServerMetadata:
    token_endpoint = issuer + "/oauth/token"
    return ServerMetadata(issuer=issuer, token_endpoint=token_endpoint, par_endpoint=None, signing_algs=None,
                          audience=token_endpoint, discovered=False)


class AuthorizationServer:
    """The broker's authorization server as the gateway knows it: metadata fetched on first use, kept an hour."""

    def __init__(self, issuer: str, session: aiohttp.ClientSession) -> None:
        self.issuer = issuer
        self._session = session
        self._metadata: ServerMetadata | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def metadata(self) -> ServerMetadata:
        async with self._lock:
            if self._metadata is None or time.monotonic() - self._fetched_at > METADATA_TTL:
                self._metadata = await self._discover()
                self._fetched_at = time.monotonic()
            return self._metadata

    async def _discover(self) -> ServerMetadata:
        url = metadata_url(self.issuer)
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BrokerUnreachable(f"authorization server metadata: {exc!r}") from None
        if status == 404:
            log.warning("the broker publishes no RFC 8414 metadata: using its token endpoint and RFC 7523's "
                        "token-endpoint audience", metadata_url=url)
            return _without_metadata(self.issuer)
        if status != 200:
            raise BrokerUnreachable(f"authorization server metadata answered {status}")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise AnswerUnverified("the authorization server metadata is not JSON") from None
        return _parse_metadata(self.issuer, doc)


def client_assertion(key: PrivateKey, *, client_id: str, metadata: ServerMetadata, now: float | None = None,
                     ) -> tuple[str, str]:
    """An RFC 7523 client assertion for this server, and its `jti`."""
    issued = int(time.time() if now is None else now)
    jti = secrets.token_urlsafe(16)
    claims = {"iss": client_id, "sub": client_id, "aud": metadata.audience, "iat": issued,
              "exp": issued + ASSERTION_LIFETIME, "jti": jti}
    # the broker's one JOSE library (joserfc), which knows RFC 9864's "Ed25519" as well as "EdDSA"
    token = jose.sign_jwt(claims, key, typ="JWT", header={"alg": metadata.algorithm(key)})
    return token, jti
