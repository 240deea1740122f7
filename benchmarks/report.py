"""The printed report: tables of one run's figures, and what stands between them and the targets.

Every figure is the median over the repetitions of a cell; ratios and differences are taken within each
repetition (both sides measured seconds apart on the same machine), then their median.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import profiling
from runner import TARGET_RATE, Results, Stats, median
from stack import Settings, Stack, source_state

TARGET_ADDED_P99_MS = 5.0
PROBES = 300
TARGETS = ("broker", "stub", "nginx", "floor")
LABELS = {"broker": "broker (full pipeline)", "stub": "upstream direct", "nginx": "nginx -> upstream",
          "floor": "floor (claim, call, commit)",
          "trivial": "trivial server"}


def _database(s: Settings) -> str:
    if s.database_url is not None:
        return "existing database " + s.database_url.rsplit("@", 1)[-1] + " (kept)"
    if s.template is not None:
        return f"a copy of {s.template} on " + s.admin_url.rsplit("@", 1)[-1]
    if not s.embedded:
        return "fresh database on " + s.admin_url.rsplit("@", 1)[-1]
    return "embedded PostgreSQL" + (", its data in memory (--tmpfs: no disk waits)" if s.tmpfs else "")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned figures."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]

    def render(row: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([render(headers), "  ".join("-" * w for w in widths), *(render(r) for r in rows)])


def _cpu(stats: Sequence[Stats], groups: Sequence[str]) -> list[str]:
    return [f"{median([st.cpu_ms(g) for st in stats]):.3f}" for g in groups]


def _groups(stack: Stack) -> list[str]:
    return ["broker", "postgres", "stub", *(["nginx"] if stack.nginx else []),
            *(["floor"] if "floor" in stack.extra_pids else []), "loadgen"]


def report(stack: Stack, s: Settings, r: Results) -> str:
    groups = _groups(stack)
    out = [
        "=" * 120,
        f"DLNUF exchange benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, code {source_state()}",
        f"brokers: {s.brokers} process(es); load generator: {s.loadgen_procs} process(es); database: "
        f"{_database(s)}; "
        f"legal basis: {s.basis}; broker workers: {s.workers}; upstream: "
        f"{'nginx serving the stub recorded answer' if s.upstream == 'fast' else 'the Python sandbox'}; "
        f"citizens asked about: {s.subjects:,}",
        f"smoke test: {r.smoke}",
        f"machine before the run: {r.noise_before:.2f} of {os.cpu_count()} cores busy with other people's work, "
        f"load average {os.getloadavg()[0]:.2f} at the end",
        "Figures: medians of the repetitions. 'CPU x' = ms of CPU that process group spent per request (user + "
        "kernel);",
        "'others' = cores busy with processes that are not ours during the cell (the machine's noise).",
        "",
        _ceiling(s, r),
        "",
        _closed(s, r, groups),
        "",
        _open(s, r, groups),
    ]
    if r.profile is not None and r.profile_stats is not None:
        out += ["", profiling.render(r.profile, broker_cpu(r.profile_stats), _profile_load(s))]
    if r.db:
        out += ["", f"Database statements on an exchange's path, {PROBES} of each, interleaved, from the benchmark "
                "once the load stopped; 'PG CPU' = the backend's CPU per statement",
                table(["statement", "p50 ms", "p99 ms", "PG CPU us"],
                      [[name, f"{pr.p50:.3f}", f"{pr.p99:.3f}", f"{pr.pg_cpu_us:.0f}"] for name, pr in r.db.items()])]
    out += ["", obstacles(stack, s, r), "=" * 120]
    return "\n".join(out)


def broker_cpu(st: Stats) -> profiling.BrokerCpu:
    """The brokers' CPU per exchange during the profile (py-spy watches broker #1; with several, alike)."""
    per = 1e6 / max(1, st.handled)
    kernel = st.cpu.kernel.get("broker", 0.0)
    return profiling.BrokerCpu(user_us=(st.cpu.by_group.get("broker", 0.0) - kernel) * per, kernel_us=kernel * per,
                               waited_us=st.cpu.waited.get("broker", 0.0) * per,
                               pg_us=st.cpu.by_group.get("postgres", 0.0) * per, exchanges=st.handled)


