"""The log over HTTP, end to end: an exchange's inclusion promise, its proof once integrated, checked against the
signed checkpoint with an Ed25519 verification independent of broker/tlog/checkpoint.py; the proof routes, the auditor's
entries, the citizen journal (JSON and CSV), and `log verify --url`."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import hmac
import io
import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.tlog import merkle
from broker.tlog.jcs import canonicalize
from broker.tlog.verify import HttpSource, verify_entry_proof, verify_log, verify_receipt
from tests.broker_harness import Answer, Harness, broker_config, exchange_body, pivot, start_broker
from tests.factories import CONSUMER, SANDBOX_TOKEN, TOKEN_ENV, Consumer, consumer, registry_toml

ROOT = Path(__file__).resolve().parents[2]
AUDITOR = "11000201100044"  # Cour des comptes
PORTAL = "13002526500013"  # the citizen portal's operator
PROBLEM = "https://dlnuf.org/problems/"


def independent_leaf(entry: dict[str, Any]) -> bytes:
    """The leaf hash as docs/transparency-log.md defines it, with nothing of broker.tlog.leaves: v1 hashes the entry's
    RFC 8785 form; v2 a public leaf holding the hex SHA-256 of that form."""
    if entry["v"] == 1:
        return hashlib.sha256(b"\x00" + canonicalize(entry)).digest()
    public = {"entry": hashlib.sha256(canonicalize(entry)).hexdigest(), "id": entry["id"],
              "legal_basis_type": entry["legal_basis_type"], "logged_at": entry["logged_at"],
              "retention": entry["retention"], "v": 2}
    return hashlib.sha256(b"\x00" + canonicalize(public)).digest()


def run_portal_doc_snippet(document: dict[str, Any], vkey: str, tmp_path: Path) -> None:
    """docs/portal.md tells citizens how to check an export offline: run that very snippet, with this export and key."""
    text = (Path(__file__).parents[2] / "docs" / "portal.md").read_text()
    block = next(b for b in text.split("```python")[1:] if "verify_entry_proof" in b).split("```")[0]
    code = textwrap.dedent(block)
    export = tmp_path / "journal-mes-donnees-2026-11-22.json"
    export.write_text(json.dumps(document))
    assert 'VKEY = "' in code and '"journal-mes-donnees-2026-11-22.json"' in code
    code = code.replace('"journal-mes-donnees-2026-11-22.json"', repr(str(export)))
    code = "\n".join(f"VKEY = {vkey!r}" if line.startswith("VKEY = ") else line for line in code.splitlines())
    # our own documentation's code, run as a reader would; raises VerificationError if any entry does not verify
    exec(compile(code, "docs/portal.md", "exec"), {})  # noqa: S102


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> str:
    server: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def auditor() -> Consumer:
    return consumer(AUDITOR)


@pytest.fixture
def portal() -> Consumer:
    return consumer("13001234700014")


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, sandbox: str, auditor: Consumer, portal: Consumer,
                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    text = registry_toml([paris, auditor, portal], provider_url=sandbox)
    config = broker_config(tmp_path, database_url, text, log_key_file=tmp_path / "log-note-key",
                           log_origin="dlnuf.test/log", log_interval=0.05, log_max_merge_delay=5.0,
                           log_auditors=frozenset({auditor.siret}), journal_clients=frozenset({portal.siret}))
    yield await start_broker(aiohttp_client, config, paris)


async def get(h: Harness, path: str) -> Answer:
    return await h.send(b"", {}, method="GET", path=path)


async def signed_get(h: Harness, path: str, who: Consumer) -> Answer:
    return await h.send(b"", h.signed_headers(b"", method="GET", path=path, consumer=who), method="GET", path=path)


async def journal(h: Harness, who: Consumer, **body: Any) -> Answer:
    raw = json.dumps({"subject": pivot("dupont-marie-claire"), **body}).encode()
    return await h.send(raw, h.signed_headers(raw, path="/v1/journal", consumer=who), path="/v1/journal")


async def integrated(h: Harness, path: str) -> Answer:
    """Wait for the background integrator (a bounded wait, not a timing assertion)."""
    for _ in range(200):
        answer = await get(h, path)
        if answer.status != 404:
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered")


def independent_note_check(note: str, public_key: bytes, name: str) -> str:
    """C2SP signed note, checked by hand with plain Ed25519: the text, and the signature line by `name`."""
    text, _, block = note.rpartition("\n\n")
    text += "\n"
    [line] = block.rstrip("\n").split("\n")
    dash, signer, sig64 = line.split(" ")
    assert dash == "\u2014" and signer == name
    blob = base64.b64decode(sig64, validate=True)
    assert blob[:4] == hashlib.sha256(name.encode() + b"\n\x01" + public_key).digest()[:4]
    Ed25519PublicKey.from_public_bytes(public_key).verify(blob[4:], text.encode())  # raises if not
    return text


def independent_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2, written out again."""
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0
    return r


