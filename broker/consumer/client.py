"""Consumer SDK: sign exchange requests with an organisation key, verify the broker's signed answers.

    async with BrokerClient("https://dlnuf.example", key=private_key_from_jwk(jwk)) as broker:
        answer = await broker.exchange(
            dataset="quotient_familial", purpose="tarification-restauration-scolaire",
            recipient="21750001600019", fields=["quotient_familial"],
            subject={"pivot_identity": {...}},
        )
        print(answer.data)

A success whose signature does not verify against the broker's published keys, bound to the request just sent,
raises `SignatureRejected`: the SDK never hands back data it cannot attribute to the broker and to this request.

Any other answer is a refusal or a failure, and raises `BrokerProblem` with the broker's problem (type, status,
detail), whatever its signature proved: `BrokerProblem.signature` says what that was. By the broker's contract a
refusal of a request it verified is signed and bound to that request ("bound"); a refusal of a request it could not
verify (no signature, unknown or expired key...) cannot be bound, and is only signed ("unbound"); an answer that no
broker key signed (a proxy's error page, or tampered with) is None. A problem carries no data, so it is raised in
every case; only what it says about the cause deserves that much trust.

With the log's verifier key (`log_vkeys`, pinned out of band), every answer's inclusion promise is checked at once
(signed by the log, for this entry, whose leaf commits to exactly the data received, with the salt), and
`inclusion_proof(answer)` fetches and checks the entry's offline proof (C2SP tlog-proof) once integrated, requiring
`witness_quorum` of the `witnesses` to have cosigned its checkpoint. Keep the proof: it verifies anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import urlencode

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from broker.signing import jose, messages
from broker.signing.keys import PrivateKey, PublicKey, public_keys_from_jwks
from broker.tlog import tlogproof
from broker.tlog.jcs import canonicalize
from broker.tlog.verify import VerificationError, verify_receipt
from consent.client_auth import ASSERTION_TYPE, TYP

Signature: TypeAlias = Literal["bound", "unbound"]
"""What a verified answer's signature proved: by the broker and bound to the request, or by the broker only."""

