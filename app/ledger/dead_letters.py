"""Where a usage event goes when the database refuses its row: kept, counted, never dropped.

The recorder escapes and clips every value before inserting (``inserts.py``), so a refusal means
something nobody foresaw. The event is kept with the error, in this order of preference:

1. the ``ledger_dead_letters`` table (migration 0002): queryable next to the ledger;
2. ``dead-letters.jsonl`` in the spool directory, fsync'd, when the table cannot be written either;
3. the log, at ERROR, with the event's full JSON, when even the disk fails.

Each kept event counts once in ``tollway_ledger_dead_letter_rows_total`` (through ``on_kept``),
which the alert ``TollwayLedgerDeadLetters`` watches. An operator repairs and re-inserts by hand.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.tables import ledger_dead_letters
from app.ledger.events import UsageEvent
from app.ledger.safe_text import escape_text

log = logging.getLogger(__name__)

DEAD_LETTER_FILE = "dead-letters.jsonl"
ERROR_CHARS = 2000


def event_json(event: Any) -> str:
    """The event as JSON text whatever is wrong with it (a field of the wrong type, say)."""
    try:
        return orjson.dumps(event.to_json_dict(), default=str).decode()
    except Exception:
        return orjson.dumps({"unencodable_event": escape_text(repr(event))}).decode()


class DeadLetters:
    def __init__(
        self,
        engine: AsyncEngine,
        directory: str | os.PathLike[str] | None = None,
        *,
        on_kept: Callable[[int], None] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.path = Path(directory) / DEAD_LETTER_FILE if directory is not None else None
        self.on_kept = on_kept
        self.timeout_s = timeout_s
        self.kept = 0

    async def keep(self, event: UsageEvent, error: BaseException | str) -> str:
        """Keep ``event`` with ``error``; where it went: "table", "file" or "log"."""
        reason = escape_text(error if isinstance(error, str) else f"{type(error).__name__}: {error}") or ""
        payload = event_json(event)
        request_id = escape_text(getattr(event, "request_id", None))
        where = "log"
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._insert(request_id, reason[:ERROR_CHARS], payload)
            where = "table"
        except Exception as exc:
            log.warning("usage ledger: dead-letter table unavailable (%s)", type(exc).__name__)
            if self.path is not None:
                try:
                    await asyncio.to_thread(self._append_file, request_id, reason, payload)
                    where = "file"
                except Exception as file_exc:
                    log.warning("usage ledger: dead-letter file unavailable (%s)", file_exc)
        log.error(
            "usage ledger: the database refused an event (%s); kept in the dead letters (%s)%s",
            reason[:300],
            where,
            f": {payload}" if where == "log" else f", request_id={request_id}",
        )
        self.kept += 1
        if self.on_kept is not None:
            try:
                self.on_kept(1)
            except Exception:
                log.exception("usage ledger: dead-letter counter failed")
        return where

    async def _insert(self, request_id: str | None, reason: str, payload: str) -> None:
        row = {
            "request_id": (request_id or "")[:128] or None,
            "failed_at": datetime.now(UTC),
            "error": reason,
            "event_json": payload,
        }
        async with self.engine.begin() as conn:
            await conn.execute(ledger_dead_letters.insert(), row)

    def _append_file(self, request_id: str | None, reason: str, payload: str) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps(
            {"request_id": request_id, "failed_at": datetime.now(UTC).isoformat(), "error": reason, "event": payload}
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
