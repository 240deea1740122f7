"""Quota accuracy across two broker processes: exchanges allowed against the quota configured (issue 13).

    .venv/bin/python benchmarks/quota_accuracy.py                       # 10 windows of 1 s, about a minute
    .venv/bin/python benchmarks/quota_accuracy.py --limit 50 --window 1 --windows 10 --rate 150 --concurrency 32

Starts the API Particulier sandbox and two `python -m broker serve` processes on one fresh database (on the
PostgreSQL at --admin-url, dropped at the end), with a consumer whose quota is --limit exchanges per --window
seconds. From a window boundary on, for --windows windows, it sends signed exchanges at about --rate a second (at
most --concurrency in flight), alternately to each broker, during the first 70% of each window only, so that each
exchange is counted in the window the access log gives it (the count of those that were not is printed), enough to
saturate every window. It prints, per window (from the access log), the exchanges allowed and refused for the
quota, and the total allowed against --windows x --limit (broker/service/quotas.py counts exactly, in one row per
scope that every process increments: this checks it under concurrent load from two processes).
It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
SENDING = 0.7  # of each window
sys.path.insert(0, str(ROOT))

import procs  # noqa: E402

from broker.consumer.client import BrokerClient, BrokerProblem  # noqa: E402
from tests.broker_harness import pivot  # noqa: E402
from tests.factories import CONSUMER, PURPOSE, TOKEN_ENV, consumer, registry_toml  # noqa: E402


async def counted(dsn: str, window: int) -> tuple[dict[int, tuple[int, int]], int]:
    """Allowed and refused exchanges per window, by the time each began; and how many ended in another window."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT floor(extract(epoch FROM logged_at) / $1)::bigint AS w, "
            "count(*) FILTER (WHERE outcome = 'released') AS allowed, "
            "count(*) FILTER (WHERE problem_type LIKE '%/quota-exceeded') AS refused "
            "FROM access_log GROUP BY 1 ORDER BY 1", window)
        straddling = await conn.fetchval(
            "SELECT count(*) FROM access_log WHERE floor(extract(epoch FROM logged_at) / $1) <> "
            "floor((extract(epoch FROM logged_at) + latency_ms / 1000) / $1)", window)
    finally:
        await conn.close()
    return {r["w"]: (r["allowed"], r["refused"]) for r in rows}, straddling


async def load(urls: list[str], key: object, *, start: float, windows: int, window: float, rate: float,
               concurrency: int) -> collections.Counter[int]:
    statuses: collections.Counter[int] = collections.Counter()
    slots = asyncio.Semaphore(concurrency)
    subject = pivot("dupont-marie-claire")
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(BrokerClient(u, key=key)) for u in urls]  # type: ignore[arg-type]
        for c in clients:
            await c.broker_keys()

        async def one(client: BrokerClient) -> None:
            async with slots:
                try:
                    await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=CONSUMER,
                                          fields=["quotient_familial"], subject=subject)
                    status = 200
                except BrokerProblem as exc:
                    status = exc.status
            statuses[status] += 1

        tasks = []
        n = 0
        for w in range(windows):
            # the first 70% of each window only: every exchange then begins and ends in the window it is counted
            # in, so the access log attributes each to its window exactly (the check is printed)
            begin, stop = start + w * window, start + (w + SENDING) * window
            await asyncio.sleep(max(0.0, begin - time.time()))
            sent = 0
            while time.time() < stop:
                tasks.append(asyncio.create_task(one(clients[n % len(clients)])))
                n, sent = n + 1, sent + 1
                await asyncio.sleep(max(0.0, begin + sent / rate - time.time()))
        await asyncio.gather(*tasks)
    return statuses


def run(args: argparse.Namespace) -> None:
    token = secrets.token_urlsafe(16)
    paris = consumer()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLNUF_") and k != "DATABASE_URL"}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlnuf-quota-")))
        sandbox_port = procs.free_port()
        sandbox = procs.start(stack, "sandbox", [sys.executable, "-m", "adapters.sandbox", "--port", str(sandbox_port)],
                              env={**env, "DLNUF_SANDBOX_TOKEN": token}, log=tmp / "sandbox.log", cwd=ROOT)
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        procs.wait_http(sandbox, sandbox_url + "/", ok=lambda st: st == 404)
        dsn = procs.create_database(stack, args.admin_url, f"dlnuf_quota_{uuid.uuid4().hex[:10]}")
        registry = tmp / "registry.toml"
        quota = f"quota = {{ limit = {args.limit}, window = {args.window} }}"
        registry.write_text(registry_toml([paris], provider_url=sandbox_url, timeout=5.0).replace(
            'roles = ["consumer"]', f'roles = ["consumer"]\n{quota}'))
        # one log for both processes, whatever their addresses
        env.update({"DATABASE_URL": dsn, "DLNUF_STATE_DIR": str(tmp / "state"), "DLNUF_LOG_FORMAT": "json",
                    "DLNUF_REGISTRY_FILE": str(registry), TOKEN_ENV: token, "DLNUF_LOG_ORIGIN": "bench.dlnuf/log"})
        urls = []
        for i in range(2):
            port = procs.free_port()
            url = f"http://127.0.0.1:{port}"
            broker = procs.start(stack, f"broker #{i + 1}",
                                 [sys.executable, "-m", "broker", "serve", "--port", str(port)],
                                 env={**env, "DLNUF_PUBLIC_URL": url, **procs.SUPERUSER_OK},
                                 log=tmp / f"broker-{i + 1}.log", cwd=ROOT)
            procs.wait_http(broker, url + "/readyz", ok=lambda st: st == 200)
            urls.append(url)
        # start on a window boundary (the brokers count on the database's clock, the same machine's here)
        start = (time.time() // args.window + 1) * args.window
        time.sleep(start - time.time())
        statuses = asyncio.run(load(urls, paris.key, start=start, windows=args.windows, window=args.window,
                                    rate=args.rate, concurrency=args.concurrency))
        per_window, straddling = asyncio.run(counted(dsn, args.window))

    first = int(start // args.window)
    print(f"quota {args.limit} per {args.window:g} s, two broker processes, ~{args.rate:g} requests/s alternately "
          f"to each, c<={args.concurrency}, {args.windows} windows")
    print(f"answers: {', '.join(f'{n:,} x {s}' for s, n in sorted(statuses.items()))}")
    print("per window, as the brokers logged them (access log, by the time each exchange began):")
    print(f"{'window':>7}{'allowed':>9}{'refused':>9}")
    total = 0
    for w in range(first, first + args.windows):
        allowed, refused = per_window.get(w, (0, 0))
        total += allowed
        print(f"{w - first:>7}{allowed:>9}{refused:>9}")
    configured = args.windows * args.limit
    print(f"allowed {total} against {configured} configured ({total - configured:+d}, "
          f"{100 * (total - configured) / configured:+.1f}%); exchanges that ended in another window than they "
          f"began (so possibly counted there): {straddling}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--rate", type=float, default=150.0)
    p.add_argument("--concurrency", type=int, default=32)
    run(p.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
