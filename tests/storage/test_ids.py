"""Version 7 UUIDs: RFC 9562's own example, the bit layout, and the order the indexes rely on."""

from __future__ import annotations

import time
import uuid

import pytest

from broker.storage import ids


def test_reproduces_the_rfc_9562_example() -> None:
    # RFC 9562 Appendix A.6: Tuesday, February 22, 2022 2:22:22.00 PM GMT-05:00
    value = ids.from_parts(0x017F22E279B0, 0xCC3, 0x18C4DC0C0C07398F)
    assert str(value) == "017f22e2-79b0-7cc3-98c4-dc0c0c07398f"
    assert ids.unix_ts_ms(value) == 1645557742000


def test_a_new_id_is_version_7_of_the_rfc_variant_and_carries_this_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    value = ids.uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= ids.unix_ts_ms(value) <= after


def test_ids_drawn_in_later_milliseconds_sort_after_earlier_ones() -> None:
    # the property the B-tree indexes rely on: the bytes (PostgreSQL's uuid order) follow the clock
    first = ids.uuid7()
    time.sleep(0.002)
    second = ids.uuid7()
    assert first.bytes < second.bytes
    assert first < second


RAND_A = [64 + i for i in range(12)]
RAND_B = list(range(62))


def test_every_one_of_the_74_random_bits_is_drawn() -> None:
    # each random bit position is set in some draw and clear in another: a generator that drew fewer bits, or
    # shifted them onto the version or the variant, fails (odds of a false failure: 74 * 2 * 2^-2000)
    drawn = [ids.uuid7() for _ in range(2000)]
    assert len(set(drawn)) == len(drawn)
    for bit in RAND_A + RAND_B:
        values = {v.int >> bit & 1 for v in drawn}
        assert values == {0, 1}, f"bit {bit} never varies"
    for v in drawn:
        assert v.int >> 76 & 0xF == 7 and v.int >> 62 & 0b11 == 0b10


@pytest.mark.parametrize(("ms", "rand_a", "rand_b"), [(1 << 48, 0, 0), (-1, 0, 0), (0, 1 << 12, 0), (0, 0, 1 << 62),
                                                       (0, -1, 0), (0, 0, -1)])
def test_a_field_out_of_range_is_refused(ms: int, rand_a: int, rand_b: int) -> None:
    with pytest.raises(ValueError):
        ids.from_parts(ms, rand_a, rand_b)


def test_the_largest_fields_fit() -> None:
    value = ids.from_parts((1 << 48) - 1, (1 << 12) - 1, (1 << 62) - 1)
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert ids.unix_ts_ms(value) == (1 << 48) - 1


def test_the_time_of_another_version_is_refused() -> None:
    with pytest.raises(ValueError):
        ids.unix_ts_ms(uuid.uuid4())
