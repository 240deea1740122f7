"""Witness cosignatures (C2SP tlog-cosignature) and the broker as a tlog-witness client, against a witness written from
the spec (tests/tlog/witness_server.py) and cosignatures checked by tlog-scales; offline tlog-proofs round trip."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tlog_scales.signing import Vkey, VkeySet
from tlog_scales.tlog import Checkpoint as ScalesCheckpoint

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.consumer.client import BrokerClient
from broker.storage import db
from broker.tlog import accesslog, checkpoint, tlogproof, witness
from broker.tlog.log import PgNodeStore, entry_document, load_or_create_note_key
from broker.tlog.verify import DatabaseSource, Report, VerificationError, verify_log
from broker.tlog.witness import WitnessError, verify_cosigned
from tests.broker_harness import Harness, broker_config, exchange_body, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml
from tests.tlog.test_tlog import log_entry
from tests.tlog.test_tlog_api import get
from tests.tlog.test_tlog_verify import tamper
from tests.tlog.witness_server import SpecWitness

ORIGIN = "dlnuf.test/log"

# c2sp.org/tlog-cosignature §Format and §Ed25519 signed message: the example checkpoint and its cosignature line
SPEC_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_LINE = ("— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5"
             "nNo0xUe+mbIUBkBIfZ+qnA==")
SPEC_MESSAGE = ("cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
                "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")


def test_the_spec_example_cosignature_parses_to_its_timestamp_and_message() -> None:
    """The spec publishes no key for its example witness, so its signature cannot be checked; what can: the line is
    a key ID, a big-endian u64 timestamp (the 1679315147 of the example message) and a 64-byte signature, and the
    message we build for that checkpoint and time is the spec's, byte for byte."""
    blob = base64.b64decode(SPEC_LINE.split(" ")[2])
    assert len(blob) == 4 + 8 + 64
    assert int.from_bytes(blob[4:12], "big") == 1679315147
    assert witness.cosignature_message(SPEC_BODY, 1679315147).decode() == SPEC_MESSAGE
    # a key named witness.example.com/w1 but another key ID is not that witness: its line is ignored
    other = witness.Cosigner.from_key("witness.example.com/w1", Ed25519PrivateKey.generate().public_key())
    assert other.key_id != int.from_bytes(blob[:4], "big")
    note = SPEC_BODY + "\n" + SPEC_LINE + "\n"
    assert witness.cosignatures(note, [other]) == []


def test_cosignatures_verify_both_ways_with_independent_code() -> None:
    spec = SpecWitness("witness.test/w1", {})
    key = witness.parse_cosigner_key(spec.vkey())
    line = spec.cosign(SPEC_BODY, 1700000000).rstrip("\n")
    assert witness.verify_cosignature(line, SPEC_BODY, key).timestamp == 1700000000
    with pytest.raises(WitnessError):
        witness.verify_cosignature(line, SPEC_BODY.replace("20852163", "20852164"), key)
    # ours, checked by tlog-scales' Ed25519CosignatureVerifier
    ours = witness.cosign("witness.test/w2", (w2 := Ed25519PrivateKey.generate()), SPEC_BODY, 1700000001)
    w2_key = witness.Cosigner.from_key("witness.test/w2", w2.public_key())
    scales = ScalesCheckpoint.from_text(SPEC_BODY + "\n" + ours + "\n")
    valid = VkeySet(Vkey.from_string(w2_key.vkey()), Vkey.from_string(spec.vkey())).verify(scales.signatures, scales)
    assert {v.name for v, _ in valid} == {"witness.test/w2"}
    scales_both = ScalesCheckpoint.from_text(SPEC_BODY + "\n" + ours + "\n" + line + "\n")
    valid = VkeySet(Vkey.from_string(w2_key.vkey()), Vkey.from_string(spec.vkey())).verify(
        scales_both.signatures, scales_both)
    assert {v.name for v, _ in valid} == {"witness.test/w1", "witness.test/w2"}


def test_witness_keys_are_checked() -> None:
    spec = SpecWitness("witness.test/w1", {})
    name, key_id, key = spec.vkey().split("+", 2)
    for bad in (f"{name}+00000000+{key}", f"{name}+{key_id}+" + base64.b64encode(b"\x01" + b"\x00" * 32).decode(),
                f"{name}+{key_id}", "+{key_id}+{key}"):
        with pytest.raises(WitnessError):
            witness.parse_cosigner_key(bad)


