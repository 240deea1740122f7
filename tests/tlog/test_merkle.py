"""Merkle tree: reference hashes, the prover against RFC 9162's recursive definitions, the store, properties.

The prover reads nodes from one store of `MAX_SIZE` leaves for every smaller tree size too: that a store
written at size n serves proofs for every size below n is the append-only invariant the broker relies on.
"""

from __future__ import annotations

import hashlib
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.tlog import merkle
from broker.tlog.merkle import (
    EMPTY_ROOT,
    MalformedProofError,
    MemoryNodeStore,
    MissingNodeError,
    NodeId,
    ProofError,
    RootMismatchError,
    TreeSizeError,
)

# RFC 6962 reference tree (as in transparency-dev/merkle testonly/constants.go, Apache-2.0).
STANDARD_LEAVES = [
    b"",
    *(bytes.fromhex(h) for h in ("00", "10", "2021", "3031", "40414243", "5051525354555657")),
    bytes.fromhex("606162636465666768696a6b6c6d6e6f"),
]
STANDARD_ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
STANDARD_NODES = {
    NodeId(level, index): bytes.fromhex(h)
    for level, row in enumerate(
        [
            [
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
                "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
            ],
            [
                "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            ],
            [
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
            ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
        ]
    )
    for index, h in enumerate(row)
}

MAX_SIZE = 2048


@cache
def big_leaves() -> tuple[bytes, ...]:
    # Distinct leaves, so no two nodes share a hash and a moved proof cannot verify by coincidence.
    return tuple(merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_SIZE))


@cache
def big_store() -> MemoryNodeStore:
    store = MemoryNodeStore()
    store.append(big_leaves())
    return store


def inclusion(index: int, size: int) -> list[bytes]:
    plan = merkle.plan_inclusion(index, size)
    return plan.assemble(big_store().get_nodes_now(plan.node_ids))


def consistency(old: int, new: int) -> list[bytes]:
    plan = merkle.plan_consistency(old, new)
    return plan.assemble(big_store().get_nodes_now(plan.node_ids))


def root_at(size: int) -> bytes:
    return merkle.root_from_edge(size, big_store().get_nodes_now(merkle.right_edge_ids(size)))


# -- RFC 9162 §2.1.1, 2.1.3.1 and 2.1.4.1 as written (recursive), over `big_leaves()` -----------------------


def _split(n: int) -> int:
    """The largest power of two smaller than n."""
    return 1 << ((n - 1).bit_length() - 1)


@cache
def mth(start: int, end: int) -> bytes:
    n = end - start
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return big_leaves()[start]
    k = _split(n)
    return merkle.node_hash(mth(start, start + k), mth(start + k, end))


def rfc_path(m: int, start: int, end: int) -> list[bytes]:
    n = end - start
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*rfc_path(m, start, start + k), mth(start + k, end)]
    return [*rfc_path(m - k, start + k, end), mth(start, start + k)]


def rfc_subproof(m: int, start: int, end: int, b: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if b else [mth(start, end)]
    k = _split(n)
    if m <= k:
        return [*rfc_subproof(m, start, start + k, b), mth(start + k, end)]
    return [*rfc_subproof(m - k, start + k, end, False), mth(start, start + k)]


# -- Hashing and the reference tree -------------------------------------------------------------------------


def test_hashing_is_rfc_9162() -> None:
    assert STANDARD_ROOTS[0] == EMPTY_ROOT
    assert merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()


@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size: int) -> None:
    leaf_hashes = [merkle.leaf_hash(e) for e in STANDARD_LEAVES[:size]]
    assert merkle.root(leaf_hashes) == STANDARD_ROOTS[size]


async def test_one_store_serves_every_past_size() -> None:
    store = MemoryNodeStore()
    result = store.append(merkle.leaf_hash(e) for e in STANDARD_LEAVES)
    assert result.root == STANDARD_ROOTS[8] == store.root
    assert dict(result.nodes) == STANDARD_NODES
    for size in range(9):
        assert await merkle.tree_root(size, store) == STANDARD_ROOTS[size]


@pytest.mark.parametrize("splits", [(1, 1, 1, 1, 1, 1, 1, 1), (3, 5), (5, 3), (2, 2, 4), (0, 8, 0), (7, 1)])
def test_batches_give_the_same_tree_as_one_append(splits: tuple[int, ...]) -> None:
    hashes = [merkle.leaf_hash(e) for e in STANDARD_LEAVES]
    size, edge, nodes, at = 0, (), {}, 0
    for n in splits:
        result = merkle.append_leaves(size, edge, hashes[at : at + n])
        assert result.root == STANDARD_ROOTS[result.size]
        assert not nodes.keys() & dict(result.nodes).keys(), "a stored node was written twice"
        nodes.update(result.nodes)
        size, edge, at = result.size, result.edge, at + n
    assert nodes == STANDARD_NODES


def test_edge_is_the_stored_right_edge() -> None:
    for size in range(1, 9):
        edge = merkle.append_leaves(0, (), [merkle.leaf_hash(e) for e in STANDARD_LEAVES[:size]]).edge
        assert edge == tuple(STANDARD_NODES[n] for n in merkle.right_edge_ids(size))


