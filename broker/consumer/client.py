"""Consumer SDK: sign exchange requests with an organisation key, verify the broker's signed answers.

    async with BrokerClient("https://dlnuf.example", key=private_key_from_jwk(jwk)) as broker:
        answer = await broker.exchange(
            dataset="quotient_familial", purpose="tarification-restauration-scolaire",
            recipient="21750001600019", fields=["quotient_familial"],
            subject={"pivot_identity": {...}},
        )
        print(answer.data)

A response whose signature does not verify against the broker's published keys raises `SignatureRejected`:
the SDK never hands back data it cannot attribute to the broker.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
import orjson
from multidict import CIMultiDict

from broker.signing import messages
from broker.signing.keys import PrivateKey, PublicKey, public_keys_from_jwks
from consent.tokens import ASSERTION_TYPE


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """Where to send the citizen, and what to keep (in the citizen's session with you) until they come back."""

    url: str
    state: str
    code_verifier: str


@dataclass(frozen=True, slots=True)
class TokenResponse:
    access_token: str
    expires_in: int
    authorization_details: list[dict[str, Any]]
    refresh_token: str | None


class OAuthFailed(Exception):
    """The token endpoint refused (RFC 6749 §5.2 error)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status, self.error, self.description = status, error, description


class BrokerProblem(Exception):
    """The broker refused or failed the exchange (RFC 9457 problem)."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.type = str(problem.get("type", "about:blank"))
        super().__init__(f"{status} {self.type}: {problem.get('detail') or problem.get('title', '')}")


@dataclass(frozen=True, slots=True)
class ExchangeAnswer:
    request_id: str
    log_entry_id: str
    dataset: str
    version: int
    fields_released: tuple[str, ...]
    data_sha256: str
    data: dict[str, Any]
    raw: dict[str, Any]


class BrokerClient:
    def __init__(self, base_url: str, *, key: PrivateKey, broker_keys: Sequence[PublicKey] | None = None,
                 session: aiohttp.ClientSession | None = None, timeout: float = 30.0,
                 client_id: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.client_id = client_id
        self._broker_keys = {k.kid: k for k in broker_keys} if broker_keys is not None else None
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session:
            await self._session.close()

    async def broker_keys(self) -> dict[str, PublicKey]:
        """The broker's response keys: pinned at construction, else fetched once from its JWKS."""
        if self._broker_keys is None:
            async with self._session.get(self.base_url + "/.well-known/jwks.json") as resp:
                resp.raise_for_status()
                jwks = await resp.json()
            self._broker_keys = {k.kid: k for k in public_keys_from_jwks(jwks, owner="broker")}
        return self._broker_keys

    async def exchange(self, *, dataset: str, purpose: str, recipient: str, fields: Sequence[str],
                       subject: Mapping[str, Any] | None = None, access_token: str | None = None,
                       version: int | None = None) -> ExchangeAnswer:
        """One exchange. Give the citizen's `subject`, or, for a consent-based habilitation, the `access_token`
        the consent flow gave you (the consent then names the citizen; the token is bound to your key)."""
        if (subject is None) == (access_token is None):
            raise ValueError("give exactly one of subject and access_token")
        body: dict[str, Any] = {"dataset": dataset, "purpose": purpose, "recipient": recipient,
                                "fields": list(fields)}
        if subject is not None:
            body["subject"] = dict(subject)
        if version is not None:
            body["version"] = version
        extra = {"Authorization": f"Bearer {access_token}"} if access_token else None
        status, payload = await self.post("/v1/exchanges", body, extra_headers=extra)
        if status != 200:
            raise BrokerProblem(status, payload)
        return ExchangeAnswer(
            request_id=payload["request_id"], log_entry_id=payload["log_entry_id"], dataset=payload["dataset"],
            version=payload["version"], fields_released=tuple(payload["fields_released"]),
            data_sha256=payload["data_sha256"], data=payload["data"], raw=payload,
        )

    def authorization_request(self, *, redirect_uri: str, dataset: str, purpose: str, fields: Sequence[str],
                              frequency: str = "one_time", duration_days: int = 30,
                              recipient: str | None = None) -> AuthorizationRequest:
        """The consent flow's first leg: a URL of the broker's /oauth/authorize with PKCE (S256) and a
        `dlnuf_exchange` authorization_details; keep `state` and `code_verifier` for `exchange_code`."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(24)
        details = [{"type": "dlnuf_exchange", "dataset": dataset, "purpose": purpose, "fields": list(fields),
                    "frequency": frequency, "duration_days": duration_days,
                    "recipient": recipient or self.key_owner}]
        query = urlencode({"response_type": "code", "client_id": self.key_owner, "redirect_uri": redirect_uri,
                           "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
                           "authorization_details": orjson.dumps(details).decode()})
        return AuthorizationRequest(f"{self.base_url}/oauth/authorize?{query}", state, verifier)

    @property
    def key_owner(self) -> str:
        if self.client_id is None:
            raise ValueError("BrokerClient needs client_id (the consumer's SIRET) for the consent flow")
        return self.client_id

    def client_assertion(self) -> str:
        """RFC 7523 private_key_jwt: a short-lived JWT by the organisation key, for the token endpoint only."""
        now = int(time.time())
        claims = {"iss": self.key_owner, "sub": self.key_owner, "aud": self.base_url + "/oauth/token",
                  "iat": now, "exp": now + 60, "jti": secrets.token_urlsafe(16)}
        alg = {"ed25519": "EdDSA", "ecdsa-p256-sha256": "ES256"}[self.key.alg]
        return jwt.encode(claims, self.key.private_key, algorithm=alg, headers={"kid": self.key.kid})

    async def _token(self, form: dict[str, str]) -> TokenResponse:
        form.update({"client_id": self.key_owner, "client_assertion_type": ASSERTION_TYPE,
                     "client_assertion": self.client_assertion()})
        async with self._session.post(self.base_url + "/oauth/token", data=form) as resp:
            body = await resp.json(content_type=None)
        if resp.status != 200:
            raise OAuthFailed(resp.status, str(body.get("error")), str(body.get("error_description", "")))
        return TokenResponse(body["access_token"], int(body["expires_in"]), body.get("authorization_details", []),
                             body.get("refresh_token"))

    async def exchange_code(self, *, code: str, code_verifier: str, redirect_uri: str) -> TokenResponse:
        return await self._token({"grant_type": "authorization_code", "code": code, "code_verifier": code_verifier,
                                  "redirect_uri": redirect_uri})

    async def refresh(self, refresh_token: str) -> TokenResponse:
        return await self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def post(self, path: str, body: Mapping[str, Any], *, extra_headers: Mapping[str, str] | None = None,
                   ) -> tuple[int, dict[str, Any]]:
        """Sign and send; verify the response signature; return (status, JSON body)."""
        url = self.base_url + path
        raw = orjson.dumps(body)
        headers = CIMultiDict({"Content-Type": "application/json", **(extra_headers or {})})
        headers.update(messages.sign_request(method="POST", url=url, headers=headers, body=raw,
                                            private_key=self.key))
        keys = await self.broker_keys()
        async with self._session.post(url, data=raw, headers=headers) as resp:
            content = await resp.read()
            messages.verify_response(
                status=resp.status, headers=resp.headers, body=content, request_headers=headers,
                lookup_key=keys.get, now=datetime.now(UTC),
            )
            try:
                payload = orjson.loads(content)
            except orjson.JSONDecodeError:
                payload = {"type": "about:blank", "title": content[:200].decode(errors="replace")}
            return resp.status, payload
