"""Where the broker's CPU goes: a py-spy profile folded into pipeline steps, and the database round trips.

py-spy samples the broker's Python stacks from outside (`--nonblocking`: the broker is never paused) and counts
only samples where the thread is running, so a sample's share is a share of the broker's CPU time. Each sample
is charged to ONE step: the deepest frame on its stack that a rule in `STEPS` recognises (so Ed25519 inside
response signing counts as Ed25519, the rest of response signing as response signing). Work done in callbacks of
the event loop (asyncpg's and aiohttp's protocol parsing, resolving futures) has no coroutine on its stack; rules
on the protocol modules catch it.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

_SEND = r"(_SelectorSocketTransport\.write|_SelectorSocketTransport\.writelines|sock_sendall) "


@dataclass(frozen=True)
class Step:
    name: str
    frame: re.Pattern[str]
    within: re.Pattern[str] | None = None  # an ancestor frame must match too


def _step(name: str, frame: str, within: str | None = None) -> Step:
    return Step(name, re.compile(frame), re.compile(within) if within else None)


# Features whose whole cost, whatever they call, is charged to them: any frame of the stack decides.
WHOLE: list[tuple[str, re.Pattern[str]]] = [(name, re.compile(rx)) for name, rx in [
    ("transparency log: inclusion promise (JCS, leaf hash, Ed25519 note)",
     r"TransparencyLog\.(receipt|promise) \(broker/"),
    ("transparency log: background integration (Merkle tree, checkpoint)",
     r"TransparencyLog\.(run|drain|integrate|observe)[ .]"),
    ("other background tasks (nonce purge, registry watch, outbox)", r"(_purge_nonces|RegistryCache\.watch|[Oo]utbox)"),
]]

# Then tried on the deepest frame first, then its caller, and so on; at each frame the first matching rule wins.
# A frame reads "function (package/module.py:line)".
_RESET = r"Connection\.reset \(asyncpg/"
STEPS: list[Step] = [
    _step("asyncpg pool release: reset query round trip", _SEND, _RESET),
    _step("socket send to PostgreSQL (kernel, loopback TCP)", _SEND, r"\(asyncpg/"),
    _step("socket send to the provider (kernel, loopback TCP)", _SEND, r"\((aiohttp/client|adapters/)"),
    _step("socket send of the answer (kernel, loopback TCP)", _SEND, r"\(aiohttp/(web_|http_writer)"),
    _step("socket send, other (kernel)", _SEND),
    # libsodium's frames (nacl/) match nothing; the first broker frame above them is broker/signing/ed25519.py,
    # which these rules must claim before the pipeline's catch-all does.
    _step("Ed25519 verify (consumer's signature)",
          r"(PublicKey\.verify \(broker/signing/keys\.py|^verify \(broker/signing/ed25519\.py)"),
    _step("Ed25519 sign (broker's answer)",
          r"((sign_message|PrivateKey\.sign) \(broker/signing/keys\.py|^sign \(broker/signing/ed25519\.py)"),
    _step("RFC 9421 request: parse, policy, base, digest", r"\(broker/signing/(messages|structured_fields)\.py",
          r"verify_request \("),
    _step("RFC 9421 answer signing: base, serialise", r"\(broker/signing/(messages|structured_fields)\.py"),
    _step("JSON Schema validation of the answer", r"\((schemas/validation\.py|jsonschema/|referencing/|rpds/)"),
    _step("JCS canonicalisation", r"\(broker/tlog/jcs\.py"),
    _step("asyncpg pool release: reset query round trip", _RESET),
    _step("asyncpg: nonce claim, access log, pool (client side)",
          r"(\((asyncpg/|broker/tlog/accesslog\.py|broker/storage/db\.py)|claim_nonce \()"),
    _step("aiohttp client: the provider call", r"\((aiohttp|yarl|multidict)/", r"\((aiohttp/client|adapters/)"),
    _step("logging (structlog, one JSON line per exchange)", r"\((structlog|logging|json)/"),
    _step("metrics (prometheus_client)", r"\(prometheus_client/"),
    _step("adapter: query, answer mapping, resilience", r"\((adapters|schemas)/"),
    _step("pipeline: parse, authz, subject key, middlewares", r"\((broker/(?!__main__|cli/)|consent/)"),
    _step("aiohttp server: parse, route, write", r"\(aiohttp/"),
    _step("event loop: callbacks in C (DB protocol, tasks), epoll", r"\((asyncio/|selectors\.py|<frozen)"),
]

# Steps rolled up into the cost families a change would address.
FAMILIES: list[tuple[str, re.Pattern[str]]] = [(name, re.compile(rx)) for name, rx in [
    ("transparency log: promise per exchange, background integration", r"transparency log"),
    ("database: nonce claim + access log (asyncpg, sends, pool reset)", r"(PostgreSQL|asyncpg)"),
    ("signatures: Ed25519 and RFC 9421, both ways", r"(Ed25519|RFC 9421)"),
    ("HTTP in and out of the broker (aiohttp server, answer send)", r"(aiohttp server|of the answer)"),
    ("provider call (aiohttp client, adapter, request send)", r"(provider|adapter)"),
    ("JSON: JCS, schema validation", r"(JCS|JSON Schema)"),
    ("pipeline, middlewares, logging, metrics", r"(pipeline|logging|metrics)"),
    ("event loop, background tasks and the rest", r""),
]]
OTHER = "other"


class PySpy:
    """`py-spy record` on one process, started when the load is ready, for a fixed time."""

    def __init__(self, executable: str, pid: int, output: Path, *, seconds: float, rate: int = 250,
                 subprocesses: bool = False) -> None:
        # --nonblocking: never pause the broker (--native would need that, and distorts far more)
        self.argv = [executable, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                     "--rate", str(rate), "--format", "raw", "--output", str(output), "--nonblocking"]
        if subprocesses:  # `serve --workers N`: the parent only waits, its workers do the exchanges
            self.argv.append("--subprocesses")
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None
        self.error = ""

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        time.sleep(0.3)  # attaching takes a moment; the load starts right after

    def finish(self, timeout: float = 60.0) -> str | None:
        """The raw (collapsed stacks) output, or None with `error` set."""
        if self.process is None:
            self.error = "not started"
            return None
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate(timeout=5)
        if self.process.returncode != 0 or not self.output.exists():
            self.error = out.decode(errors="replace").strip()[-500:] or f"exit status {self.process.returncode}"
            return None
        return self.output.read_text("utf-8", "replace")


@dataclass
class Profile:
    samples: int
    by_step: Counter[tuple[str, bool]]  # (step, sampled inside a socket send) -> samples


_LINE = re.compile(r"^(?P<stack>.*) (?P<count>[0-9]+)$")
_SEND_RX = re.compile(_SEND)


def classify(frames: list[str]) -> str:
    for name, rx in WHOLE:
        if any(rx.search(f) for f in frames):
            return name
    for depth in range(len(frames) - 1, -1, -1):
        frame = frames[depth]
        for step in STEPS:
            if step.frame.search(frame) and (
                    step.within is None or any(step.within.search(f) for f in frames[:depth])):
                return step.name
    return OTHER


def fold(raw: str) -> Profile:
    by_step: Counter[tuple[str, bool]] = Counter()
    total = 0
    for line in raw.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        count = int(m["count"])
        frames = [f for f in m["stack"].split(";") if f and not f.startswith(("process ", "thread "))]
        in_send = bool(frames) and _SEND_RX.search(frames[-1]) is not None
        by_step[(classify(frames), in_send)] += count
        total += count
    return Profile(total, by_step)


@dataclass(frozen=True)
class BrokerCpu:
    """The broker's measured CPU per exchange (from /proc), to turn sample shares into microseconds."""

    user_us: float
    kernel_us: float
    waited_us: float  # runnable, waiting for a CPU
    pg_us: float  # PostgreSQL backends, per exchange
    exchanges: int


