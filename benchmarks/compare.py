"""Two versions of the broker side by side in one run: which is faster, measured so that the machine's drift hits both.

    .venv/bin/python benchmarks/compare.py bb6f0e5                  # this checkout against a commit
    .venv/bin/python benchmarks/compare.py ../other-checkout --reps 8 --json ab.json
    .venv/bin/python benchmarks/compare.py . --head-env DLNUF_EVENT_LOOP=uvloop      # a setting, this same checkout

On a shared machine two runs of `exchange.py` a few minutes apart differed by up to 2x on the same code (c=1 p50
2.1 then 4.5 ms): comparing a run of each version compares the minutes more than the versions. Here both stacks
(each its own broker, upstream and database, built as `exchange.py` builds them) run at once, idle but for the one
measured, and every cell (closed loop at each level, open loop at `--rate`) is measured on one version then at
once on the other, the order alternating, `--reps` times; halfway, both stacks are built anew in the other order (the
one built second came out slower in an A/A run). Each repetition gives a ratio or a difference taken
within it; the report prints their medians and in how many repetitions the head was ahead. It prints figures and
never fails on them.

BASE is a git revision of this repository (checked out into a temporary worktree, removed at the end) or the path
of another checkout. HEAD is this checkout, as it is on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import procs
import stack
from runner import Bench, LoadGenerators, Stats

HERE = stack.ROOT


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="a git revision of this repository, or the path of another checkout")
    p.add_argument("--levels", default="1,32", help="closed-loop concurrency levels (default: %(default)s)")
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s (default: %(default)s)")
    p.add_argument("--reps", type=int, default=6, help="repetitions of every cell (default: %(default)s)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per closed-loop cell (default: %(default)s)")
    p.add_argument("--open-duration", type=float, default=4.0,
                   help="seconds per open-loop cell (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="`serve --workers N` for both (default: %(default)s)")
    p.add_argument("--head-workers", type=int, metavar="N", help="`serve --workers N` for the head only")
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="PostgreSQL on which both runs' databases are created and dropped (default: %(default)s)")
    p.add_argument("--tmpfs", action="store_true",
                   help="each side on its own embedded PostgreSQL with its data in /dev/shm: no disk waits, so a "
                        "change to the broker's own tail shows (stack.Settings.tmpfs)")
    p.add_argument("--subjects", type=int, default=stack.POPULATION, metavar="N",
                   help="citizens asked about, one at random per exchange (default: %(default)s; 1 as before "
                        "December 2026; see exchange.py)")
    p.add_argument("--template", metavar="DB",
                   help="each run's database a copy of this one on --admin-url (benchmarks/entry_ids.py "
                        "--make-template: a large month of entries, as production's indexes are)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every cell's figures as JSON")
    p.add_argument("--base-env", action="append", default=[], metavar="DLNUF_X=V",
                   help="a broker setting for the base only (repeatable); with BASE = ., compares a setting")
    p.add_argument("--head-env", action="append", default=[], metavar="DLNUF_X=V",
                   help="a broker setting for the head only (repeatable), e.g. DLNUF_EVENT_LOOP=uvloop")
    p.add_argument("--head-python", type=Path, metavar="PYTHON",
                   help="the interpreter that runs the head's broker and sandbox (a virtualenv's bin/python with the "
                        "runtime requirements), e.g. another Python version; default: this one, for both")
    return p.parse_args(argv)


@contextlib.contextmanager
def checkout(base: str) -> Iterator[Path]:
    """The directory of BASE: a path as it is, or a detached worktree of the revision, removed afterwards."""
    path = Path(base)
    if path.is_dir():
        yield path.resolve()
        return
    where = Path(tempfile.mkdtemp(prefix="dlnuf-compare-"))
    subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "--quiet", str(where), base], check=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(where)], check=False)
        shutil.rmtree(where, ignore_errors=True)


def settings_env(pairs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`DLNUF_X=V` pairs; anything else is refused (the broker reads only DLNUF_* settings)."""
    out = []
    for kv in pairs:
        key, eq, value = kv.partition("=")
        if not key.startswith("DLNUF_") or not eq:
            raise SystemExit(f"--base-env/--head-env take DLNUF_NAME=VALUE, not {kv!r}")
        out.append((key, value))
    return tuple(out)


