"""The systemd unit keeps its hardening: `systemd-analyze security` rates its exposure (0 best, 10 worst)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
# 1.1 measured (systemd 252): the broker needs the network and a local socket; everything else is closed
MAX_EXPOSURE = 2.0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", ["dlnuf.service", "dlnuf-log-maintenance.service"])
def test_the_unit_is_rated_ok_by_systemd_analyze_security(unit: str) -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNITS / unit)],
                          capture_output=True, text=True, check=False)
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout
    for must in ("NoNewPrivileges=", "ProtectSystem=", "CapabilityBoundingSet=~CAP_SYS_ADMIN", "SystemCallFilter="):
        assert re.search(rf"^✓ {re.escape(must)}", done.stdout, re.MULTILINE), f"{must} is not enforced"
