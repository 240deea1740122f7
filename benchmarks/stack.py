"""What a benchmark run starts: provider stub, nginx, database, registry, broker(s), trivial server.

Every process listens on 127.0.0.1 only. Everything started is registered in the caller's `ExitStack` before the
next start (see `procs`), so a failure half-way still stops what was started and drops the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import loadgen
import orjson
import procs
from loadgen import Endpoint, RequestMaker, SignedExchange

import schemas
from adapters.api_particulier import request_for
from adapters.base import AdapterQuery
from adapters.sandbox import directory
from adapters.subjects import parse_subject
from broker.signing.keys import PrivateKey, generate_private_key

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
# Linux's memory file system, mounted on every distribution and in containers; only --tmpfs runs put anything there
TMPFS = "/dev/shm"  # noqa: S108
PROVIDER_SIRET = "13002526500013"
CONSUMER_SIRET = "21750001600019"  # Commune de Paris, the consumer of the demo and the tests
CITIZEN = "dupont-marie-claire"  # a sandbox citizen whose household has a quotient familial
PURPOSE = "tarification-restauration-scolaire"
FIELDS = ["quotient_familial", "enfants"]
TOKEN_ENV = "DLNUF_BENCH_API_PARTICULIER_TOKEN"  # noqa: S105 - the name of a variable, not a secret
LEGAL_URL = "https://www.legifrance.gouv.fr/codes/article_lc/LEGIARTI000038611862"


@dataclass(frozen=True)
class Settings:
    levels: tuple[int, ...]
    reps: int
    warmup: float
    duration: float
    rate: float
    open_duration: float
    open_connections: int
    loadgen_procs: int
    brokers: int
    basis: str
    embedded: bool
    admin_url: str
    nginx: str | None
    pyspy: str | None
    profile_seconds: float
    keep_workdir: bool
    profile_rate: float | None = None
    """Profile under the open loop at this rate rather than the closed loop at c=16."""
    request_timeout: float = 10.0
    broker_env: tuple[tuple[str, str], ...] = ()
    """Extra DLNUF_* settings for the broker processes (e.g. DLNUF_EVENT_LOOP=uvloop), for A/B runs."""
    workers: int = 1
    """`serve --workers N`: N processes of each broker on one port (SO_REUSEPORT)."""
    upstream: str = "fast"
    """"fast": nginx serving the provider stub's recorded answer (the provider costs next to nothing, so the
    broker's own cost shows); "python": the Python sandbox itself, as before."""
    database_url: str | None = None
    """An existing database to serve from, neither created nor dropped (benchmarks/large_log.py's prefilled log)."""
    subjects: int = 1
    """How many citizens the exchanges ask about, one drawn at random per request: 1 (the sandbox's own, as
    before), or more, which only the fast upstream answers (its recorded answer, whatever the subject). With one,
    every entry goes to the same page of the journal's index (`subject_key, logged_at`); a broker serves many
    citizens, whose keys land anywhere in it."""
    template: str | None = None
    """Each run's database a copy of this one (benchmarks/entry_ids.py --make-template: a month's entries already
    there, so that the indexes keyed by entry id are as large as in production)."""
    tmpfs: bool = False
    """With `embedded`: the embedded server's data directory in /dev/shm (memory). Its WAL flushes then cost no
    disk wait, so what remains of the latency is the broker's own and its round trips': a measurement setting that
    takes the disk out of the figures, never a deployment (nothing survives a reboot)."""


# ---------------------------------------------------------------------------------------------- files for the run


def registry_toml(key: PrivateKey, stub_url: str, basis: str) -> str:
    jwk = ", ".join(f"{k} = {json.dumps(v)}" for k, v in key.public_jwk().items() if k != "kid")
    return f"""# Written by benchmarks/exchange.py for one run.
[[organisations]]
siret = "{PROVIDER_SIRET}"
name = "DINUM (API Particulier sandbox)"
roles = ["provider"]

[[organisations]]
siret = "{CONSUMER_SIRET}"
name = "Commune (benchmark consumer)"
roles = ["consumer"]

[[organisations.keys]]
kid = "{key.kid}"
jwk = {{ {jwk} }}

[[adapters]]
id = "api-particulier-bench"
provider = "{PROVIDER_SIRET}"
kind = "api_particulier"
datasets = ["quotient_familial"]
options = {{ base_url = "{stub_url}", token_env = "{TOKEN_ENV}", timeout = 5 }}

[[habilitations]]
id = "bench-quotient-familial"
consumer = "{CONSUMER_SIRET}"
dataset = "quotient_familial"
purposes = ["{PURPOSE}"]
fields = ["quotient_familial", "allocataires", "enfants", "adresse"]
recipients = ["{CONSUMER_SIRET}"]
retention = "P1Y"
legal_basis = {{ type = "{basis}", title = "CRPA, article L114-8", url = "{LEGAL_URL}" }}
"""