@pytest.fixture
async def witnesses(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[list[tuple[SpecWitness, str]]]:
    signer = load_or_create_note_key(tmp_path / "log-note-key", ORIGIN)
    found = []
    for n in (1, 2):
        w = SpecWitness(f"witness.test/w{n}", {ORIGIN: (ORIGIN, signer.private_key.public_key())})
        server = await aiohttp_server(w.app())
        found.append((w, str(server.make_url("")).rstrip("/")))
    yield found


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> str:
    server: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, tmp_path: Path, sandbox: str,
                 witnesses: list[tuple[SpecWitness, str]], monkeypatch: pytest.MonkeyPatch) -> Harness:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    config = broker_config(tmp_path, database_url, registry_toml([paris], provider_url=sandbox),
                           log_key_file=tmp_path / "log-note-key", log_origin=ORIGIN, log_interval=0.05,
                           log_witnesses=tuple((w.vkey(), url) for w, url in witnesses), log_witness_quorum=2)
    return await start_broker(aiohttp_client, config, paris)


async def fill(h: Harness, count: int) -> list[accesslog.LogEntry]:
    entries = [log_entry(n) for n in range(count)]
    for e in entries:
        await accesslog.commit(h.state().pool, e)
    return entries


async def cosigned(h: Harness, size: int, witnesses: int = 2) -> str:
    """The served latest checkpoint once it has `size` leaves and the witnesses' lines (a bounded wait)."""
    for _ in range(400):
        note = (await get(h, "/v1/log/checkpoint")).body.decode()
        if note.split("\n")[1] == str(size) and note.count("— witness.test/") == witnesses:
            return note
        await asyncio.sleep(0.05)
    raise AssertionError(f"size {size} never cosigned")


async def test_checkpoints_are_submitted_cosigned_and_served(broker: Harness,
                                                             witnesses: list[tuple[SpecWitness, str]]) -> None:
    await fill(broker, 5)
    note = await cosigned(broker, 5)
    info = (await get(broker, "/v1/log")).json
    vkeys = [w.vkey() for w, _ in witnesses]
    assert info["witnesses"] == vkeys and info["witness_quorum"] == 2
    signed = verify_cosigned(note, info["verifier_key"], origin=ORIGIN, witnesses=vkeys, quorum=2)
    assert signed.size == 5
    at = await get(broker, "/v1/log/checkpoints/5")  # cosignatures may still be appended: not immutable
    assert at.body.decode() == note and at.headers["Cache-Control"] == "public, max-age=60"
    # each witness followed the log: first from 0, then with consistency proofs, never a refusal but 409s
    await fill(broker, 9)
    await cosigned(broker, 14)
    for w, _ in witnesses:
        assert w.state[ORIGIN][0] == 14
        assert all(status in (200, 409) for status, _ in w.requests), w.requests
    # the log's key still opens it alone (other lines ignored), and tlog-scales verifies the cosignatures
    assert checkpoint.verify_checkpoint(note, info["verifier_key"], origin=ORIGIN).size == 5
    scales = ScalesCheckpoint.from_text(note)
    assert len(VkeySet(*(Vkey.from_string(v) for v in vkeys)).verify(scales.signatures, scales)) == 2


async def test_the_witness_policy_is_k_of_n(broker: Harness, witnesses: list[tuple[SpecWitness, str]]) -> None:
    await fill(broker, 3)
    note = await cosigned(broker, 3)
    vkey = (await get(broker, "/v1/log")).json["verifier_key"]
    vkeys = [w.vkey() for w, _ in witnesses]
    stranger = SpecWitness("witness.test/w3", {}).vkey()
    verify_cosigned(note, vkey, origin=ORIGIN, witnesses=[*vkeys, stranger], quorum=2)  # 2 of 3
    with pytest.raises(WitnessError, match="2 of the 3"):
        verify_cosigned(note, vkey, origin=ORIGIN, witnesses=[*vkeys, stranger], quorum=3)
    with pytest.raises(WitnessError, match="at least as many"):
        verify_cosigned(note, vkey, origin=ORIGIN, witnesses=vkeys[:1], quorum=2)
    one_line = "".join(line + "\n" for line in note.rstrip("\n").split("\n") if "witness.test/w2" not in line)
    with pytest.raises(WitnessError, match="1 of the 2"):
        verify_cosigned(one_line, vkey, origin=ORIGIN, witnesses=vkeys, quorum=2)
    # a line with w1's name and key ID whose signature fails condemns the note, even with w2's good line
    blob64 = note.split("— witness.test/w1 ")[1].split("\n")[0]
    blob = base64.b64decode(blob64)
    forged = note.replace(blob64, base64.b64encode(blob[:-1] + bytes([blob[-1] ^ 1])).decode())
    with pytest.raises(WitnessError, match="does not verify"):
        verify_cosigned(forged, vkey, origin=ORIGIN, witnesses=vkeys, quorum=1)


