"""OpenTelemetry (broker/observability/tracing.py), with the SDK's in-memory exporter: one exchange is one trace,
its server span with the provider call (aiohttp client) and the PostgreSQL statements (asyncpg) under it, the
request id on the span, and the trace id and request id on the log lines written during the request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.observability import tracing
from tests.broker_harness import broker_config, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup(exporter)
    try:
        yield exporter
    finally:
        tracing.uninstall()


async def test_an_exchange_is_one_trace_with_its_provider_call_and_its_statements(
    spans: InMemorySpanExporter, database_url: str, aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    text = registry_toml([paris], provider_url=str(provider.make_url("")).rstrip("/"))
    h = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)
    spans.clear()  # what starting did (migrations, the registry)
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars,
                                                    tracing.log_ids]) as lines:
        answer = await h.exchange()
    assert answer.status == 200, answer.body
    request_id = answer.headers["X-Request-Id"]

    finished = spans.get_finished_spans()
    servers = [s for s in finished if s.kind == SpanKind.SERVER and s.attributes
               and s.attributes.get("dlnuf.request_id") == request_id]
    assert len(servers) == 1, [(s.name, s.kind, s.attributes) for s in finished]
    server = servers[0]
    trace_id = server.context.trace_id
    inside = [s for s in finished if s.context.trace_id == trace_id]
    clients = [s for s in inside if s.kind == SpanKind.CLIENT and s.name.startswith("GET")]
    statements = [s for s in inside if {"db.statement", "db.query.text"} & set(s.attributes or {})]
    assert clients, [(s.name, s.kind) for s in inside]  # the call to the sandbox provider
    assert any("access_log" in str(dict(s.attributes or {})) for s in statements), [s.name for s in statements]
    # statements only: no parameter (subject keys, identities) on any span
    assert not any(k.startswith("db.statement.parameters") for s in inside for k in (s.attributes or {}))

    released = [line for line in lines if line["event"] == "exchange released"]
    assert len(released) == 1, lines
    assert released[0]["request_id"] == request_id
    assert released[0]["trace_id"] == format(trace_id, "032x")
