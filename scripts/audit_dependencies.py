"""Audit the hashed lock files with pip-audit and say plainly what was and was not audited.

pip-audit asks PyPI's advisory data for each pinned version. When that data cannot be reached (a proxy that only
serves package files, an offline CI), pip-audit marks every dependency "not found", prints "No known
vulnerabilities found" and exits 0: a silent pass. This wrapper reads its JSON report instead and
- fails (exit 1) when a locked version has a known advisory, naming the package, the advisory and the fixed version;
- reports, without failing, the dependencies it could not audit, and says "NOT AUDITED" when that is all of them.

Usage: python scripts/audit_dependencies.py requirements/runtime.txt requirements/dev.txt
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def audit(lock_files: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        args = [sys.executable, "-m", "pip_audit", "--require-hashes", "--disable-pip", "--progress-spinner", "off",
                "--format", "json", "--output", str(report)]
        for lock in lock_files:
            args += ["--requirement", lock]
        # pip-audit exits 1 on a finding; the report says which, so the exit code is read from the report
        done = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603 - our own argv
        if not report.exists():
            sys.stderr.write(done.stderr)
            raise SystemExit(f"pip-audit failed (exit {done.returncode}) and wrote no report")
        result: dict[str, Any] = json.loads(report.read_text("utf-8"))
        return result


def main(lock_files: list[str]) -> int:
    deps = audit(lock_files)["dependencies"]
    skipped = [d for d in deps if "skip_reason" in d]
    audited = [d for d in deps if "skip_reason" not in d]
    vulnerable = [d for d in audited if d.get("vulns")]
    for d in vulnerable:
        for v in d["vulns"]:
            fixed = ", ".join(v.get("fix_versions") or []) or "no fixed release"
            print(f"VULNERABLE {d['name']} {d['version']}: {v['id']} (fixed in {fixed})")
    if skipped and not audited:
        print(f"NOT AUDITED: the advisory service answered for none of the {len(skipped)} locked packages "
              f"({skipped[0]['skip_reason']}). The lock files were not checked for known advisories on this machine.")
    elif skipped:
        names = ", ".join(d["name"] for d in skipped)
        print(f"audited {len(audited)} locked packages; not audited ({len(skipped)}): {names}")
    else:
        print(f"audited {len(audited)} locked packages: {len(vulnerable)} with known advisories")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1:]))
