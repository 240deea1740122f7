"""The hashed lock files in requirements/ install what pyproject.toml asks for, and nothing unhashed.

`make demo` and `make test` install from the lock files only, so a dependency added to pyproject.toml without
`make lock` would be missing at run time; these tests say which one, before an import fails somewhere else.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
# the lock is universal; its markers are checked against the oldest Python the project supports
ENVIRONMENT = default_environment() | {"python_version": "3.11", "python_full_version": "3.11.0"}


def pins(lock: str) -> dict[str, str]:
    """name -> version of every `name==version` line, each required to carry at least one hash."""
    text = (ROOT / "requirements" / lock).read_text("utf-8").replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line.split(" --hash")[0].strip())
        assert "--hash=sha256:" in line, f"{lock}: {requirement.name} has no hash"
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{lock}: {requirement} is not pinned"
        found[canonicalize_name(requirement.name)] = spec.version
    return found


def wanted(*extras: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [r for r in map(Requirement, lines) if r.marker is None or r.marker.evaluate(ENVIRONMENT)]


@pytest.mark.parametrize(("lock", "extras"), [("runtime.txt", ()), ("dev.txt", ("dev", "test"))])
def test_each_lock_pins_every_requirement_within_its_floor(lock: str, extras: tuple[str, ...]) -> None:
    locked = pins(lock)
    for requirement in wanted(*extras):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is in pyproject.toml but not in requirements/{lock}: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements/{lock} pins {name}=={locked[name]}, outside {requirement}: run `make lock`")


def test_the_demo_installs_no_development_tool() -> None:
    runtime = pins("runtime.txt")
    for tool in ("mypy", "pytest", "playwright", "schemathesis", "ruff", "pip-audit"):
        assert tool not in runtime


def test_runtime_and_dev_locks_agree_on_shared_versions() -> None:
    runtime, dev = pins("runtime.txt"), pins("dev.txt")
    assert {n: v for n, v in runtime.items() if dev.get(n) != v} == {}


def test_the_build_backend_is_locked_within_the_build_system_floor() -> None:
    build = pins("build.txt")
    for line in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(line)
        assert requirement.specifier.contains(build[canonicalize_name(requirement.name)])