async def test_exchange_promise_then_proof_against_the_signed_checkpoint(broker: Harness) -> None:
    answer = await broker.exchange()
    assert answer.status == 200, answer.body
    await broker.verify(answer)  # the receipt is inside the broker-signed answer
    body = answer.json
    receipt = body["log"]
    info = (await get(broker, "/v1/log")).json
    assert info["origin"] == "dlnuf.test/log" and info["max_merge_delay"] == 5
    vkey = info["verifier_key"]
    name, _, key64 = vkey.split("+", 2)  # base64 may hold "+" too
    public_key = base64.b64decode(key64)[1:]

    # 1. The promise, at once: signed, for this entry, whose leaf records the payload received.
    promise = verify_receipt(receipt, vkey, origin="dlnuf.test/log", entry_id=body["log_entry_id"],
                             data=canonicalize(body["data"]))
    text = independent_note_check(receipt["inclusion_promise"], public_key, name)
    leaf = independent_leaf(receipt["entry"])
    assert text.split("\n")[3] == base64.b64encode(leaf).decode() == receipt["leaf_hash"]
    # the salted commitment, checked independently: HMAC-SHA-256 keyed by the receipt's salt, over the data's JCS
    salt = base64.b64decode(receipt["payload_salt"])
    assert receipt["entry"]["payload_commitment"] == hmac.new(salt, canonicalize(body["data"]), "sha256").hexdigest()
    assert "payload_sha256" not in receipt["entry"]
    assert "dupont" not in json.dumps(receipt).lower()  # the subject only as its keyed hash

    # 2. After integration, the proof by entry id, against the signed checkpoint.
    proved = (await integrated(broker, f"/v1/log/entries/{body['log_entry_id']}/proof")).json
    signed = verify_entry_proof(proved, vkey, origin="dlnuf.test/log", leaf_hash=promise.leaf_hash)
    body_lines = independent_note_check(proved["checkpoint"], public_key, name).split("\n")
    assert body_lines[0] == "dlnuf.test/log" and int(body_lines[1]) == proved["tree_size"] == signed.size
    root = base64.b64decode(body_lines[2])
    proof = [base64.b64decode(p) for p in proved["inclusion_proof"]]
    assert independent_inclusion(leaf, proved["index"], proved["tree_size"], proof) == root

    # 3. The latest checkpoint is the one at the stable URL.
    latest = await get(broker, "/v1/log/checkpoint")
    assert latest.headers["Content-Type"].startswith("text/plain") and latest.body.decode() == proved["checkpoint"]