def costs(p: Profile, cpu: BrokerCpu) -> list[tuple[str, float, float]]:
    """(step, share of samples, CPU us per exchange), most expensive first.

    py-spy counts a sample whenever the thread is not idle, also while it is runnable but preempted; on two
    shared cores that happens mostly inside send(), whose wake-up of the peer (PostgreSQL, the stub, the client)
    hands it the CPU. So samples taken inside send() share the broker's kernel CPU, and the others its user CPU.
    """
    send = sum(n for (_, in_send), n in p.by_step.items() if in_send) or 1
    rest = sum(n for (_, in_send), n in p.by_step.items() if not in_send) or 1
    rows: dict[str, list[float]] = {}
    for (name, in_send), n in p.by_step.items():
        row = rows.setdefault(name, [0.0, 0.0])
        row[0] += n / max(1, p.samples)
        row[1] += n / send * cpu.kernel_us if in_send else n / rest * cpu.user_us
    return sorted(((name, share, us) for name, (share, us) in rows.items()), key=lambda r: -r[2])


def render(p: Profile, cpu: BrokerCpu, load: str = "closed-loop load") -> str:
    rows = costs(p, cpu)
    grouped = families(rows)
    width = max([len(name) for name, _, _ in rows] + [len(name) for name, _ in grouped] + [32])
    lines = [f"Broker profile: py-spy, {p.samples} samples over {cpu.exchanges:,} exchanges under {load}. "
             f"Per exchange the broker used {cpu.user_us + cpu.kernel_us:,.0f} us of CPU",
             f"({cpu.user_us:,.0f} user + {cpu.kernel_us:,.0f} kernel, from /proc), waited {cpu.waited_us:,.0f} us "
             f"for a CPU (runnable, preempted), and PostgreSQL's backends used {cpu.pg_us:,.0f} us.",
             "'samples' = share of py-spy samples (running or runnable); 'CPU us' = the user CPU spread over the "
             "samples outside send(), the kernel CPU over those inside it.",
             f"{'step (deepest recognised frame)':{width}s} {'samples':>7s} {'CPU us':>7s}",
             f"{'-' * width} {'-' * 7} {'-' * 7}"]
    lines += [f"{name:{width}s} {share:7.1%} {us:7.0f}" for name, share, us in rows]
    total = sum(us for _, _, us in rows) or 1.0
    lines += ["", "The same, by family of cost:", f"{'family':{width}s} {'CPU us':>7s} {'share':>7s}",
              f"{'-' * width} {'-' * 7} {'-' * 7}"]
    lines += [f"{family:{width}s} {us:7.0f} {us / total:7.0%}" for family, us in grouped]
    return "\n".join(lines)


