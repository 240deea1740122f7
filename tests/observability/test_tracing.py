"""OpenTelemetry (broker/observability/tracing.py), with the SDK's in-memory exporter: one exchange is one trace,
its server span with the provider call (aiohttp client) and its waits on the batched statements under it, each
linked to its batch's own trace (asyncpg statements), the request id on the span, and the trace id and request id
on the log lines written during the request."""

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
    assert clients, [(s.name, s.kind) for s in inside]  # the call to the sandbox provider
    # the log entry's statement is in its batch's trace, which the exchange's wait links to (the next test)
    assert "wait: access-log group commit" in {s.name for s in inside}, [s.name for s in inside]
    statements = [s for s in finished if {"db.statement", "db.query.text"} & set(s.attributes or {})]
    assert any("access_log" in str(dict(s.attributes or {})) for s in statements), [s.name for s in statements]
    # statements only: no parameter (subject keys, identities) on any span
    assert not any(k.startswith("db.statement.parameters") for s in finished for k in (s.attributes or {}))

    released = [line for line in lines if line["event"] == "exchange released"]
    assert len(released) == 1, lines
    assert released[0]["request_id"] == request_id
    assert released[0]["trace_id"] == format(trace_id, "032x")


async def test_every_exchange_s_trace_holds_its_waits_for_the_batched_statements(
    spans: InMemorySpanExporter, database_url: str, aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The nonce claims and the log entries are written by one task per process for many exchanges at once: that
    task's statements belong to no single request. Each exchange's trace holds a span for each wait, linked to the
    batch's span (its own trace, linked back to every exchange it served), and the batch's log lines carry no
    exchange's request id, not even the first one's, whose context the task once inherited."""
    provider = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    text = registry_toml([paris], provider_url=str(provider.make_url("")).rstrip("/"))
    h = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)
    spans.clear()
    answers = [await h.exchange() for _ in range(3)]
    assert [a.status for a in answers] == [200] * 3, [a.body for a in answers]

    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    batches = [s for s in finished if s.name in ("nonce claims", "access-log group commit")
               and s.kind == SpanKind.INTERNAL and s.parent is None]
    assert {b.name for b in batches} == {"nonce claims", "access-log group commit"}, [s.name for s in finished]
    for answer in answers:
        server = next(s for s in finished if s.kind == SpanKind.SERVER and s.attributes
                      and s.attributes.get("dlnuf.request_id") == answer.headers["X-Request-Id"])
        waits = [s for s in finished if s.parent is not None and s.parent.span_id == server.context.span_id
                 and s.name.startswith("wait: ")]
        assert sorted(w.name for w in waits) == ["wait: access-log group commit", "wait: nonce claims"], \
            [(s.name, s.parent) for s in finished if s.context.trace_id == server.context.trace_id]
        for wait in waits:
            # the wait links to the batch that served it, the batch back to the wait
            (to_batch,) = wait.links
            batch = by_id[to_batch.context.span_id]
            assert batch.name == wait.name.removeprefix("wait: ") and batch.parent is None
            assert wait.context.span_id in {link.context.span_id for link in batch.links}
            assert batch.attributes and batch.attributes["dlnuf.batch.items"] >= 1
            # the statement is under the batch, in the batch's trace, not in the first exchange's
            statements = [s for s in finished if s.parent is not None and s.parent.span_id == batch.context.span_id
                          and {"db.statement", "db.query.text"} & set(s.attributes or {})]
            assert statements, [(s.name, s.parent) for s in finished]
    # no statement of the batches landed in an exchange's trace
    traces = {s.context.trace_id for s in finished if s.kind == SpanKind.SERVER}
    assert not [s.name for s in finished if s.context.trace_id in traces
                and "access_log" in str(dict(s.attributes or {}))]
