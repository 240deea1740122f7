"""OpenTelemetry (broker/observability/tracing.py), with the SDK's in-memory exporter: one exchange is one trace,
its server span with the provider call (aiohttp client) and its waits on the batched statements under it, each
leading to its batch's span (asyncpg statements), the request id on the span, and the trace id and request id on
the log lines written during the request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.observability import tracing
from broker.storage import db
from broker.storage.batch import RowsRefused
from tests.broker_harness import broker_config, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml
from tests.storage.test_batch import Echo


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
    """The nonce claims and the log entries are written by one task per process for the exchanges in flight: that
    task's statements are not any one request's. Each exchange's trace holds a span for each wait; the batch's span
    (with the statement under it) is the child of one wait and linked from the others; nothing of a later batch
    lands in the first exchange's trace, whose context the task once inherited."""
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
    batches = [s for s in finished if s.name in ("nonce claims", "access-log group commit")]
    for answer in answers:
        server = next(s for s in finished if s.kind == SpanKind.SERVER and s.attributes
                      and s.attributes.get("dlnuf.request_id") == answer.headers["X-Request-Id"])
        waits = [s for s in finished if s.parent is not None and s.parent.span_id == server.context.span_id
                 and s.name.startswith("wait: ")]
        assert sorted(w.name for w in waits) == ["wait: access-log group commit", "wait: nonce claims"], \
            [(s.name, s.parent) for s in finished if s.context.trace_id == server.context.trace_id]
        for wait in waits:
            [batch] = [b for b in batches if b.name == wait.name.removeprefix("wait: ") and (
                (b.parent is not None and b.parent.span_id == wait.context.span_id)
                or wait.context.span_id in {link.context.span_id for link in b.links})]
            assert batch.attributes and batch.attributes["dlnuf.batch.items"] >= 1
            statements = [s for s in finished if s.parent is not None and s.parent.span_id == batch.context.span_id
                          and {"db.statement", "db.query.text"} & set(s.attributes or {})]
            assert statements, [(s.name, s.parent) for s in finished]
    # in the exchanges' traces, every statement is under a batch's span: none strays into another exchange's
    traces = {s.context.trace_id for s in finished if s.kind == SpanKind.SERVER}
    for s in finished:
        if s.context.trace_id in traces and {"db.statement", "db.query.text"} & set(s.attributes or {}):
            assert s.parent is not None and by_id[s.parent.span_id] in batches, (s.name, s.parent)


class Traced(Echo):
    """The batch writer with the broker's tracing; an item "bad" makes its whole statement refused."""

    spans = tracing

    async def _write(self, conn: asyncpg.Connection, items: Sequence[str]) -> list[str]:
        if "bad" in items:
            self.statements.append(list(items))
            raise RowsRefused("bad")
        return await super()._write(conn, items)


@pytest.fixture
async def traced(spans: InMemorySpanExporter, database_url: str) -> AsyncIterator[Traced]:
    pool = await db.create_pool(database_url, min_size=1, max_size=4)
    spans.clear()  # the pool's own set-up statements
    writer = Traced(pool)
    try:
        yield writer
    finally:
        writer.release.set()
        await asyncio.wait_for(writer.close(), 10)
        await pool.close()


def _calling(traced: Traced, request: str, item: str, *, sampled: bool = True) -> asyncio.Task[str]:
    """A request (its own trace) submitting `item`; not `sampled`: its caller's traceparent said so (the default
    sampler follows it, as a ratio sampler's draw would decide)."""
    async def call() -> str:
        parent = None
        if not sampled:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
                trace_id=0x5b8aa5a2d2c872e8321cf37308d69df2, span_id=0x051581bf3cb55c13, is_remote=True,
                trace_flags=trace.TraceFlags(0))))
        with tracing._provider.get_tracer("test").start_as_current_span(request, context=parent):
            return await traced.submit(item)
    return asyncio.create_task(call())


def _named(spans: InMemorySpanExporter, name: str) -> list[Any]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def _wait_of(spans: InMemorySpanExporter, request: str) -> Any:
    [req] = _named(spans, request)
    [wait] = [s for s in _named(spans, "wait: echo")
              if s.parent is not None and s.parent.span_id == req.context.span_id]
    return wait


