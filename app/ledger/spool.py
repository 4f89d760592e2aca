"""Where usage events wait while the database cannot take them.

A spool is a durable FIFO of events with an explicit acknowledgement: the recorder reads the oldest
batch, inserts it, and only after the insert *committed* acknowledges it, which deletes it. A crash
between the commit and the acknowledgement replays the batch, and the insert is idempotent on the
request id, so that replay changes nothing. That is the whole exactly-once argument.

Two implementations:

* ``DiskSpool(dir)`` — append-only JSONL segment files, fsync'd before ``append`` returns; file I/O
  runs in a worker thread so the event loop never blocks on the disk. Several worker processes may
  share one directory (file locks keep them off each other's segments).
* ``RedisSpool(redis, stream_key)`` — a Redis stream, one entry per event (XADD, XRANGE, XDEL). Any
  replica can replay it, so a spool survives the replica that wrote it. Durable as far as Redis's
  own persistence (AOF) is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from app.ledger.events import UsageEvent

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SpoolBatch:
    """Events read from a spool; ``token`` is what ``ack`` needs to delete exactly these."""

    events: list[UsageEvent]
    token: Any = field(default=None, repr=False)


class Spool(Protocol):
    @property
    def pending(self) -> int:
        """Events held, as last known (cheap; for gauges and ``Recorder.spool_size``)."""
        ...

    async def open(self) -> None:
        """Prepare for use and learn how many events are already spooled (from a previous run)."""
        ...

    async def append(self, events: Sequence[UsageEvent]) -> None:
        """Store events durably; when this returns, they survive a crash of this process."""
        ...

    async def read(self, max_events: int) -> SpoolBatch | None:
        """The oldest spooled events (at least one, usually up to ``max_events``), or None."""
        ...

    async def ack(self, batch: SpoolBatch) -> None:
        """Delete a batch returned by ``read``: call only once its rows are committed."""
        ...

    async def size(self) -> int:
        """Events held, counted now."""
        ...

    def append_blocking(self, events: Sequence[UsageEvent]) -> None:
        """Store events on this machine's disk now, blocking, without touching the network: the
        last resort of a shutdown whose grace period is over. Raises if this spool has no disk."""
        ...

    async def promote(self) -> int:
        """Move events to the more durable store of this spool if it has one and it is reachable
        (see ``TieredSpool``); how many moved."""
        ...

    async def aclose(self) -> None: ...


def _encode(event: UsageEvent) -> bytes:
    # default=str: a field of the wrong type is kept as text (the insert then dead-letters it)
    # rather than failing the whole batch's append.
    return orjson.dumps(event.to_json_dict(), default=str)


def _decode(line: bytes) -> UsageEvent:
    return UsageEvent.from_json_dict(orjson.loads(line))


# ---- disk ----------------------------------------------------------------------------------------


class DiskSpool:
    """Append-only JSONL segments in ``directory``, shared safely by several processes.

    Each process appends to its own *active* segment, named ``segment-<time_ns>-<pid>-<random>.jsonl``
    so names sort oldest first and never collide, and holds an exclusive ``flock`` on it while it is
    active. ``read`` hands out one whole segment at a time, oldest first, locked by the reader until
    ``ack`` deletes it; a segment locked by anyone else (another worker's active segment, or one it
    is replaying) is skipped, and one left by a process that died is unlocked, so any process
    replays it. A process seals its own active segment when nothing older is waiting. A line cut
    short by a crash mid-write is skipped on read (its append never returned).
    """

    SEGMENT_GLOB = "segment-*.jsonl"
    MAX_SEGMENT_BYTES = 8 * 1024 * 1024

    def __init__(self, directory: str | os.PathLike[str], *, max_segment_bytes: int = MAX_SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self._max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()  # the thread-side state below is touched only under it
        self._active: tuple[Path, int] | None = None  # our active segment and its locked fd
        self._active_bytes = 0
        self._reading: dict[Path, int] = {}  # segments handed out by read, locked until ack
        self._pending = 0
        self._opened = False

    @property
    def pending(self) -> int:
        return self._pending

    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    async def append(self, events: Sequence[UsageEvent]) -> None:
        if not events:
            return
        payload = b"".join(_encode(e) + b"\n" for e in events)
        await asyncio.to_thread(self._append_sync, payload, len(events))

    async def read(self, max_events: int) -> SpoolBatch | None:
        """The oldest segment available to this process, whole (``max_events`` is a hint: the
        recorder inserts a long segment in chunks and acknowledges it once)."""
        return await asyncio.to_thread(self._read_sync)

    async def ack(self, batch: SpoolBatch) -> None:
        await asyncio.to_thread(self._ack_sync, batch.token, len(batch.events))

    async def release(self, batch: SpoolBatch) -> None:
        """Give back a batch from ``read`` without deleting it (it will be read again)."""
        await asyncio.to_thread(self._release_sync, batch.token)

    def append_blocking(self, events: Sequence[UsageEvent]) -> None:
        if events:
            self._append_sync(b"".join(_encode(e) + b"\n" for e in events), len(events))
            with self._lock:  # the last write of this spool: unlocked, so anyone may replay it
                self._seal_active()

    async def promote(self) -> int:
        return 0

    async def size(self) -> int:
        return await asyncio.to_thread(self._size_sync)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close_sync)

    # -- thread side --

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(self.SEGMENT_GLOB))

    def _open_sync(self) -> None:
        with self._lock:
            self._ensure_open()

    def _ensure_open(self) -> None:
        """Scan the directory once (lock held): count what is waiting from before."""
        if self._opened:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._pending = sum(len(self._load(path)) for path in self._segments())
        self._opened = True

    def _append_sync(self, payload: bytes, count: int) -> None:
        with self._lock:
            self._ensure_open()
            if self._active is None or self._active_bytes >= self._max_segment_bytes:
                self._seal_active()
                name = f"segment-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
                path = self.directory / name
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._active = (path, fd)
                self._active_bytes = 0
                self._fsync_directory()  # make the new file's name durable too
            _, fd = self._active
            os.write(fd, payload)
            os.fsync(fd)
            self._active_bytes += len(payload)
            self._pending += count

    def _seal_active(self) -> None:
        if self._active is not None:
            os.close(self._active[1])  # releases the lock: the segment is now readable by anyone
            self._active = None

    def _read_sync(self) -> SpoolBatch | None:
        with self._lock:
            self._ensure_open()
            for path in self._segments():
                if self._active is not None and path == self._active[0]:
                    self._seal_active()  # nothing older is waiting: hand out our own segment
                fd = self._reading.get(path)
                if fd is None:
                    fd = self._try_lock(path)
                    if fd is None:
                        continue  # another process is writing or replaying it
                    self._reading[path] = fd
                events = self._load(path)
                if events:
                    return SpoolBatch(events=events, token=path)
                self._release(path, delete=True)  # empty, or only a torn line
            if not self._reading and self._active is None:
                self._pending = 0  # nothing of ours left, whatever the count said
            return None

    def _ack_sync(self, path: Path, count: int) -> None:
        with self._lock:
            self._release(path, delete=True)
            self._pending = max(0, self._pending - count)

    def _release_sync(self, path: Path) -> None:
        with self._lock:
            self._release(path, delete=False)

    def _release(self, path: Path, *, delete: bool) -> None:
        if delete:
            path.unlink(missing_ok=True)
            self._fsync_directory()
        fd = self._reading.pop(path, None)
        if fd is not None:
            os.close(fd)

    @staticmethod
    def _try_lock(path: Path) -> int | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        if not path.exists():  # acknowledged (deleted) by its previous holder meanwhile
            os.close(fd)
            return None
        return fd

    def _size_sync(self) -> int:
        with self._lock:
            return sum(len(self._load(path)) for path in self._segments())

    def _close_sync(self) -> None:
        with self._lock:
            self._seal_active()
            for path in list(self._reading):
                self._release(path, delete=False)

    @staticmethod
    def _load(path: Path) -> list[UsageEvent]:
        events: list[UsageEvent] = []
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return events
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(_decode(line))
            except (ValueError, TypeError, KeyError, ArithmeticError):
                log.error("usage spool %s line %d is unreadable; skipped", path, number)
        return events

    def _fsync_directory(self) -> None:
        with contextlib.suppress(OSError):  # not every filesystem allows fsync on a directory
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# ---- redis ---------------------------------------------------------------------------------------


class RedisSpool:
    """A Redis stream, one entry per event (field ``e``: the event's JSON)."""

    def __init__(self, redis: Any, stream_key: str = "tw:ledger:spool") -> None:
        self.redis = redis
        self.stream_key = stream_key
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    async def open(self) -> None:
        self._pending = await self.size()

    async def append(self, events: Sequence[UsageEvent]) -> None:
        if not events:
            return
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.stream_key, {"e": _encode(event)})
        await pipe.execute()
        self._pending += len(events)

    async def read(self, max_events: int) -> SpoolBatch | None:
        entries = await self.redis.xrange(self.stream_key, "-", "+", count=max_events)
        if not entries:
            self._pending = 0
            return None
        ids: list[Any] = []
        events: list[UsageEvent] = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            raw = fields.get(b"e", fields.get("e"))
            try:
                events.append(_decode(raw))
            except (ValueError, TypeError, KeyError, ArithmeticError):
                log.error("usage spool entry %r is unreadable; skipped", entry_id)
        return SpoolBatch(events=events, token=ids)

    async def ack(self, batch: SpoolBatch) -> None:
        if batch.token:
            await self.redis.xdel(self.stream_key, *batch.token)
        self._pending = await self.size()

    async def size(self) -> int:
        return int(await self.redis.xlen(self.stream_key))

    def append_blocking(self, events: Sequence[UsageEvent]) -> None:
        raise NotImplementedError("a Redis stream cannot be written without the network")

    async def promote(self) -> int:
        return 0

    async def aclose(self) -> None:
        return None
