"""benchmarks/round_backlog.py drains a real backlog on both kinds of session and leaves no database behind."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import round_backlog


def test_a_backlog_too_short_for_every_round_is_refused_before_anything_is_made() -> None:
    with pytest.raises(SystemExit) as exited:
        round_backlog.main(["--admin-url", "postgresql://nobody@127.0.0.1:1/none", "--backlog", "30",
                            "--rounds", "2", "--batch", "10"])
    assert exited.value.code == 2


def test_both_sessions_drain_full_rounds_and_the_database_is_dropped(
        pg_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert round_backlog.main(["--admin-url", pg_server, "--backlog", "45", "--rounds", "2", "--batch", "10"]) == 0
    out = capsys.readouterr().out
    assert "from a backlog of 45 draining to 5" in out
    assert "the server's JIT (jit = on)" in out and "the broker's sessions (jit = off)" in out

    async def leftovers() -> list[str]:
        conn = await asyncpg.connect(pg_server)
        try:
            return [r[0] for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE "
                                                   "'dlnuf\\_backlog\\_%'")]
        finally:
            await conn.close()

    assert asyncio.run(leftovers()) == []
