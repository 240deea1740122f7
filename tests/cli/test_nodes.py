"""Several broker nodes on one database must share their keys (broker/storage/nodekeys.py): two real processes
with separate state directories, the second refuses to start and names each key that differs; the same key files
copied make a node that starts. Rotation of the response key and the log key (`keys rotate`) keeps the old
checkpoints and answers verifiable."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.app import create_app
from broker.config import Config
from broker.storage import nodekeys
from broker.tlog.log import load_or_create_note_key
from tests.broker_harness import broker_config, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml

ROOT = Path(__file__).resolve().parents[2]
KEY_FILES = ["broker-signing-key.jwk", "log-note-key", "subject-key", "identity-key"]
ORIGIN = "dlnuf.localhost/log"  # what a broker without DLNUF_PUBLIC_URL names its log (the harness's)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(database_url: str, state_dir: Path, **more: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DLNUF_") and k != "DATABASE_URL"}
    return {**base, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(state_dir), "DLNUF_UNSAFE_SUPERUSER": "true",
            "DLNUF_LOG_ORIGIN": ORIGIN, **more}


async def _start(database_url: str, state_dir: Path, log: Path) -> tuple[asyncio.subprocess.Process, int]:
    port = _free_port()
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "serve", "--port", str(port), cwd=ROOT, stdout=out,
            stderr=subprocess.STDOUT, env=_env(database_url, state_dir, DLNUF_PUBLIC_URL=f"http://127.0.0.1:{port}"))
    return proc, port


async def _ready_or_exit(proc: asyncio.subprocess.Process, port: int) -> int | None:
    """None once the node answers /readyz, or its exit status if it stops first."""
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            if proc.returncode is not None:
                return proc.returncode
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return None
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the node neither became ready nor stopped")


async def test_a_node_with_other_keys_refuses_to_start_and_says_which(database_url: str, tmp_path: Path) -> None:
    first_dir, second_dir, copy_dir = tmp_path / "node1", tmp_path / "node2", tmp_path / "node3"
    first, first_port = await _start(database_url, first_dir, tmp_path / "node1.log")
    try:
        assert await _ready_or_exit(first, first_port) is None, (tmp_path / "node1.log").read_text()

        second, second_port = await _start(database_url, second_dir, tmp_path / "node2.log")
        status = await _ready_or_exit(second, second_port)
        output = (tmp_path / "node2.log").read_text()
        assert status == 2, output
        assert "Traceback" not in output
        refusal = output.strip().splitlines()[-1]
        assert refusal.startswith("error: this node's keys differ from those the database knows"), refusal
        for words in ("response-signing key", "log note key", "subject-key secret", "identity-sealing key"):
            assert words in refusal, refusal
        assert str(second_dir / "broker-signing-key.jwk") in refusal

        # the operator distributes the first node's files: a third node with them joins
        copy_dir.mkdir()
        for name in KEY_FILES:
            shutil.copy2(first_dir / name, copy_dir / name)
        third, third_port = await _start(database_url, copy_dir, tmp_path / "node3.log")
        try:
            assert await _ready_or_exit(third, third_port) is None, (tmp_path / "node3.log").read_text()
            async with aiohttp.ClientSession() as session:
                jwks = []
                for port in (first_port, third_port):
                    async with session.get(f"http://127.0.0.1:{port}/.well-known/jwks.json") as resp:
                        jwks.append(await resp.json())
            assert jwks[0] == jwks[1]
        finally:
            third.terminate()
            await third.wait()
    finally:
        first.terminate()
        await first.wait()


async def _start_app(config: Config) -> None:
    """Start the broker's application in this process, expecting it to refuse (else stop it)."""
    server = TestServer(create_app(config))
    try:
        await server.start_server()
    finally:
        await server.close()


def _broker(*args: str, database_url: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *args], env=_env(database_url, state_dir), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_rotating_the_response_and_log_keys_keeps_old_answers_and_checkpoints_verifiable(
    database_url: str, aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    text = registry_toml([paris], provider_url=str(provider.make_url("")).rstrip("/"))
    state = tmp_path / "state"

    def files(where: Path) -> dict[str, Path]:
        # load_config derives the key files from DLNUF_STATE_DIR, not from a state_dir override: name them
        return {"signing_key_file": where / KEY_FILES[0], "log_key_file": where / KEY_FILES[1],
                "subject_key_file": where / KEY_FILES[2], "identity_key_file": where / KEY_FILES[3]}

    config = broker_config(tmp_path, database_url, text, log_interval=0.05, **files(state))

    async def integrated(h: Any) -> None:
        for _ in range(200):
            if all(r["log_index"] is not None for r in await h.log_rows()):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("not integrated")

    before = await start_broker(aiohttp_client, config, paris)
    old_answer = await before.exchange()
    assert old_answer.status == 200, old_answer.body
    await integrated(before)
    async with before.client.get("/.well-known/jwks.json") as resp:
        (tmp_path / "old-jwks.json").write_text(await resp.text())
    old_vkey = load_or_create_note_key(state / "log-note-key", ORIGIN).verifier.vkey()
    await before.client.close()

    # new key files on this node (a real deployment copies them to every node); the database still knows the old
    retired = tmp_path / "retired"
    retired.mkdir()
    for name in ("broker-signing-key.jwk", "log-note-key"):
        (state / name).rename(retired / name)
    with pytest.raises(nodekeys.KeyMismatch, match=r"response-signing key.*log note key"):
        await _start_app(config)

    rotated = _broker("keys", "rotate", "--key", "signing", "--key", "log", database_url=database_url,
                      state_dir=state)
    assert rotated.returncode == 0, rotated.stderr
    assert "response-signing key" in rotated.stdout and "log note key" in rotated.stdout
    new_vkey = load_or_create_note_key(state / "log-note-key", ORIGIN).verifier.vkey()
    assert new_vkey != old_vkey

    after = await start_broker(aiohttp_client, config, paris)
    new_answer = await after.exchange()
    assert new_answer.status == 200, new_answer.body
    await integrated(after)
    await after.verify(new_answer)
    async with after.client.get("/.well-known/jwks.json") as resp:
        assert await resp.json() != json.loads((tmp_path / "old-jwks.json").read_text())

    # a node still holding a retired key is told so
    stale = tmp_path / "stale"
    shutil.copytree(state, stale, ignore=shutil.ignore_patterns("pgdata"))
    shutil.copy2(retired / "broker-signing-key.jwk", stale / "broker-signing-key.jwk")
    with pytest.raises(nodekeys.KeyMismatch, match=r"response-signing key.*is retired on"):
        await _start_app(broker_config(tmp_path, database_url, text, **files(stale)))

    # the whole log, signed under both keys, verifies with both trusted
    verified = _broker("log", "verify", "--database-url", database_url, "--vkey", old_vkey, "--vkey", new_vkey,
                       "--no-progress", database_url=database_url, state_dir=state)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # and the first answer's evidence (its answer signed by the retired key) verifies against the JWKS of its time
    entry_id = old_answer.json["log_entry_id"]
    evidence_file = tmp_path / "evidence.json"
    exported = _broker("log", "evidence", entry_id, "--out", str(evidence_file), database_url=database_url,
                       state_dir=state)
    assert exported.returncode == 0, exported.stderr
    checked = _broker("log", "verify-evidence", str(evidence_file), "--vkey", old_vkey, "--vkey", new_vkey,
                      "--broker-jwks", str(tmp_path / "old-jwks.json"), database_url=database_url, state_dir=state)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("OK:")
