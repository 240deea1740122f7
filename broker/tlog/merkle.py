"""RFC 9162 §2.1 Merkle tree: hashing, proof generation from stored nodes, and proof verification.

Hashing is exactly RFC 9162 (and RFC 6962): a leaf is SHA-256(0x00 || entry), an interior node is
SHA-256(0x01 || left || right), and the empty tree's root is SHA-256 of nothing.

Storage model. A node is named `NodeId(level, index)`: the perfect subtree of 2**level leaves starting at
leaf index * 2**level (level 0 holds the leaf hashes). Only *complete* perfect subtrees are ever stored.

Invariants:
- a stored node never changes once written: the log is append-only, so a node that is complete at one size is
  complete, with the same hash, at every later size. Readers need no locks and caches never go stale;
- the nodes not stored (the ragged right edge of a tree whose size is not a power of two) are recomputed on
  the fly from at most log2(size) stored nodes, so a proof reads O(log n) nodes, in one batch;
- the nodes that make up the root of a tree of size n are exactly `right_edge_ids(n)`, so the root of any past
  size can be recomputed from the store, and the appender needs nothing but those hashes to carry on;
- `verify_*` return None or raise a `ProofError`; they never return a boolean to forget, and every hash they
  are given must be 32 bytes long.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


class MerkleError(Exception):
    """Base of every failure this module reports."""


class ProofError(MerkleError):
    """A proof, or what it is checked against, does not verify. Messages are for server logs only."""


class MalformedProofError(ProofError):
    """A hash is not 32 bytes, a size or index is out of range, or the proof has the wrong length."""


class RootMismatchError(ProofError):
    """The proof is well formed, but the root it leads to is not the one claimed."""


class TreeSizeError(MerkleError, ValueError):
    """A prover or appender was asked about a leaf or size the tree does not have."""


class MissingNodeError(MerkleError, LookupError):
    """The node store lacks a node it should hold: the store is corrupt or behind the caller's size."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


@dataclass(frozen=True, slots=True)
class NodeId:
    """The perfect subtree of 2**level leaves starting at leaf `index * 2**level`."""

    level: int
    index: int


class NodeReader(Protocol):
    """Where proofs read stored nodes from (PostgreSQL in the broker, `MemoryNodeStore` in tests).

    `get_nodes` returns the hashes in the order asked, and raises `MissingNodeError` if any is absent.
    One call per proof, so a database-backed reader answers a whole proof in one round trip.
    """

    async def get_nodes(self, ids: Sequence[NodeId], /) -> Sequence[bytes]: ...


# -- Tree shape ---------------------------------------------------------------------------------------------


def _check_size(size: int) -> None:
    if size < 0:
        raise TreeSizeError(f"negative tree size {size}")


def _range_ids(start: int, length: int) -> tuple[NodeId, ...]:
    """The perfect subtrees covering leaves [start, start + length), largest (leftmost) first.

    Requires `start` to be a multiple of the largest power of two not above `length`; every range this module
    asks for (a prefix of the tree, or the clipped sibling of a node on the path) satisfies that.
    """
    ids = []
    for level in reversed(range(length.bit_length())):
        if length >> level & 1:
            ids.append(NodeId(level, start >> level))
            start += 1 << level
    return tuple(ids)


def right_edge_ids(size: int) -> tuple[NodeId, ...]:
    """The stored nodes whose hashes make up the root of a tree of `size` leaves, largest first."""
    _check_size(size)
    return _range_ids(0, size)


def _fold(hashes: Sequence[bytes]) -> bytes:
    """The root of adjacent perfect subtrees, given largest first: RFC 9162 MTH splits at the largest power of
    two, so the smaller subtrees on the right combine first."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def root_from_edge(size: int, edge: Sequence[bytes]) -> bytes:
    """The root of a tree of `size` leaves given the hashes of `right_edge_ids(size)`."""
    if len(edge) != size.bit_count():
        raise TreeSizeError(f"a tree of size {size} has {size.bit_count()} edge nodes, got {len(edge)}")
    return _fold(edge) if edge else EMPTY_ROOT


# -- Appending ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What integrating a batch of leaves produces. Store `nodes` (all new, all complete) before publishing
    `root`: a checkpoint must never name a size whose nodes are not yet readable."""

    size: int
    root: bytes
    edge: tuple[bytes, ...]
    nodes: tuple[tuple[NodeId, bytes], ...]