def _ceiling(s: Settings, r: Results) -> str:
    rows = [["signing alone (sign_request + HTTP framing)", f"{r.sign_rate:,.0f}", "", "", ""]]
    for name, label in (("presigned", "send pre-signed requests, closed loop c=32"),
                        ("inline", "sign inline + send, closed loop c=32")):
        st = r.ceiling[name]
        rows.append([label, f"{st.rate:,.0f}", f"{st.p50:.2f}", f"{st.p99:.2f}", f"{st.cpu_ms('loadgen'):.3f}"])
    st = r.ceiling["open"]
    rows.append([f"open loop at {s.rate:,.0f}/s (the latency floor of the measurement)", f"{st.rate:,.0f}",
                 f"{st.p50:.2f}", f"{st.p99:.2f}", f"{st.cpu_ms('loadgen'):.3f}"])
    return ("Load generator ceiling: one process, broker-shaped signed POSTs, against a trivial loopback server\n"
            + table(["", "req/s", "p50 ms", "p99 ms", "CPU loadgen"], rows))


def _closed(s: Settings, r: Results, groups: Sequence[str]) -> str:
    rows = []
    for target in TARGETS:
        for level in s.levels:
            stats = r.closed.get((target, level))
            if stats:
                rows.append([LABELS[target], str(level), f"{median([st.rate for st in stats]):,.0f}",
                             f"{median([st.p50 for st in stats]):.2f}", f"{median([st.p99 for st in stats]):.2f}",
                             str(sum(st.errors for st in stats)), *_cpu(stats, groups),
                             f"{median([st.wait_ms('broker') for st in stats]):.3f}" if target == "broker" else "",
                             f"{median([st.others for st in stats]):.2f}"])
    lines = [f"Closed loop: {s.reps} x {s.duration:g} s per cell after {s.warmup:g} s of warm-up",
             table(["target", "conc", "req/s", "p50 ms", "p99 ms", "errors", *[f"CPU {g}" for g in groups],
                    "wait broker", "others"], rows),
             "('wait broker' = ms per exchange the broker was runnable but waiting for a CPU)",
             "access-log commits per entry (group commit; one broker process, from its /metrics): " + ", ".join(
                 f"c={level} {median(c):.2f}" for level in s.levels
                 if (c := [st.log_commits_per_entry for st in r.closed.get(("broker", level), [])
                           if st.log_commits_per_entry is not None])) + "; plus one nonce claim per exchange, "
             "committed without waiting for the WAL flush",
             _wal_line(r, s),
             "throughput ratios, per repetition then median:"]
    for level in s.levels:
        parts = []
        for a, b in (("broker", "stub"), ("broker", "nginx"), ("nginx", "stub")):
            pairs = list(zip(r.closed.get((a, level), []), r.closed.get((b, level), []), strict=False))
            if pairs:
                parts.append(f"{a}/{b} {median([x.rate / y.rate for x, y in pairs if y.rate]):.2f}")
        lines.append(f"  c={level}: " + ", ".join(parts))
    return "\n".join(lines)


def _open(s: Settings, r: Results, groups: Sequence[str]) -> str:
    rows = []
    for (target, rate), stats in sorted(r.open.items(), key=lambda kv: (-kv[0][1], TARGETS.index(kv[0][0]))):
        rows.append([LABELS[target], f"{rate:,.0f}", f"{median([st.rate for st in stats]):,.0f}",
                     f"{median([st.p50 for st in stats]):.2f}", f"{median([st.p90 for st in stats]):.2f}",
                     f"{median([st.p99 for st in stats]):.2f}", f"{median([st.max for st in stats]):.2f}",
                     str(sum(st.errors for st in stats)), str(sum(st.dropped for st in stats)),
                     *_cpu(stats, groups)])
    lines = [f"Open loop: {s.reps} x {s.open_duration:g} s per cell; latency from each request's scheduled send "
             "time; 'unsent' = given up, the server being too far behind",
             table(["target", "rate/s", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "unsent",
                    *[f"CPU {g}" for g in groups]], rows)]
    for rate in sorted({rate for _, rate in r.open}, reverse=True):
        for name, (p50s, p99s) in added_latency(r, rate).items():
            lines.append(f"at {rate:,.0f}/s, {name} adds over the direct stub: p50 {median(p50s):+.2f} ms, p99 "
                         f"{median(p99s):+.2f} ms (p99 per repetition: {', '.join(f'{x:+.2f}' for x in p99s)})")
    return "\n".join(lines)


