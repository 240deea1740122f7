"""Operator mistakes in the registry (issue 13): an empty file deleted every organisation, key and habilitation at
once and running brokers applied it at once; `--dry-run` called it valid; the same public key under two kids and
an already-expired key were accepted."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE

import asyncpg
import pytest

from broker import registry
from broker.signing.keys import PrivateKey
from broker.storage import db
from tests.factories import CONSUMER, OTHER_CONSUMER, Consumer, consumer, registry_toml

ROOT = Path(__file__).resolve().parents[2]
PARIS, LYON = consumer(CONSUMER), consumer(OTHER_CONSUMER)


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "[[adapters]]\nid = 'x'\n"],
                         ids=["empty", "comments-only", "no-organisation"])
def test_a_registry_without_organisations_is_refused(text: str) -> None:
    with pytest.raises(registry.RegistryError, match="no organisation; an empty registry is refused"):
        registry.parse_registry(text, "reg.toml")


def test_the_same_public_key_under_two_kids_is_refused_with_its_line() -> None:
    twin = Consumer(OTHER_CONSUMER, PrivateKey(kid="lyon-2026", alg=PARIS.key.alg, private_key=PARIS.key.private_key))
    text = registry_toml([PARIS, twin])
    line = [i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() == "[[organisations]]"][2]
    with pytest.raises(registry.RegistryError) as info:
        registry.parse_registry(text, "reg.toml")
    assert str(info.value) == (f"reg.toml:{line}: [[organisations]] #3: key 'lyon-2026' is the same public key as "
                               f"key '{PARIS.key.kid}'")


def test_an_expired_key_is_a_warning_with_its_line() -> None:
    text = registry_toml([PARIS], extra_key_lines="not_after = 2026-01-01T00:00:00Z")
    line = [i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() == "[[organisations]]"][1]
    parsed = registry.parse_registry(text, "reg.toml", now=datetime(2026, 6, 1, tzinfo=UTC))
    assert parsed.warnings == (f"reg.toml:{line}: [[organisations]] #2: key '{PARIS.key.kid}' expired at "
                               "2026-01-01T00:00:00+00:00: it verifies nothing (a typo in not_after?); remove it",)
    assert registry.parse_registry(text, "reg.toml", now=datetime(2025, 6, 1, tzinfo=UTC)).warnings == ()


async def counts(conn: asyncpg.Connection) -> tuple[int, int, int, int]:
    return tuple(await conn.fetchrow(  # type: ignore[return-value]
        "SELECT (SELECT count(*) FROM organisations), (SELECT count(*) FROM organisation_keys), "
        "(SELECT count(*) FROM habilitations), (SELECT version FROM registry_state)"))


async def test_removals_need_prune_and_a_dry_run_reports_what_a_real_run_does(database_url: str) -> None:
    both, paris_only = registry_toml([PARIS, LYON]), registry_toml([PARIS])
    conn = await db.connect(database_url)
    try:
        await registry.apply(conn, registry.parse_registry(both))
        before = await counts(conn)
        assert before == (3, 2, 2, 1)

        for dry_run in (True, False):
            with pytest.raises(registry.RemovalRefused) as info:
                await registry.apply(conn, registry.parse_registry(paris_only), dry_run=dry_run)
            assert str(info.value) == (
                f"the file would remove:\n  organisations: {OTHER_CONSUMER}\n  keys: {LYON.key.kid}\n"
                f"  habilitations: cantine-{OTHER_CONSUMER}\n"
                "nothing was changed; apply again with --prune to remove them")
            assert await counts(conn) == before

        dry = await registry.apply(conn, registry.parse_registry(paris_only), prune=True, dry_run=True)
        assert await counts(conn) == before, "a dry run changes nothing"
        real = await registry.apply(conn, registry.parse_registry(paris_only), prune=True)
        assert str(dry).replace(" (dry run: rolled back, nothing changed)", "") == str(real)
        assert dry.version == real.version == 2 and dry.changes == real.changes
        assert await counts(conn) == (2, 1, 1, 2)
    finally:
        await conn.close()


async def test_a_dry_run_sends_no_reload_notification(database_url: str) -> None:
    listener = await asyncpg.connect(database_url)
    heard: list[str] = []
    await listener.add_listener("dlnuf_registry", lambda *args: heard.append(args[-1]))
    conn = await db.connect(database_url)
    try:
        await registry.apply(conn, registry.parse_registry(registry_toml([PARIS])), dry_run=True)
        await asyncio.sleep(0.3)
        assert heard == []
        await registry.apply(conn, registry.parse_registry(registry_toml([PARIS])))
        for _ in range(50):
            if heard:
                break
            await asyncio.sleep(0.05)
        assert heard == ["1"]
    finally:
        await conn.close()
        await listener.close()


async def apply_command(database_url: str, tmp_path: Path, text: str, *flags: str) -> tuple[int, str, str]:
    file = tmp_path / "registry.toml"
    file.write_text(text)
    env = {**os.environ, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(tmp_path / "state")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "broker", "registry", "apply", str(file),
                                                *flags, env=env, cwd=ROOT, stdout=PIPE, stderr=PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_command_shows_the_diff_and_wants_prune(database_url: str, tmp_path: Path) -> None:
    status, out, err = await apply_command(database_url, tmp_path, registry_toml([PARIS, LYON]))
    assert status == 0 and "organisations: +13002526500013" in out, err

    status, dry_out, dry_err = await apply_command(database_url, tmp_path, registry_toml([PARIS]), "--dry-run")
    status_real, out, err = await apply_command(database_url, tmp_path, registry_toml([PARIS]))
    assert (status, dry_out, dry_err) == (status_real, out, err), "a dry run reports what a real run does"
    assert status == 2 and out == ""
    assert err.startswith(f"error: {tmp_path / 'registry.toml'}: the file would remove:\n")
    assert f"  keys: {LYON.key.kid}\n" in err and err.endswith("apply again with --prune to remove them\n")

    status, out, err = await apply_command(database_url, tmp_path, registry_toml([PARIS]), "--prune", "--dry-run")
    assert status == 0 and out.startswith("registry version 2 (dry run: rolled back, nothing changed)\n")
    assert f"organisations: -{OTHER_CONSUMER}" in out
    status, out, err = await apply_command(database_url, tmp_path, registry_toml([PARIS]), "--prune")
    assert status == 0 and out.startswith("registry version 2\n") and f"-{OTHER_CONSUMER}" in out

    status, out, err = await apply_command(database_url, tmp_path, "")
    assert status == 2 and "an empty registry is refused" in err

    expired = registry_toml([PARIS], extra_key_lines="not_after = 2020-01-01T00:00:00Z")
    status, out, err = await apply_command(database_url, tmp_path, expired, "--dry-run")
    assert status == 0 and err.startswith(f"warning: {tmp_path / 'registry.toml'}:")
    assert "expired at 2020-01-01T00:00:00+00:00" in err


def test_a_siret_with_a_wrong_check_digit_is_refused_with_its_line() -> None:
    text = registry_toml([PARIS]).replace(f'siret = "{CONSUMER}"', 'siret = "21750001600018"')
    text = text.replace(f'consumer = "{CONSUMER}"', 'consumer = "21750001600018"')
    line = [i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() == "[[organisations]]"][1]
    with pytest.raises(registry.RegistryError) as info:
        registry.parse_registry(text, "reg.toml")
    assert str(info.value) == (f"reg.toml:{line}: [[organisations]] #2: SIRET 21750001600018 has a wrong check "
                               "digit (a typo?)")
