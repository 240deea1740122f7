"""benchmarks/round_growth.py makes both databases, runs rounds on each, prints their cost and leaves nothing behind."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import round_growth

ROOT = Path(__file__).resolve().parents[2]


def test_rounds_on_both_databases_then_nothing_left(pg_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert round_growth.main(["--admin-url", pg_server, "--base", "HEAD", "--steps", "2", "--rows", "50"]) == 0
    out = capsys.readouterr().out
    assert "round of 50 entries" in out and "log of     100 entries: base" in out

    async def leftovers() -> list[str]:
        conn = await asyncpg.connect(pg_server)
        try:
            return [r[0] for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE "
                                                   "'dlnuf\\_round\\_growth\\_%'")]
        finally:
            await conn.close()

    assert asyncio.run(leftovers()) == []
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert "/base " not in worktrees
