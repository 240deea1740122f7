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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from broker import signing
from broker.keys import PrivateKey, PublicKey, public_keys_from_jwks


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
                 session: aiohttp.ClientSession | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
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
                       subject: Mapping[str, Any], version: int | None = None) -> ExchangeAnswer:
        body: dict[str, Any] = {"dataset": dataset, "purpose": purpose, "recipient": recipient,
                                "fields": list(fields), "subject": dict(subject)}
        if version is not None:
            body["version"] = version
        status, payload = await self.post("/v1/exchanges", body)
        if status != 200:
            raise BrokerProblem(status, payload)
        return ExchangeAnswer(
            request_id=payload["request_id"], log_entry_id=payload["log_entry_id"], dataset=payload["dataset"],
            version=payload["version"], fields_released=tuple(payload["fields_released"]),
            data_sha256=payload["data_sha256"], data=payload["data"], raw=payload,
        )

    async def post(self, path: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Sign and send; verify the response signature; return (status, JSON body)."""
        url = self.base_url + path
        raw = orjson.dumps(body)
        headers = CIMultiDict({"Content-Type": "application/json"})
        headers.update(signing.sign_request(method="POST", url=url, headers=headers, body=raw,
                                            private_key=self.key))
        keys = await self.broker_keys()
        async with self._session.post(url, data=raw, headers=headers) as resp:
            content = await resp.read()
            signing.verify_response(
                status=resp.status, headers=resp.headers, body=content, request_headers=headers,
                lookup_key=keys.get, now=datetime.now(UTC),
            )
            try:
                payload = orjson.loads(content)
            except orjson.JSONDecodeError:
                payload = {"type": "about:blank", "title": content[:200].decode(errors="replace")}
            return resp.status, payload
