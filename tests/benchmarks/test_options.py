"""The benchmarks' options: exchange.py refuses bad settings before a run starts, rather than failing at its end;
compare.py names the interpreter a side runs."""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from multidict import CIMultiDict

from adapters.subjects import parse_subject, subject_key
from broker.signing.keys import generate_private_key
from broker.signing.messages import verify_content_digest, verify_request

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import compare
import entry_ids
import exchange
import floor
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


def test_a_run_asks_about_a_population_unless_told_otherwise() -> None:
    assert exchange.subjects_of(exchange.parse_args(["--no-profile"])) == stack.POPULATION > 1
    assert exchange.subjects_of(exchange.parse_args(["--subjects", "7"])) == 7
    assert exchange.subjects_of(exchange.parse_args(["--upstream", "python"])) == 1  # the sandbox knows one
    assert compare.parse_args(["HEAD"]).subjects == stack.POPULATION
    assert floor.parse_args([]).subjects == stack.POPULATION
    with pytest.raises(SystemExit):
        floor.parse_args(["--subjects", "0"])


async def test_the_subjects_are_distinct_citizens_and_each_request_names_one_of_them() -> None:
    picked = [*range(0, 60_000), 270_001, 199_999]
    bodies = [stack.exchange_body(n) for n in picked]
    keys = {subject_key(b"k", parse_subject(orjson.loads(b)["subject"])) for b in bodies}
    assert len(keys) == len(bodies)  # a family name per 27,000 birth dates: each its own citizen
    # bodies of three lengths (Dupont, Martin, Dupontbh...): each request's length, digest and signature its body's
    others = (bodies[1], bodies[27_001], bodies[-2], bodies[-1])
    assert len({len(b) for b in (bodies[0], *others)}) >= 3
    key = generate_private_key("ed25519", kid="t")
    maker = SignedExchange(Endpoint("127.0.0.1", 1), bodies[0], key.to_jwk(), others)
    nonces: set[str] = set()

    async def fresh(kid: str, nonce: str, expires: datetime) -> bool:
        seen = nonce in nonces
        nonces.add(nonce)
        return not seen

    sent = set()
    for raw in maker.make(200):
        head, body = raw.split(b"\r\n\r\n", 1)
        headers = CIMultiDict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        assert int(headers["Content-Length"]) == len(body)
        verify_content_digest(headers["Content-Digest"], body)
        await verify_request(method="POST", target_uri=maker.url, headers=headers, body=body,
                             lookup_key={"t": key.public_key(owner="bench")}.get, claim_nonce=fresh,
                             now=datetime.now(UTC))
        sent.add(body)
    assert sent == {bodies[0], *others}  # drawn among all of them


@pytest.mark.parametrize(("block_ref", "want"), [
    ("blkref #0: rel 1663/5/16400 fork main blk 7 (FPW); hole: offset: 76, length: 6188",
     [("access_log_pkey", 8192 - 6188)]),
    ("blkref #0: rel 1663/5/16400 fork main blk 7 (FPW); hole: offset: 76, length: 188, compression saved: 5000, "
     "method: lz4 blkref #1: rel 1663/5/16401 fork fsm blk 2",
     [("access_log_pkey", 8192 - 188 - 5000)]),
    ("blkref #0: rel 1663/5/16401 fork vm blk 0 (FPW for WAL verification); hole: offset: 24, length: 8000",
     [("evidence (vm)", 192)]),
    ("blkref #0: rel 1663/9/16400 fork main blk 1 (FPW); hole: offset: 0, length: 0 "
     "blkref #1: rel 1664/0/1262 fork main blk 2 (FPW); hole: offset: 576, length: 1712",
     [("other database", 8192), ("shared", 8192 - 1712)]),
    ("blkref #0: rel 1663/5/99999 fork main blk 1 (FPW); hole: offset: 0, length: 8092", [("relfilenode 99999", 100)]),
])
def test_entry_ids_counts_each_full_page_image_once_at_its_stored_size(block_ref: str,
                                                                       want: list[tuple[str, int]]) -> None:
    names = {16400: "access_log_pkey", 16401: "evidence"}
    assert entry_ids.full_pages(block_ref, 5, names) == want


def test_the_report_names_the_database_a_run_used() -> None:
    fresh = exchange.settings_from(exchange.parse_args(BASE))
    copied = exchange.settings_from(exchange.parse_args([*BASE, "--template", "month"]))
    kept = exchange.settings_from(exchange.parse_args([*BASE, "--database-url", "postgresql://u@h:5432/large"]))
    assert report._database(fresh).startswith("fresh database on ")
    assert report._database(copied).startswith("a copy of month on ")
    assert report._database(kept) == "existing database h:5432/large (kept)"