def nginx_conf(workdir: Path, port: int, upstream_port: int) -> str:
    d = workdir
    return f"""# Written by benchmarks/exchange.py: a plain reverse proxy, the reference cost of one HTTP hop.
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream sandbox {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://sandbox;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def upstream_conf(workdir: Path, port: int, token: str) -> str:
    """nginx as a fast provider: the stub's recorded answer to the adapter's request, under the same path, behind
    the same bearer token check (anything else: 401, or 404 for another path)."""
    d = workdir
    return f"""# Written by benchmarks/exchange.py: the provider's recorded answer, served by nginx.
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port};
        root {d}/recorded;
        location / {{ return 404; }}
        location = {stub_path_query().split("?")[0]} {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            default_type application/json;
            try_files /answer.json =500;
        }}
    }}
}}
"""


def start_nginx(es: contextlib.ExitStack, s: Settings, name: str, ngdir: Path, conf_text: str) -> procs.Service:
    assert s.nginx is not None
    ngdir.mkdir(parents=True, exist_ok=True)
    conf = ngdir / "nginx.conf"
    conf.write_text(conf_text)
    common = ["-p", str(ngdir), "-e", str(ngdir / "error.log"), "-c", str(conf)]
    test = subprocess.run([s.nginx, "-t", "-q", *common], capture_output=True, text=True, timeout=30, check=False)
    if test.returncode != 0:
        raise procs.SetupError(f"nginx refuses the generated configuration {conf}:\n{test.stderr}")
    return procs.start(es, name, [s.nginx, *common], env=dict(os.environ), log=ngdir / "stdout.log")


def record_answer(port: int, token: str) -> bytes:
    """The stub's answer to the adapter's request, as the adapter receives it."""
    request = urllib.request.Request(f"http://{HOST}:{port}{stub_path_query()}",
                                     headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - our own loopback URL
        body: bytes = resp.read()
        if resp.status != 200:
            raise procs.SetupError(f"the stub answered {resp.status} to the adapter's request")
        return body


# Citizens a run asks about by default (exchange.py, compare.py): enough that the journal's index takes entries
# anywhere, as in production (benchmarks/README.md, twelfth round: with one citizen every entry lands on one page).
POPULATION = 100_000


def subject() -> dict[str, object]:
    """The citizen every exchange asks about, as the consumer sends it: the sandbox's own pivot identity."""
    return {"pivot_identity": directory().citizen(CITIZEN).pivot.to_json()}


def exchange_body(n: int = 0) -> bytes:
    """The exchange asked about citizen `n`: 0 is the sandbox's own; others differ by birth date and family name
    (27,000 days of birth dates per name), which only the fast upstream answers."""
    about = subject()
    if n:
        identity = dict(about["pivot_identity"])  # type: ignore[call-overload]
        name, day = divmod(n - 1, 27_000)
        identity["birthdate"] = (date(1940, 1, 1) + timedelta(days=day)).isoformat()
        identity["family_name"] = "Dupont" + "".join(chr(ord("a") + int(d)) for d in str(name)) if name else "Martin"
        about = {"pivot_identity": identity}
    return orjson.dumps({"dataset": "quotient_familial", "purpose": PURPOSE, "recipient": CONSUMER_SIRET,
                         "fields": FIELDS, "subject": about})


def stub_path_query() -> str:
    """The path and query the broker's adapter sends the provider for this exchange (the adapter's function)."""
    query = AdapterQuery(dataset="quotient_familial", version=schemas.latest("quotient_familial"),
                         subject=parse_subject(subject()), fields=frozenset(FIELDS), request_id="bench",
                         recipient=CONSUMER_SIRET)
    path, params = request_for(query)
    return f"{path}?{urllib.parse.urlencode(params)}"


