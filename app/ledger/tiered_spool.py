"""The spool for every outage combination: a Redis stream backed by a local append-only file.

With Redis configured the ledger spools into a Redis stream (any replica can replay it). When Redis
is down too, events go to the local ``DiskSpool`` instead (JSONL, written and fsync'd once per
batch), so a double outage keeps them on this machine's disk rather than in memory:

* ``append`` writes to Redis while it answers; the first failure (or a call slower than
  ``primary_timeout_s``) marks it down and the batch — and every batch after it — goes to disk
  without waiting on Redis again. Redis is tried again only by ``read`` and ``promote`` (the
  replay loop), after a backoff, so a dead Redis never delays the writer.
* ``read`` hands out the local file's events first, then Redis's.
* ``promote`` moves local events into Redis once Redis answers again while the database is still
  away (Redis outlives this replica; the local file does not).

A batch cut short by a failure may end up in both places; the ledger's insert is idempotent on
(request_id, created_at), so replaying both writes one row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.ledger.events import UsageEvent
from app.ledger.spool import DiskSpool, RedisSpool, Spool, SpoolBatch

log = logging.getLogger(__name__)

FAILED: Any = object()  # what ``_on_primary`` returns when Redis failed


def build_spool(redis: Any, spool_dir: str | Path, *, stream_key: str = "tw:ledger:spool") -> Spool:
    """The gateway's spool: Redis with a local file behind it, or the local file alone."""
    disk = DiskSpool(spool_dir)
    if redis is None:
        return disk
    return TieredSpool(RedisSpool(redis, stream_key), disk)


class TieredSpool:
    def __init__(
        self,
        primary: RedisSpool,
        fallback: DiskSpool,
        *,
        primary_timeout_s: float = 1.0,
        retry_s: float = 1.0,
        retry_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.primary_timeout_s = primary_timeout_s
        self._retry_base_s = retry_s
        self._retry_max_s = retry_max_s
        self._retry_s = retry_s
        self._clock = clock
        self._primary_up = True
        self._retry_at = 0.0

    @property
    def pending(self) -> int:
        return self.primary.pending + self.fallback.pending

    @property
    def primary_up(self) -> bool:
        return self._primary_up

    async def open(self) -> None:
        await self.fallback.open()
        await self._on_primary(self.primary.open())

    async def append(self, events: Sequence[UsageEvent]) -> None:
        if self._primary_up and await self._on_primary(self.primary.append(events)) is not FAILED:
            return
        await self.fallback.append(events)

    def append_blocking(self, events: Sequence[UsageEvent]) -> None:
        self.fallback.append_blocking(events)

    async def read(self, max_events: int) -> SpoolBatch | None:
        local = await self.fallback.read(max_events)
        if local is not None:
            return SpoolBatch(local.events, ("local", local))
        if not self._may_try_primary():
            return None
        remote = await self._on_primary(self.primary.read(max_events))
        if remote is None or remote is FAILED:
            return None
        return SpoolBatch(remote.events, ("redis", remote))

    async def ack(self, batch: SpoolBatch) -> None:
        where, inner = batch.token
        if where == "local":
            await self.fallback.ack(inner)
        elif await self._on_primary(self.primary.ack(inner)) is FAILED:
            # Not deleted: the batch will be replayed, and the idempotent insert makes it a no-op.
            log.warning("usage spool: could not acknowledge %d events in Redis", len(batch.events))

    async def promote(self) -> int:
        """Move local events into Redis, if Redis answers; how many moved."""
        moved = 0
        while self.fallback.pending and self._may_try_primary():
            local = await self.fallback.read(10_000)
            if local is None:
                break
            if await self._on_primary(self.primary.append(local.events)) is FAILED:
                await self.fallback.release(local)
                break
            await self.fallback.ack(local)
            moved += len(local.events)
        if moved:
            log.info("usage spool: moved %d events from the local file into Redis", moved)
        return moved

    async def size(self) -> int:
        local = await self.fallback.size()
        remote = await self._on_primary(self.primary.size())
        return local + (self.primary.pending if remote is FAILED else remote)

    async def aclose(self) -> None:
        await self.fallback.aclose()
        await self._on_primary(self.primary.aclose())

    # -- Redis health --

    def _may_try_primary(self) -> bool:
        return self._primary_up or self._clock() >= self._retry_at

    async def _on_primary(self, call: Any) -> Any:
        """Await a Redis call with the timeout; its result, or ``FAILED`` when Redis failed
        (marked down until the backoff expires)."""
        try:
            async with asyncio.timeout(self.primary_timeout_s):
                result = await call
        except Exception as exc:
            if self._primary_up:
                log.warning("usage spool: Redis failed (%s); spooling to the local file", type(exc).__name__)
            self._primary_up = False
            self._retry_at = self._clock() + self._retry_s
            self._retry_s = min(self._retry_s * 2, self._retry_max_s)
            return FAILED
        if not self._primary_up:
            log.info("usage spool: Redis answers again")
        self._primary_up = True
        self._retry_s = self._retry_base_s
        return result
