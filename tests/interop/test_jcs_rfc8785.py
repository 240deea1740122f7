"""broker.tlog.jcs against an independent RFC 8785 implementation, `rfc8785` (Trail of Bits, on PyPI), as an
oracle on generated JSON documents: same bytes for every value both accept.

Where the two differ by design: `rfc8785` refuses every integer beyond the I-JSON safe range (±(2**53 - 1), RFC 7493),
while the broker also accepts an integer beyond it whose ECMAScript spelling reads back as itself (2**54), since
JCS treats numbers as doubles and such an integer is one, spelled the same (`broker.tlog.jcs` docstring). Both
refuse the others (2**53 + 1, 2**60) and everything non-finite; `test_the_domains_differ_only_where_documented`
holds them to that.
"""

from __future__ import annotations

from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.tlog.jcs import CanonicalizationError, canonicalize

SAFE = 2**53 - 1
scalars = (st.none() | st.booleans() | st.integers(-SAFE, SAFE) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text())
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(), inner,
                                                                                                max_size=6),
                         max_leaves=40)


@settings(max_examples=250, deadline=None)
@given(documents)
def test_same_bytes_as_rfc8785(document: Any) -> None:
    assert canonicalize(document) == rfc8785.dumps(document)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=3), st.integers(-SAFE, SAFE), min_size=2, max_size=30))
def test_key_order_is_the_oracles(document: dict[str, int]) -> None:
    # keys sorted by UTF-16 code units: astral characters sort before some BMP ones, unlike a code point sort
    assert canonicalize(document) == rfc8785.dumps(document)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=SAFE + 1, max_value=2**70) | st.integers(min_value=-(2**70), max_value=-SAFE - 1))
def test_the_domains_differ_only_where_documented(number: int) -> None:
    try:
        ours: bytes | None = canonicalize(number)
    except CanonicalizationError:
        ours = None
    try:
        rfc8785.dumps(number)
        theirs = True
    except rfc8785.IntegerDomainError:
        theirs = False
    assert not theirs  # the oracle refuses every integer beyond the safe range
    if ours is not None:  # we keep only what a double holds exactly, spelled as a double is
        assert float(number) == number and ours == rfc8785.dumps(float(number))