def families(rows: list[tuple[str, float, float]]) -> list[tuple[str, float]]:
    totals: dict[str, float] = {}
    for name, _, us in rows:
        family = next(f for f, rx in FAMILIES if rx.search(name))
        totals[family] = totals.get(family, 0.0) + us
    return sorted(totals.items(), key=lambda kv: -kv[1])


def headline(p: Profile, cpu: BrokerCpu) -> str:
    return "the broker's CPU per exchange goes to " + "; ".join(
        f"{family} {us:.0f} us" for family, us in families(costs(p, cpu))) + "."


# ---------------------------------------------------------------------------------------------- database probes


@dataclass(frozen=True)
class Probe:
    p50: float  # ms
    p99: float  # ms
    pg_cpu_us: float  # CPU of the PostgreSQL backend per statement (nan when its /proc is not readable)


NONCE_POOL = "nonce claim, as the broker does it (claims pool, commit not flushed)"
LOG_POOL = "access log of a release, as the broker does it"
SELECT_POOL = "SELECT 1 through the pool (acquire, query, release)"
SELECT_BARE = "SELECT 1 on a bare connection (the round-trip floor)"
NONCE_BARE = "nonce claim on a bare connection, flushed commit"
NONCE_ASYNC = "nonce claim, bare, synchronous_commit=off (no WAL flush wait)"