def added_latency(r: Results, rate: float) -> dict[str, tuple[list[float], list[float]]]:
    """Per repetition, target minus direct stub, at p50 and p99."""
    added = {}
    stub = r.open.get(("stub", rate), [])
    for name in ("broker", "nginx", "floor"):
        pairs = list(zip(r.open.get((name, rate), []), stub, strict=False))
        if pairs:
            added[name] = ([b.p50 - st.p50 for b, st in pairs], [b.p99 - st.p99 for b, st in pairs])
    return added


def obstacles(stack: Stack, s: Settings, r: Results) -> str:
    """What stands in the way of the targets, in this run's own figures."""
    lines = [f"What stands in the way of the targets (3,000 exchanges/s on 2 cores; p99 added <= 5 ms at "
             f"{s.rate:,.0f}/s)"]
    level, rate = max(((lv, median([st.rate for st in r.closed.get(("broker", lv), [])])) for lv in s.levels),
                      key=lambda x: x[1])
    stats = r.closed.get(("broker", level), [])
    if not stats:
        return "\n".join(lines)
    cpu = {g: median([st.cpu_ms(g) for st in stats]) for g in ("broker", "postgres", "stub", "loadgen")}
    kernel = median([st.cpu.kernel.get("broker", 0.0) / max(1e-9, st.cpu.by_group.get("broker", 0.0))
                     for st in stats])
    cores = os.cpu_count() or 1
    total = sum(cpu.values())
    budget = 1000 * cores / TARGET_RATE
    lines += [
        f"* Throughput: at best {rate:,.0f} exchanges/s (c={level}), {rate / TARGET_RATE:.0%} of {TARGET_RATE:,.0f}.",
        f"  - The broker spends {cpu['broker']:.2f} ms of CPU per exchange ({kernel:.0%} of it in the kernel, "
        f"mostly loopback TCP sends), in {s.brokers} process(es) with one event loop each: "
        f"{1000 / cpu['broker']:,.0f}/s per fully used core at best; it used "
        f"{median([st.cores('broker') for st in stats]):.2f} cores here.",
        f"  - The whole machine spends {total:.2f} ms of CPU per exchange: broker {cpu['broker']:.2f}, PostgreSQL "
        f"{cpu['postgres']:.2f}, provider stub {cpu['stub']:.2f}, load generator {cpu['loadgen']:.2f}. On "
        f"{cores} cores that caps the rate at {1000 * cores / total:,.0f}/s; {TARGET_RATE:,.0f}/s needs "
        f"<= {budget:.2f} ms in total, i.e. a {total / budget:.1f}x cut, and the stub and PostgreSQL alone "
        f"take {cpu['stub'] + cpu['postgres']:.2f} ms of it.",
    ]
    stub_stats = r.closed.get(("stub", level), [])
    if stub_stats:
        lines.append(f"  - Without the broker, the stub answers {median([st.rate for st in stub_stats]):,.0f}/s "
                     f"at c={level} on the same machine: the stub is not what limits the broker's rate.")
    wait = median([st.wait_ms("broker") for st in stats])
    lines.append(f"  - Sharing {cores} cores with PostgreSQL, the stub, the load generator (and other people's work, "
                 f"{median([st.others for st in stats]):.2f} cores here), the broker waited {wait:.2f} ms per "
                 "exchange for a CPU while runnable.")
    b1, s1 = r.closed.get(("broker", 1), []), r.closed.get(("stub", 1), [])
    if b1 and s1:
        b50, s50 = median([st.p50 for st in b1]), median([st.p50 for st in s1])
        own, waited = median([st.cpu_ms("broker") for st in b1]), median([st.wait_ms("broker") for st in b1])
        lines.append(f"* Latency with nothing queued (c=1): an exchange takes {b50:.2f} ms at p50, the stub alone "
                     f"{s50:.2f} ms. Nothing overlaps at c=1, so roughly: {own:.2f} ms of the broker's own CPU + "
                     f"{waited:.2f} ms waiting for a CPU")
        statements = [v.p50 for k, v in r.db.items() if "as the broker does it" in k]
        if statements:
            lines[-1] += (f" + {sum(statements):.2f} ms in its database statements (nonce claim, access log; "
                          "probe p50 below)")
        lines[-1] += f" + {s50:.2f} ms for the stub = {own + waited + sum(statements) + s50:.2f} ms."
        flushed, unflushed = r.db.get(profiling.NONCE_BARE), r.db.get(profiling.NONCE_ASYNC)
        pooled, bare = r.db.get(profiling.SELECT_POOL), r.db.get(profiling.SELECT_BARE)
        if flushed and unflushed and pooled and bare:
            lines.append(f"  - In the database part: the access-log commit waits for its WAL flush (a flush costs "
                         f"about {flushed.p50 - unflushed.p50:.2f} ms by the probe; the claim's commit does not wait "
                         f"for it); a pool acquire and release, which the "
                         f"claim and log writers no longer make per statement (they keep their connection), costs "
                         f"the client side (SELECT 1: {pooled.p50:.2f} ms and {pooled.pg_cpu_us:.0f} us of "
                         f"PostgreSQL CPU pooled, {bare.p50:.2f} ms and {bare.pg_cpu_us:.0f} us bare).")
        f1 = r.closed.get(("floor", 1), [])
        if f1:
            beyond = median([b.p50 - f.p50 for b, f in zip(b1, f1, strict=False)])
            floor_cpu = median([st.cpu_ms("floor") for st in f1])
            lines.append(f"  - The floor (claim, call, durable commit, nothing else) takes "
                         f"{median([st.p50 for st in f1]):.2f} ms at p50 and {floor_cpu:.2f} ms of CPU: the "
                         f"broker's p50 is {beyond:+.2f} ms beyond it.")
    for rate_open in sorted({rt for _, rt in r.open}, reverse=True):
        added = added_latency(r, rate_open).get("broker")
        broker_open = r.open.get(("broker", rate_open), [])
        if not added or not broker_open:
            continue
        p99 = median(added[1])
        achieved = median([st.rate for st in broker_open])
        verdict = "within" if p99 <= TARGET_ADDED_P99_MS else "over"
        broker_cores = median([st.cores("broker") for st in broker_open])
        why = ""
        if achieved < 0.97 * rate_open:
            why = (": its one event loop is saturated" if broker_cores > 0.9 else
                   f": the machine is saturated (broker {broker_cores:.2f}, PostgreSQL "
                   f"{median([st.cores('postgres') for st in broker_open]):.2f}, stub "
                   f"{median([st.cores('stub') for st in broker_open]):.2f}, others "
                   f"{median([st.others for st in broker_open]):.2f} cores)")
            why += "; requests queue, and the added latency is that queue"
        lines.append(f"* Latency at {rate_open:,.0f}/s: the broker adds {p99:+.2f} ms at p99 over the direct stub, "
                     f"{verdict} the {TARGET_ADDED_P99_MS:.0f} ms target; it completed {achieved:,.0f}/s{why}.")
        floor = added_latency(r, rate_open).get("floor")
        if floor:
            beyond = [b - f for b, f in zip(added[1], floor[1], strict=False)]
            lines.append(f"  - The floor (the least code that claims the nonce, calls the upstream and commits the log "
                         f"row durably: benchmarks/floor.py) adds {median(floor[1]):+.2f} ms at p99 (p50 "
                         f"{median(floor[0]):+.2f}): what the guarantees' round trips cost on this machine, "
                         f"{'within' if median(floor[1]) <= TARGET_ADDED_P99_MS else 'over'} the target by themselves; "
                         f"the broker adds {median(beyond):+.2f} ms of p99 beyond it, its own work.")
    if r.profile is not None and r.profile_stats is not None:
        lines.append(f"* Profile ({_profile_load(s)}): " + profiling.headline(r.profile, broker_cpu(r.profile_stats)))
    return "\n".join(lines)


