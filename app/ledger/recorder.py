"""The usage recorder: one row per request, written off the request path, exactly once.

The request path calls ``record(event)``, which only appends to an in-memory queue (a deque append
and, now and then, waking the writer: well under a microsecond, no I/O, no await). A writer task
takes batches of up to ``batch_size`` events, or whatever arrived within ``flush_interval_s`` of the
first one, and inserts each batch with an idempotent ``INSERT … ON CONFLICT DO NOTHING``
(``app/ledger/inserts.py``, one strategy per backend).

Nothing is lost when the database is down or slow:

* a batch whose insert fails or takes longer than ``write_timeout_s`` goes to the durable spool
  (disk or a Redis stream), and the writer keeps spooling without trying the database until the
  replay loop has written to it successfully again;
* when the in-memory queue is full (``queue_max``), ``record`` hands events to the spool instead of
  dropping them;
* the replay loop writes spooled batches back with exponential backoff, acknowledging (deleting)
  each only after its rows are committed;
* ``aclose()`` drains the queue into the database, or into the spool if the database is gone,
  within ``shutdown_grace_s``; whatever is still in memory then (the database and Redis both
  unresponsive) is written to the local spool file, blocking, before it returns.

With Redis configured the spool is a ``TieredSpool``: a Redis stream while Redis answers, a local
append-only file (one write + fsync per batch) while it does not. In a double outage an event
therefore waits in memory at most one batch (``flush_interval_s`` or ``batch_size`` events): that
is what a SIGKILL can lose.

Exactly once: every path ends in the same idempotent insert keyed by (request_id, created_at), and
an event's created_at is fixed when the event is made, so an insert replayed after a commit whose
acknowledgement was lost (a timeout, a crash before ``ack``) finds its row and does nothing.

A batch the database *rejects* (not a lost connection: a row it cannot store) is split in halves
until the bad rows are isolated; the good rows are written and each rejected one goes to the dead
letters (``dead_letters.py``: a table, else a file, else the log), so one bad event never blocks
the ledger and none is dropped. ``record`` never raises into the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.partitions import ensure_usage_partitions
from app.ledger.dead_letters import DeadLetters, event_json
from app.ledger.events import UsageEvent
from app.ledger.inserts import inserter_for, is_rejection
from app.ledger.spool import Spool, SpoolBatch

log = logging.getLogger(__name__)

PARTITION_CHECK_INTERVAL_S = 6 * 3600
SPOOL_POLL_INTERVAL_S = 10.0


@dataclass(slots=True)
class RecorderStats:
    recorded: int = 0  # record() calls
    written: int = 0  # rows inserted
    duplicates: int = 0  # events whose row already existed (replays)
    spooled: int = 0  # events sent to the spool
    replayed: int = 0  # spooled events written back
    rejected: int = 0  # events the database refused (kept in the dead letters)
    batches: int = 0
    # Seconds per successful batch insert, most recent last (bounded: for gauges and the benchmark).
    flush_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))


class Recorder:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        queue_max: int = 100_000,
        spool: Spool,
        clock: Callable[[], float] = time.monotonic,
        write_timeout_s: float = 5.0,
        replay_backoff_s: float = 0.5,
        replay_backoff_max_s: float = 30.0,
        maintain_partitions: bool = True,
        shutdown_grace_s: float = 10.0,
        dead_letter_dir: str | os.PathLike[str] | None = None,
        on_dead_letter: Callable[[int], None] | None = None,
    ) -> None:
        if batch_size < 1 or queue_max < 1:
            raise ValueError("batch_size and queue_max must be positive")
        self.engine = engine
        self.spool = spool
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_max = queue_max
        self.write_timeout_s = write_timeout_s
        self.replay_backoff_s = replay_backoff_s
        self.replay_backoff_max_s = replay_backoff_max_s
        self.shutdown_grace_s = shutdown_grace_s
        self.dead_letters = DeadLetters(engine, dead_letter_dir, on_kept=on_dead_letter, timeout_s=write_timeout_s)
        self.stats = RecorderStats()
        self._clock = clock
        self._maintain_partitions = maintain_partitions and engine.dialect.name == "postgresql"
        self._inserter = inserter_for(engine)
        self._queue: deque[UsageEvent] = deque()
        self._overflow: deque[UsageEvent] = deque()
        self._has_events = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._has_overflow = asyncio.Event()
        self._spool_has_work = asyncio.Event()
        # Held while a batch is out of the queue but not yet in the database or the spool, so
        # shutdown never cancels a task that is holding events.
        self._write_lock = asyncio.Lock()
        self._overflow_lock = asyncio.Lock()
        self._db_healthy = True
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        # Batches taken out of the queue and not yet in the database or the spool: what a shutdown
        # that runs out of time must still save.
        self._in_flight: dict[int, Sequence[UsageEvent]] = {}

    # ---- the request path -----------------------------------------------------------------------

    def record(self, event: UsageEvent) -> None:
        """Queue an event for writing. Synchronous and non-blocking; never drops the event and
        never raises (the request path calls it from ``finally``)."""
        try:
            self.stats.recorded += 1
            if self._closed:
                self._save_after_close([event])
                return
            if len(self._queue) >= self.queue_max:
                self._overflow.append(event)
                self._has_overflow.set()
                return
            self._queue.append(event)
            depth = len(self._queue)
            if depth == 1:
                self._has_events.set()
            if depth >= self.batch_size:
                self._batch_full.set()
        except Exception:
            # Whatever failed (a closed loop waking the writer, say), the event is kept: in the
            # queue, or in the overflow, which its own task spools and aclose saves.
            log.exception("usage ledger: record failed; the event is kept")
            if not (self._queue and self._queue[-1] is event):  # queued already, only the wake-up failed
                self._overflow.append(event)

    def _save_after_close(self, events: Sequence[UsageEvent]) -> None:
        """An event recorded after ``aclose``: no writer is left, so straight to the local file."""
        log.warning("usage ledger: %d events recorded after shutdown; writing them to the spool file", len(events))
        self._save_blocking(events)

    def _save_blocking(self, events: Sequence[UsageEvent]) -> None:
        try:
            self.spool.append_blocking(events)
            self.stats.spooled += len(events)
        except Exception as exc:
            for event in events:  # the last resort: recoverable from the log by hand
                log.error("usage ledger: could not spool an event (%s): %s", _describe(exc), event_json(event))

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._overflow)

    @property
    def spool_size(self) -> int:
        return self.spool.pending

    @property
    def database_healthy(self) -> bool:
        return self._db_healthy

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer, overflow and replay tasks (call from inside the running loop). The
        replay task opens the spool first and replays what a previous run left in it."""
        if self._started:
            return
        self._started = True
        self._tasks = [
            asyncio.create_task(self._writer_loop(), name="tollway-ledger-writer"),
            asyncio.create_task(self._overflow_loop(), name="tollway-ledger-overflow"),
            asyncio.create_task(self._replay_loop(), name="tollway-ledger-replay"),
        ]
        if self._maintain_partitions:
            self._tasks.append(asyncio.create_task(self._partition_loop(), name="tollway-ledger-partitions"))

    async def flush(self) -> None:
        """Write everything recorded so far to the database (or the spool, if the database is
        unavailable). Returns when no recorded event is only in memory."""
        async with self._write_lock:
            while self._queue:
                await self._write(self._take(self.batch_size))
        await self._spool_overflow()

    async def aclose(self) -> None:
        """Shutdown: drain the queue into the database or the spool, for at most
        ``shutdown_grace_s``; then whatever is still in memory goes to the local spool file."""
        try:
            async with asyncio.timeout(self.shutdown_grace_s):
                await self._drain_and_stop()
        except TimeoutError:
            log.warning(
                "usage ledger: shutdown grace period (%.1fs) is over; saving the rest to the local spool file",
                self.shutdown_grace_s,
            )
        finally:
            self._closed = True
            for task in self._tasks:
                task.cancel()
            self._tasks = []
            leftovers = [*(e for batch in self._in_flight.values() for e in batch), *self._queue, *self._overflow]
            self._in_flight.clear()
            self._queue.clear()
            self._overflow.clear()
            if leftovers:
                # Blocking, on purpose: the process is about to exit and must not lose these.
                # A batch whose write was cut short may be saved twice: the insert is idempotent.
                self._save_blocking(leftovers)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.spool.aclose()

    async def _drain_and_stop(self) -> None:
        async with self._write_lock, self._overflow_lock:
            # With both locks held no task holds events outside the queue and the spool, so
            # cancelling them anywhere is safe (a replay cut short is replayed next time).
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                _, stuck = await asyncio.wait(self._tasks, timeout=self.write_timeout_s)
                if stuck:
                    log.warning("usage ledger: %d background tasks did not stop in time", len(stuck))
        self._tasks = []
        await self.flush()

    async def replay_spool(self) -> int:
        """Write spooled events to the database now, until the spool is empty; return how many were
        written. Raises if the database fails (the rest stays spooled)."""
        total = 0
        while (batch := await self.spool.read(self.batch_size)) is not None:
            await self._replay_batch(batch)
            total += len(batch.events)
        return total

    # ---- writer ---------------------------------------------------------------------------------

    def _take(self, limit: int) -> list[UsageEvent]:
        queue = self._queue
        count = min(limit, len(queue))
        return [queue.popleft() for _ in range(count)]

    async def _writer_loop(self) -> None:
        while True:
            if not self._queue:
                self._has_events.clear()
                await self._has_events.wait()
                continue
            if len(self._queue) < self.batch_size:
                # Give the batch up to flush_interval_s to fill; a full batch goes at once.
                self._batch_full.clear()
                await _wait(self._batch_full, self.flush_interval_s)
            async with self._write_lock:
                batch = self._take(self.batch_size)
                if batch:
                    await self._write(batch)

    async def _write(self, batch: list[UsageEvent]) -> None:
        # Forgotten only once written: a cancelled write (shutdown out of time) leaves the batch
        # here for ``aclose`` to save.
        self._in_flight[id(batch)] = batch
        await self._write_held(batch)
        del self._in_flight[id(batch)]

    async def _write_held(self, batch: list[UsageEvent]) -> None:
        if self._db_healthy:
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await self._insert_events(batch)
                return
            except Exception as exc:
                self._db_healthy = False
                log.warning("usage ledger: database write failed (%s); spooling", _describe(exc))
        await self._to_spool(batch)

    async def _to_spool(self, events: Sequence[UsageEvent]) -> None:
        delay = self.replay_backoff_s
        while True:
            try:
                await self.spool.append(events)
                break
            except Exception as exc:
                # Database and spool both failing: the events stay in memory (this coroutine holds
                # them) and we retry; the queue fills, and the alarm is this log line.
                log.error("usage spool append failed (%s); retrying in %.1fs", _describe(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.replay_backoff_max_s)
        self.stats.spooled += len(events)
        self._spool_has_work.set()

    async def _overflow_loop(self) -> None:
        while True:
            await self._has_overflow.wait()
            await self._spool_overflow()

    async def _spool_overflow(self) -> None:
        async with self._overflow_lock:
            while self._overflow:
                self._has_overflow.clear()
                count = min(len(self._overflow), 5 * self.batch_size)
                events = [self._overflow.popleft() for _ in range(count)]
                self._in_flight[id(events)] = events
                await self._to_spool(events)
                del self._in_flight[id(events)]

    # ---- replay ---------------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        delay = self.replay_backoff_s
        while True:  # open the spool; a disk or Redis failure here must not end the loop
            try:
                await self.spool.open()
                break
            except Exception as exc:
                log.error("usage spool cannot be opened (%s); retrying in %.1fs", _describe(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.replay_backoff_max_s)
        if self.spool.pending:
            log.info("usage spool holds %d events from before; replaying", self.spool.pending)
        delay = self.replay_backoff_s
        while True:
            try:
                # Cleared before reading: an append that lands after the read sets it again, so
                # the wait below cannot miss it.
                self._spool_has_work.clear()
                if not self._db_healthy:
                    async with asyncio.timeout(self.write_timeout_s):
                        await self._ping()
                    self._mark_healthy()
                batch = await self.spool.read(self.batch_size)
                if batch is None:
                    # Also wake now and then: another process may have left events behind (a
                    # shared Redis stream, or a dead worker's disk segments).
                    await _wait(self._spool_has_work, SPOOL_POLL_INTERVAL_S)
                    continue
                await self._replay_batch(batch)
                delay = self.replay_backoff_s
            except Exception as exc:
                self._db_healthy = False
                log.info("usage ledger: replay failed (%s); retrying in %.1fs", _describe(exc), delay)
                await self._promote_spool()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.replay_backoff_max_s)

    async def _promote_spool(self) -> None:
        """The database is away: move locally spooled events to Redis if it is back."""
        try:
            await self.spool.promote()
        except Exception as exc:
            log.info("usage spool: could not move local events (%s)", _describe(exc))

    async def _replay_batch(self, batch: SpoolBatch) -> None:
        events = batch.events
        for start in range(0, len(events), self.batch_size):
            chunk = events[start : start + self.batch_size]
            async with asyncio.timeout(self.write_timeout_s):
                await self._insert_events(chunk)
        # Only now, with every row committed, may the spool forget them.
        await self.spool.ack(batch)
        self.stats.replayed += len(events)
        self._mark_healthy()

    def _mark_healthy(self) -> None:
        if not self._db_healthy:
            log.info("usage ledger: database is back; writing directly again")
        self._db_healthy = True

    async def _ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    # ---- the insert -----------------------------------------------------------------------------

    async def _insert_events(self, events: Sequence[UsageEvent]) -> None:
        if not events:
            return
        try:
            await self._insert_batch(events)
        except Exception as exc:
            if not is_rejection(exc):
                raise
            await self._isolate_rejected(events, exc)

    async def _insert_batch(self, events: Sequence[UsageEvent]) -> None:
        started = self._clock()
        inserted = await self._inserter.insert(events)
        self.stats.flush_seconds.append(self._clock() - started)
        self.stats.batch_sizes.append(len(events))
        self.stats.batches += 1
        self.stats.written += inserted
        self.stats.duplicates += len(events) - inserted

    async def _isolate_rejected(self, events: Sequence[UsageEvent], exc: BaseException) -> None:
        if len(events) == 1:
            self.stats.rejected += 1
            await self.dead_letters.keep(events[0], _describe(exc))
            return
        middle = len(events) // 2
        for half in (events[:middle], events[middle:]):
            try:
                await self._insert_batch(half)
            except Exception as inner:
                if not is_rejection(inner):
                    raise
                await self._isolate_rejected(half, inner)

    # ---- partitions -----------------------------------------------------------------------------

    async def _partition_loop(self) -> None:
        while True:
            try:
                created = await ensure_usage_partitions(self.engine)
                if created:
                    log.info("usage ledger: created %d monthly partitions", created)
            except Exception as exc:  # the default partition catches rows meanwhile
                log.warning("usage ledger: could not create partitions (%s)", _describe(exc))
            await asyncio.sleep(PARTITION_CHECK_INTERVAL_S)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Wait for ``event`` at most ``timeout_s``. Not ``asyncio.wait_for``: on Python 3.11 it
    swallows a cancellation that arrives just as the awaited thing completes, and a loop task that
    loses its cancellation never ends (``asyncio.timeout`` counts cancellations correctly)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


def _describe(exc: BaseException) -> str:
    text_ = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text_}" if text_ else type(exc).__name__