async def _probe(dsn: str, n: int) -> dict[str, Probe]:
    """The broker's own statements through the broker's own functions, and bare for comparison: interleaved so
    that the shared server's moods hit every variant alike, each variant on its own connection so that its
    backend's CPU is its own."""
    from broker.storage import db
    from broker.tlog import accesslog

    q = db.queries()
    expires = datetime.now(UTC) + timedelta(seconds=60)

    def nonce() -> str:
        return uuid.uuid4().hex

    def released() -> accesslog.LogEntry:
        entry = accesslog.LogEntry(request_id=f"bench-probe-{uuid.uuid4()}", outcome="released", http_status=200,
                                   dataset="quotient_familial")
        entry.record_payload(b"{}")
        return entry

    # the claim as the broker sends it: on a pool whose commits do not wait for the WAL flush (broker/app.py's
    # claims pool; step 8's synchronous commit flushes it before anything is answered)
    pools = {name: await db.create_pool(dsn, min_size=1, max_size=1,
                                        settings={"synchronous_commit": "off"} if name == NONCE_POOL else None)
             for name in (NONCE_POOL, LOG_POOL, SELECT_POOL)}
    conns = {name: await db.connect(dsn) for name in (SELECT_BARE, NONCE_BARE, NONCE_ASYNC)}
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        NONCE_POOL: lambda: db.fetchval(pools[NONCE_POOL], q["nonce_claim"], "bench-probe", nonce(), expires),
        LOG_POOL: lambda: accesslog.commit(pools[LOG_POOL], released()),
        SELECT_POOL: lambda: db.fetchval(pools[SELECT_POOL], "SELECT 1"),
        SELECT_BARE: lambda: conns[SELECT_BARE].fetchval("SELECT 1"),
        NONCE_BARE: lambda: conns[NONCE_BARE].fetchval(q["nonce_claim"], "bench-probe", nonce(), expires),
        NONCE_ASYNC: lambda: conns[NONCE_ASYNC].fetchval(q["nonce_claim"], "bench-probe", nonce(), expires),
    }
    timings: dict[str, list[float]] = {name: [] for name in calls}
    try:
        await conns[NONCE_ASYNC].execute("SET synchronous_commit = off")  # this probe connection only
        backends = {name: await db.fetchval(pool, "SELECT pg_backend_pid()") for name, pool in pools.items()}
        backends |= {name: await conn.fetchval("SELECT pg_backend_pid()") for name, conn in conns.items()}
        before = {name: _cpu(pid) for name, pid in backends.items()}
        for _ in range(n):
            for name, call in calls.items():
                start = time.perf_counter()
                await call()
                timings[name].append(1000 * (time.perf_counter() - start))
        after = {name: _cpu(pid) for name, pid in backends.items()}
    finally:
        for conn in conns.values():
            await conn.close()
        for pool in pools.values():
            await pool.close()
    result = {}
    for name, values in timings.items():
        values.sort()
        b, a = before[name], after[name]
        cpu = float("nan") if b is None or a is None else 1e6 * (a - b) / n
        result[name] = Probe(statistics.median(values), values[min(len(values) - 1, int(0.99 * len(values)))], cpu)
    return result


def _cpu(pid: int) -> float | None:
    """Seconds on a CPU (nanosecond resolution, from schedstat: clock ticks are too coarse for 300 statements)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def probe_database(dsn: str, n: int) -> dict[str, Probe]:
    """p50 and p99 in ms per statement; empty (with a note) if the probe cannot run against this code."""
    if not dsn:
        return {}
    try:
        return asyncio.run(asyncio.wait_for(_probe(dsn, n), timeout=60))
    except Exception as exc:  # the broker's code moves under this benchmark: report, do not crash the run
        print(f"  database probe failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return {}
