"""OpenTelemetry traces of the broker, exported when OTEL_EXPORTER_OTLP_ENDPOINT is set.

One trace per request: the server span (aiohttp), with the provider calls (aiohttp client) and the PostgreSQL
statements (asyncpg) under it. The statements one writer batches for many requests (nonce claims, access-log
entries: broker/storage/batch.py) serve many requests at once: each request's trace holds a span for its wait,
and the batch's span, with the statement under it, sits in the trace of the first sampled request it served,
linked to the others' waits and they to it (the OpenTelemetry pattern for batch processing). The
standard OTEL_* variables configure the exporter (endpoint, headers, service name). The span carries the broker's
request id (`dlnuf.request_id`) and every log line written inside it carries the trace and span ids
(`logs.configure`), so a log line, a trace and an X-Request-Id lead to one another. Span attributes never carry a
person: asyncpg spans hold the statement text, never its parameters.

The SDK is the `otel` extra (`pip install 'dlnuf[otel]'`): without it and without the variable, nothing here loads;
with the variable but without the extra, the broker refuses to start rather than silently not tracing.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
_provider: Any = None


class TracingUnavailable(RuntimeError):
    """OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed."""


def wanted() -> bool:
    return bool(os.environ.get(ENDPOINT)) or _provider is not None


def setup(exporter: Any = None) -> Any:
    """The process's tracer provider, made once: spans go to `exporter` as they end (tests give an in-memory one)
    or, batched, to the OTLP/HTTP endpoint of the environment; asyncpg and aiohttp's client are instrumented."""
    global _provider
    if _provider is not None:
        return _provider
    try:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(f"{ENDPOINT} is set but OpenTelemetry is not installed: pip install "
                                 f"'dlnuf[otel]' ({exc.name} is missing)") from None
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                                        or "dlnuf-broker"}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # asyncpg's statements only, never their parameters (which hold subject keys and identities)
    AsyncPGInstrumentor(capture_parameters=False).instrument(  # type: ignore[no-untyped-call]
        tracer_provider=provider)
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    # every web.Application made after this gets the server span as its outermost middleware (broker/app.py
    # calls setup before making its own)
    with warnings.catch_warnings():
        # aiohttp discourages subclassing Application, which is how the instrumentor adds its middleware
        warnings.simplefilter("ignore", DeprecationWarning)
        AioHttpServerInstrumentor().instrument(tracer_provider=provider)
    _provider = provider
    return provider


def uninstall() -> None:
    """Undo `setup` (tests: the next app of the process is not traced)."""
    global _provider
    if _provider is None:
        return
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    AioHttpClientInstrumentor().uninstrument()
    AioHttpServerInstrumentor().uninstrument()
    _provider.shutdown()
    _provider = None


def shutdown() -> None:
    """Flush what is batched (at the end of a process)."""
    if _provider is not None:
        _provider.shutdown()


def annotate(request_id: str) -> None:
    """Give the current span the broker's request id (nothing when no trace is being recorded)."""
    if _provider is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("dlnuf.request_id", request_id)


# What `waiting` and `batch` give when no trace is recorded: nothing to enter, no generator made per call.
_UNTRACED = contextlib.nullcontext()


def waiting(name: str) -> AbstractContextManager[Any]:
    """A span for the current request's wait on a batch `name`, entered as the span (None when not tracing), for
    `batch` to link. Given to batchers as their `Spans` (broker/storage/batch.py)."""
    if _provider is None:
        return _UNTRACED
    return cast(AbstractContextManager[Any],
                _provider.get_tracer(__name__).start_as_current_span(f"wait: {name}"))


def batch(name: str, waits: Sequence[Any]) -> AbstractContextManager[None]:
    """The span of one batched statement, its statements under it. It sits in the trace of the first sampled
    request still waiting for it, and links to the other requests' waits, which link back to it: with a ratio
    sampler too, every sampled request leads to the statement it waited for. The caller runs in a context of its
    own (no request's), so nothing else lands in that trace. A batch that no sampled request waits for is not
    traced."""
    if _provider is None or not any(waits):
        return _UNTRACED
    return _batch(name, waits)


@contextlib.contextmanager
def _batch(name: str, waits: Sequence[Any]) -> Iterator[None]:
    from opentelemetry import trace
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    # an ended wait (its caller gone) takes no link: the SDK drops it with a warning. A wait recorded but not
    # sampled (a record-only sampler's decision) is not exported: the batch must not hang under it.
    sampled = [w for w in waits if w is not None and w.is_recording() and w.get_span_context().trace_flags.sampled]
    if not sampled:
        with suppress_instrumentation():
            yield
        return
    parent, others = sampled[0], sampled[1:]
    with _provider.get_tracer(__name__).start_as_current_span(
            name, context=trace.set_span_in_context(parent), links=[trace.Link(w.get_span_context()) for w in others],
            attributes={"dlnuf.batch.items": len(waits)}) as span:
        for w in others:
            w.add_link(span.get_span_context())
        yield


def log_ids(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current trace and span ids on the line, when there is a trace."""
    if _provider is None:
        return event
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event