async def test_proof_routes(broker: Harness) -> None:
    for _ in range(3):
        assert (await broker.exchange()).status == 200
    bad = await broker.exchange(exchange_body(purpose="curiosite"))  # refused entries are logged too
    assert bad.status == 403 and "log" not in bad.json
    for _ in range(200):
        size = int((await get(broker, "/v1/log/checkpoint")).body.decode().split("\n")[1])
        if size == 4:
            break
        await asyncio.sleep(0.05)
    vkey = (await get(broker, "/v1/log")).json["verifier_key"]
    from broker.tlog.checkpoint import verify_checkpoint

    listed = (await get(broker, "/v1/log/checkpoints")).json["checkpoints"]
    assert listed[0]["size"] == 0 and listed[-1]["size"] == 4
    roots = {c["size"]: verify_checkpoint(c["note"], vkey).root for c in listed}
    assert (await get(broker, "/v1/log/checkpoints?start=4")).json["checkpoints"][0]["size"] == 4
    at = await get(broker, "/v1/log/checkpoints/4")
    assert at.body.decode() == listed[-1]["note"] and "immutable" in at.headers["Cache-Control"]

    rows = await broker.log_rows()
    leaves = {r["log_index"]: r for r in rows}
    from broker.tlog.log import entry_document, leaf_of

    for index in range(4):
        proof = (await get(broker, f"/v1/log/proof/inclusion?index={index}&tree_size=4")).json
        merkle.verify_inclusion(leaf_of(entry_document(leaves[index])), index, 4,
                                [base64.b64decode(p) for p in proof["inclusion_proof"]], roots[4])
    for old in sorted(roots):
        if old:
            proof = (await get(broker, f"/v1/log/proof/consistency?first={old}&second=4")).json
            merkle.verify_consistency(old, 4, [base64.b64decode(p) for p in proof["consistency_proof"]],
                                      roots[old], roots[4])

    # a size no checkpoint was signed at: rounds may have signed any of 1..3, depending on how commits batched
    no_checkpoint = next((n for n in range(1, 4) if n not in roots), 5)
    for path, status in [
        ("/v1/log/proof/inclusion?index=4&tree_size=4", 400), ("/v1/log/proof/inclusion?index=0&tree_size=5", 400),
        ("/v1/log/proof/inclusion?index=-1&tree_size=4", 400), ("/v1/log/proof/inclusion?tree_size=4", 400),
        ("/v1/log/proof/inclusion?index=0&tree_size=99999999999999999999", 400),
        ("/v1/log/proof/consistency?first=0&second=4", 400), ("/v1/log/proof/consistency?first=3&second=2", 400),
        ("/v1/log/entries/not-a-uuid/proof", 400), ("/v1/log/checkpoints/x", 400),
        (f"/v1/log/checkpoints/{no_checkpoint}", 404),
        ("/v1/log/entries/00000000-0000-0000-0000-000000000000/proof", 404), ("/v1/log/checkpoints?limit=0", 400),
    ]:
        answer = await get(broker, path)
        assert answer.status == status, (path, answer.body)
        assert answer.headers["Content-Type"].startswith("application/problem+json")

    for _ in range(100):  # the gauges are set just after the round's commit, which the test may see first
        metrics = (await get(broker, "/metrics")).body.decode()
        if "dlnuf_tlog_tree_size 4.0" in metrics:
            break
        await asyncio.sleep(0.05)
    assert "dlnuf_tlog_integration_lag_seconds_count 4.0" in metrics and "dlnuf_tlog_tree_size 4.0" in metrics


async def test_entries_are_for_auditors_only(broker: Harness, auditor: Consumer, portal: Consumer) -> None:
    assert (await broker.exchange()).status == 200
    await integrated(broker, f"/v1/log/entries/{(await broker.log_rows())[0]['id']}/proof")
    path = "/v1/log/entries?start=0&end=1"
    assert (await get(broker, path)).json["type"] == PROBLEM + "signature-rejected"
    refused = await signed_get(broker, path, portal)
    assert refused.status == 403 and refused.json["type"] == PROBLEM + "not-authorized"
    answer = await signed_get(broker, path, auditor)
    assert answer.status == 200, answer.body
    await broker.verify(answer)
    [entry] = answer.json["entries"]
    assert entry["index"] == 0 and entry["entry"]["consumer"] == CONSUMER and entry["pruned"] is None
    for bad in ("/v1/log/entries?start=0&end=2", "/v1/log/entries?start=1&end=0", "/v1/log/entries?start=0&end=5000"):
        assert (await signed_get(broker, bad, auditor)).status == 400, bad


async def test_log_verify_over_http(broker: Harness, auditor: Consumer) -> None:
    for _ in range(5):
        assert (await broker.exchange()).status == 200
    for _ in range(200):
        if (await get(broker, "/v1/log/checkpoint")).body.decode().split("\n")[1] == "5":
            break
        await asyncio.sleep(0.05)
    vkey = (await get(broker, "/v1/log")).json["verifier_key"]
    async with aiohttp.ClientSession() as session:
        source = HttpSource(session, broker.url("/"), auditor.key)
        report = await verify_log(source, [vkey], origin="dlnuf.test/log", page=2)
        assert report.ok, report.findings
        assert (report.entries, report.tree_size) == (5, 5)
        nobody = HttpSource(session, broker.url("/"), None)
        from broker.tlog.verify import SourceError

        with pytest.raises(SourceError, match="auditor"):
            await verify_log(nobody, [vkey], origin="dlnuf.test/log")


