"""Every command ends with exit 0, or with one line on stderr and a non-zero status: never a traceback (issue 13:
raw tracebacks when the database is unreachable, when `keys generate --out` names an existing file, on a broken
pipe). And `serve` refuses to start without DLNUF_PUBLIC_URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import consumer, registry_toml

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "postgresql://dlnuf@127.0.0.1:1/nothing"  # port 1: nothing listens there


def broker(*args: str, env: dict[str, str] | None = None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DLNUF_") and k != "DATABASE_URL"}
    base["DLNUF_STATE_DIR"] = str(tmp_path / "state")
    return subprocess.run([sys.executable, "-m", "broker", *args], env={**base, **(env or {})}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def assert_one_line_failure(result: subprocess.CompletedProcess[str], status: int, starts: str) -> str:
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(starts), lines[0]
    return lines[0]


@pytest.mark.parametrize(("command", "status", "starts"), [
    (["migrate"], 3, "error: the database is unreachable"),
    (["log", "prune"], 2, "error: ConnectionRefusedError"),  # `log` words its own errors (exit 2: cannot run)
])
def test_unreachable_database_is_one_line(command: list[str], status: int, starts: str, tmp_path: Path) -> None:
    result = broker(*command, env={"DATABASE_URL": UNREACHABLE}, tmp_path=tmp_path)
    assert_one_line_failure(result, status, starts)


def test_registry_apply_with_unreachable_database_is_one_line(tmp_path: Path) -> None:
    file = tmp_path / "registry.toml"
    file.write_text(registry_toml([consumer()]))
    result = broker("registry", "apply", str(file), env={"DATABASE_URL": UNREACHABLE}, tmp_path=tmp_path)
    assert_one_line_failure(result, 3, "error: the database is unreachable")


def test_keys_generate_never_overwrites_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "key.jwk"
    out.write_text("precious")
    result = broker("keys", "generate", "--kid", "k1", "--out", str(out), tmp_path=tmp_path)
    line = assert_one_line_failure(result, 2, "error:")
    assert str(out) in line and "never overwritten" in line
    assert out.read_text() == "precious"


def test_a_closed_output_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DLNUF_")}
    proc = subprocess.Popen([sys.executable, "-m", "broker", "keys", "generate", "--kid", "k1"], cwd=ROOT, env=base,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before the key is printed, as `| head -c0` would
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "error: the output was closed before the end (broken pipe)"


def test_serve_refuses_to_start_without_a_public_url(tmp_path: Path) -> None:
    result = broker("serve", "--port", "0", env={"DATABASE_URL": UNREACHABLE}, tmp_path=tmp_path)
    line = assert_one_line_failure(result, 2, "error: configuration: DLNUF_PUBLIC_URL is required")
    assert "Host header" in line


def test_serve_with_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = broker("serve", "--port", "0", env={"DATABASE_URL": UNREACHABLE,
                                                 "DLNUF_PUBLIC_URL": "https://dlnuf.example"}, tmp_path=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: the database is unreachable")


def test_request_to_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    key = tmp_path / "key.jwk"
    assert broker("keys", "generate", "--kid", "k1", "--out", str(key), tmp_path=tmp_path).returncode == 0
    result = broker("request", "--url", "http://127.0.0.1:1", "--key", str(key), "--dataset", "quotient_familial",
                    "--purpose", "p", "--recipient", "21750001600019", "--fields", "quotient_familial",
                    "--subject", "{}", tmp_path=tmp_path)
    assert_one_line_failure(result, 3, "error: the broker is unreachable")


def test_configuration_errors_are_one_line(tmp_path: Path) -> None:
    result = broker("migrate", env={"DLNUF_QUOTA_DEFAULT": "lots"}, tmp_path=tmp_path)
    assert_one_line_failure(result, 2, "configuration error: DLNUF_QUOTA_DEFAULT must be count/seconds")
