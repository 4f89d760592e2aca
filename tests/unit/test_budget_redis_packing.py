"""The budget Redis client packs commands with hiredis: same bytes, same errors, every URL scheme."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from app.budgets.redis_store import (
    HiredisConnection,
    HiredisSSLConnection,
    HiredisUnixConnection,
    connect_budget_redis,
)

ADMIT_LIKE = (
    "EVALSHA",
    "0123456789abcdef0123456789abcdef01234567",
    8,
    *[f"tw:{{team-é}}:k:{i}" for i in range(8)],
    "1733333333.123456",
    b"raw-bytes",
    memoryview(b"view"),
    bytearray(b"array"),
    3660,
    -1,
    0.1 + 0.2,
    10**20,
)


def test_hiredis_packing_is_byte_identical_to_redis_py() -> None:
    python, hiredis = Connection(), HiredisConnection()
    assert b"".join(hiredis.pack_command(*ADMIT_LIKE)) == b"".join(python.pack_command(*ADMIT_LIKE))
    assert b"".join(hiredis.pack_command("CONFIG GET", "maxclients")) == b"".join(
        python.pack_command("CONFIG GET", "maxclients")
    )


@pytest.mark.parametrize("bad", [True, None, object(), [1]])
def test_hiredis_packing_refuses_what_redis_py_refuses(bad: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        HiredisConnection().pack_command("SET", "k", bad)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", HiredisConnection),
        ("rediss://127.0.0.1:6380/0", HiredisSSLConnection),
        ("unix:///tmp/redis.sock", HiredisUnixConnection),
    ],
)
async def test_budget_client_pool_uses_hiredis_packing(url: str, expected: type) -> None:
    client = connect_budget_redis(url)
    try:
        assert client.connection_pool.connection_class is expected
    finally:
        await client.aclose()
