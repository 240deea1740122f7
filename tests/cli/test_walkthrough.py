"""The README's five-minute walkthrough, run as printed: each shell block of the section in order, in one directory,
with the virtualenv first on PATH as an activated one would be. Blocks marked `# keeps running` start in the
background (a second terminal); the registry block is saved as registry.toml with the key lines step 1 printed,
as the reader pastes them. Only the ports change (free ones here), so that a running demo or test cannot clash.
It ends in a verified exchange, and `db shell` showing its access-log row."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def walkthrough() -> list[tuple[str, str]]:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("## Five-minute walkthrough", 1)[1].split("\n## ", 1)[0]
    return [(lang, body) for lang, body in FENCE.findall(section)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"nothing listens on {port}: {log.read_text()[-3000:]}"
        time.sleep(0.2)


def test_the_readme_walkthrough_ends_in_a_verified_exchange(tmp_path: Path) -> None:
    blocks = walkthrough()
    assert [lang for lang, _ in blocks] == ["sh", "sh", "sh", "toml", "sh", "sh", "sh", "sh"]
    ports = {"8091": str(free_port()), "8088": str(free_port())}

    def as_run(text: str) -> str:
        for printed, here in ports.items():
            text = text.replace(printed, here)
        return text

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLNUF_", "API_PARTICULIER")) and
           k != "DATABASE_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    # every terminal starts with the section's first block (the export)
    prelude = blocks[0][1]
    assert "export DLNUF_STATE_DIR=" in prelude
    servers: list[subprocess.Popen[bytes]] = []
    outputs: list[tuple[str, str]] = []  # stdout, stderr
    try:
        for index, (lang, body) in enumerate(blocks[1:], start=1):
            if lang == "toml":
                printed = outputs[0][0]  # step 1's output: the [[organisations.keys]] table
                kid = re.search(r'^kid = .*$', printed, re.MULTILINE)
                jwk = re.search(r'^jwk = .*$', printed, re.MULTILINE)
                assert kid and jwk, printed
                text = re.sub(r'^kid = "commune-lyon-2026-01"$', kid.group(0), body, flags=re.MULTILINE)
                text = re.sub(r'^jwk = \{ kty = "OKP", crv = "Ed25519", x = "…", use = "sig" \}$', jwk.group(0), text,
                              flags=re.MULTILINE)
                assert "…" not in text.split("[[purposes]]")[0]
                (tmp_path / "registry.toml").write_text(as_run(text), "utf-8")
                continue
            script = f"set -euo pipefail\n{prelude}\n{as_run(body)}"
            if "# keeps running" in body:
                (port,) = [p for p in ports.values() if p in as_run(body)]
                log = tmp_path / f"terminal-{index}.log"
                with log.open("w") as out:
                    servers.append(subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=out,
                                                    stderr=subprocess.STDOUT, start_new_session=True))
                wait_for(int(port), servers[-1], log)
                continue
            done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=180, check=False)
            assert done.returncode == 0, f"{body}\n{done.stdout}\n{done.stderr}"
            outputs.append((done.stdout, done.stderr))
        (request, verified), (log_rows, _) = outputs[-2], outputs[-1]
        assert "response signature verified against the broker's JWKS" in verified
        answer = json.loads(request)
        assert answer["data"]["quotient_familial"] and answer["data"]["enfants"]
        assert "21690123100011 | quotient_familial | released" in log_rows, log_rows
        # its own state dir: the walkthrough's database and keys are there, not in the user's (the demo's)
        assert (tmp_path / "dlnuf-walkthrough" / "pgdata").is_dir()
    finally:
        for server in servers:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