def source_state() -> str:
    """Which code is measured: the commit, and whether the working tree differs (others edit it concurrently)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "broker", "adapters",
                                "consent", "schemas"], capture_output=True, text=True, timeout=10,
                               check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (f" + {len(dirty)} uncommitted file(s) in broker/ adapters/ consent/ schemas/" if dirty else "")


# ---------------------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    workdir: Path
    key: PrivateKey
    token: str
    stub: procs.Service
    stub_port: int
    brokers: list[procs.Service]
    broker_ports: list[int]
    db_dsn: str  # for the probes and pg_stat_activity
    db_name: str
    embedded: bool
    state_dir: Path
    nginx: procs.Service | None = None
    nginx_port: int = 0
    trivial_port: int = 0
    trivial_pid: int = 0
    subjects: int = 1
    _others: tuple[bytes, ...] = ()
    extra_targets: dict[str, tuple[list[RequestMaker], list[Endpoint]]] = field(default_factory=dict)
    """Targets a script adds (benchmarks/floor.py's reference servers): what to send them, where."""
    extra_pids: dict[str, Callable[[], list[int]]] = field(default_factory=dict)
    """Their process groups, metered like the others."""

    def makers(self, target: str) -> tuple[list[RequestMaker], list[Endpoint]]:
        """What the load generator sends to `target`: signed exchanges (broker; and the trivial server, to
        measure the generator with the same work), or the adapter's own GET (stub, nginx)."""
        if target in self.extra_targets:
            return self.extra_targets[target]
        if target == "broker":
            endpoints = [Endpoint(HOST, p) for p in self.broker_ports]
            if len(self._others) != self.subjects - 1:  # built once: 100,000 bodies take about a second
                self._others = tuple(exchange_body(n) for n in range(1, self.subjects))
            others = self._others
            return [SignedExchange(e, exchange_body(), self.key.to_jwk(), others) for e in endpoints], endpoints
        if target == "trivial":
            endpoint = Endpoint(HOST, self.trivial_port)
            return [SignedExchange(endpoint, exchange_body(), self.key.to_jwk())], [endpoint]
        endpoint = Endpoint(HOST, self.stub_port if target == "stub" else self.nginx_port)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        return [loadgen.get_request(endpoint, stub_path_query(), headers)], [endpoint]

    def broker_pids(self) -> list[int]:
        return [pid for b in self.brokers for pid in b.pids()]

    def postgres_pids(self) -> list[int]:
        """The server processes doing the broker's database work: the embedded server entirely, or the
        backends connected to the run's database."""
        if self.embedded:
            pgdata = self.state_dir / "pgdata"
            try:
                postmaster = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
            except (OSError, ValueError, IndexError):
                return []
            return [postmaster, *procs.descendants(postmaster)]
        return procs.backend_pids(self.db_dsn, self.db_name)


def build(es: contextlib.ExitStack, s: Settings) -> Stack:
    workdir = Path(tempfile.mkdtemp(prefix="dlnuf-bench-"))
    if s.keep_workdir:
        es.callback(print, f"kept {workdir} (logs, registry, nginx.conf, py-spy output)", file=sys.stderr)
    else:
        es.callback(shutil.rmtree, workdir, ignore_errors=True)
    print(f"work directory {workdir}", file=sys.stderr)
    key = generate_private_key("ed25519", kid=f"bench-{secrets.token_hex(4)}")
    token = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLNUF_") and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT)

    # 1. The provider stub: the API Particulier sandbox, in the upstream format the adapter speaks. With the fast
    #    upstream, nginx serves its recorded answer instead, and the sandbox stops once recorded.
    sandbox_port = procs.free_port()
    sandbox = procs.start(es, "provider stub", [PYTHON, "-m", "adapters.sandbox", "--host", HOST, "--port",
                                                str(sandbox_port)],
                          env={**env, "DLNUF_SANDBOX_TOKEN": token}, log=workdir / "stub.log", cwd=ROOT)
    procs.wait_http(sandbox, f"http://{HOST}:{sandbox_port}/", ok=lambda st: st == 404)
    stub, stub_port = sandbox, sandbox_port
    if s.subjects > 1 and s.upstream != "fast":
        raise procs.SetupError("--subjects above 1 needs the fast upstream: the sandbox knows one citizen")
    if s.upstream == "fast":
        if s.nginx is None:
            raise procs.SetupError("the fast upstream is nginx: install it, or use --upstream python")
        updir = workdir / "upstream"
        (updir / "recorded").mkdir(parents=True)
        (updir / "recorded" / "answer.json").write_bytes(record_answer(sandbox_port, token))
        # nginx's worker runs as an unprivileged user when started as root: let it reach the answer (only that)
        workdir.chmod(0o711)
        for path in (updir, updir / "recorded"):
            path.chmod(0o711)
        (updir / "recorded" / "answer.json").chmod(0o644)
        procs.stop(sandbox)
        stub_port = procs.free_port()
        stub = start_nginx(es, s, "fast upstream (nginx, recorded answer)", updir,
                           upstream_conf(updir, stub_port, token))
        procs.wait_http(stub, f"http://{HOST}:{stub_port}/", ok=lambda st: st == 404)

    # 2. nginx in front of the same upstream.
    nginx, nginx_port = None, 0
    if s.nginx is not None:
        nginx_port = procs.free_port()
        ngdir = workdir / "nginx"
        nginx = start_nginx(es, s, "nginx", ngdir, nginx_conf(ngdir, nginx_port, stub_port))
        procs.wait_http(nginx, f"http://{HOST}:{nginx_port}/", ok=lambda st: st == 404)

    # 3. The database and the registry.
    db_name = f"dlnuf_bench_{os.getpid()}_{secrets.token_hex(3)}"
    state_dir = workdir / "state"
    if s.tmpfs:
        if not s.embedded or not Path(TMPFS).is_dir():
            raise procs.SetupError(f"--tmpfs puts the embedded server's data in {TMPFS}: it needs --embedded and "
                                   f"{TMPFS}")
        state_dir = Path(tempfile.mkdtemp(prefix="dlnuf-bench-state-", dir=TMPFS))
        es.callback(shutil.rmtree, state_dir, ignore_errors=True)  # after the server stops (registered before it)
    # a quota far above any load this machine makes: its counting is measured, it never refuses
    # one transparency log for every broker, whatever the address each is reached at (DLNUF_PUBLIC_URL below)
    broker_env = {**env, "DLNUF_STATE_DIR": str(state_dir), "DLNUF_LOG_FORMAT": "json", TOKEN_ENV: token,
                  "DLNUF_QUOTA_DEFAULT": "10000000/60", "DLNUF_LOG_ORIGIN": "bench.dlnuf/log",
                  **procs.SUPERUSER_OK}
    if s.database_url is not None:
        db_name = s.database_url.rsplit("/", 1)[-1].partition("?")[0]
        broker_env["DATABASE_URL"] = s.database_url
    elif s.embedded:
        db_name = "postgres"
        es.callback(procs.stop_embedded, state_dir / "pgdata")  # runs after the brokers stop
    else:
        broker_env["DATABASE_URL"] = procs.create_database(es, s.admin_url, db_name, s.template)
        print(f"database {db_name} created" + (f" from {s.template}" if s.template else ""), file=sys.stderr)
    broker_env.update(dict(s.broker_env))
    registry_file = workdir / "registry.toml"
    registry_file.write_text(registry_toml(key, f"http://{HOST}:{stub_port}", s.basis))
    broker_env["DLNUF_REGISTRY_FILE"] = str(registry_file)

    # 4. The broker(s), one after the other: the first creates the signing key and applies the registry.
    brokers, ports = [], []
    for i in range(s.brokers):
        port = procs.free_port()
        broker = procs.start(es, f"broker #{i + 1}", [PYTHON, "-m", "broker", "serve", "--host", HOST, "--port",
                                                      str(port), "--workers", str(s.workers)],
                             env={**broker_env, "DLNUF_PUBLIC_URL": f"http://{HOST}:{port}"},
                             log=workdir / f"broker-{i + 1}.log", cwd=ROOT)
        procs.wait_http(broker, f"http://{HOST}:{port}/readyz", ok=lambda st: st == 200, timeout=120)
        brokers.append(broker)
        ports.append(port)
    dsn = broker_env.get("DATABASE_URL") or procs.embedded_dsn(state_dir / "pgdata") or ""
    stack = Stack(workdir, key, token, stub, stub_port, brokers, ports, dsn, db_name, s.embedded, state_dir, nginx,
                  nginx_port, subjects=s.subjects)

    # 5. The trivial server, for the load generator's ceiling.
    stack.trivial_port = procs.free_port()
    trivial = multiprocessing.get_context("spawn").Process(
        target=loadgen.serve_trivial, args=(stack.trivial_port,), daemon=True, name="trivial-server")
    trivial.start()
    es.callback(stop_mp, trivial)
    stack.trivial_pid = trivial.pid or 0
    _wait_port(stack.trivial_port)
    return stack


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise procs.SetupError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s")


def stop_mp(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(2)


def smoke_test(stack: Stack) -> str:
    """One exchange through the SDK (the answer's signature verified against the broker's JWKS), and one call of
    the stub directly and through nginx: what the load then repeats works, and answers data."""
    import aiohttp

    from broker.consumer.client import BrokerClient

    async def run() -> str:
        async with BrokerClient(f"http://{HOST}:{stack.broker_ports[0]}", key=stack.key) as client:
            answer = await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=CONSUMER_SIRET,
                                           fields=FIELDS, subject=subject())
        if not answer.data.get("quotient_familial"):
            raise procs.SetupError(f"the broker answered without the data: {answer.raw}")
        headers = {"Authorization": f"Bearer {stack.token}", "Accept": "application/json"}
        async with aiohttp.ClientSession() as session:
            for port in [stack.stub_port] + ([stack.nginx_port] if stack.nginx else []):
                async with session.get(f"http://{HOST}:{port}{stub_path_query()}", headers=headers) as resp:
                    doc = await resp.json()
                    if resp.status != 200 or "quotient_familial" not in doc.get("data", {}):
                        raise procs.SetupError(f"the stub on port {port} answered {resp.status}: {doc}")
        return f"one exchange released {', '.join(answer.fields_released)}, its answer signature verified"

    return asyncio.run(run())
