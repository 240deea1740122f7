""""Vérifier", the verification in the browser (broker/citizen/static/verify.js), in Chromium's WebCrypto.

First its pieces against independent references: RFC 8785 and randomly drawn JSON against the Python JCS, the
transparency-dev inclusion-proof vectors, checkpoints signed by the Python note signer and their forgeries. Then
in the portal, on a real journal: an entry edited in the database, a forged checkpoint and a wrong log key are
all reported as not in the public log.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import Page

from broker.citizen import pages
from broker.tlog import checkpoint, merkle, witness
from broker.tlog.jcs import canonicalize
from broker.tlog.log import TLOG, NoteSigner, leaf_of
from tests.browser.citizen import IN_LOG, NOT_IN_LOG, OpenPage, integrate, login, paris_exchange, verify_row
from tests.consent_harness import ConsentStack
from tests.tlog.test_jcs import APPENDIX_B, RFC_INPUT, RFC_OUTPUT, RFC_SORTING_INPUT
from tests.tlog.test_merkle_vectors import INCLUSION

ORIGIN = "dlnuf.test/log"


# -- the pieces, on a bare page ----------------------------------------------------------------------------------


@pytest.fixture
async def bare_page(open_page: OpenPage) -> AsyncIterator[Page]:
    """An empty page of a 127.0.0.1 origin (a secure context: WebCrypto is there) that loads verify.js."""

    async def blank(request: web.Request) -> web.Response:
        return web.Response(text='<!doctype html><html lang="fr"><head><title>t</title>'
                                 '<script src="/static/app/verify.js"></script></head><body></body></html>',
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/", blank)
    pages.add_static_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    tab = await open_page()
    await tab.page.goto(f"http://127.0.0.1:{port}/")
    yield tab.page
    await runner.cleanup()


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    strings = ["", "a", "é", "€", "\U0001f600", "\ufb33", "\u0080", "\r\n\t", '"\\/', "\x00\x1f", "z" * 5, "Ω≈ç"]
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randrange(-(2**53), 2**53)
    if kind == 3:
        bits = rng.getrandbits(64)
        value: float = struct.unpack(">d", bits.to_bytes(8, "big"))[0]
        return value if value == value and abs(value) != float("inf") else 0.5
    if kind == 4:
        return rng.choice(strings) + rng.choice(strings)
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(strings) + str(i): _random_json(rng, depth + 1) for i in range(rng.randrange(5))}


async def test_canonicalization_matches_rfc_8785_and_the_server(bare_page: Page) -> None:
    canon = "text => window.dlnufVerify.canonicalize(JSON.parse(text))"
    assert await bare_page.evaluate(canon, RFC_INPUT) == RFC_OUTPUT
    assert await bare_page.evaluate(canon, RFC_SORTING_INPUT) == canonicalize(json.loads(RFC_SORTING_INPUT)).decode()
    numbers = [struct.unpack(">d", bytes.fromhex(h))[0] for h, spelled in APPENDIX_B if spelled is not None]
    spelled = [s for _, s in APPENDIX_B if s is not None]
    assert await bare_page.evaluate("ns => ns.map(n => window.dlnufVerify.canonicalize(n))", numbers) == spelled
    rng = random.Random(8785)
    documents = [_random_json(rng) for _ in range(300)]
    texts = [json.dumps(d) for d in documents]
    assert await bare_page.evaluate(f"ts => ts.map({canon})", texts) == [canonicalize(d).decode() for d in documents]


async def test_inclusion_proofs_against_the_transparency_dev_vectors(bare_page: Page) -> None:
    cases = [p.values[0] for p in INCLUSION]
    verdicts = await bare_page.evaluate("""async cases => {
        const bytes = s => Uint8Array.from(atob(s), c => c.charCodeAt(0));
        const out = [];
        for (const c of cases) {
            try {
                const root = await window.dlnufVerify.rootFromInclusionProof(bytes(c.leafHash), BigInt(c.leafIdx),
                    BigInt(c.treeSize), (c.proof || []).map(bytes));
                out.push(btoa(String.fromCharCode(...root)) === c.root);
            } catch (e) {
                if (!(e instanceof window.dlnufVerify.VerifyError)) throw e;
                out.push(false);
            }
        }
        return out;
    }""", cases)
    assert len(verdicts) == 98
    assert verdicts == [not c["wantErr"] for c in cases]


async def _signed_log(entries: int = 7) -> tuple[NoteSigner, list[dict[str, Any]], merkle.MemoryNodeStore]:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    documents = [{"v": 1, "id": str(uuid.uuid4()), "logged_at": "2026-11-22T10:00:00.000000Z", "n": i,
                  "outcome": "released", "dataset": "quotient_familial", "consumer": "21750001600019"}
                 for i in range(entries)]
    store = merkle.MemoryNodeStore()
    store.append(leaf_of(d) for d in documents)
    return signer, documents, store


async def _entry(signer: NoteSigner, documents: list[dict[str, Any]], store: merkle.MemoryNodeStore,
                 index: int) -> dict[str, Any]:
    size = len(documents)
    proof = await merkle.inclusion_proof(index, size, store)
    return {
        "canonical": canonicalize(documents[index]).decode(), "index": str(index), "treeSize": str(size),
        "proof": [base64.b64encode(h).decode() for h in proof],
        "checkpoint": signer.sign_checkpoint(size, store.root), "verifierKey": signer.verifier.vkey(),
        "origin": ORIGIN,
    }


def _flip(text: str, at: int) -> str:
    """`text` with the base64 character at `at` changed (still canonical base64: a forged signature)."""
    return text[:at] + ("B" if text[at] == "A" else "A") + text[at + 1:]


async def _verify(page: Page, materials: dict[str, Any]) -> str:
    """'ok', or the step that failed."""
    result: str = await page.evaluate("""async m => {
        try { await window.dlnufVerify.verifyEntry(m); return "ok"; }
        catch (e) { if (e instanceof window.dlnufVerify.VerifyError) return e.step; throw e; }
    }""", materials)
    return result


async def test_an_entry_verifies_and_every_forgery_fails(bare_page: Page) -> None:
    signer, documents, store = await _signed_log()
    for index in range(len(documents)):
        assert await _verify(bare_page, await _entry(signer, documents, store, index)) == "ok"
    good = await _entry(signer, documents, store, 3)
    note = good["checkpoint"]
    body, _, signature_line = note.rpartition("\n\n")
    other = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    witness = NoteSigner("witness.example/w", Ed25519PrivateKey.generate())
    edited = dict(documents[3], outcome="refused")
    name, key_id, key64 = signer.verifier.vkey().split("+", 2)
    cases: list[tuple[str, dict[str, Any], str]] = [
        # the entry changed after it was logged: its leaf is not the one the tree holds
        ("edited entry", {"canonical": canonicalize(edited).decode()}, "proof"),
        ("another entry's proof", {"index": "4"}, "proof"),
        ("non-canonical entry", {"canonical": json.dumps(documents[3])}, "canonical"),
        ("short proof", {"proof": good["proof"][:-1]}, "proof"),
        ("long proof", {"proof": [*good["proof"], good["proof"][0]]}, "proof"),
        ("index beyond the tree", {"index": "7"}, "proof"),
        ("checkpoint of another size", {"treeSize": "8"}, "checkpoint"),
        ("not yet integrated", {"index": None}, "pending"),
        # the checkpoint: forged, or signed by someone else, or for another log
        ("altered checkpoint text", {"checkpoint": note.replace(f"\n{len(documents)}\n", "\n6\n", 1)}, "signature"),
        ("forged signature", {"checkpoint": body + "\n\n" + _flip(signature_line, -20)}, "signature"),
        ("another key's checkpoint", {"checkpoint": other.sign_checkpoint(len(documents), store.root)},
         "signature"),
        ("another log key", {"verifierKey": other.verifier.vkey()}, "signature"),
        ("a key whose id does not match", {"verifierKey": f"{name}+00000000+{key64}"}, "key"),
        ("a malformed key", {"verifierKey": f"{name}+{key_id}"}, "key"),
        ("another log's origin", {"origin": "other.example/log"}, "checkpoint"),
    ]
    for name, change, step in cases:
        assert await _verify(bare_page, {**good, **change}) == step, name
    # a witness's cosignature beside the log's is not the log's to judge
    cosigned = note + witness.sign_checkpoint(len(documents), store.root).rpartition("\n\n")[2]
    assert await _verify(bare_page, {**good, "checkpoint": cosigned}) == "ok"
    # and the Python verifier agrees with the browser on the good case
    signed = checkpoint.verify_checkpoint(note, signer.verifier.vkey())
    merkle.verify_inclusion(leaf_of(documents[3]), 3, signed.size, [base64.b64decode(p) for p in good["proof"]],
                            signed.root)


def _v2(n: int) -> dict[str, Any]:
    """A v2 entry of the fixed shape, as the pipeline writes it."""
    return {"v": 2, "id": str(uuid.uuid4()), "logged_at": f"2026-11-22T10:00:0{n}.000000Z", "request_id": str(n),
            "consumer": "21750001600019", "kid": "k", "dataset": "quotient_familial", "dataset_version": 1,
            "purpose": "tarification-restauration-scolaire", "recipient": "21750001600019",
            "habilitation_id": "h", "legal_basis_type": "information", "legal_basis_title": "CRPA, article L114-8 é",
            "legal_basis_url": "https://legifrance.gouv.fr/", "fields_requested": ["quotient_familial"],
            "fields_released": ["quotient_familial"], "outcome": "released", "problem_type": None,
            "http_status": 200, "latency_us": 12345 + n, "payload_commitment": "ab" * 32, "subject_key": "cd" * 32,
            "retention": "P1Y", "request_signature_sha256": "ef" * 32}


async def test_v1_and_v2_entries_of_one_tree_and_the_witness_quorum(bare_page: Page) -> None:
    signer, documents, store = await _signed_log(3)  # three v1 entries, then four v2 ones
    fresh = [_v2(n) for n in range(4)]
    store.append(leaf_of(d) for d in fresh)
    documents = [*documents, *fresh]
    for index in range(len(documents)):
        assert await _verify(bare_page, await _entry(signer, documents, store, index)) == "ok", index
    edited = dict(fresh[1], retention="P1D")  # a v2 entry's retention changed: not the public leaf logged
    good = await _entry(signer, documents, store, 4)
    assert await _verify(bare_page, {**good, "canonical": canonicalize(edited).decode()}) == "proof"
    # witnesses: the checkpoint cosigned by two, per C2SP tlog-cosignature
    w1, w2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = [witness.Cosigner.from_key(f"witness.test/w{i}", k.public_key()).vkey() for i, k in ((1, w1), (2, w2))]
    body = good["checkpoint"].rpartition("\n\n")[0] + "\n"
    lines = [witness.cosign(f"witness.test/w{i}", k, body, 1700000000 + i) + "\n" for i, k in ((1, w1), (2, w2))]
    both = {**good, "checkpoint": good["checkpoint"] + "".join(lines), "witnesses": " ".join(keys)}
    assert await _verify(bare_page, {**both, "quorum": "2"}) == "ok"
    assert await _verify(bare_page, {**both, "quorum": "3"}) == "witness"  # more than known: refused
    one = {**both, "checkpoint": good["checkpoint"] + lines[0]}
    assert await _verify(bare_page, {**one, "quorum": "1"}) == "ok"
    assert await _verify(bare_page, {**one, "quorum": "2"}) == "witness"
    forged = lines[1][:-30] + ("A" if lines[1][-30] != "A" else "B") + lines[1][-29:]
    assert await _verify(bare_page, {**both, "checkpoint": good["checkpoint"] + lines[0] + forged,
                                     "quorum": "1"}) == "witness"
    # the Python verifier agrees
    witness.verify_cosigned(both["checkpoint"], signer.verifier, origin=ORIGIN, witnesses=keys, quorum=2)


# -- in the portal -----------------------------------------------------------------------------------------------


async def _tamper(stack: ConsentStack, entry_id: str) -> None:
    """What someone with write access to the database does: disable the guard, edit a logged row."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE access_log DISABLE TRIGGER access_log_guard")
            await conn.execute("UPDATE access_log SET purpose = 'tout-autre-chose' WHERE id = $1",
                               uuid.UUID(entry_id))
            await conn.execute("ALTER TABLE access_log ENABLE TRIGGER access_log_guard")
    finally:
        await conn.close()


