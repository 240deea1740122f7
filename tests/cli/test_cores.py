"""`serve --workers auto`: one worker per core this process may use, lowered to a container's CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.cli import cores
from broker.cli.main import _main, _workers


@pytest.mark.parametrize(("quota", "period", "cpus"), [
    ("max", "100000", None), ("-1", "100000", None), ("200000", "100000", 2), ("150000", "100000", 2),
    ("50000", "100000", 1), ("100000", "0", None), ("", "", None), ("garbage", "100000", None),
])
def test_a_quota_is_rounded_up_to_whole_cpus(quota: str, period: str, cpus: int | None) -> None:
    assert cores.quota_cpus(quota, period) == cpus


def test_cgroup_v2_then_v1_then_none(tmp_path: Path) -> None:
    assert cores.cgroup_quota(tmp_path) is None
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cores.cgroup_quota(tmp_path) == 3
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert cores.cgroup_quota(tmp_path) == 1  # v2 is what the process is under when both are mounted so
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores.cgroup_quota(tmp_path) is None


def test_auto_is_the_affinity_lowered_to_the_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert cores.usable_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert cores.usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{100000 * (affinity + 8)} 100000\n")
    assert cores.usable_cpus(tmp_path) == affinity  # a quota above the CPUs one may run on adds none


def test_workers_argument() -> None:
    assert _workers("auto") == cores.usable_cpus()
    assert _workers("3") == 3


@pytest.mark.parametrize("bad", ["0", "-2", "many", "2.5", ""])
def test_bad_workers_argument_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _main(["serve", "--workers", bad])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err