def _cell(stats: Sequence[Stats], groups: Sequence[str]) -> dict[str, object]:
    return {"rate": median([st.rate for st in stats]), "p50_ms": median([st.p50 for st in stats]),
            "p99_ms": median([st.p99 for st in stats]), "errors": sum(st.errors for st in stats),
            "cpu_ms_per_request": {g: median([st.cpu_ms(g) for st in stats]) for g in groups},
            "others_cores": median([st.others for st in stats]), "reps": len(stats),
            "log_commits_per_entry": median(c) if (c := [st.log_commits_per_entry for st in stats
                                                         if st.log_commits_per_entry is not None]) else None,
            "wal_bytes_per_request": median(w) if (w := [st.wal_bytes for st in stats
                                                         if st.wal_bytes is not None]) else None}


def _wal_line(r: Results, s: Settings) -> str:
    cells = [(f"c={level}", r.closed.get(("broker", level), [])) for level in s.levels]
    cells += [(f"{rate:g}/s", stats) for (target, rate), stats in sorted(r.open.items()) if target == "broker"]
    found = [f"{name} {median(w):,.0f} B" for name, stats in cells
             if (w := [st.wal_bytes for st in stats if st.wal_bytes is not None])]
    where = "the benchmark's own server" if s.embedded else "the whole server's: other databases' writes count too"
    return ("WAL per exchange (claim, log entry, evidence, outbox row, its share of a round; " + where + "): "
            + (", ".join(found) if found else "not measured"))


