"""The log as C2SP tlog-tiles, read over HTTP by a tile reader we did not write (tlog-scales, written from the spec by
its author): its checkpoint, root, inclusion and consistency proofs computed from our tiles alone match the log, the
hash tiles are byte for byte the node store, and entry bundles hold public leaves that hash to the level-0 tiles.

The log: 300 v1 entries (written before leaf v2), then 400 v2: one tree of 700."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tlog_scales.backend import HttpBackend
from tlog_scales.reader import TilesReader
from tlog_scales.signing import Vkey
from tlog_scales.tlog import Checkpoint as ScalesCheckpoint
from tlog_scales.tlog import ConsistencyProof

from broker.tlog import accesslog, tiles
from broker.tlog.tiles import TileError, parse_tile_path, tile_path
from tests.broker_harness import Harness, broker_config, start_broker
from tests.factories import consumer, registry_toml
from tests.tlog.test_tlog import log_entry
from tests.tlog.test_tlog_api import get

V1, V2 = 300, 400
SIZE = V1 + V2


@pytest.mark.parametrize(("level", "index", "width", "path"), [
    (0, 1234067, None, "tile/0/x001/x234/067"),  # the spec's example
    (0, 0, None, "tile/0/000"),
    (1, 1, 17, "tile/1/001.p/17"),
    (-1, 273, 112, "tile/entries/273.p/112"),
    (2, 1000, None, "tile/2/x001/000"),
])
def test_tile_paths_as_the_spec_spells_them(level: int, index: int, width: int | None, path: str) -> None:
    assert tile_path(level, index, width) == path
    _, level_text, rest = path.split("/", 2)
    ref = parse_tile_path(level_text, rest)
    assert (ref.level, ref.index, ref.width if ref.partial else None) == (level, index, width)


@pytest.mark.parametrize(("level", "rest"), [
    ("01", "000"), ("64", "000"), ("0", "1"), ("0", "0000"), ("0", "x000/001"), ("0", "001/002"),
    ("0", "x1/000"), ("0", "000.p/0"), ("0", "000.p/256"), ("0", "000.p/07"), ("0", "000.p"), ("0", ""),
    ("-1", "000"), ("entries", "x001"),
])
def test_non_canonical_tile_paths_are_refused(level: str, rest: str) -> None:
    with pytest.raises(TileError):
        parse_tile_path(level, rest)


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Harness]:
    paris = consumer()
    config = broker_config(tmp_path, database_url, registry_toml([paris], provider_url="http://127.0.0.1:9"),
                           log_key_file=tmp_path / "log-note-key", log_origin="dlnuf.test/log", log_interval=0.05,
                           log_batch=250)
    harness = await start_broker(aiohttp_client, config, paris)
    pool = harness.state().pool
    for n in range(SIZE):
        await accesslog.commit(pool, log_entry(n, released=n % 5 != 4, version=1 if n < V1 else 2))
    for _ in range(400):  # the broker's own integrator takes them (a bounded wait)
        if await pool.fetchval("SELECT size FROM tlog_checkpoints ORDER BY size DESC LIMIT 1") == SIZE:
            break
        await asyncio.sleep(0.05)
    yield harness


async def stored(pool: asyncpg.Pool, level: int, start: int, end: int) -> bytes:
    rows = await pool.fetch("SELECT hash FROM tlog_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                            level, start, end)
    return b"".join(bytes(r["hash"]) for r in rows)


async def test_hash_tiles_are_the_node_store_byte_for_byte(broker: Harness) -> None:
    pool = broker.state().pool
    for path, level, start, end in [("tile/0/000", 0, 0, 256), ("tile/0/001", 0, 256, 512),
                                    ("tile/0/002.p/188", 0, 512, 700), ("tile/0/002.p/10", 0, 512, 522),
                                    ("tile/1/000.p/2", 8, 0, 2)]:
        answer = await get(broker, f"/v1/log/{path}")
        assert answer.status == 200, (path, answer.body)
        assert answer.body == await stored(pool, level, start, end) and len(answer.body) == 32 * (end - start)
        assert answer.headers["Content-Type"] == "application/octet-stream"
        assert "immutable" in answer.headers["Cache-Control"]
    # nothing beyond the published tree, and only canonical paths
    for path in ("tile/0/002", "tile/0/002.p/189", "tile/0/003.p/1", "tile/1/000", "tile/2/000.p/1",
                 "tile/0/x000/002.p/188", "tile/00/000"):
        answer = await get(broker, f"/v1/log/{path}")
        assert answer.status == 404, path
        assert answer.headers["Content-Type"] == "application/problem+json"


async def test_entry_bundles_are_public_leaves_from_the_first_all_v2_bundle(broker: Harness) -> None:
    info = (await get(broker, "/v1/log")).json
    assert info["public_entries_from"] == 512 and info["tiles_prefix"] == "/v1/log"
    for path in ("tile/entries/000", "tile/entries/001"):  # hold v1 leaves: the whole entry, not public
        answer = await get(broker, f"/v1/log/{path}")
        assert answer.status == 404 and "v1" in answer.json["detail"]
    answer = await get(broker, "/v1/log/tile/entries/002.p/188")
    assert answer.status == 200
    level0 = (await get(broker, "/v1/log/tile/0/002.p/188")).body
    data, i = answer.body, 0
    rows = {r["log_index"]: r for r in await broker.log_rows()}
    while data:
        length = int.from_bytes(data[:2], "big")
        leaf, data = data[2:2 + length], data[2 + length:]
        assert hashlib.sha256(b"\x00" + leaf).digest() == level0[32 * i: 32 * (i + 1)]
        public = json.loads(leaf)
        # what a public reader sees: no administration, no citizen, no payload commitment
        assert set(public) == {"entry", "id", "legal_basis_type", "logged_at", "retention", "v"}
        assert public["id"] == str(rows[512 + i]["id"])
        i += 1
    assert i == 188


async def test_a_tile_reader_written_by_others_proves_everything_from_the_tiles(broker: Harness) -> None:
    base = str(broker.client.make_url("/v1/log"))
    info = (await get(broker, "/v1/log")).json
    old = (await get(broker, "/v1/log/checkpoints?start=300&limit=1")).json["checkpoints"][0]
    leaves = {r["log_index"]: r for r in await broker.log_rows()}
    pool = broker.state().pool
    level0 = await stored(pool, 0, 0, SIZE)

    def read() -> None:  # tlog-scales is synchronous (requests): run it in a thread while the broker serves
        reader = TilesReader(HttpBackend(base))
        cp = reader.get_checkpoint()
        assert (cp.origin, cp.size) == ("dlnuf.test/log", SIZE)
        cp.verify(Vkey.from_string(info["verifier_key"]))  # the log's Ed25519 note signature, their code
        root = reader.calculate_root_hash()
        assert root == cp.root_hash
        for index in (0, 1, 255, 256, 511, 512, 600, SIZE - 1):
            proof = reader.get_inclusion_proof(index, SIZE)
            proof.check(level0[32 * index: 32 * (index + 1)], root)
        old_cp = ScalesCheckpoint.from_text(old["note"])
        consistency = reader.get_consistency_proof(old_cp.size, SIZE)
        assert isinstance(consistency, ConsistencyProof)
        consistency.check(old_cp.root_hash, root)
        for index in (512, 513, SIZE - 1):
            leaf = reader.get_entry(index)
            assert hashlib.sha256(b"\x00" + leaf).digest() == level0[32 * index: 32 * (index + 1)]
            assert json.loads(leaf)["id"] == str(leaves[index]["id"])
        with pytest.raises(RuntimeError):
            reader.get_entry(10)  # a v1 entry: its bundle is not served

    await asyncio.to_thread(read)


async def test_entry_bundles_are_compressed_on_request(broker: Harness) -> None:
    async with broker.client.session.get(broker.client.make_url("/v1/log/tile/entries/002.p/188"),
                                         headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
        gzipped = await resp.read()  # decompressed by the client
    async with broker.client.session.get(broker.client.make_url("/v1/log/tile/entries/002.p/188"),
                                         headers={"Accept-Encoding": "identity"}) as resp:
        assert resp.status == 200 and "Content-Encoding" not in resp.headers
        assert await resp.read() == gzipped and len(gzipped) > 188 * 100


async def test_tiles_module_refuses_beyond_the_tree(broker: Harness) -> None:
    pool = broker.state().pool
    with pytest.raises(TileError):
        await tiles.hash_tile(pool, parse_tile_path("0", "003"), SIZE)
    assert base64.b64encode(await tiles.hash_tile(pool, parse_tile_path("0", "000.p/1"), SIZE))
