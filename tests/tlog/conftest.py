"""What the transparency-log tests share: a pool on the test's fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from broker.storage import db


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, min_size=1, max_size=6)
    yield p
    await p.close()
