"""Budget work waiting for Redis, on disk: a process killed during an outage loses none of it.

While Redis is unreachable the limiter keeps settles and releases it could not confirm in its
``LocalLedger``. Memory alone dies with the process: the team's reservations would then stay
reserved until they expire and the usage would never be counted (the fault matrix measured 48
orphaned reservations and 1,720 uncounted tokens after a SIGKILL during a double outage). So each
piece of pending work is also appended, flushed and fsync'd, to this process's journal file
(``<spool_dir>/budget/pending-<pid>-<random>.jsonl``), written only on the outage path. The file is
truncated once everything in it reached Redis.

Each process holds an exclusive ``flock`` on its own file for its lifetime. A starting process takes
over every journal whose lock it can get — its owner is gone — replays its records into its own
ledger (and journal) and deletes it. Replaying is safe even when a record had in fact reached Redis:
every settle is applied once per reservation id.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import orjson

from app.budgets.store import PendingSettle

log = logging.getLogger("tollway.budgets")

PREFIX = "pending-"


class PendingJournal:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}.jsonl"
        self._file: IO[bytes] | None = open(self.path, "ab")
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._written = False

    # ---- writing ------------------------------------------------------------------------------

    def settle(self, team_id: str, pending: PendingSettle) -> None:
        self._append({"team": team_id, "settle": asdict(pending)})

    def invalidation(self, team_id: str, limits_record: str) -> None:
        self._append({"team": team_id, "invalidate": limits_record})

    def _append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        try:
            self._file.write(orjson.dumps(record) + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._written = True
        except OSError:
            log.exception("budget: could not write the pending-work journal %s", self.path)

    def clear(self) -> None:
        """Everything journaled reached Redis: start the file afresh."""
        if self._file is None or not self._written:
            return
        self._file.truncate(0)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._written = False

    def close(self) -> None:
        """Release the lock; an empty journal is removed, a non-empty one left for the next process."""
        if self._file is None:
            return
        self._file.flush()
        empty = self._file.tell() == 0
        self._file.close()
        self._file = None
        if empty:
            self.path.unlink(missing_ok=True)

    # ---- taking over the journals of processes that are gone ----------------------------------

    def recover(self) -> Iterator[tuple[str, PendingSettle | str]]:
        """(team id, pending settle or limits record) from every orphaned journal, each deleted
        once read. The caller journals them again in this process's own file as it re-adds them."""
        for path in sorted(self.directory.glob(f"{PREFIX}*.jsonl")):
            if path == self.path:
                continue
            try:
                handle = open(path, "rb")
            except FileNotFoundError:
                continue
            with handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                records = list(_read(handle, path))
                log.warning("budget: taking over %d pending record(s) from %s", len(records), path.name)
                yield from records
                path.unlink(missing_ok=True)


def _read(handle: IO[bytes], path: Path) -> Iterator[tuple[str, PendingSettle | str]]:
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            team = record["team"]
            if "settle" in record:
                s = record["settle"]
                yield team, PendingSettle(
                    reservation_id=s["reservation_id"],
                    key_id=s["key_id"],
                    period_keys=tuple(s["period_keys"]),
                    period_expiry=tuple(s["period_expiry"]),
                    amounts=tuple(s["amounts"]),
                )
            else:
                yield team, str(record["invalidate"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            # A line cut by the kill (the last, un-fsync'd write) or damaged: skip it, say so.
            log.error("budget: unreadable line %d in %s, skipped", number, path.name)
