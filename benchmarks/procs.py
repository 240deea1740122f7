"""The processes a benchmark run starts, the database it creates, and what each one costs in CPU.

Invariant: everything started or created is registered in the `ExitStack` before the next thing starts, so it is
stopped (or dropped) in reverse order on success, on error, on Ctrl-C and on SIGTERM. Each child runs in its own
session: a Ctrl-C in the terminal reaches only this script, which then stops the children itself, by their ids
and process groups (never by name).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

TICK = os.sysconf("SC_CLK_TCK")

# Brokers started by a benchmark connect to its throwaway database as whoever --admin-url names (a superuser here),
# which `serve` refuses by default (docs/operations.md, "Database roles"). The role changes nothing per exchange;
# a benchmark on a production-shaped database passes a least-privilege DATABASE_URL instead.
SUPERUSER_OK = {"DLNUF_UNSAFE_SUPERUSER": "true"}


class SetupError(RuntimeError):
    """Something the benchmark needs is missing or did not start; the message says what and where to look."""


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class Service:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """This process and its descendants (nginx workers, say)."""
        return [self.pid, *descendants(self.pid)]

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    for _ in range(10_000):  # bounded walk of a small tree
        if not todo:
            break
        current = todo.pop()
        for task in _listdir(f"/proc/{current}/task"):
            try:
                kids = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                found.append(kid)
                todo.append(kid)
    return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def start(stack: contextlib.ExitStack, name: str, argv: list[str], *, env: Mapping[str, str], log: Path,
          cwd: Path | None = None) -> Service:
    """Start `argv` in its own session, output to `log`, and register its stop."""
    out = log.open("ab")
    stack.callback(out.close)
    popen = subprocess.Popen(argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, cwd=cwd)
    service = Service(name, popen, log)
    stack.callback(stop, service)
    return service


def stop(service: Service, sig: signal.Signals = signal.SIGTERM, grace: float = 10.0) -> None:
    """Ask politely, wait, then kill the process and anything left in its process group."""
    popen = service.popen
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(sig)
        try:
            popen.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"  {service.name} did not stop within {grace:.0f}s, killing it", file=sys.stderr)
            popen.kill()
            popen.wait(5)
    # its own session: the group id is its pid; workers or helpers it left behind go too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(service: Service, url: str, *, ok: Callable[[int], bool], timeout: float = 60.0) -> None:
    """Poll `url` until its status satisfies `ok`; fail early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if service.popen.poll() is not None:
            raise SetupError(f"{service.name} exited with status {service.popen.returncode}; its log "
                             f"({service.log}) ends with:\n{service.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own loopback URL
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
            time.sleep(0.1)
            continue
        if ok(status):
            return
        last = f"HTTP {status}"
        time.sleep(0.2)
    raise SetupError(f"{service.name} not ready after {timeout:.0f}s at {url} ({last}); log {service.log}:\n"
                     f"{service.tail()}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C does."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def ignoring_interrupts() -> contextlib.AbstractContextManager[None]:
    """For cleanup: a second Ctrl-C must not leave half the processes running."""

    @contextlib.contextmanager
    def masked() -> Iterator[None]:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    return masked()


# ---------------------------------------------------------------------------------------------- database


def database_url(admin_url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def create_database(stack: contextlib.ExitStack, admin_url: str, name: str, template: str | None = None) -> str:
    """A fresh database on the admin URL's server, dropped (connections and all) at cleanup; a copy of `template`
    if given."""

    async def create() -> None:
        conn = await asyncpg.connect(admin_url, timeout=10)
        try:
            # FILE_COPY: a copy of the files, where the default (WAL_LOG) writes a large template to the WAL
            copy = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{copy}')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    try:
        asyncio.run(create())
    except (OSError, asyncpg.PostgresError) as exc:
        hint = (f"is the template {template} there, and nobody connected to it?" if template else
                "start PostgreSQL, or pass --admin-url, or use --embedded")
        raise SetupError(f"cannot create a database on {admin_url}: {exc} ({hint})") from exc

    def drop_now() -> None:
        try:
            asyncio.run(drop())
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"  could not drop database {name}: {exc}; drop it by hand", file=sys.stderr)

    stack.callback(drop_now)
    return database_url(admin_url, name)


def embedded_dsn(pgdata: Path) -> str | None:
    """A DSN for the embedded server (unix socket), read from its postmaster.pid, or None when not running."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return f"postgresql://postgres@/postgres?host={urllib.parse.quote(socket_dir)}&port={port}"


def stop_embedded(pgdata: Path) -> None:
    """If the broker left its embedded PostgreSQL running (it was killed), stop it: fast, then immediate."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)


async def _fetch_pids(dsn: str, database: str) -> list[int]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                                database)
        return [r["pid"] for r in rows]
    finally:
        await conn.close()


async def _wal_after_integration(dsn: str, database: str, wait: float) -> int:
    conn = await asyncpg.connect(dsn, database=database or None, timeout=5)
    try:
        for _ in range(int(wait / 0.1)):  # polled: the rounds run in the broker's processes, not here
            if not await conn.fetchval("SELECT EXISTS (SELECT FROM tlog_queue)"):
                break
            await asyncio.sleep(0.1)
        return int(await conn.fetchval("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))
    finally:
        await conn.close()


def wal_position(dsn: str, database: str, *, wait: float = 0.0) -> int | None:
    """The server's WAL insert position in bytes, once `database`'s transparency-log queue is empty (at most `wait`
    seconds): what a cell's exchanges wrote, their integration included. The whole server's: exact on the
    benchmark's own embedded server, inflated by anything else writing on a shared one. None when unreadable."""
    try:
        return asyncio.run(_wal_after_integration(dsn, database, wait))
    except (OSError, asyncpg.PostgresError):
        return None


def backend_pids(dsn: str, database: str) -> list[int]:
    """PostgreSQL server processes serving `database` (the broker's pool), read from pg_stat_activity."""
    try:
        return asyncio.run(_fetch_pids(dsn, database))
    except (OSError, asyncpg.PostgresError):
        return []


# ---------------------------------------------------------------------------------------------- CPU accounting


def cpu_times(pid: int) -> tuple[float, float] | None:
    """User and system (kernel) CPU seconds of a process, from /proc/<pid>/stat (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def run_queue_wait(pid: int) -> float:
    """Seconds the threads of a process spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat):
    on a shared 2-core machine, the time a process loses to the others."""
    total = 0
    for task in _listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def machine_busy() -> float:
    """CPU seconds spent busy by the whole machine since boot, all cores together (everyone's work)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / TICK


@dataclass
class CpuMeter:
    """CPU seconds used by named groups of processes over a window; a process that appears during the window
    counts from its start."""

    groups: Mapping[str, Callable[[], list[int]]]
    _start: dict[str, dict[int, tuple[float, float, float]]] = field(default_factory=dict)
    _machine: float = 0.0
    _wall: float = 0.0

    def _snapshot(self) -> dict[str, dict[int, tuple[float, float, float]]]:
        snap: dict[str, dict[int, tuple[float, float, float]]] = {}
        for name, pids in self.groups.items():
            snap[name] = {pid: (*t, run_queue_wait(pid)) for pid in pids() if (t := cpu_times(pid)) is not None}
        return snap

    def start(self) -> None:
        self._start = self._snapshot()
        self._machine, self._wall = machine_busy(), time.monotonic()

    def stop(self) -> CpuUsage:
        end = self._snapshot()
        machine, wall = machine_busy() - self._machine, time.monotonic() - self._wall
        used, kernel, waited = {}, {}, {}
        zero = (0.0, 0.0, 0.0)
        for name, pids in end.items():
            before = self._start.get(name, {})
            used[name] = sum(max(0.0, u + k - sum(before.get(pid, zero)[:2])) for pid, (u, k, _) in pids.items())
            kernel[name] = sum(max(0.0, k - before.get(pid, zero)[1]) for pid, (_, k, _) in pids.items())
            waited[name] = sum(max(0.0, w - before.get(pid, zero)[2]) for pid, (_, _, w) in pids.items())
        return CpuUsage(used, kernel, waited, machine, wall)


@dataclass(frozen=True)
class CpuUsage:
    by_group: Mapping[str, float]  # CPU seconds, user + system
    kernel: Mapping[str, float]  # of which system (kernel: syscalls, loopback TCP)
    waited: Mapping[str, float]  # seconds runnable but waiting for a CPU
    machine: float  # CPU seconds, all processes of the machine (other people's too)
    wall: float

    @property
    def others(self) -> float:
        """What the rest of the machine (not our processes) burnt meanwhile: the noise."""
        return max(0.0, self.machine - sum(self.by_group.values()))
