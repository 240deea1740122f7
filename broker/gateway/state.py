"""What every gateway route shares: the configuration, the broker client (holding the organisation's key), the record,
the metrics, the caller policy, and the trust in the broker's transparency log and authorization server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import web

from broker.consumer.client import BrokerClient
from broker.gateway.access import CallerPolicy
from broker.gateway.config import GatewayConfig
from broker.gateway.errors import BrokerUnreachable
from broker.gateway.evidence import LogTrust
from broker.gateway.metrics import GatewayMetrics
from broker.gateway.oauth import AuthorizationServer
from broker.gateway.record import Record

log = structlog.get_logger(__name__)


@dataclass
class Gateway:
    config: GatewayConfig
    client: BrokerClient
    record: Record
    metrics: GatewayMetrics
    callers: CallerPolicy
    oauth: AuthorizationServer
    pinned_log: LogTrust | None = None
    _fetched_log: LogTrust | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def log_trust(self) -> LogTrust:
        """The log's keys: pinned by configuration, else what the broker publishes at `/v1/log`, fetched once (trust
        on first use, said in the server log: pin the key to take the broker's word out of it)."""
        if self.pinned_log is not None:
            return self.pinned_log
        async with self._lock:
            if self._fetched_log is None:
                try:
                    async with self.client.session.get(self.config.broker_url + "/v1/log") as resp:
                        resp.raise_for_status()
                        info = await resp.json()
                    self._fetched_log = LogTrust.of([str(info["verifier_key"])])
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                    raise BrokerUnreachable(f"the broker's log key could not be read: {exc!r}") from None
                log.warning("log key not pinned: trusting the one the broker publishes (pin it in "
                            "DLNUF_GATEWAY_LOG_KEY)", vkey=self._fetched_log.verifiers[0].vkey())
            return self._fetched_log


STATE = web.AppKey("gateway", Gateway)
