"""Prometheus metrics. Labels carry datasets, outcomes and adapter names, never anything about a person.

With `serve --workers N` every worker counts into files of one directory (prometheus_client's multiprocess mode,
`PROMETHEUS_MULTIPROC_DIR`, set by the parent before it starts them), and a scrape, whichever worker answers it,
sums them all: counters and histograms over every process, gauges as documented by each one's
`multiprocess_mode`, and each live worker's process figures under its `pid`. One process alone keeps its values in
memory and reports the standard `process_*` metrics.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from adapters.base import Health

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# An exchange's waits on its path: sub-millisecond when all is well (a loopback provider, a claim, a commit), so
# finer at the bottom; the top is the adapters' longest timeout (60 s).
STEP_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0)
# Integration lag is bounded by the integration interval (1 s by default) plus one round; the promise is 60 s.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0)


MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    """Whether this process counts into the shared directory (it must be set before prometheus_client is
    imported, which is why the workers are spawned, never forked, with it in their environment)."""
    return bool(os.environ.get(MULTIPROCESS_DIR))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # what only this process knows at scrape time (its adapters' breakers), never summed across workers
        self._local = CollectorRegistry(auto_describe=True)
        self.exchanges = Counter("dlnuf_exchanges", "Exchange attempts by dataset and outcome (released or the "
                                 "problem type slug).", ["dataset", "outcome"], registry=self.registry)
        self.latency = Histogram("dlnuf_exchange_seconds", "Time from request to answer, whole pipeline.",
                                 ["outcome"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.provider_latency = Histogram("dlnuf_provider_seconds", "Time of an exchange's provider call through "
                                          "its adapter (retries included, breaker refusals not), by adapter and "
                                          "outcome (answered, or the adapter's problem type slug).",
                                          ["adapter", "outcome"], buckets=STEP_BUCKETS, registry=self.registry)
        self.database_wait = Histogram("dlnuf_exchange_database_wait_seconds", "Time an exchange waited for a "
                                       "statement on its path, queueing behind the previous batch included: its "
                                       "nonce claim (`nonce_claim`), its access-log commit with the WAL flush "
                                       "(`access_log`).", ["statement"], buckets=STEP_BUCKETS,
                                       registry=self.registry)
        self._claim_wait = self.database_wait.labels("nonce_claim")
        self._log_wait = self.database_wait.labels("access_log")
        self.provider_errors = Counter("dlnuf_provider_errors", "Adapter failures by adapter and kind.",
                                       ["adapter", "kind"], registry=self.registry)
        self.registry_version = Gauge("dlnuf_registry_version", "Registry version this process serves (with "
                                      "several workers: the highest any live one serves).",
                                      multiprocess_mode="livemax", registry=self.registry)
        self.tlog_lag = Histogram("dlnuf_tlog_integration_lag_seconds", "Time from an access-log commit to its "
                                  "integration into the transparency log (entries this process integrated).",
                                  buckets=LAG_BUCKETS, registry=self.registry)
        self.tlog_pending_age = Gauge("dlnuf_tlog_oldest_pending_seconds", "Age of the oldest access-log entry "
                                      "not yet integrated, 0 when none (as seen by this process's last round).",
                                      multiprocess_mode="livemax", registry=self.registry)
        self.tlog_size = Gauge("dlnuf_tlog_tree_size", "Entries in the transparency log (last size seen).",
                               multiprocess_mode="max", registry=self.registry)
        self.log_default_rows = Gauge("dlnuf_access_log_default_rows", "Access-log rows in the default partition "
                                      "(up to 1000), waiting for their month's partition: `log partitions` has not "
                                      "run in time (docs/operations.md).", multiprocess_mode="livemax",
                                      registry=self.registry)
        self.unauthenticated = Counter("dlnuf_unauthenticated_refusals", "Requests refused before any signature "
                                       "verified, by stable reason; kept in the bounded attempts store, never in "
                                       "the access log.", ["reason"], registry=self.registry)
        self.unauthenticated_dropped = Counter("dlnuf_unauthenticated_dropped", "Unauthenticated refusals not "
                                               "stored (buffer full or database unavailable); still counted above.",
                                               registry=self.registry)
        self.log_commits = Counter("dlnuf_access_log_commits", "Access-log transactions committed (group commit: "
                                   "one per batch of concurrent exchanges).", registry=self.registry)
        self.log_entries = Counter("dlnuf_access_log_entries", "Access-log entries committed through the group "
                                   "commit; divided by dlnuf_access_log_commits, the mean batch.",
                                   registry=self.registry)
        self.quota_refusals = Counter("dlnuf_quota_refusals", "Exchanges refused for a quota, by scope "
                                      "(consumer or habilitation).", ["scope"], registry=self.registry)
        self.outbox = Counter("dlnuf_outbox_deliveries", "Notification webhook deliveries by result (delivered, "
                              "failed, gave_up).", ["result"], registry=self.registry)
        self.mails = Counter("dlnuf_mails", "Citizens' notification e-mails by kind (access, digest, confirmation) "
                             "and result (sent, skipped, failed, gave_up).", ["kind", "result"],
                             registry=self.registry)
        if multiprocess():
            # ProcessCollector reads only the process that answers the scrape: each worker writes its own figures
            # instead (`sample_process`), reported per pid while it lives
            self.worker_cpu = Gauge("dlnuf_worker_cpu_seconds", "CPU time (user + system) of each live worker.",
                                    multiprocess_mode="liveall", registry=self.registry)
            self.worker_memory = Gauge("dlnuf_worker_max_resident_memory_bytes", "Peak resident memory of each "
                                       "live worker.", multiprocess_mode="liveall", registry=self.registry)
            self.worker_start = Gauge("dlnuf_worker_start_time_seconds", "When each live worker started (Unix "
                                      "time).", multiprocess_mode="liveall", registry=self.registry)
            self.worker_start.set(time.time())
            self.sample_process()
        else:
            ProcessCollector(registry=self._local)

    def sample_process(self) -> None:
        """This worker's process figures, for the next scrape (every few seconds, broker/app.py); nothing when one
        process serves alone (ProcessCollector reads them at scrape time)."""
        if not multiprocess():
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.worker_cpu.set(usage.ru_utime + usage.ru_stime)
        self.worker_memory.set(usage.ru_maxrss * 1024)  # Linux reports kilobytes

    def watch_adapters(self, health: Callable[[], Mapping[str, Health]]) -> None:
        """Export each adapter's breaker and retry counts, read from `health()` at every scrape, so an adapter
        removed from the registry disappears from the metrics with it."""
        self._local.register(_AdapterCollector(health))

    def exchange(self, dataset: str, outcome: str, seconds: float) -> None:
        self.exchanges.labels(dataset, outcome).inc()
        self.latency.labels("released" if outcome == "released" else "refused").observe(seconds)

    def exchange_waits(self, *, adapter: str | None, provider: float | None, claim: float | None,
                       log: float | None, provider_outcome: str = "answered") -> None:
        """What one exchange waited for on its path (None: that step did not run)."""
        if adapter is not None and provider is not None:
            self.provider_latency.labels(adapter, provider_outcome).observe(provider)
        if claim is not None:
            self._claim_wait.observe(claim)
        if log is not None:
            self._log_wait.observe(log)

    def access_log_commit(self, entries: int) -> None:
        self.log_commits.inc()
        self.log_entries.inc(entries)

    def render(self) -> bytes:
        if multiprocess():
            every = CollectorRegistry()
            MultiProcessCollector(every)  # type: ignore[no-untyped-call]
            return generate_latest(every) + generate_latest(self._local)
        return generate_latest(self.registry) + generate_latest(self._local)


class _AdapterCollector(Collector):
    def __init__(self, health: Callable[[], Mapping[str, Health]]) -> None:
        self._health = health

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("dlnuf_provider_breaker_state", "Circuit breaker of each adapter: 0 closed, "
                              "1 half-open (a probe may pass), 2 open (calls fail at once).", labels=["adapter"]),
            CounterMetricFamily("dlnuf_provider_retries", "Provider calls repeated after a transport failure or "
                                "a 5xx, since the adapter was built.", labels=["adapter"]),
            CounterMetricFamily("dlnuf_provider_short_circuited", "Calls refused without calling the provider "
                                "because its breaker was open, since the adapter was built.", labels=["adapter"]),
            GaugeMetricFamily("dlnuf_provider_last_fault", "1 for the kind (problem slug) of the last failure each "
                              "adapter's breaker counted: what keeps an open breaker open, while its refusals are "
                              "all provider-unavailable.", labels=["adapter", "kind"]),
        )

    def describe(self) -> Iterator[Metric]:
        # Names only: registration must not call `health()` before the adapters exist.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        state, retries, short, fault = self._families()
        for name, h in sorted(self._health().items()):
            state.add_metric([name], int(h.breaker))
            retries.add_metric([name], h.retries)
            short.add_metric([name], h.short_circuited)
            if h.last_fault:
                fault.add_metric([name, h.last_fault], 1)
        yield from (state, retries, short, fault)