def build(es: contextlib.ExitStack, s: stack.Settings, root: Path, env: tuple[tuple[str, str], ...] = (),
          workers: int | None = None, python: Path | None = None) -> stack.Stack:
    """`stack.build` with the broker and the sandbox run from `root` (PYTHONPATH and working directory) by `python`
    if given, the broker settings `env` on top of the run's, and `workers` in place of the run's if given."""
    saved = stack.ROOT, stack.PYTHON
    stack.ROOT = root
    if python is not None:
        stack.PYTHON = str(python)
    try:
        built = stack.build(es, dataclasses.replace(s, broker_env=s.broker_env + env, workers=workers or s.workers))
        print(f"{root}: {stack.smoke_test(built)}", file=sys.stderr)
        return built
    finally:
        stack.ROOT, stack.PYTHON = saved


def revision(root: Path) -> str:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "broker", "adapters", "consent",
                            "schemas"], capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() or "?") + ("+changes" if dirty else "")


def interpreter(python: Path) -> str:
    """`python`'s version, as the report names the side it runs."""
    try:
        out = subprocess.run([str(python), "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True).stdout.strip()
    except OSError:
        out = ""
    return f"Python {out or '?'}"


def template_month(admin_url: str, template: str) -> str | None:
    """Why `template` would not show a large month's indexes (its entries are of another month, or it has none),
    or None."""

    async def latest() -> datetime | None:
        conn = await asyncpg.connect(admin_url.rsplit("/", 1)[0] + "/" + template, timeout=10)
        try:
            value: datetime | None = await conn.fetchval("SELECT max(logged_at) FROM access_log")
            return value
        finally:
            await conn.close()

    try:
        last = asyncio.run(latest())
    except (OSError, asyncpg.PostgresError) as exc:
        return f"cannot read the template {template}: {exc}"
    now = datetime.now(UTC)
    if last is None or (last.year, last.month) != (now.year, now.month):
        return (f"the template {template} holds no entry of this month (latest: {last}): the exchanges' month "
                f"starts empty; make it again (entry_ids.py --make-template)")
    return None


def figures(st: Stats) -> dict[str, float | None]:
    return {"rate": st.rate, "p50_ms": st.p50, "p99_ms": st.p99, "errors": st.errors,
            "cpu_broker_ms": st.cpu_ms("broker"), "cpu_postgres_ms": st.cpu_ms("postgres"), "others": st.others,
            "wal_bytes_per_request": st.wal_bytes}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.head_python is not None and not os.access(args.head_python, os.X_OK):
        print(f"--head-python: {args.head_python} is not an executable interpreter", file=sys.stderr)
        return 2
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        print("compare.py needs nginx for the fast upstream (Debian package nginx)", file=sys.stderr)
        return 2
    if not 1 <= args.subjects <= 200_000:
        print("--subjects: between 1 and 200,000", file=sys.stderr)
        return 2
    if args.template and args.tmpfs:
        print("--template copies a database of --admin-url's server: not with --tmpfs", file=sys.stderr)
        return 2
    if args.template and (why := template_month(args.admin_url, args.template)):
        print(f"--template: {why}", file=sys.stderr)  # measured anyway: the other indexes are still large
    if args.head_workers is not None and args.head_workers < 1:
        print("--head-workers must be at least 1", file=sys.stderr)
        return 2
    levels = tuple(int(x) for x in args.levels.split(",") if x.strip())
    s = stack.Settings(levels=levels, reps=args.reps, warmup=0.5, duration=args.duration, rate=args.rate,
                       open_duration=args.open_duration, open_connections=64, loadgen_procs=1, brokers=1,
                       basis="information", embedded=args.tmpfs, tmpfs=args.tmpfs, admin_url=args.admin_url,
                       nginx=nginx, pyspy=None, profile_seconds=0, keep_workdir=False, workers=args.workers,
                       template=args.template, subjects=args.subjects)
    cells: list[tuple[str, Callable[[Bench], Stats]]] = [
        (f"c={lv}", lambda b, lv=lv: b.closed("broker", lv)) for lv in levels]
    cells.append((f"{args.rate:g}/s", lambda b: b.open("broker", args.rate)))
    got: dict[tuple[str, str], list[Stats]] = {}
    es = contextlib.ExitStack()
    try:
        es.enter_context(procs.sigterm_as_interrupt())  # a killed comparison stops its brokers too
        roots = {"base": es.enter_context(checkout(args.base)), "head": HERE}
        envs = {"base": settings_env(args.base_env), "head": settings_env(args.head_env)}
        workers = {"base": None, "head": args.head_workers}
        # absolute, not resolved: the broker starts in ROOT, and resolving a venv's python leaves the venv
        pythons = {"base": None, "head": None if args.head_python is None else args.head_python.absolute()}
        names = {which: revision(root) + "".join(f" {k}={v}" for k, v in envs[which])
                 + (f" --workers {workers[which]}" if workers[which] else "")
                 + (f" {interpreter(pythons[which])}" if pythons[which] else "") for which, root in roots.items()}
        gens = LoadGenerators(es, 1)
        # The stack built second came out slower in an A/A run (HEAD against itself: c=1 p50 +11 %, ahead in 1 of
        # 8), whatever the cause: each half of the repetitions builds the two stacks anew, in the other order.
        for half, first in enumerate(("base", "head")):
            with contextlib.ExitStack() as stacks:
                order = (first, "head" if first == "base" else "base")
                benches = {which: Bench(build(stacks, s, roots[which], envs[which], workers[which],
                                              pythons[which]), s, gens)
                           for which in order}
                for rep in range(half * args.reps // 2, (half + 1) * args.reps // 2 if half == 0 else args.reps):
                    for cell, run in cells:
                        for which in order if rep % 2 == 0 else order[::-1]:
                            st = run(benches[which])
                            got.setdefault((cell, which), []).append(st)
                            print(f"  rep {rep + 1} {cell:8s} {which} {st.rate:8,.0f}/s p50 {st.p50:6.2f} p99 "
                                  f"{st.p99:7.2f} ms broker {st.cpu_ms('broker'):.3f} ms/req", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        with procs.ignoring_interrupts():
            es.close()
    print(report(names, cells, got, args))
    if args.json is not None:
        args.json.write_text(json.dumps({
            "base": names["base"], "head": names["head"], "reps": args.reps, "workers": args.workers,
            "head_workers": args.head_workers or args.workers, "subjects": args.subjects, "template": args.template,
            "cells": {cell: {which: [figures(st) for st in got[(cell, which)]] for which in ("base", "head")}
                      for cell, _ in cells}}, indent=2) + "\n")
    return 0


def report(names: dict[str, str], cells: Sequence[tuple[str, object]], got: dict[tuple[str, str], list[Stats]],
           args: argparse.Namespace) -> str:
    med = statistics.median
    lines = [f"DLNUF compare, {time.strftime('%Y-%m-%d %H:%M:%S')}: base {names['base']} vs head {names['head']}, "
             f"{args.reps} repetitions alternated, --workers {args.workers}, --subjects {args.subjects}"
             + (f", databases copied from {args.template}" if args.template else ""),
             "Medians over repetitions; 'head/base' and 'head-base' are taken within each repetition, then their "
             "median; 'ahead' = repetitions in which the head did better.", ""]
    header = (f"{'cell':8s} {'figure':18s} {'base':>9s} {'head':>9s} {'head/base':>10s} {'head-base':>10s}"
              f" {'ahead':>6s}")
    lines += [header, "-" * len(header)]
    measures: list[tuple[str, Callable[[Stats], float], bool]] = [
        ("req/s", lambda st: st.rate, True), ("p50 ms", lambda st: st.p50, False),
        ("p99 ms", lambda st: st.p99, False), ("CPU broker ms/req", lambda st: st.cpu_ms("broker"), False),
        ("CPU PG ms/req", lambda st: st.cpu_ms("postgres"), False),
        # the whole server's WAL over the cell (the other side is idle meanwhile), its entries' rounds included
        ("WAL bytes/req", lambda st: st.wal_bytes if st.wal_bytes is not None else float("nan"), False)]
    for cell, _ in cells:
        base, head = got[(cell, "base")], got[(cell, "head")]
        for label, value, higher_is_better in measures:
            if label.startswith("WAL") and any(st.wal_bytes is None for st in base + head):
                continue
            pairs = [(value(b), value(h)) for b, h in zip(base, head, strict=True)]
            ahead = sum((h > b) if higher_is_better else (h < b) for b, h in pairs)
            ratio = med([h / b for b, h in pairs if b > 0]) if any(b > 0 for b, _ in pairs) else float("nan")
            lines.append(f"{cell:8s} {label:18s} {med([b for b, _ in pairs]):9.3f} {med([h for _, h in pairs]):9.3f}"
                         f" {ratio:10.3f} {med([h - b for b, h in pairs]):+10.3f} {ahead:>3d}/{len(pairs)}")
        errors = sum(st.errors for st in base + head)
        if errors:
            lines.append(f"{cell:8s} non-200 answers: {errors}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