async def test_a_batch_is_under_its_first_caller_s_wait_and_linked_both_ways_with_the_others(
        traced: Traced, spans: InMemorySpanExporter) -> None:
    slow = _calling(traced, "first", "slow")
    await asyncio.wait_for(traced.held.wait(), 10)
    later = [_calling(traced, "second", "two"), _calling(traced, "third", "three")]
    await asyncio.sleep(0.05)
    traced.release.set()
    assert (await slow, *[await t for t in later]) == ("slow", "two", "three")
    assert traced.statements == [["slow"], ["two", "three"]]
    second, third = _wait_of(spans, "second"), _wait_of(spans, "third")
    [batch] = [b for b in _named(spans, "echo") if b.parent is not None and b.parent.span_id == second.context.span_id]
    assert batch.attributes is not None and batch.attributes["dlnuf.batch.items"] == 2
    assert [link.context.span_id for link in batch.links] == [third.context.span_id]
    assert [link.context.span_id for link in third.links] == [batch.context.span_id]
    assert [s for s in spans.get_finished_spans() if s.parent is not None and s.parent.span_id == batch.context.span_id
            and {"db.statement", "db.query.text"} & set(s.attributes or {})]


async def test_a_caller_gone_before_its_batch_gets_no_link_and_no_warning(
        traced: Traced, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture) -> None:
    slow = _calling(traced, "first", "slow")
    await asyncio.wait_for(traced.held.wait(), 10)
    gone, stays = _calling(traced, "gone", "gone"), _calling(traced, "stays", "stays")
    await asyncio.sleep(0)
    gone.cancel()
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        traced.release.set()
        assert (await slow, await stays) == ("slow", "stays")
    assert gone.cancelled()
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]
    # the batch went on for both, under the wait of the one still there
    assert traced.statements == [["slow"], ["gone", "stays"]]
    [batch] = [b for b in _named(spans, "echo") if b.attributes and b.attributes["dlnuf.batch.items"] == 2]
    assert batch.parent is not None and batch.parent.span_id == _wait_of(spans, "stays").context.span_id


async def test_a_refused_batch_s_error_and_log_line_are_in_its_trace_and_its_items_retried_in_theirs(
        traced: Traced, spans: InMemorySpanExporter) -> None:
    slow = _calling(traced, "first", "slow")
    await asyncio.wait_for(traced.held.wait(), 10)
    fine, bad = _calling(traced, "fine", "fine"), _calling(traced, "bad", "bad")
    await asyncio.sleep(0.05)
    with structlog.testing.capture_logs(processors=[tracing.log_ids]) as lines:
        traced.release.set()
        assert (await slow, await fine) == ("slow", "fine")
        with pytest.raises(RuntimeError):
            await bad
    assert traced.statements == [["slow"], ["fine", "bad"], ["fine"], ["bad"]]
    refused = [b for b in _named(spans, "echo") if b.attributes and b.attributes["dlnuf.batch.items"] == 2]
    [batch] = refused
    assert batch.status.status_code == StatusCode.ERROR
    [line] = [line for line in lines if "batch refused" in line["event"]]
    assert line["trace_id"] == format(batch.context.trace_id, "032x")
    assert line["span_id"] == format(batch.context.span_id, "016x")
    assert "request_id" not in line
    # each item's retry is a batch of one under its own wait
    for request in ("fine", "bad"):
        wait = _wait_of(spans, request)
        assert [b for b in _named(spans, "echo") if b.parent is not None and b.parent.span_id == wait.context.span_id
                and b.attributes and b.attributes["dlnuf.batch.items"] == 1]


async def test_with_sampling_a_batch_is_under_a_sampled_wait_or_not_traced_at_all(
        traced: Traced, spans: InMemorySpanExporter) -> None:
    slow = _calling(traced, "first", "slow")
    await asyncio.wait_for(traced.held.wait(), 10)
    unsampled, sampled = _calling(traced, "u", "u", sampled=False), _calling(traced, "s", "s")
    await asyncio.sleep(0.05)
    traced.release.set()
    assert (await slow, await unsampled, await sampled) == ("slow", "u", "s")
    assert traced.statements == [["slow"], ["u", "s"]]
    assert not _named(spans, "u")  # not sampled: nothing of that request is exported
    [batch] = [b for b in _named(spans, "echo") if b.attributes and b.attributes["dlnuf.batch.items"] == 2]
    # under the sampled request's wait, whatever the order in the batch: so a sampled request always leads to it
    assert batch.parent is not None and batch.parent.span_id == _wait_of(spans, "s").context.span_id
    assert not batch.links
    # a batch no sampled request waits for: neither its span nor its statement become a trace of their own
    before = len(spans.get_finished_spans())
    assert await _calling(traced, "alone", "alone", sampled=False) == "alone"
    assert traced.statements[-1] == ["alone"]
    assert len(spans.get_finished_spans()) == before, [s.name for s in spans.get_finished_spans()[before:]]
