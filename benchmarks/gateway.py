"""What the consumer gateway costs: the same exchange sent by the Python SDK straight to the broker, and as plain JSON
through the gateway, side by side.

    .venv/bin/python benchmarks/gateway.py              # about a minute
    .venv/bin/python benchmarks/gateway.py --reps 5 --sequential 300 --window 5

It starts, on 127.0.0.1, the API Particulier sandbox, one broker (`python -m broker serve`) on a fresh database,
and one gateway (`python -m broker gateway`) whose record is on another fresh database, with the broker's keys
pinned. Then, per repetition, in rotating order:

- sequential: `--sequential` exchanges one after the other (closed loop, one at a time): latency p50 and p99 as the
  form service sees it (for the SDK: signing and verifying in this process; through the gateway: an HTTP hop, the
  signature, two writes to the record, the verification of the signature and of the log's promise);
- concurrent: `--concurrency` exchanges in flight for `--window` seconds: exchanges/s, and the CPU the broker and
  the gateway processes spent per exchange.

Figures are medians over repetitions; each ratio is taken within a repetition, then its median. The machine is
shared: "others" is the CPU the rest of the machine used meanwhile, the noise. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import procs
import stack

from broker.consumer.client import BrokerClient
from broker.signing.keys import PrivateKey, generate_private_key

HOST = "127.0.0.1"
Send = Callable[[], Awaitable[None]]


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(send: Send, n: int) -> tuple[float, float]:
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        await send()
        latencies.append(time.perf_counter() - t0)
    return _quantile(latencies, 0.5) * 1000, _quantile(latencies, 0.99) * 1000


async def _concurrent(send: Send, concurrency: int, window: float) -> int:
    done = 0
    deadline = time.monotonic() + window

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await send()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def _measure(args: argparse.Namespace, key: PrivateKey, broker_url: str, gateway_url: str,
                   meter: procs.CpuMeter) -> None:
    body = json.loads(stack.exchange_body())
    raw = json.dumps(body).encode()
    results: dict[str, dict[str, list[float]]] = {"sdk": {}, "gateway": {}}
    async with BrokerClient(broker_url, key=key) as sdk, aiohttp.ClientSession() as session:

        async def via_sdk() -> None:
            await sdk.exchange(**body)

        async def via_gateway() -> None:
            async with session.post(gateway_url + "/v1/exchanges", data=raw,
                                    headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                if resp.status != 200 or resp.headers.get("DLNUF-Inclusion-Promise") != "verified":
                    raise RuntimeError(f"the gateway answered {resp.status}")

        sends: dict[str, Send] = {"sdk": via_sdk, "gateway": via_gateway}
        for send in sends.values():  # warm up: keys fetched, connections open, caches filled
            for _ in range(20):
                await send()
        for rep in range(args.reps):
            order = list(sends)[rep % 2:] + list(sends)[:rep % 2]
            for name in order:
                p50, p99 = await _sequential(sends[name], args.sequential)
                meter.start()
                count = await _concurrent(sends[name], args.concurrency, args.window)
                usage = meter.stop()
                r = results[name]
                for metric, value in (("p50", p50), ("p99", p99), ("rate", count / usage.wall),
                                      ("broker_ms", usage.by_group["broker"] * 1000 / count),
                                      ("gateway_ms", usage.by_group["gateway"] * 1000 / count),
                                      ("client_ms", usage.by_group["client"] * 1000 / count),
                                      ("others", usage.others / usage.wall)):
                    r.setdefault(metric, []).append(value)
            print(f"  repetition {rep + 1}/{args.reps} done", file=sys.stderr)

    def med(name: str, metric: str) -> float:
        return statistics.median(results[name][metric])

    def ratio(metric: str) -> float:
        return statistics.median(g / s for g, s in zip(results["gateway"][metric], results["sdk"][metric],
                                                       strict=True))

    print(f"\nquotient_familial exchanges, {args.reps} repetitions, medians "
          f"(sequential: {args.sequential} one at a time; concurrent: {args.concurrency} in flight, {args.window:g} s)")
    print(f"{'':28}{'SDK, direct':>14}{'via gateway':>14}{'gateway/SDK':>14}")
    rows = [("sequential p50 (ms)", "p50", "{:.2f}"), ("sequential p99 (ms)", "p99", "{:.2f}"),
            ("concurrent exchanges/s", "rate", "{:.0f}"), ("broker CPU ms / exchange", "broker_ms", "{:.2f}"),
            ("gateway CPU ms / exchange", "gateway_ms", "{:.2f}"), ("client CPU ms / exchange", "client_ms", "{:.2f}")]
    for label, metric, fmt in rows:
        ratio_text = f"{ratio(metric):.2f}" if metric not in ("gateway_ms",) else "-"
        print(f"{label:28}{fmt.format(med('sdk', metric)):>14}{fmt.format(med('gateway', metric)):>14}"
              f"{ratio_text:>14}")
    print(f"{'others (cores busy)':28}{med('sdk', 'others'):>14.2f}{med('gateway', 'others'):>14.2f}")
    added = statistics.median(g - s for g, s in zip(results["gateway"]["p50"], results["sdk"]["p50"], strict=True))
    print(f"\nlatency the gateway adds at p50: {added:.2f} ms (median of per-repetition differences)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--window", type=float, default=3.0)
    args = parser.parse_args()

    with contextlib.ExitStack() as es:
        workdir = Path(tempfile.mkdtemp(prefix="dlnuf-gateway-bench-"))
        es.callback(shutil.rmtree, workdir, ignore_errors=True)
        key = generate_private_key("ed25519", kid=f"bench-{secrets.token_hex(4)}")
        token = secrets.token_urlsafe(24)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLNUF_") and k != "DATABASE_URL"}
        env["PYTHONPATH"] = str(stack.ROOT)

        stub_port = procs.free_port()
        stub = procs.start(es, "provider stub", [stack.PYTHON, "-m", "adapters.sandbox", "--host", HOST, "--port",
                                                 str(stub_port)],
                           env={**env, "DLNUF_SANDBOX_TOKEN": token}, log=workdir / "stub.log", cwd=stack.ROOT)
        procs.wait_http(stub, f"http://{HOST}:{stub_port}/", ok=lambda st: st == 404)

        suffix = f"{os.getpid()}_{secrets.token_hex(3)}"
        registry = workdir / "registry.toml"
        registry.write_text(stack.registry_toml(key, f"http://{HOST}:{stub_port}", "information"))
        broker_port = procs.free_port()
        # DLNUF_PUBLIC_URL is required to serve; the quota is far above this load, so it counts and never refuses
        broker_env = {**env, "DLNUF_STATE_DIR": str(workdir / "state"), "DLNUF_LOG_FORMAT": "json",
                      stack.TOKEN_ENV: token, "DLNUF_REGISTRY_FILE": str(registry),
                      "DLNUF_PUBLIC_URL": f"http://{HOST}:{broker_port}", "DLNUF_QUOTA_DEFAULT": "10000000/60",
                      **procs.SUPERUSER_OK,
                      "DATABASE_URL": procs.create_database(es, args.admin_url, f"dlnuf_gwbench_b_{suffix}")}
        broker = procs.start(es, "broker", [stack.PYTHON, "-m", "broker", "serve", "--host", HOST, "--port",
                                            str(broker_port)], env=broker_env, log=workdir / "broker.log",
                             cwd=stack.ROOT)
        broker_url = f"http://{HOST}:{broker_port}"
        procs.wait_http(broker, broker_url + "/readyz", ok=lambda st: st == 200, timeout=120)

        # the gateway, with the broker's keys pinned, as in production
        key_file, jwks_file = workdir / "consumer.jwk", workdir / "broker-jwks.json"
        key_file.write_text(json.dumps(key.to_jwk()))
        import urllib.request

        with urllib.request.urlopen(broker_url + "/.well-known/jwks.json") as resp:  # noqa: S310 - loopback
            jwks_file.write_bytes(resp.read())
        with urllib.request.urlopen(broker_url + "/v1/log") as resp:  # noqa: S310 - loopback
            log_key = json.loads(resp.read())["verifier_key"]
        gateway_port = procs.free_port()
        gateway = procs.start(es, "gateway", [stack.PYTHON, "-m", "broker", "gateway"], env={
            **env, "DLNUF_GATEWAY_BROKER_URL": broker_url, "DLNUF_GATEWAY_SIRET": stack.CONSUMER_SIRET,
            "DLNUF_GATEWAY_KEY": str(key_file), "DLNUF_GATEWAY_PORT": str(gateway_port),
            "DLNUF_GATEWAY_BROKER_JWKS": str(jwks_file), "DLNUF_GATEWAY_LOG_KEY": log_key,
            "DLNUF_GATEWAY_DATABASE_URL": procs.create_database(es, args.admin_url, f"dlnuf_gwbench_g_{suffix}"),
            "DLNUF_LOG_FORMAT": "json"}, log=workdir / "gateway.log", cwd=stack.ROOT)
        gateway_url = f"http://{HOST}:{gateway_port}"
        procs.wait_http(gateway, gateway_url + "/readyz", ok=lambda st: st == 200, timeout=120)

        meter = procs.CpuMeter({"broker": broker.pids, "gateway": gateway.pids, "client": lambda: [os.getpid()]})
        asyncio.run(_measure(args, key, broker_url, gateway_url, meter))
    return 0


if __name__ == "__main__":
    sys.exit(main())
