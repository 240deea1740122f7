"""The benchmarks' options: exchange.py refuses bad settings before a run starts, rather than failing at its end;
compare.py names the interpreter a side runs."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import orjson
import pytest

from adapters.subjects import parse_subject, subject_key
from broker.signing.keys import generate_private_key

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import compare
import exchange
import procs
import report
import stack
from loadgen import Endpoint, SignedExchange

# nothing here needs nginx or py-spy: the Python sandbox upstream, no profile
BASE = ["--no-nginx", "--upstream", "python", "--no-profile"]


@pytest.mark.parametrize("rate", ["0", "5", "25000"])
def test_a_profile_rate_out_of_range_is_refused_before_the_run(rate: str) -> None:
    # 0 used to pass, and divided by zero at the profile step, after every other measurement
    with pytest.raises(procs.SetupError, match="--profile-rate: between 10 and 20,000"):
        exchange.settings_from(exchange.parse_args([*BASE, "--profile-rate", rate]))


def test_the_profile_runs_under_the_load_it_names() -> None:
    closed = exchange.settings_from(exchange.parse_args(BASE))
    opened = exchange.settings_from(exchange.parse_args([*BASE, "--profile-rate", "200"]))
    assert (closed.profile_rate, opened.profile_rate) == (None, 200.0)
    assert report._profile_load(closed) == "closed-loop load at c=16"
    assert report._profile_load(opened) == "an open loop at 200/s"


def test_compare_names_the_interpreter_of_a_side() -> None:
    assert compare.interpreter(Path(sys.executable)) == f"Python {platform.python_version()}"
    assert compare.interpreter(Path("/nonexistent/bin/python")) == "Python ?"


def test_compare_refuses_an_interpreter_that_is_not_there_before_building_anything(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main(["HEAD", "--head-python", "/nonexistent/bin/python"]) == 2
    assert "--head-python: /nonexistent/bin/python is not an executable interpreter" in capsys.readouterr().err


def test_many_subjects_need_the_fast_upstream_and_a_template_a_server_of_its_own() -> None:
    with pytest.raises(procs.SetupError, match="--subjects above 1 needs --upstream fast"):
        exchange.settings_from(exchange.parse_args([*BASE, "--subjects", "100"]))
    with pytest.raises(procs.SetupError, match="--template copies a database"):
        exchange.settings_from(exchange.parse_args([*BASE, "--template", "month", "--embedded"]))
    assert exchange.settings_from(exchange.parse_args(BASE)).subjects == 1


def test_the_subjects_are_distinct_citizens_and_each_request_names_one_of_them() -> None:
    bodies = [stack.exchange_body(n) for n in range(60_000)]
    keys = {subject_key(b"k", parse_subject(orjson.loads(b)["subject"])) for b in bodies}
    assert len(keys) == len(bodies)  # a family name per 27,000 birth dates: each its own citizen
    maker = SignedExchange(Endpoint("127.0.0.1", 1), bodies[0], generate_private_key("ed25519", kid="t").to_jwk(),
                           tuple(bodies[1:50]))
    sent = {raw.split(b"\r\n\r\n", 1)[1] for raw in maker.make(400)}
    assert sent <= set(bodies[:50]) and len(sent) > 30  # drawn among all 50, not always the same


def test_the_report_names_the_database_a_run_used() -> None:
    fresh = exchange.settings_from(exchange.parse_args(BASE))
    copied = exchange.settings_from(exchange.parse_args([*BASE, "--template", "month"]))
    kept = exchange.settings_from(exchange.parse_args([*BASE, "--database-url", "postgresql://u@h:5432/large"]))
    assert report._database(fresh).startswith("fresh database on ")
    assert report._database(copied).startswith("a copy of month on ")
    assert report._database(kept) == "existing database h:5432/large (kept)"
