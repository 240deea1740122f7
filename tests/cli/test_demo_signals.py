"""`python -m broker demo` stopped by SIGTERM or SIGINT stops everything it started, its embedded PostgreSQL
included (issue 13: killed with SIGTERM, it left PostgreSQL running for good)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def postgres_of(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "postgres" in cmdline and str(data_dir) in cmdline:
            found.append(proc)
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_demo_and_its_database(sig: signal.Signals, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLNUF_") and k != "DATABASE_URL"}
    env["DLNUF_STATE_DIR"] = str(state)
    log = (tmp_path / "demo.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "broker", "demo", "--port", "0", "--demarche-port", "0",
                             "--periscolaire-port", "0", "--gateway-port", "0"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "DLNUF demo is running" not in (tmp_path / "demo.log").read_text():
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo did not start in time"
            time.sleep(0.2)
        database = postgres_of(state / "pgdata")
        assert database, "the demo runs on its embedded PostgreSQL"
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    _, alive = psutil.wait_procs(database, timeout=15)
    assert not alive, [p.pid for p in alive]
    text = (tmp_path / "demo.log").read_text()
    assert "stopping the demo" in text and "Traceback" not in text, text[-3000:]