def _ratio(a: Sequence[Stats], b: Sequence[Stats]) -> float | None:
    pairs = [(x, y) for x, y in zip(a, b, strict=False) if y.rate]
    return median([x.rate / y.rate for x, y in pairs]) if pairs else None


def _profile_load(s: Settings) -> str:
    return "closed-loop load at c=16" if s.profile_rate is None else f"an open loop at {s.profile_rate:g}/s"


def figures(stack: Stack, s: Settings, r: Results) -> dict[str, object]:
    """The run's figures for `--json FILE`: medians per target and level, ratios within repetitions."""
    groups = _groups(stack)
    closed: dict[str, dict[str, object]] = {}
    for (target, level), stats in sorted(r.closed.items()):
        cell = _cell(stats, groups)
        if target == "broker":
            cell["ratio_broker_nginx"] = _ratio(stats, r.closed.get(("nginx", level), []))
            cell["ratio_broker_stub"] = _ratio(stats, r.closed.get(("stub", level), []))
        closed.setdefault(target, {})[str(level)] = cell
    opened: dict[str, dict[str, object]] = {}
    for (target, rate), stats in sorted(r.open.items()):
        cell = _cell(stats, groups)
        added = added_latency(r, rate).get(target)
        if added is not None:
            cell["added_p50_ms"], cell["added_p99_ms"] = median(added[0]), median(added[1])
        opened.setdefault(target, {})[f"{rate:g}"] = cell
    out: dict[str, object] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": source_state(),
        "cpus": os.cpu_count(), "brokers": s.brokers, "workers": s.workers, "upstream": s.upstream,
        "subjects": s.subjects, "template": s.template, "reps": s.reps, "machine_busy_before": r.noise_before,
        "closed": closed, "open": opened,
    }
    if r.profile is not None and r.profile_stats is not None:
        cpu = broker_cpu(r.profile_stats)
        out["profile_load"] = _profile_load(s)
        out["profile_us_per_exchange"] = {name: us for name, _, us in profiling.costs(r.profile, cpu)}
        out["profile_families_us"] = dict(profiling.families(profiling.costs(r.profile, cpu)))
    if r.db:
        out["database_statements_ms"] = {name: {"p50": pr.p50, "p99": pr.p99, "pg_cpu_us": pr.pg_cpu_us}
                                          for name, pr in r.db.items()}
    return out