async def test_a_tampered_entry_is_not_in_the_public_log(stack: ConsentStack, open_page: OpenPage) -> None:
    first = await paris_exchange(stack)
    await paris_exchange(stack)
    await integrate(stack)
    await _tamper(stack, first.log_entry_id)
    page = (await open_page()).page
    await login(page, stack, path="/citizen/journal")
    # newest first: row 1 is intact, row 2 was edited in the database
    assert (await verify_row(page, 1)).startswith(IN_LOG)
    tampered = await verify_row(page, 2)
    assert tampered.startswith(NOT_IN_LOG)
    assert "ne mène pas à la racine signée" in tampered
    assert "Tout autre chose" in await page.locator("ol.journal > li:nth-child(2)").inner_text()

    # a checkpoint whose signature was altered (here in the page itself) is refused, whatever the proof says
    log = page.locator("#journal-verification")
    note = await log.get_attribute("data-checkpoint")
    assert note is not None
    await log.evaluate("(el, note) => { el.dataset.checkpoint = note; }", _flip(note, -20))
    forged = await verify_row(page, 1)
    assert forged.startswith(NOT_IN_LOG) and "signature du point de contrôle" in forged

    # and a log key that is not the log's proves nothing either
    other = NoteSigner(stack.app[TLOG].origin, Ed25519PrivateKey.generate())
    await page.reload()
    await page.evaluate("k => { document.getElementById('journal-verification').dataset.verifierKey = k; }",
                        other.verifier.vkey())
    assert (await verify_row(page, 1)).startswith(NOT_IN_LOG)

