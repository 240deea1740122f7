"""benchmarks/stalls.py's account of the slowest exchanges, from the brokers' log lines."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import stalls


def test_the_slowest_exchanges_are_split_by_what_they_waited_for() -> None:
    # 990 exchanges of 2 ms (0.3 claim, 0.5 provider, 0.9 log, rest 0.3) and 10 of 13 ms whose commit took 10.9
    fast = {"event": "exchange released", "ms": 2.0, "claim_ms": 0.3, "provider_ms": 0.5, "log_ms": 0.9}
    slow = {**fast, "ms": 13.0, "log_ms": 10.9}
    lines = [fast] * 990 + [slow] * 10 + [{"event": "exchange refused", "ms": 50.0}]
    out = stalls.own_account(lines)
    assert "1,000 released" in out[0] and "p50 2.00 ms, p99 13.00 ms" in out[0]
    assert out[2].split()[1:] == ["0.30", "0.50", "0.90", "0.30", "2.00"]
    assert out[3].split()[-5:] == ["0.30", "0.50", "10.90", "1.30", "13.00"]  # the rest is the group's own
    assert "too few" in stalls.own_account(lines[:50])[0]


def test_only_the_exchanges_that_ran_inside_the_window_count(tmp_path: Path) -> None:
    since, until = datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC), datetime(2026, 12, 4, 10, 0, 2, tzinfo=UTC)
    base = {"event": "exchange released", "ms": 300.0}
    lines = {
        "started before, ended inside": {**base, "timestamp": "2026-12-04T10:00:00.200000Z"},
        "inside": {**base, "timestamp": "2026-12-04T10:00:01.500000Z"},
        "ended after": {**base, "timestamp": "2026-12-04T10:00:02.100000Z"},
        "no time": {**base},
    }
    log = tmp_path / "broker-1.log"
    log.write_text("\n".join([*(orjson.dumps({**v, "name": k}).decode() for k, v in lines.items()), "not json"]))
    assert [line["name"] for line in stalls.broker_lines([log], since, until)] == ["inside"]
