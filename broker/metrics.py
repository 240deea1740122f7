"""Prometheus metrics. Labels carry datasets, outcomes and adapter names, never anything about a person."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.exchanges = Counter("dlnuf_exchanges", "Exchange attempts by dataset and outcome (released or the "
                                 "problem type slug).", ["dataset", "outcome"], registry=self.registry)
        self.latency = Histogram("dlnuf_exchange_seconds", "Time from request to answer, whole pipeline.",
                                 ["outcome"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.provider_errors = Counter("dlnuf_provider_errors", "Adapter failures by adapter and kind.",
                                       ["adapter", "kind"], registry=self.registry)
        self.registry_version = Gauge("dlnuf_registry_version", "Registry version this process serves.",
                                      registry=self.registry)

    def exchange(self, dataset: str, outcome: str, seconds: float) -> None:
        self.exchanges.labels(dataset, outcome).inc()
        self.latency.labels("released" if outcome == "released" else "refused").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
