"""The gateway's Prometheus metrics, in a registry of its own: counts and durations, no personal data."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "dlnuf_gateway_calls", "Calls of the form service, by route and outcome (released, refused, failed, "
            "unverified, unreachable, or the gateway's own refusal: rejected)",
            ["route", "outcome"], registry=self.registry)
        self.seconds = Histogram(
            "dlnuf_gateway_call_seconds", "Time from the form service's call to the gateway's answer", ["route"],
            buckets=_BUCKETS, registry=self.registry)
        self.broker_seconds = Histogram(
            "dlnuf_gateway_broker_seconds", "Time waiting for the broker's answer", ["route"], buckets=_BUCKETS,
            registry=self.registry)
        self.unverified = Counter(
            "dlnuf_gateway_unverified_answers", "Broker answers that did not verify, by the check that failed",
            ["check"], registry=self.registry)
        self.record_errors = Counter(
            "dlnuf_gateway_record_errors", "Calls refused because the gateway's record could not be written",
            registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
