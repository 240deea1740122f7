"""The log as C2SP tlog-tiles: hash tiles read straight from the node store, and entry bundles of public leaves.

A tile at level L, index N, holds the hashes of nodes (8·L, N·256 + i) of `tlog_nodes`, which stores every complete
perfect subtree: a tile is one range read of the primary key, byte for byte what is stored. An entry bundle holds
the data each leaf of a level-0 tile hashes: the v2 public leaf (`broker.tlog.leaves`), read from the row or, once
pruned, from its tombstone, so a bundle never changes. v1 leaves hash the whole entry, which is not public: bundles
start at the first index from which every leaf is v2 (`public_from`), rounded up to a bundle: to a tile reader, the
v1 prefix is what tlog-tiles calls pruned (below the minimum index). Hash tiles cover the whole tree.

Only sizes up to the latest checkpoint are served: a tile or bundle, once served, never changes.
"""

from __future__ import annotations

import re
import struct
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg

from broker.storage import db
from broker.tlog import leaves, merkle

WIDTH = 256
HEIGHT = 8
MAX_LEVEL = 63
_ELEMENT = re.compile(r"[0-9]{3}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class TileError(Exception):
    """A tile path that is not canonical, or a tile the published tree does not have. Safe to show."""


class EntriesNotPublic(TileError):
    """The bundle holds a v1 leaf, whose data (the whole entry) is not public."""


@dataclass(frozen=True, slots=True)
class TileRef:
    level: int
    """-1 for an entry bundle."""
    index: int
    width: int
    partial: bool

    @property
    def path(self) -> str:
        return tile_path(self.level, self.index, self.width if self.partial else None)


def tile_path(level: int, index: int, width: int | None = None) -> str:
    """`tile/<L>/<N>[.p/<W>]` (`tile/entries/...` for level -1), N in 3-digit elements, all but the last x-prefixed."""
    elements = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        elements.insert(0, f"x{index % 1000:03d}")
        index //= 1000
    path = "tile/" + ("entries" if level < 0 else str(level)) + "/" + "/".join(elements)
    return path if width is None else f"{path}.p/{width}"


def parse_tile_path(level_text: str, rest: str) -> TileRef:
    """Parse `<L>` (or `entries`) and `<N>[.p/<W>]`; only the canonical spelling of each is accepted."""
    if level_text == "entries":
        level = -1
    elif _DECIMAL.fullmatch(level_text) and int(level_text) <= MAX_LEVEL:
        level = int(level_text)
    else:
        raise TileError("the level is a decimal from 0 to 63")
    parts = rest.split("/")
    width, partial = WIDTH, False
    if len(parts) >= 2 and parts[-2].endswith(".p"):
        w = parts.pop()
        parts[-1] = parts[-1][:-2]
        if not _DECIMAL.fullmatch(w) or not 1 <= int(w) < WIDTH:
            raise TileError("a partial tile's width is a decimal from 1 to 255")
        width, partial = int(w), True
    if not parts or len(parts) > 7:
        raise TileError("the tile index is 3-digit path elements")
    index = 0
    for i, element in enumerate(parts):
        digits = element[1:] if i < len(parts) - 1 and element.startswith("x") else element
        if (i < len(parts) - 1) != element.startswith("x") or not _ELEMENT.fullmatch(digits):
            raise TileError("the tile index is 3-digit path elements, all but the last prefixed with x")
        index = index * 1000 + int(digits)
    ref = TileRef(level, index, width, partial)
    if ref.path != f"tile/{level_text}/{rest}":
        raise TileError("the tile path is not in canonical form")
    return ref


def _check_published(ref: TileRef, tree_size: int) -> None:
    level = max(ref.level, 0)
    available = tree_size // WIDTH**level  # hashes of this level the published tree has
    if (ref.index + 1) * WIDTH <= available:
        return  # inside a full tile: a partial one is its prefix
    if ref.partial and ref.index * WIDTH + ref.width <= available:
        return
    raise TileError(f"{ref.path} is not in the published tree (size {tree_size})")


async def hash_tile(conn: asyncpg.Connection | asyncpg.Pool, ref: TileRef, tree_size: int) -> bytes:
    """The tile's hashes, concatenated (32 bytes each)."""
    if ref.level < 0:
        raise TileError("entry bundles are not hash tiles")
    _check_published(ref, tree_size)
    start = ref.index * WIDTH
    rows = await conn.fetch(_q()["tile_hashes"], HEIGHT * ref.level, start, start + ref.width)
    if len(rows) != ref.width:
        raise merkle.MissingNodeError(f"{ref.path}: {ref.width - len(rows)} stored nodes missing")
    return b"".join(bytes(r["hash"]) for r in rows)


async def entry_bundle(conn: asyncpg.Connection | asyncpg.Pool, ref: TileRef, tree_size: int) -> bytes:
    """The bundle's public leaves, each prefixed with its length (big-endian uint16)."""
    if ref.level >= 0:
        raise TileError("hash tiles are not entry bundles")
    _check_published(ref, tree_size)
    start = ref.index * WIDTH
    rows = await conn.fetch(_q()["tile_entries"], start, start + ref.width)
    out = []
    for expected, r in enumerate(rows, start):
        if r["log_index"] != expected:
            raise merkle.MissingNodeError(f"{ref.path}: no row nor tombstone for index {expected}")
        if r["pruned_leaf_data"] is not None:
            data = bytes(r["pruned_leaf_data"])
        elif r["leaf_version"] == leaves.V2:
            data = leaves.leaf_data(leaves.entry_document(r))
        else:
            raise EntriesNotPublic(f"{ref.path} holds entries of the v1 format, which are not public")
        out.append(struct.pack(">H", len(data)) + data)
    if len(out) != ref.width:
        raise merkle.MissingNodeError(f"{ref.path}: rows missing")
    return b"".join(out)


async def public_from(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The first index of the first entry bundle with no v1 leaf (0 for a log born with v2)."""
    last_v1 = await conn.fetchval(_q()["tile_last_v1"])
    return 0 if last_v1 is None else (last_v1 // WIDTH + 1) * WIDTH


class TileCache:
    """The last tiles served, by path: a tile never changes once served, so a hit needs no database read. Bounded
    by count (a full tile is 8 KiB, a full bundle about 16 KiB: 2,048 of them stay under 40 MiB)."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._tiles: OrderedDict[str, bytes] = OrderedDict()

    def get(self, path: str) -> bytes | None:
        data = self._tiles.get(path)
        if data is not None:
            self._tiles.move_to_end(path)
        return data

    def put(self, path: str, data: bytes) -> None:
        self._tiles[path] = data
        self._tiles.move_to_end(path)
        while len(self._tiles) > self.size:
            self._tiles.popitem(last=False)


def _q() -> dict[str, str]:
    return db.queries("broker.tlog", "tlog.sql")