async def test_a_witness_ahead_of_what_the_log_knows_answers_409_then_cosigns(
        broker: Harness, witnesses: list[tuple[SpecWitness, str]], aiohttp_server: Any, tmp_path: Path) -> None:
    await fill(broker, 4)
    note = await cosigned(broker, 4)
    await fill(broker, 3)
    await cosigned(broker, 7)
    # a third witness that already saw size 4 from elsewhere, new to this broker
    signer = load_or_create_note_key(tmp_path / "log-note-key", ORIGIN)
    late = SpecWitness("witness.test/w3", {ORIGIN: (ORIGIN, signer.private_key.public_key())})
    late.state[ORIGIN] = (4, checkpoint.parse_checkpoint(note).root)
    server = await aiohttp_server(late.app())
    pool = broker.state().pool
    async with aiohttp.ClientSession() as session:
        w3 = witness.Witness(witness.parse_cosigner_key(late.vkey()), str(server.make_url("")).rstrip("/"))
        await witness.Witnessing(pool, [w3], session, PgNodeStore(pool)).round()
    assert [s for s, _ in late.requests] == [409, 200] and late.state[ORIGIN][0] == 7
    assert await pool.fetchval("SELECT count(*) FROM tlog_cosignatures WHERE witness = $1", w3.cosigner.label) == 1


async def test_a_witness_that_does_not_know_the_log_cosigns_nothing(broker: Harness, aiohttp_server: Any) -> None:
    stranger = SpecWitness("witness.test/w9", {})  # knows no log: 404
    server = await aiohttp_server(stranger.app())
    pool = broker.state().pool
    await fill(broker, 2)
    await cosigned(broker, 2)
    async with aiohttp.ClientSession() as session:
        w9 = witness.Witness(witness.parse_cosigner_key(stranger.vkey()), str(server.make_url("")).rstrip("/"))
        await witness.Witnessing(pool, [w9], session, PgNodeStore(pool)).round()
    assert [s for s, _ in stranger.requests] == [404]
    assert await pool.fetchval("SELECT count(*) FROM tlog_cosignatures WHERE witness = $1", w9.cosigner.label) == 0


async def test_an_offline_tlog_proof_round_trip_and_tampered_proofs(
        broker: Harness, witnesses: list[tuple[SpecWitness, str]]) -> None:
    entries = await fill(broker, 6)
    await cosigned(broker, 6)
    info = (await get(broker, "/v1/log")).json
    vkeys = [w.vkey() for w, _ in witnesses]
    answer = await get(broker, f"/v1/log/entries/{entries[2].id}/tlog-proof")
    assert answer.status == 200 and answer.headers["Content-Disposition"].endswith('.tlog-proof"')
    text = answer.body.decode()
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra ") and "\nindex 2\n" in text
    entry = entry_document(entries[2].row())

    def check(proof: str, **kw: Any) -> None:
        tlogproof.verify(proof, info["verifier_key"], origin=ORIGIN, witnesses=vkeys, quorum=2, **kw)

    check(text, entry=entry)
    check(text)  # the public leaf alone, as anyone can
    found, signed = tlogproof.verify(text, info["verifier_key"], origin=ORIGIN, entry=entry, witnesses=vkeys,
                                     quorum=2)
    assert (found.index, signed.size) == (2, 6)
    # the format by hand: index, proof lines from the leaf's sibling up, a blank line, the checkpoint verbatim
    lines = text.split("\n\n")[0].split("\n")
    leaf = hashlib.sha256(b"\x00" + base64.b64decode(lines[1][len("extra "):])).digest()
    assert leaf == await broker.state().pool.fetchval("SELECT hash FROM tlog_nodes WHERE level = 0 AND idx = 2")
    tampered = {
        "another entry": (text, {"entry": entry_document(entries[3].row())}),
        "a flipped proof hash": (text.replace(lines[3], base64.b64encode(
            bytes([base64.b64decode(lines[3])[0] ^ 1]) + base64.b64decode(lines[3])[1:]).decode()), {"entry": entry}),
        "another index": (text.replace("\nindex 2\n", "\nindex 3\n"), {"entry": entry}),
        "a witness line dropped": ("".join(line + "\n" for line in text.rstrip("\n").split("\n")
                                            if "witness.test/w1" not in line), {"entry": entry}),
        "another extra": (text.replace(lines[1], "extra " + base64.b64encode(b'{"v":2}').decode()), {}),
        "not a proof": ("c2sp.org/tlog-proof@v2" + text[len("c2sp.org/tlog-proof@v1"):], {"entry": entry}),
    }
    for what, (proof, kw) in tampered.items():
        with pytest.raises(tlogproof.ProofError):
            check(proof, **kw)
            pytest.fail(what)


