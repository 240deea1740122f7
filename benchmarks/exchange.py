"""Baseline benchmark of the exchange spine: the broker's whole pipeline against the provider it calls.

    .venv/bin/python benchmarks/exchange.py            # about 4 minutes
    .venv/bin/python benchmarks/exchange.py --quick    # about 1 minute: one repetition, shorter windows
    make bench                                         # the first line (BENCH_ARGS="--quick" passes options)

Starts, as separate processes on 127.0.0.1 (see stack.py): the API Particulier sandbox as the provider stub,
nginx proxying to it, a fresh database (on the PostgreSQL at --admin-url, dropped at the end; or the broker's
embedded one with --embedded, in memory with --tmpfs), and the broker (`python -m broker serve`) with a registry
written for the run: a consumer key generated now, a habilitation for quotient_familial. Then, from load generator
processes that sign every broker request with its own RFC 9421 signature (loadgen.py), it measures in one run,
repetitions interleaved so that slow drifts of a shared machine hit every target alike:

1. the load generator's ceiling: signing alone, sending to a trivial loopback server pre-signed and inline;
2. closed loop at a few concurrency levels: requests/s, p50, p99 and CPU per request of every process, for the
   broker, the stub called directly (the very request the broker's adapter sends), the stub through nginx, and
   the floor (floor.py: the least code that claims a nonce, calls the stub and commits a log row durably);
3. open loop at a fixed rate (--rate, 200/s), and at half the broker's measured capacity when that is below 80 %
   of it: p50, p99, and the p99 the broker adds over the direct stub;
4. a py-spy profile of the broker under load, folded into costs per exchange (profiling.py), and the database
   statements an exchange waits for.

It ends with what stands between these figures and the targets (3,000 exchanges/s on 2 cores; at most 5 ms of
added p99 at 1,000/s). Needs: PostgreSQL on 127.0.0.1:5432 (or --embedded); nginx (`apt-get install nginx`, its
service need not run); py-spy for the profile (`.venv/bin/pip install py-spy`, else the profile is skipped).
Nothing here asserts on time: it prints figures, it does not pass or fail on them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import floor
import procs
import profiling
import report
import stack
from report import LABELS, TARGETS
from runner import Bench, LoadGenerators, Results, Stats, median
from stack import PYTHON, Settings


def subjects_of(args: argparse.Namespace) -> int:
    """--subjects, or its default: a population with the fast upstream, the sandbox's one citizen without it."""
    if args.subjects is not None:
        return int(args.subjects)
    return stack.POPULATION if args.upstream == "fast" else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/exchange.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one repetition, 2 s windows (about a minute)")
    p.add_argument("--levels", default="1,8,32", help="closed-loop concurrency levels (default: %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of every cell (default: %(default)s)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per closed-loop cell (default: 3)")
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s (default: %(default)s)")
    p.add_argument("--open-duration", type=float, default=4.0, help="seconds per open-loop cell (default: 4)")
    p.add_argument("--loadgen-procs", type=int, default=1, help="load generator processes (default: 1)")
    p.add_argument("--brokers", type=int, default=1,
                   help="broker processes, each on its own port, sharing the database; the load generator "
                        "spreads its connections over them (default: 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="`serve --workers N` for each broker: N processes on one port (default: %(default)s)")
    p.add_argument("--upstream", choices=["fast", "python"], default="fast",
                   help="the provider the broker calls: 'fast' = nginx serving the Python stub's recorded answer "
                        "(the broker's own cost shows), 'python' = the Python sandbox (default: %(default)s)")
    p.add_argument("--subjects", type=int, metavar="N",
                   help="citizens asked about, one at random per exchange, as a broker serving a population is "
                        f"(default: {stack.POPULATION:,} with the fast upstream; 1, the sandbox's own, with --upstream "
                        "python, every entry then on one page of the journal's index)")
    p.add_argument("--template", metavar="DB",
                   help="the run's database a copy of DB on --admin-url's server (entry_ids.py --make-template: a "
                        "large month of entries)")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="also write the figures as JSON: per target and level req/s, p50, p99, CPU ms per request "
                        "per process group, ratio broker/nginx")
    p.add_argument("--basis", choices=["information", "proactive"], default="information",
                   help="legal basis of the habilitation; 'proactive' adds the objection lookup (default: "
                        "%(default)s)")
    p.add_argument("--embedded", action="store_true", help="use the broker's embedded PostgreSQL")
    p.add_argument("--tmpfs", action="store_true",
                   help="the embedded PostgreSQL (implies --embedded) with its data in /dev/shm: WAL flushes wait "
                        "for no disk, so the figures are the broker's own and its round trips' (never a deployment)")
    p.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"),
                   help="PostgreSQL on which the run's database is created and dropped (default: %(default)s, "
                        "or BENCH_ADMIN_DATABASE_URL)")
    p.add_argument("--database-url", help="serve from this existing database, used as it is and kept (e.g. a "
                   "prefilled log: benchmarks/large_log.py); default: a fresh one, dropped at the end")
    p.add_argument("--no-nginx", action="store_true", help="leave out the nginx target")
    p.add_argument("--no-floor", action="store_true",
                   help="leave out the floor target (benchmarks/floor.py: the least code that claims, calls and "
                        "commits durably)")
    p.add_argument("--broker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a DLNUF_* setting for the broker processes, e.g. DLNUF_EVENT_LOOP=uvloop (repeatable)")
    p.add_argument("--no-profile", action="store_true", help="leave out the py-spy profile")
    p.add_argument("--profile-seconds", type=float, default=8.0, help="py-spy sampling time (default: 8)")
    p.add_argument("--profile-rate", type=float, default=None, metavar="R",
                   help="profile under the open loop at R requests/s instead of the closed loop at c=16: where the "
                        "CPU goes at low load, where an exchange's steps run colder (take --profile-seconds 20 or "
                        "more: the broker is busy a fraction of the time)")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep the temporary directory: process logs, registry, nginx.conf, py-spy output")
    p.add_argument("--output", type=Path, help="also write the report to this file")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """Checked settings, or `SetupError` saying what is missing and how to get it."""
    problems = []
    nginx = None
    if not args.no_nginx:
        nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
        if nginx is None:
            problems.append("nginx is not installed. Install it with `sudo apt-get install nginx` (Debian, "
                            "Ubuntu; this script runs its own nginx with its own configuration, the system service "
                            "need not run), or leave it out with --no-nginx.")
    pyspy = None
    if not args.no_profile:
        pyspy = shutil.which("py-spy", path=f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        if pyspy is None:
            print("note: py-spy not found, the profile will be skipped (install it: .venv/bin/pip install py-spy)",
                  file=sys.stderr)
    levels = tuple(int(x) for x in args.levels.split(",") if x.strip())
    if not levels or min(levels) < 1 or max(levels) > 512:
        problems.append("--levels: concurrency levels between 1 and 512")
    if not 1 <= args.reps <= 20:
        problems.append("--reps: between 1 and 20")
    if not 1 <= args.loadgen_procs <= 8 or not 1 <= args.brokers <= 8 or not 1 <= args.workers <= 8:
        problems.append("--loadgen-procs, --brokers, --workers: between 1 and 8")
    if args.upstream == "fast" and nginx is None:
        problems.append("--upstream fast is nginx serving the recorded answer: it needs nginx, which --no-nginx "
                        "leaves out (with --no-nginx use --upstream python; without nginx, install it)")
    if not 10 <= args.rate <= 20_000:
        problems.append("--rate: between 10 and 20,000")
    subjects = subjects_of(args)
    if not 1 <= subjects <= 200_000:  # every cell sends the load generator the bodies: 65 MB at the top
        problems.append("--subjects: between 1 and 200,000")
    if subjects > 1 and args.upstream != "fast":
        problems.append("--subjects above 1 needs --upstream fast: the Python sandbox knows one citizen")
    if args.template and (args.embedded or args.tmpfs or args.database_url):
        problems.append("--template copies a database of --admin-url's server: not with --embedded, --tmpfs or "
                        "--database-url")
    if args.profile_rate is not None and not 10 <= args.profile_rate <= 20_000:
        problems.append("--profile-rate: between 10 and 20,000")
    if problems:
        raise procs.SetupError("\n".join(f"  - {p}" for p in problems))

    def clamp(x: float, low: float, high: float) -> float:
        return max(low, min(high, x))

    quick = args.quick
    return Settings(
        levels=levels, reps=1 if quick else args.reps, warmup=0.5,
        duration=2.0 if quick else clamp(args.duration, 1.0, 30.0), rate=args.rate,
        open_duration=2.0 if quick else clamp(args.open_duration, 1.0, 30.0), open_connections=64,
        loadgen_procs=args.loadgen_procs, brokers=args.brokers, basis=args.basis,
        embedded=args.embedded or args.tmpfs, tmpfs=args.tmpfs,
        admin_url=args.admin_url, nginx=nginx, pyspy=pyspy,
        profile_seconds=4.0 if quick else clamp(args.profile_seconds, 2.0, 60.0), keep_workdir=args.keep_workdir,
        profile_rate=args.profile_rate,
        workers=args.workers, upstream=args.upstream, database_url=args.database_url, subjects=subjects,
        template=args.template,
        broker_env=tuple(tuple(kv.split("=", 1)) for kv in args.broker_env if kv.startswith("DLNUF_") and "=" in kv),
    )


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def describe(st: Stats) -> str:
    flags = (f", {st.errors} errors" if st.errors else "") + (", batch ran out" if st.exhausted else "") + (
        f", {st.dropped} unsent" if st.dropped else "")
    return (f"{st.rate:8,.0f}/s  p50 {st.p50:7.2f} ms  p99 {st.p99:8.2f} ms  (n={st.count}{flags}; "
            f"others {st.others:.2f} cores)")


def rotate(items: Sequence[str], k: int) -> list[str]:
    k %= len(items)
    return [*items[k:], *items[:k]]


def measure(bench: Bench, s: Settings, r: Results) -> None:
    targets = [t for t in TARGETS if (t != "nginx" or bench.stack.nginx is not None)
               and (t != "floor" or t in bench.stack.extra_targets)]

    progress("\n== load generator ceiling")
    r.sign_rate = bench.signing_rate(1.0 if s.reps == 1 else 2.0)
    progress(f"  signing alone, one process: {r.sign_rate:,.0f} signed requests/s")
    for name, inline in (("presigned", False), ("inline", True)):
        r.ceiling[name] = st = bench.closed("trivial", 32, duration=min(3.0, s.duration), inline_sign=inline)
        progress(f"  trivial server, c=32, {name:9s} {describe(st)}")
    r.ceiling["open"] = st = bench.open("trivial", s.rate, duration=min(3.0, s.open_duration))
    progress(f"  trivial server, open loop at {s.rate:,.0f}/s {describe(st)}")

    progress(f"\n== closed loop: {s.reps} x {s.duration:g} s per cell, repetitions interleaved")
    for rep in range(s.reps):
        for level in s.levels:
            for target in rotate(targets, rep + level):
                st = bench.closed(target, level)
                r.closed.setdefault((target, level), []).append(st)
                progress(f"  rep {rep + 1} {LABELS[target]:27s} c={level:<3d} {describe(st)}")

    capacity = max(median([st.rate for st in r.closed.get(("broker", lv), [])]) for lv in s.levels)
    r.sustainable_rate = max(20.0, round(capacity / 2, -1))
    rates = [s.rate] + ([r.sustainable_rate] if r.sustainable_rate < 0.8 * s.rate else [])
    progress(f"\n== open loop at {' and '.join(f'{x:,.0f}/s' for x in rates)}: {s.reps} x {s.open_duration:g} s "
             "per cell, repetitions interleaved")
    for rep in range(s.reps):
        for rate in rates:
            for target in rotate(targets if rate == s.rate else ["broker", "stub"], rep):
                st = bench.open(target, rate)
                r.open.setdefault((target, rate), []).append(st)
                progress(f"  rep {rep + 1} {LABELS[target]:27s} {rate:6,.0f}/s {describe(st)}")

    if s.pyspy is not None:
        broker = bench.stack.brokers[0]
        load = "closed loop c=16" if s.profile_rate is None else f"open loop at {s.profile_rate:g}/s"
        progress(f"\n== profile: py-spy on broker #1 (pid {broker.pid}), {load}, {s.profile_seconds:g} s")
        recorder = profiling.PySpy(s.pyspy, broker.pid, bench.stack.workdir / "pyspy.txt",
                                   seconds=s.profile_seconds, subprocesses=s.workers > 1)
        try:
            if s.profile_rate is None:
                r.profile_stats = st = bench.closed("broker", 16, duration=s.profile_seconds,
                                                    on_ready=recorder.start)
            else:
                r.profile_stats = st = bench.open("broker", s.profile_rate, duration=s.profile_seconds,
                                                  on_ready=recorder.start)
        finally:
            raw = recorder.finish()
        progress(f"  under py-spy: {describe(st)}")
        if raw is not None:
            r.profile = profiling.fold(raw)
        else:
            progress(f"  py-spy failed, no profile: {recorder.error}")

    progress("\n== database statements (the broker's own, from a separate connection, load stopped)")
    r.db = profiling.probe_database(bench.stack.db_dsn, report.PROBES)
    for name, pr in r.db.items():
        progress(f"  {name:62s} p50 {pr.p50:6.3f} ms  p99 {pr.p99:6.3f} ms  PostgreSQL CPU {pr.pg_cpu_us:5.0f} us")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        s = settings_from(args)
    except procs.SetupError as exc:
        print(f"cannot run the benchmark:\n{exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    results = Results()
    busy = procs.machine_busy()
    time.sleep(1.0)
    results.noise_before = procs.machine_busy() - busy
    progress(f"machine busy before the run: {results.noise_before:.2f} cores")
    status = 0
    with procs.sigterm_as_interrupt():
        es = contextlib.ExitStack()
        try:
            st = stack.build(es, s)
            results.smoke = stack.smoke_test(st)
            if not args.no_floor:
                floor.start_floor(es, st)
            progress(f"smoke test: {results.smoke}")
            measure(Bench(st, s, LoadGenerators(es, s.loadgen_procs)), s, results)
            text = report.report(st, s, results)
            print("\n" + text, flush=True)
            if args.output is not None:
                args.output.write_text(text + "\n")
            if args.json is not None:
                args.json.write_text(json.dumps(report.figures(st, s, results), indent=2) + "\n")
                progress(f"figures written to {args.json}")
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            status = 130
        except procs.SetupError as exc:
            print(f"\nsetup failed: {exc}", file=sys.stderr)
            status = 2
        finally:
            progress("stopping every process this run started, dropping its database")
            with procs.ignoring_interrupts():
                es.close()
    progress(f"done in {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