# A pinned key set never changes; a fetched one is fetched again when an answer names a key it lacks (the broker
# rotated), at most this often, so that answers naming unknown keys cannot make the client hammer the JWKS.
_JWKS_REFRESH_INTERVAL: Final = 60.0


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
    """The broker refused or failed the exchange: its RFC 9457 problem (`type`, `status`, `title`, `detail`).

    An error answer that is not a problem document (a proxy's page) becomes `about:blank` with the HTTP status
    (RFC 9457 §4.2.1). `signature` is what the answer's signature proved ("bound", "unbound", or None with the
    reason in `signature_error`): see the module docstring.
    """

    def __init__(self, status: int, problem: Mapping[str, Any], *, signature: Signature | None = None,
                 signature_error: messages.SignatureRejected | None = None) -> None:
        self.status = status
        self.problem = dict(problem)
        self.type = str(problem.get("type", "about:blank"))
        self.title = str(problem.get("title") or _reason(status))
        detail = problem.get("detail")
        self.detail = str(detail) if detail is not None else None
        self.signature = signature
        self.signature_error = signature_error
        super().__init__(f"{status} {self.type}: {self.detail or self.title}")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request signed for the broker and not sent yet: where, with which fields, key and nonce."""

    url: str
    headers: CIMultiDict[str]
    body: bytes
    kid: str
    nonce: str


@dataclass(frozen=True, slots=True)
class SignedAnswer:
    """One answer of the broker as received, and what its signature proved (`signature`, else `signature_error`).

    `request_headers` are the headers sent, the request's Signature among them: with `status`, `headers` and
    `body`, all a third party needs to check the binding later.
    """

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    request_headers: CIMultiDict[str]
    signature: Signature | None
    signature_error: messages.SignatureRejected | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def problem(self) -> BrokerProblem:
        """This answer as a `BrokerProblem`: its problem document if it has one, else `about:blank`."""
        try:
            parsed = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            parsed = None
        problem = parsed if isinstance(parsed, dict) else {"type": "about:blank", "title": _reason(self.status),
                                                           "status": self.status}
        return BrokerProblem(self.status, problem, signature=self.signature, signature_error=self.signature_error)

    def verified_json(self) -> dict[str, Any]:
        """The JSON object of a success bound to this request; `BrokerProblem` for anything but a success,
        `SignatureRejected` for a success whose signature did not verify."""
        if not self.ok:
            raise self.problem()
        if self.signature != "bound":
            raise self.signature_error or messages.SignatureRejected(
                "components-missing", "a success must be bound to its request")
        try:
            payload = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            raise BrokerProblem(self.status, {"type": "about:blank", "title": "the broker's answer is not a JSON "
                                              "object", "status": self.status}, signature=self.signature)
        return payload


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

    @property
    def log_entry(self) -> dict[str, Any]:
        """The access-log entry the broker committed for this exchange (from its signed receipt)."""
        entry: dict[str, Any] = self.raw["log"]["entry"]
        return entry


class BrokerClient:
    def __init__(self, base_url: str, *, key: PrivateKey, broker_keys: Sequence[PublicKey] | None = None,
                 session: aiohttp.ClientSession | None = None, timeout: float = 30.0,
                 client_id: str | None = None, max_skew: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None, log_vkeys: Sequence[str] = (),
                 log_origin: str | None = None, witnesses: Sequence[str] = (),
                 witness_quorum: int | None = None) -> None:
        """`ssl_context` trusts a private CA (the RIE's, a test one) when the SDK makes its own session. With
        `log_vkeys`, answers' promises are checked, and `inclusion_proof` needs `witness_quorum` of `witnesses`."""
        self.log_vkeys = list(log_vkeys)
        self.log_origin = log_origin or (self.log_vkeys[0].split("+", 1)[0] if self.log_vkeys else None)
        self.witnesses = list(witnesses)
        self.witness_quorum = len(self.witnesses) if witness_quorum is None else witness_quorum
        if self.witness_quorum > len(self.witnesses):
            raise ValueError("witness_quorum cannot exceed the number of witnesses")
        self.base_url = base_url.rstrip("/")
        self.max_skew = max_skew  # seconds an answer's `created` may differ from this clock
        self.key = key
        self.client_id = client_id
        self._broker_keys = {k.kid: k for k in broker_keys} if broker_keys is not None else None
        self._keys_pinned = broker_keys is not None
        self._keys_fetched_at = 0.0
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(ssl=ssl_context) if ssl_context is not None else None)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP session the client sends with (for other calls to the broker, unsigned)."""
        return self._session

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session:
            await self._session.close()

    async def broker_keys(self, *, refresh: bool = False) -> dict[str, PublicKey]:
        """The broker's response keys: pinned at construction, else fetched from its JWKS once, and again on
        `refresh` (an answer named a key not in the set) when the last fetch is old enough."""
        stale = refresh and not self._keys_pinned and \
            time.monotonic() - self._keys_fetched_at >= _JWKS_REFRESH_INTERVAL
        if self._broker_keys is None or stale:
            async with self._session.get(self.base_url + "/.well-known/jwks.json") as resp:
                resp.raise_for_status()
                jwks = await resp.json()
            self._broker_keys = {k.kid: k for k in public_keys_from_jwks(jwks, owner="broker")}
            self._keys_fetched_at = time.monotonic()
        return self._broker_keys

    async def exchange(self, *, dataset: str, purpose: str, recipient: str, fields: Sequence[str],
                       subject: Mapping[str, Any] | None = None, access_token: str | None = None,
                       version: int | None = None, context: str | None = None,
                       object: str | None = None, parameters: Mapping[str, int | str] | None = None,
                       france_connect: bool = False) -> ExchangeAnswer:
        """One exchange. Give the `subject` (a citizen, a business), or, for a consent-based habilitation, the
        `access_token` the consent flow gave you (the consent then names the citizen; the token is bound to your
        key), with `france_connect` to have the provider asked in FranceConnect mode. `parameters` are the
        dataset's (the catalogue lists them: a month, a fiscal year). `context` and `object` are the call context
        API Entreprise requires (the framework of the call and the procedure's reference)."""
        if (subject is None) == (access_token is None):
            raise ValueError("give exactly one of subject and access_token")
        if france_connect and access_token is None:
            raise ValueError("FranceConnect mode needs a consent's access_token")
        body: dict[str, Any] = {"dataset": dataset, "purpose": purpose, "recipient": recipient,
                                "fields": list(fields)}
        if subject is not None:
            body["subject"] = dict(subject)
        elif france_connect:
            body["subject"] = {"france_connect": {}}
        if parameters:
            body["parameters"] = dict(parameters)
        if version is not None:
            body["version"] = version
        if context is not None:
            body["context"] = context
        if object is not None:
            body["object"] = object
        extra = {"Authorization": f"Bearer {access_token}"} if access_token else None
        payload = await self.post("/v1/exchanges", body, extra_headers=extra)
        if self.log_vkeys:
            # the promise: signed by the log, for this entry, committing to exactly the data received
            verify_receipt(payload.get("log") or {}, self.log_vkeys, origin=str(self.log_origin),
                           entry_id=str(payload["log_entry_id"]), data=canonicalize(payload["data"]))
        return ExchangeAnswer(
            request_id=payload["request_id"], log_entry_id=payload["log_entry_id"], dataset=payload["dataset"],
            version=payload["version"], fields_released=tuple(payload["fields_released"]),
            data_sha256=payload["data_sha256"], data=payload["data"], raw=payload,
        )

    async def inclusion_proof(self, answer: ExchangeAnswer) -> str:
        """The entry's offline proof (C2SP tlog-proof), checked: the log's key, `witness_quorum` witnesses, and the
        inclusion of the entry the answer carries. `NotYetIntegrated`-like 404s raise `BrokerProblem`: ask again
        after the promised merge delay."""
        if not self.log_vkeys:
            raise ValueError("checking a proof needs the log's verifier key (log_vkeys)")
        # logged_at names the entry should a row in another month reuse its id
        async with self._session.get(f"{self.base_url}/v1/log/entries/{answer.log_entry_id}/tlog-proof",
                                     params={"logged_at": str(answer.log_entry["logged_at"])}) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise BrokerProblem(resp.status, orjson.loads(text) if text.startswith("{") else {})
        try:
            tlogproof.verify(text, self.log_vkeys, origin=str(self.log_origin), entry=answer.log_entry,
                             witnesses=self.witnesses, quorum=self.witness_quorum)
        except tlogproof.ProofError as exc:
            raise VerificationError(f"the entry's proof does not verify: {exc}") from None
        return text

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
        """RFC 7523 private_key_jwt: a short-lived JWT by the organisation key, for the broker only (its ``aud`` is
        the broker's issuer identifier and its type ``client-authentication+jwt``, as rfc7523bis recommends)."""
        now = int(time.time())
        claims = {"iss": self.key_owner, "sub": self.key_owner, "aud": self.base_url,
                  "iat": now, "exp": now + 60, "jti": secrets.token_urlsafe(16)}
        return jose.sign_jwt(claims, self.key, typ=TYP)

    async def _token(self, form: dict[str, str]) -> TokenResponse:
        form.update({"client_id": self.key_owner, "client_assertion_type": ASSERTION_TYPE,
                     "client_assertion": self.client_assertion()})
        async with self._session.post(self.base_url + "/oauth/token", data=form) as resp:
            raw = await resp.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise OAuthFailed(resp.status, "invalid_response", "the token endpoint did not answer a JSON object")
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
                   ) -> dict[str, Any]:
        """Sign and send a JSON body; the JSON object of a success bound to this request. Raises `BrokerProblem`
        for any other answer, `SignatureRejected` for a success whose signature did not verify."""
        answer = await self.send(path, orjson.dumps(body), extra_headers=extra_headers)
        return answer.verified_json()

    async def send(self, path: str, body: bytes, *, extra_headers: Mapping[str, str] | None = None,
                   content_type: str = "application/json") -> SignedAnswer:
        """Sign `body` with a fresh nonce, POST it once, and verify the answer's signature without judging it:
        the caller decides what a status and a signature allow (`SignedAnswer.verified_json` is the strict
        reading). Transport failures raise `aiohttp.ClientError` or `TimeoutError`."""
        return await self.deliver(self.sign(path, body, extra_headers=extra_headers, content_type=content_type))

    def sign(self, path: str, body: bytes, *, extra_headers: Mapping[str, str] | None = None,
             content_type: str = "application/json") -> SignedRequest:
        """A POST of `body` to `path`, signed with a fresh nonce, not sent yet (so it can be recorded first)."""
        url = self.base_url + path
        nonce = secrets.token_urlsafe(16)
        headers = CIMultiDict({"Content-Type": content_type, **(extra_headers or {})})
        headers.update(messages.sign_request(method="POST", url=url, headers=headers, body=body,
                                            private_key=self.key, nonce=nonce))
        return SignedRequest(url, headers, body, self.key.kid, nonce)

    async def deliver(self, request: SignedRequest) -> SignedAnswer:
        """Send a signed request, once, and verify its answer's signature: bound to this request first; for an
        error status, else as the broker's only (a refusal before the broker could verify the request). Nothing is
        retried, so a request and its nonce go out once."""
        keys = await self.broker_keys()
        # no redirects: a signed request, and its nonce, go to the one URI they were signed for, once
        async with self._session.post(request.url, data=request.body, headers=request.headers,
                                      allow_redirects=False) as resp:
            content = await resp.read()
            status, response_headers = resp.status, CIMultiDictProxy(CIMultiDict(resp.headers))
        signature, error = self._verify(status, response_headers, content, request.headers, keys)
        if error is not None and error.reason == "unknown-key":
            fresh = await self.broker_keys(refresh=True)
            if fresh is not keys:
                signature, error = self._verify(status, response_headers, content, request.headers, fresh)
        return SignedAnswer(status, response_headers, content, request.headers, signature, error)

    def _verify(self, status: int, headers: CIMultiDictProxy[str], body: bytes, request_headers: CIMultiDict[str],
                keys: Mapping[str, PublicKey]) -> tuple[Signature | None, messages.SignatureRejected | None]:
        now = datetime.now(UTC)
        try:
            messages.verify_response(status=status, headers=headers, body=body, request_headers=request_headers,
                                     lookup_key=keys.get, now=now, max_skew=self.max_skew)
            return "bound", None
        except messages.SignatureRejected as exc:
            bound_error = exc
        if status < 400:
            return None, bound_error
        try:
            messages.verify_response(status=status, headers=headers, body=body, request_headers=request_headers,
                                     lookup_key=keys.get, now=now, max_skew=self.max_skew, bound=False)
        except messages.SignatureRejected:
            return None, bound_error
        return "unbound", None
