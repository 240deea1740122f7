"""Time-ordered UUIDs (RFC 9562 section 5.7, version 7) for the rows every exchange writes.

Why not uuid4: an access-log entry's id is the key of the B-tree indexes the exchange writes into (its month of
`access_log`, `exchange_evidence`, `notification_outbox`) and of the one its round writes (`tlog_entries`). Those
indexes grow for the whole retention. A random key lands each insert on a random leaf page: once an index outgrows
the buffer cache, every insert reads a page first, and the first change to each page after a checkpoint writes the
whole page to the WAL (full-page writes). A version 7 id starts with the millisecond it was drawn, so the inserts of
one moment go to the same few pages at the index's right edge. benchmarks/entry_ids.py measures the difference.

Where an index still holds uuid4 keys, the right edge is not the index's: uuid4 keys spread over the whole key
space, so the new ids' few pages sit in the middle, with older keys after them. The WAL saving holds (still a few
pages), but PostgreSQL splits a page that is not the rightmost in halves, where it fills the rightmost to 90 %: that
part of the index stays about half full (20,000 ids inserted after 100,000 uuid4 keys took 138 leaf pages, 77
alone). It lasts as long as the uuid4 keys: the month of the switch in `access_log`, a retention in
`exchange_evidence` and the outbox, for good in `tlog_entries` and `tlog_pruned`, which are never pruned.

What is kept: 74 random bits after the time. Two ids collide only when drawn in the same millisecond with the same
74 bits: at 3,000 ids a second for a year, about 10^-11 (each millisecond's 3 ids collide with odds 3^2 / 2^75, and a
year holds 3.2 * 10^10 milliseconds). What is given away: the millisecond the id was drawn, which is the entry's
`logged_at` to within a millisecond, and the leaf and the entry bundles publish that already.

Not monotonic within a millisecond (no counter, unlike Python 3.14's `uuid.uuid7`): the ids of one millisecond
still go to the same few pages, which is all the indexes need. Replace with the standard library's once the
project's Python floor is 3.14.
"""

from __future__ import annotations

import os
import time
import uuid

_RAND_B = (1 << 62) - 1


def uuid7() -> uuid.UUID:
    """A new version 7 UUID: this millisecond (Unix time), then random bits from the operating system's CSPRNG."""
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 12 for rand_a, 62 for rand_b, 6 unused
    return from_parts(time.time_ns() // 1_000_000, rand >> 68, rand & _RAND_B)


def from_parts(unix_ts_ms: int, rand_a: int, rand_b: int) -> uuid.UUID:
    """The layout of RFC 9562 section 5.7: 48 bits of milliseconds, version 7, 12 bits, variant 0b10, 62 bits."""
    if not (0 <= unix_ts_ms < 1 << 48 and 0 <= rand_a < 1 << 12 and 0 <= rand_b < 1 << 62):
        raise ValueError("a UUIDv7 field out of range")
    return uuid.UUID(int=unix_ts_ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)


def unix_ts_ms(value: uuid.UUID) -> int:
    """The millisecond a version 7 UUID was drawn."""
    if value.version != 7:
        raise ValueError("not a version 7 UUID")
    return value.int >> 80
