"""Running the interop suite's Node scripts (tests/interop/js/) on the packages package-lock.json pins.

A script reads one JSON object on stdin and writes JSON lines on stdout; a long-running one (an OP, a client
waiting for its callback) is driven line by line with `NodeProcess`. Node and the packages are installed by
`make test` (`npm ci`); without them the tests fail saying so, as the browser tests do without Chromium.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
JS = Path(__file__).resolve().parent / "js"
PACKAGES = ("openid-client", "oidc-provider", "http-message-signatures")
TIMEOUT = 60.0


def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail("no node: run `make test` (it installs Debian's npm, and Node with it)")
    missing = [p for p in PACKAGES if not (ROOT / "node_modules" / p / "package.json").exists()]
    if missing:
        pytest.fail(f"npm packages missing ({', '.join(missing)}): run `make test` (npm ci, from package-lock.json)")
    return path


class NodeProcess:
    """A Node script started with a JSON input, read one JSON line at a time; stopped (by its pid) on close."""

    def __init__(self, proc: asyncio.subprocess.Process, script: str) -> None:
        self.proc = proc
        self.script = script

    @classmethod
    async def start(cls, script: str, payload: dict[str, Any], *, env: dict[str, str] | None = None) -> NodeProcess:
        proc = await asyncio.create_subprocess_exec(
            node(), str(JS / script), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, **(env or {}), "NODE_NO_WARNINGS": "1"})
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(payload).encode() + b"\n")
        await proc.stdin.drain()
        return cls(proc, script)

    async def read(self, wait: float = TIMEOUT) -> dict[str, Any]:
        """The script's next JSON line, within `wait` seconds."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), wait)
        except TimeoutError:
            raise AssertionError(f"{self.script}: no answer in {wait} s{await self._stderr()}") from None
        if not line:
            raise AssertionError(f"{self.script} exited with {await self.proc.wait()}{await self._stderr()}")
        message: dict[str, Any] = json.loads(line)
        return message

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def _stderr(self) -> str:
        if self.proc.returncode is None or self.proc.stderr is None:
            return ""
        return ":\n" + (await self.proc.stderr.read()).decode(errors="replace")[-3000:]

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def run(script: str, payload: dict[str, Any], *, wait: float = TIMEOUT) -> dict[str, Any]:
    """Run a one-shot script: its single JSON answer."""
    process = await NodeProcess.start(script, payload)
    try:
        return await process.read(wait)
    finally:
        await process.close()
