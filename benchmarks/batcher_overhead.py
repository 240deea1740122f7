"""The batch writer's own cost per item, without a database: what `Batcher.submit` adds to each nonce claim and
each access-log entry when it is alone (below a few hundred exchanges a second, nearly always).

    .venv/bin/python benchmarks/batcher_overhead.py [--items 20000] [--reps 7]

A writer whose statement returns at once (after one turn of the event loop, as a reply would come) is given items
one after the other; the figure is the thread's CPU time per item, median of the repetitions. Run it on two
checkouts to compare versions (`git worktree add`). It prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from broker.storage.batch import Batcher


class _Connection:
    def is_closed(self) -> bool:
        return False


class _Pool:
    async def acquire(self) -> _Connection:
        return _Connection()

    async def release(self, conn: _Connection) -> None:
        pass


class _Echo(Batcher[int, int]):
    async def _write(self, conn: Any, items: Sequence[int]) -> Sequence[int]:
        await asyncio.sleep(0)
        return items

    def _failed(self, item: int, exc: BaseException | None) -> Exception:
        return RuntimeError(item)


async def run(items: int, reps: int) -> list[float]:
    writer = _Echo(cast(asyncpg.Pool, _Pool()))
    for i in range(2_000):  # warm-up
        await writer.submit(i)
    per_item = []
    for _ in range(reps):
        started = time.thread_time()
        for i in range(items):
            await writer.submit(i)
        per_item.append((time.thread_time() - started) / items * 1e6)
    await writer.close()
    return per_item


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/batcher_overhead.py", description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    per_item = asyncio.run(run(args.items, args.reps))
    print(f"Batcher.submit, alone, statement answered at once: {statistics.median(per_item):.1f} us of CPU per item "
          f"(median of {args.reps} x {args.items:,}; range {min(per_item):.1f} to {max(per_item):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