def test_appender_refuses_a_wrong_edge_or_leaf() -> None:
    with pytest.raises(TreeSizeError):
        merkle.append_leaves(3, [b"\x00" * 32], [])
    with pytest.raises(TreeSizeError):
        merkle.append_leaves(1, [b"\x00" * 31], [])
    with pytest.raises(TreeSizeError):
        merkle.append_leaves(0, [], [b"short"])
    with pytest.raises(TreeSizeError):
        merkle.append_leaves(-1, [], [])


# -- The prover ---------------------------------------------------------------------------------------------


def test_prover_matches_rfc_definitions_exhaustively() -> None:
    for n in range(1, 70):
        assert root_at(n) == mth(0, n)
        for m in range(n):
            assert inclusion(m, n) == rfc_path(m, 0, n), (m, n)
        for m in range(1, n + 1):
            assert consistency(m, n) == rfc_subproof(m, 0, n, True), (m, n)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_prover_matches_rfc_definitions_on_big_trees(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, MAX_SIZE))
    m = data.draw(st.integers(0, n - 1))
    assert inclusion(m, n) == rfc_path(m, 0, n)
    assert consistency(m + 1, n) == rfc_subproof(m + 1, 0, n, True)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_proof_reads_logarithmically_many_nodes(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, MAX_SIZE))
    m = data.draw(st.integers(1, n))
    depth = (n - 1).bit_length()
    # At most one sibling per level, plus the ephemeral sibling's pieces (one per level below it).
    assert len(merkle.plan_inclusion(m - 1, n).node_ids) <= 2 * depth
    assert len(merkle.plan_consistency(m, n).node_ids) <= 2 * depth + 1


def test_prover_refuses_impossible_requests() -> None:
    for index, size in [(0, 0), (5, 5), (-1, 5)]:
        with pytest.raises(TreeSizeError):
            merkle.plan_inclusion(index, size)
    for old, new in [(0, 0), (0, 5), (6, 5), (-1, 2)]:
        with pytest.raises(TreeSizeError):
            merkle.plan_consistency(old, new)


async def test_async_prover_and_missing_nodes() -> None:
    store = MemoryNodeStore()
    store.append(big_leaves()[:100])
    proof = await merkle.inclusion_proof(37, 100, store)
    merkle.verify_inclusion(big_leaves()[37], 37, 100, proof, root_at(100))
    proof = await merkle.consistency_proof(37, 100, store)
    merkle.verify_consistency(37, 100, proof, root_at(37), root_at(100))
    # A caller ahead of its store must hear about it, never receive a proof for another tree.
    with pytest.raises(MissingNodeError):
        await merkle.inclusion_proof(37, 101, store)
    with pytest.raises(MissingNodeError):
        await merkle.tree_root(101, store)


def test_store_refuses_rewrites() -> None:
    store = MemoryNodeStore()
    store.append(big_leaves()[:4])
    with pytest.raises(TreeSizeError):
        store._put(NodeId(0, 2), b"\x00" * 32)


def test_plan_refuses_a_short_answer() -> None:
    plan = merkle.plan_inclusion(0, 8)
    with pytest.raises(MissingNodeError):
        plan.assemble([b"\x00" * 32])


# -- The verifier's refusals --------------------------------------------------------------------------------

H = b"\x11" * 32


@pytest.mark.parametrize("bad", [b"", b"\x11" * 31, b"\x11" * 33])
def test_verifiers_refuse_hashes_that_are_not_32_bytes(bad: bytes) -> None:
    leaf, proof, root = big_leaves()[2], inclusion(2, 5), root_at(5)
    with pytest.raises(MalformedProofError):
        merkle.verify_inclusion(bad, 2, 5, proof, root)
    with pytest.raises(MalformedProofError):
        merkle.verify_inclusion(leaf, 2, 5, proof, bad)
    with pytest.raises(MalformedProofError):
        merkle.verify_inclusion(leaf, 2, 5, [*proof[:-1], bad], root)
    proof = consistency(3, 5)
    with pytest.raises(MalformedProofError):
        merkle.verify_consistency(3, 5, proof, bad, root)
    with pytest.raises(MalformedProofError):
        merkle.verify_consistency(3, 5, proof, root_at(3), bad)
    with pytest.raises(MalformedProofError):
        merkle.verify_consistency(3, 5, [bad, *proof[1:]], root_at(3), root)
    # Equal sizes compare the roots directly, but still only as hashes.
    with pytest.raises(MalformedProofError):
        merkle.verify_consistency(3, 3, [], bad, bad)


def test_verifiers_refuse_non_integers_and_negatives() -> None:
    with pytest.raises(MalformedProofError):
        merkle.verify_inclusion(H, True, 2, [H], H)
    with pytest.raises(MalformedProofError):
        merkle.verify_inclusion(H, -1, 2, [H], H)
    with pytest.raises(MalformedProofError):
        merkle.verify_consistency(-1, 2, [H], H, H)


