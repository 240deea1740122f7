"""The alerting rules in deploy/prometheus: Prometheus's own promtool checks their syntax and runs their unit tests
(each alert fires on the series that should raise it, with the text an operator reads, and stays quiet on healthy
ones), and a running broker's /metrics holds every series they name, so that a renamed metric cannot leave an
alert that never fires."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.errors import LogUnavailable
from broker.service.problems import problem_for
from tests.broker_harness import broker_config, exchange_body, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _exprs() -> list[str]:
    groups = yaml.safe_load((RULES / "dlnuf-rules.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.mark.skipif(not Path(PROMTOOL).exists(),
                    reason="promtool is not installed (`make test` installs it with Debian's prometheus)")
@pytest.mark.parametrize("command", [["check", "rules", "dlnuf-rules.yml"], ["test", "rules", "dlnuf-rules.test.yml"]])
def test_promtool_accepts_the_rules_and_their_tests_pass(command: list[str]) -> None:
    run = subprocess.run([PROMTOOL, *command], cwd=RULES, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


async def test_every_series_the_rules_name_exists_on_a_running_broker(database_url: str, aiohttp_client: Any,
                                                                      aiohttp_server: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    text = registry_toml([paris], provider_url=str(sandbox.make_url("")).rstrip("/"))
    broker = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)
    assert (await broker.exchange(exchange_body())).status == 200  # so that the histograms have samples
    async with broker.client.get("/metrics") as resp:
        scrape = await resp.text()
    samples = [line for line in scrape.splitlines() if line and not line.startswith("#")]
    names = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in samples}

    named = {name for expr in _exprs() for name in re.findall(r"\bdlnuf_[a-z_]+\b", expr)}
    assert len(named) == 6, named
    assert named <= names, sorted(named - names)
    # the label values the rules select on are the ones the broker writes
    for expr in _exprs():
        for value in re.findall(r'statement="([^"]+)"', expr):
            assert f'statement="{value}"' in scrape, value
    outcomes = {value for expr in _exprs() for value in re.findall(r'outcome="([^"]+)"', expr)}
    assert outcomes == {problem_for(LogUnavailable("x")).slug}