async def test_citizen_journal_json_and_csv(broker: Harness, portal: Consumer, auditor: Consumer,
                                           tmp_path: Path) -> None:
    assert (await broker.exchange()).status == 200
    assert (await broker.exchange(exchange_body(purpose="curiosite"))).status == 403
    assert (await broker.exchange(exchange_body(pivot("martin-jean-pierre")))).status in (200, 404, 409)
    rows = await broker.log_rows()
    await integrated(broker, f"/v1/log/entries/{rows[-1]['id']}/proof")

    answer = await journal(broker, portal)
    assert answer.status == 200, answer.body
    await broker.verify(answer)
    found = answer.json
    vkey = (await get(broker, "/v1/log")).json["verifier_key"]
    from broker.tlog.checkpoint import verify_checkpoint

    signed = verify_checkpoint(found["checkpoint"], vkey, origin="dlnuf.test/log")
    assert [e["entry"]["outcome"] for e in found["entries"]] == ["refused", "released"]  # newest first
    for e in found["entries"]:
        leaf = independent_leaf(e["entry"])
        assert base64.b64encode(leaf).decode() == e["leaf_hash"]
        merkle.verify_inclusion(leaf, e["index"], signed.size, [base64.b64decode(p) for p in e["inclusion_proof"]],
                                signed.root)
        assert e["entry"]["consumer"] == CONSUMER and e["consumer_name"] == f"Commune {CONSUMER}"
    assert found["truncated"] is False
    run_portal_doc_snippet(found, vkey, tmp_path)

    assert len((await journal(broker, portal, dataset="statut_etudiant")).json["entries"]) == 0
    assert len((await journal(broker, portal, consumer=CONSUMER, since="2020-01-01")).json["entries"]) == 2
    assert len((await journal(broker, portal, until="2020-01-01T00:00:00Z")).json["entries"]) == 0
    assert len((await journal(broker, portal, limit=1)).json["entries"]) == 1

    exported = await journal(broker, portal, format="csv")
    assert exported.status == 200 and exported.headers["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.body.decode())))
    assert [r["outcome"] for r in table] == ["refused", "released"]
    assert table[1]["legal_basis_url"].startswith("https://www.legifrance.gouv.fr/")
    assert table[1]["fields_released"] == "quotient_familial enfants" and table[1]["tree_size"] == str(signed.size)

    refused = await journal(broker, auditor)
    assert refused.status == 403 and refused.json["type"] == PROBLEM + "not-authorized"
    for bad in ({"format": "xml"}, {"since": "yesterday"}, {"since": "2026-01-01T00:00:00"}, {"limit": 0},
                {"consumer": "paris"}, {"colour": "blue"}, {"subject": {}}):
        answer = await journal(broker, portal, **bad)
        assert answer.status == 400 and answer.json["type"].startswith(PROBLEM + "invalid-"), bad


async def test_log_verify_command_over_http_names_a_tampered_row(
        broker: Harness, auditor: Consumer, tmp_path: Path) -> None:
    for _ in range(3):
        assert (await broker.exchange()).status == 200
    for _ in range(200):
        if (await get(broker, "/v1/log/checkpoint")).body.decode().split("\n")[1] == "3":
            break
        await asyncio.sleep(0.05)
    vkey = (await get(broker, "/v1/log")).json["verifier_key"]
    key_file = tmp_path / "auditor.jwk"
    key_file.write_text(json.dumps(auditor.key.to_jwk()))

    async def verify_command() -> tuple[int, str, str]:
        env = {**os.environ, "DLNUF_STATE_DIR": str(tmp_path / "cli-state")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "log", "verify", "--url", broker.url("/"), "--key", str(key_file),
            "--vkey", vkey, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await verify_command()
    assert code == 0, err
    assert "3 of 3 entries" in out and "OK" in out

    conn = await asyncpg.connect(broker.database_url)
    try:
        victim = await conn.fetchval("SELECT entry_id FROM tlog_entries WHERE log_index = 1")
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("UPDATE access_log SET fields_released = '{}' WHERE id = $1", victim)
    finally:
        await conn.close()
    code, out, _ = await verify_command()
    assert code == 1 and f"modified index 1 entry {victim}" in out