def test_equal_sizes() -> None:
    merkle.verify_consistency(5, 5, [], root_at(5), root_at(5))
    with pytest.raises(RootMismatchError):
        merkle.verify_consistency(5, 5, [], root_at(5), root_at(4))
    with pytest.raises(MalformedProofError):
        merkle.verify_consistency(5, 5, [root_at(5)], root_at(5), root_at(5))


def test_consistency_from_the_empty_tree_is_refused() -> None:
    with pytest.raises(MalformedProofError):
        merkle.verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(MalformedProofError):
        merkle.verify_consistency(0, 5, [], EMPTY_ROOT, root_at(5))


# -- Properties: a proof verifies, and any single-bit change breaks it --------------------------------------


def _inclusion_shape(index: int, size: int) -> tuple[bool, ...] | None:
    """Which side each proof hash joins on: all the verifier's walk depends on besides the hashes."""
    if not 0 <= index < size:
        return None
    return tuple(c[0].index << c[0].level < index for c in merkle.plan_inclusion(index, size).components)


def _consistency_shape(old: int, new: int) -> tuple[object, ...] | None:
    if not 0 < old < new:
        return None
    plan = merkle.plan_consistency(old, new)
    level = (old & -old).bit_length() - 1
    has_head = (old - 1) >> level != 0
    path = plan.components[1:] if has_head else plan.components
    return (has_head, *(c[0].index << c[0].level < old for c in path))


def _flip(h: bytes, bit: int) -> bytes:
    out = bytearray(h)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_inclusion_property(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX_SIZE), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    leaf, proof, root = big_leaves()[index], inclusion(index, size), root_at(size)
    merkle.verify_inclusion(leaf, index, size, proof, root)

    bit = data.draw(st.integers(0, 255), label="bit")
    with pytest.raises(RootMismatchError):
        merkle.verify_inclusion(_flip(leaf, bit), index, size, proof, root)
    with pytest.raises(RootMismatchError):
        merkle.verify_inclusion(leaf, index, size, proof, _flip(root, bit))
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="proof at")
        with pytest.raises(RootMismatchError):
            merkle.verify_inclusion(leaf, index, size, [*proof[:at], _flip(proof[at], bit), *proof[at + 1 :]], root)

    # A proof of the wrong length is refused as such, before any root is compared.
    with pytest.raises(MalformedProofError):
        merkle.verify_inclusion(leaf, index, size, [*proof, root], root)
    if proof:
        with pytest.raises(MalformedProofError):
            merkle.verify_inclusion(leaf, index, size, proof[:-1], root)

    # A changed index or size fails unless it leaves every proof hash on the same side: then the verifier
    # recomputes the very same root, which is right, since a proof binds a leaf to a root, and the signed
    # checkpoint binds that root to its size (e.g. leaf 0 has the same proof in trees of 5 and 6 leaves).
    int_bit = data.draw(st.integers(0, 12), label="integer bit")
    for i, n in [(index ^ (1 << int_bit), size), (index, size ^ (1 << int_bit))]:
        if _inclusion_shape(i, n) == _inclusion_shape(index, size):
            assert i == index, "a different leaf index can never reuse a proof"
            merkle.verify_inclusion(leaf, i, n, proof, root)
        else:
            with pytest.raises(ProofError):
                merkle.verify_inclusion(leaf, i, n, proof, root)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_consistency_property(data: st.DataObject) -> None:
    new = data.draw(st.integers(1, MAX_SIZE), label="new size")
    old = data.draw(st.integers(1, new), label="old size")
    proof, old_root, new_root = consistency(old, new), root_at(old), root_at(new)
    merkle.verify_consistency(old, new, proof, old_root, new_root)

    bit = data.draw(st.integers(0, 255), label="bit")
    with pytest.raises(RootMismatchError):
        merkle.verify_consistency(old, new, proof, _flip(old_root, bit), new_root)
    with pytest.raises(RootMismatchError):
        merkle.verify_consistency(old, new, proof, old_root, _flip(new_root, bit))
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="proof at")
        with pytest.raises(RootMismatchError):
            merkle.verify_consistency(
                old, new, [*proof[:at], _flip(proof[at], bit), *proof[at + 1 :]], old_root, new_root
            )

    with pytest.raises(MalformedProofError):
        merkle.verify_consistency(old, new, [*proof, new_root], old_root, new_root)
    if proof:
        with pytest.raises(MalformedProofError):
            merkle.verify_consistency(old, new, proof[:-1], old_root, new_root)

    int_bit = data.draw(st.integers(0, 12), label="integer bit")
    for m, n in [(old ^ (1 << int_bit), new), (old, new ^ (1 << int_bit))]:
        if old != new and _consistency_shape(m, n) == _consistency_shape(old, new):
            merkle.verify_consistency(m, n, proof, old_root, new_root)
        else:
            with pytest.raises(ProofError):
                merkle.verify_consistency(m, n, proof, old_root, new_root)


@pytest.mark.parametrize(("old", "new"), [(1, 2), (2, 3), (3, 7), (4, 8), (5, 1000), (1023, 1024), (1024, 2048)])
def test_consistency_fixed_points(old: int, new: int) -> None:
    merkle.verify_consistency(old, new, consistency(old, new), root_at(old), root_at(new))
