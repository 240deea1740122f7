"""Audit the hashed lock files with pip-audit and say plainly what was and was not audited.

pip-audit asks the package index's advisory data for each pinned version. When that data cannot be reached (a
proxy that serves package files and project pages but not per-version pages, an offline CI), pip-audit marks every
dependency "not found", prints "No known vulnerabilities found" and exits 0: a silent pass. This wrapper reads its
JSON report instead, and for each dependency pip-audit could not audit, reads the project's page on the index,
whose `vulnerabilities` are those of the project's latest release: when that release is the locked version, they
are the locked version's advisories. Then it
- fails (exit 1) when a locked version has a known advisory, naming the package, the advisory and the fixed version;
- reports, without failing, the dependencies it could not audit (a locked version older than the latest release,
  an index that did not answer), and says "NOT AUDITED" when that is all of them.

Usage: python scripts/audit_dependencies.py requirements/runtime.txt requirements/dev.txt
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# the index's project document: its `vulnerabilities` are the latest release's (the Warehouse JSON API)
PROJECT_JSON = "https://pypi.org/pypi/{name}/json"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_audit(lock_files: list[str]) -> list[dict[str, Any]]:
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
        dependencies: list[dict[str, Any]] = json.loads(report.read_text("utf-8"))["dependencies"]
        return dependencies


def latest_release_advisories(name: str, version: str) -> list[dict[str, Any]] | None:
    """The advisories of `version` if it is the project's latest release (None: it is not, or no answer)."""
    try:
        with urllib.request.urlopen(PROJECT_JSON.format(name=name), timeout=30) as response:  # noqa: S310 - https
            project = json.load(response)
    except (OSError, ValueError):
        return None
    if project.get("info", {}).get("version") != version or "vulnerabilities" not in project:
        return None
    return [v for v in project["vulnerabilities"] if not v.get("withdrawn")]


def main(lock_files: list[str]) -> int:
    pins = {canonical(n): v for lock in lock_files for n, v in PIN.findall(Path(lock).read_text("utf-8"))}
    findings: list[tuple[str, str, str, list[str]]] = []  # name, version, advisory, fixed in
    audited: list[str] = []
    skipped: list[str] = []
    unanswered = []
    for dep in pip_audit(lock_files):
        name = canonical(dep["name"])
        if "skip_reason" in dep:
            unanswered.append(name)
            continue
        audited.append(name)
        findings += [(name, dep["version"], v["id"], v.get("fix_versions") or []) for v in dep["vulns"]]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = dict(zip(unanswered, pool.map(lambda n: latest_release_advisories(n, pins.get(n, "")), unanswered),
                           strict=True))
    for name, advisories in answers.items():
        if advisories is None:
            skipped.append(name)
            continue
        audited.append(name)
        findings += [(name, pins[name], v["id"], v.get("fixed_in") or []) for v in advisories]
    for name, version, advisory, fixed in findings:
        print(f"VULNERABLE {name} {version}: {advisory} (fixed in {', '.join(fixed) or 'no release yet'})")
    if not audited:
        print(f"NOT AUDITED: the advisory data answered for none of the {len(skipped)} locked packages. The lock "
              "files were not checked for known advisories on this machine.")
    else:
        by_latest = len(answers) - len(skipped)
        print(f"audited {len(audited)} locked packages ({len(audited) - by_latest} per version by pip-audit, "
              f"{by_latest} as their project's latest release): {len(findings)} known advisories")
        if skipped:
            print(f"NOT AUDITED ({len(skipped)}: not the latest release, or no answer): {', '.join(sorted(skipped))}")
    return 1 if findings else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1:]))