def append_leaves(size: int, edge: Sequence[bytes], leaf_hashes: Iterable[bytes]) -> AppendResult:
    """Integrate `leaf_hashes` after a tree of `size` leaves whose right edge hashes (those of
    `right_edge_ids(size)`, largest first) are `edge`.

    Pure: it reads nothing, so the caller can run it inside the transaction that also writes `nodes`.
    """
    _check_size(size)
    if len(edge) != size.bit_count():
        raise TreeSizeError(f"a tree of size {size} has {size.bit_count()} edge nodes, got {len(edge)}")
    for h in edge:
        _require_hash(h, "edge hash", TreeSizeError)
    stack = list(edge)
    nodes: list[tuple[NodeId, bytes]] = []
    for h in leaf_hashes:
        _require_hash(h, "leaf hash", TreeSizeError)
        index, level = size, 0
        nodes.append((NodeId(0, index), h))
        # Each trailing one bit of the old index closes a perfect subtree whose left half is on the stack.
        while index & 1:
            h = node_hash(stack.pop(), h)
            index >>= 1
            level += 1
            nodes.append((NodeId(level, index), h))
        stack.append(h)
        size += 1
    return AppendResult(size=size, root=root_from_edge(size, stack), edge=tuple(stack), nodes=tuple(nodes))


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 9162 MTH of a whole list of leaf hashes (not entries: hash them with `leaf_hash` first)."""
    return append_leaves(0, (), leaf_hashes).root


# -- Proof plans: which stored nodes a proof needs, and how to combine them ---------------------------------


@dataclass(frozen=True, slots=True)
class ProofPlan:
    """A proof as a list of components, each the fold of one or more stored nodes (more than one only for
    the single ephemeral node on the right edge). Separating the plan from the reads lets any store, sync or
    async, fetch `node_ids` in one batch."""

    components: tuple[tuple[NodeId, ...], ...]

    @property
    def node_ids(self) -> tuple[NodeId, ...]:
        return tuple(node for component in self.components for node in component)

    def assemble(self, hashes: Sequence[bytes]) -> list[bytes]:
        """The proof, given the hashes of `node_ids` in order."""
        if len(hashes) != sum(len(c) for c in self.components):
            raise MissingNodeError("the store answered a different number of nodes than asked")
        proof, at = [], 0
        for component in self.components:
            proof.append(_fold(hashes[at : at + len(component)]))
            at += len(component)
        return proof


def _path(node: NodeId, size: int) -> list[tuple[NodeId, ...]]:
    """Siblings of `node` up to the root of a tree of `size` leaves, bottom up (RFC 9162 PATH and the tail
    of SUBPROOF). A sibling clipped by the tree's end is ephemeral: it is folded from the stored nodes covering
    it. A sibling wholly beyond the end does not exist; the node is promoted unchanged."""
    level, index = node.level, node.index
    components = []
    while not (index == 0 and (1 << level) >= size):
        start = (index ^ 1) << level
        if start < size:
            components.append(_range_ids(start, min(1 << level, size - start)))
        index >>= 1
        level += 1
    return components


def plan_inclusion(index: int, size: int) -> ProofPlan:
    _check_size(size)
    if not 0 <= index < size:
        raise TreeSizeError(f"leaf {index} is not in a tree of size {size}")
    return ProofPlan(tuple(_path(NodeId(0, index), size)))


def plan_consistency(old_size: int, new_size: int) -> ProofPlan:
    _check_size(old_size)
    if not 0 < old_size <= new_size:
        # RFC 9162 defines consistency proofs for 0 < m <= n only: every tree extends the empty one.
        raise TreeSizeError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size == new_size:
        return ProofPlan(())
    # The last perfect subtree of the old tree is a node of the new tree too; the proof is that node (unless
    # it is the whole old tree, whose root the verifier already has) followed by its path in the new tree.
    level = (old_size & -old_size).bit_length() - 1
    start = NodeId(level, (old_size - 1) >> level)
    head = [] if start.index == 0 else [(start,)]
    return ProofPlan(tuple(head + _path(start, new_size)))


async def inclusion_proof(index: int, size: int, store: NodeReader) -> list[bytes]:
    """RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of `size` leaves, bottom up."""
    plan = plan_inclusion(index, size)
    return plan.assemble(await store.get_nodes(plan.node_ids))


async def consistency_proof(old_size: int, new_size: int, store: NodeReader) -> list[bytes]:
    """RFC 9162 §2.1.4.1 consistency proof between trees of `old_size` and `new_size` leaves."""
    plan = plan_consistency(old_size, new_size)
    return plan.assemble(await store.get_nodes(plan.node_ids))


async def tree_root(size: int, store: NodeReader) -> bytes:
    """The root of the tree of `size` leaves (any size the store has reached), from its stored edge."""
    edge = await store.get_nodes(right_edge_ids(size))
    return root_from_edge(size, edge)


# -- In-memory store ----------------------------------------------------------------------------------------


class MemoryNodeStore:
    """A `NodeReader` (and writer) holding each level as one contiguous byte string: 32 bytes per node, so a
    million leaves take about 64 MB. For tests, benchmarks and offline auditors."""

    def __init__(self) -> None:
        self._levels: list[bytearray] = []
        self._edge: tuple[bytes, ...] = ()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def root(self) -> bytes:
        return root_from_edge(self._size, self._edge)

    def append(self, leaf_hashes: Iterable[bytes]) -> AppendResult:
        result = append_leaves(self._size, self._edge, leaf_hashes)
        for node, h in result.nodes:
            self._put(node, h)
        self._size, self._edge = result.size, result.edge
        return result

    def _put(self, node: NodeId, h: bytes) -> None:
        while len(self._levels) <= node.level:
            self._levels.append(bytearray())
        level = self._levels[node.level]
        # Appends arrive in index order at every level; anything else would mean a rewritten node.
        if len(level) != node.index * HASH_SIZE:
            raise TreeSizeError(f"node {node} written out of order")
        level += h

    def get_nodes_now(self, ids: Sequence[NodeId]) -> list[bytes]:
        """Synchronous `get_nodes`, for callers without an event loop."""
        out = []
        for node in ids:
            level, index = node.level, node.index
            at = index * HASH_SIZE
            if level >= len(self._levels) or index < 0 or at + HASH_SIZE > len(self._levels[level]):
                raise MissingNodeError(f"no node ({level}, {index})")
            out.append(bytes(self._levels[level][at : at + HASH_SIZE]))
        return out

    async def get_nodes(self, ids: Sequence[NodeId], /) -> list[bytes]:
        return self.get_nodes_now(ids)


# -- Verification (RFC 9162 §2.1.3.2 and §2.1.4.2, step for step) ------------------------------------------


def _require_hash(h: object, what: str, error: type[MerkleError] = MalformedProofError) -> None:
    # Checked before anything else: a short or long "hash" could otherwise be compared or hashed into a
    # result that happens to match, and the vectors from transparency-dev include such cases.
    if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
        raise error(f"{what} is not a {HASH_SIZE}-byte hash")


def _require_int(n: object, what: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise MalformedProofError(f"{what} is not a non-negative integer")


def _check_root(computed: bytes, expected: bytes, what: str) -> None:
    if not hmac.compare_digest(computed, expected):
        raise RootMismatchError(f"computed {what} does not match the one claimed")


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that `leaf_hash` is leaf `index` of the tree of `size` leaves whose root is `root`."""
    _require_int(index, "leaf index")
    _require_int(size, "tree size")
    _require_hash(leaf_hash, "leaf hash")
    _require_hash(root, "root hash")
    for p in proof:
        _require_hash(p, "proof hash")
    # 1. The leaf must be in the tree.
    if index >= size:
        raise MalformedProofError(f"leaf index {index} is not below tree size {size}")
    # 2. fn walks the leaf's path, sn the path of the last leaf; they meet at the root.
    fn, sn = index, size - 1
    # 3.
    r = bytes(leaf_hash)
    # 4.
    for p in proof:
        if sn == 0:
            raise MalformedProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                # On the right edge with no right sibling: climb the levels where the node is promoted.
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # 5.
    if sn != 0:
        raise MalformedProofError("inclusion proof is shorter than the tree is deep")
    _check_root(r, root, "root")