async def test_the_sdk_checks_the_promise_and_the_witnessed_proof(
        broker: Harness, witnesses: list[tuple[SpecWitness, str]]) -> None:
    info = (await get(broker, "/v1/log")).json
    vkeys = [w.vkey() for w, _ in witnesses]
    body = exchange_body()
    async with BrokerClient(str(broker.client.make_url("")), key=broker.consumer.key, log_vkeys=[info["verifier_key"]],
                            witnesses=vkeys, witness_quorum=2) as client:
        answer = await client.exchange(dataset=body["dataset"], purpose=body["purpose"], recipient=body["recipient"],
                                       fields=body["fields"], subject=body["subject"])
        assert answer.log_entry["v"] == 2
        await cosigned(broker, 1)
        proof = await client.inclusion_proof(answer)
        assert proof.startswith("c2sp.org/tlog-proof@v1\n")
    # a stricter policy than the witnesses can meet is refused, as is a witness the checkpoint does not carry
    stranger = SpecWitness("witness.test/w3", {}).vkey()
    async with BrokerClient(str(broker.client.make_url("")), key=broker.consumer.key, log_vkeys=[info["verifier_key"]],
                            witnesses=[*vkeys, stranger], witness_quorum=3) as strict:
        with pytest.raises(VerificationError, match="2 of the 3"):
            await strict.inclusion_proof(answer)
    # another log key: the promise already fails
    other = load_or_create_note_key(Path(broker.state().config.state_dir) / "other-key", ORIGIN).verifier.vkey()
    async with BrokerClient(str(broker.client.make_url("")), key=broker.consumer.key, log_vkeys=[other]) as wrong:
        with pytest.raises(VerificationError, match="signature"):
            await wrong.exchange(dataset=body["dataset"], purpose=body["purpose"], recipient=body["recipient"],
                                 fields=body["fields"], subject=body["subject"])


async def test_log_verify_requires_the_witness_quorum(broker: Harness, witnesses: list[tuple[SpecWitness, str]],
                                                      database_url: str) -> None:
    await fill(broker, 4)
    await cosigned(broker, 4)
    vkeys = [w.vkey() for w, _ in witnesses]
    vkey = (await get(broker, "/v1/log")).json["verifier_key"]

    async def audit(keys: list[str], quorum: int) -> Report:
        conn = await db.connect(database_url)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await verify_log(DatabaseSource(conn), [vkey], origin=ORIGIN, witnesses=keys, quorum=quorum)
        finally:
            await conn.close()

    report = await audit(vkeys, 2)
    assert report.ok, report.findings
    assert report.witnessed_size is not None and report.witnessed_size >= 4
    stranger = SpecWitness("witness.test/w3", {}).vkey()
    assert [f.kind for f in (await audit([*vkeys, stranger], 3)).findings] == ["witness"]
    # a stored cosignature altered (as a superuser would, triggers off): the checkpoint is condemned
    line = await broker.state().pool.fetchval("SELECT line FROM tlog_cosignatures ORDER BY size LIMIT 1")
    blob64 = line.split(" ")[2]
    blob = base64.b64decode(blob64)
    forged = line.replace(blob64, base64.b64encode(blob[:-1] + bytes([blob[-1] ^ 1])).decode())
    await tamper(database_url, f"UPDATE tlog_cosignatures SET line = '{forged}' WHERE line = '{line}'")
    assert "checkpoint" in [f.kind for f in (await audit(vkeys, 1)).findings]
