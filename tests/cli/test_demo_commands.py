"""Every command the demo prints runs as printed in a fresh terminal: no activated virtualenv, another working
directory, a bare environment (issue 12: the printed `python -m broker request` needed the virtualenv's python)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_printed_command_runs_as_printed_in_a_fresh_terminal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLNUF_") and k != "DATABASE_URL"}
    env["DLNUF_STATE_DIR"] = str(state)
    log_file = tmp_path / "demo.log"
    with log_file.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "broker", "demo", "--port", "0", "--demarche-port", "0",
                                 "--periscolaire-port", "0", "--gateway-port", "0"],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "Ctrl-C (or SIGTERM)" not in log_file.read_text():
                assert proc.poll() is None, log_file.read_text()[-3000:]
                assert time.monotonic() < deadline, "the demo did not start in time"
                time.sleep(0.2)
            commands = [line.strip() for line in log_file.read_text().splitlines()
                        if line.strip().startswith(("/", "python", ".venv"))]
            assert len(commands) == 3, log_file.read_text()  # Paris twice, the préfecture once
            # a fresh terminal: the login shell's PATH, no virtualenv, not the clone's directory
            fresh = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
            for command in commands:
                done = subprocess.run(["bash", "-c", command], env=fresh, cwd=tmp_path, capture_output=True,
                                      text=True, timeout=60, check=False)
                assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
                assert "response signature verified" in done.stderr
                assert json.loads(done.stdout)["data"], done.stdout
        finally:
            proc.terminate()
            proc.wait(timeout=60)