def verify_consistency(old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes) -> None:
    """Check that the tree of `new_size` leaves with `new_root` extends the one of `old_size` with `old_root`.

    `old_size` must be at least 1: every tree extends the empty one, so there is nothing to prove, and a
    caller asking to is confused about what it holds (RFC 9162 defines the proof for 0 < old_size only).
    """
    _require_int(old_size, "old tree size")
    _require_int(new_size, "new tree size")
    _require_hash(old_root, "old root hash")
    _require_hash(new_root, "new root hash")
    for p in proof:
        _require_hash(p, "proof hash")
    if old_size > new_size:
        raise MalformedProofError(f"old tree size {old_size} is above new tree size {new_size}")
    if old_size == 0:
        raise MalformedProofError("a consistency proof from the empty tree proves nothing")
    if old_size == new_size:
        if proof:
            raise MalformedProofError("a consistency proof between equal sizes must be empty")
        _check_root(old_root, new_root, "root")
        return
    # 1.
    if not proof:
        raise MalformedProofError("empty consistency proof between different sizes")
    # 2. When the old tree is a perfect subtree, its root is the proof's implicit first hash.
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    # 3.
    fn, sn = old_size - 1, new_size - 1
    # 4. Start at the last perfect subtree of the old tree.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = bytes(path[0])
    # 6.
    for c in path[1:]:
        if sn == 0:
            raise MalformedProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7.
    if sn != 0:
        raise MalformedProofError("consistency proof is shorter than the tree is deep")
    _check_root(fr, old_root, "old root")
    _check_root(sr, new_root, "new root")
