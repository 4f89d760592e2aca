"""Structured logs: JSON lines on stderr, one line per request, written off the request path.

``configure_logging`` routes every logger through a ``QueueHandler``: the calling thread only puts
the record on an in-memory queue, and a ``QueueListener`` thread formats it as JSON and writes it.
A request never waits for stderr (a slow log collector, a full pipe). When the queue is full the
record is dropped and counted rather than blocking; ``dropped_records()`` tells how many.

``log_request`` writes the per-request line. Prompts and completions appear only when
``TOLLWAY_LOG_PROMPTS`` is on: they may hold personal data or secrets.
"""

from __future__ import annotations

import atexit
import collections
import logging
import logging.handlers
import queue
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any

import orjson

from app.ledger.events import UsageEvent

REQUEST_LOGGER = "tollway.request"
QUEUE_SIZE = 100_000

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
# uvicorn's ``color_message`` repeats the message with terminal colour codes: not for a JSON line.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}

_listener: _Listener | None = None
_handler: _DroppingQueueHandler | None = None

request_logger = logging.getLogger(REQUEST_LOGGER)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact, as the ledger has it
    if isinstance(value, datetime | bytes):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return orjson.dumps(line, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()


class _PolledQueue:
    """A bounded FIFO the writer thread polls, instead of ``queue.Queue``.

    ``queue.Queue`` wakes the writer thread on every put (a Condition notify), so each log line
    costs a thread switch and GIL hand-off on the event loop's time — measured at 10–25 % of a busy
    gateway's CPU. Here ``put_nowait`` is a deque append; the writer drains what has accumulated and
    sleeps ``poll_s`` when there is nothing, so lines reach the output within ~50 ms.
    """

    poll_s = 0.05

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self.maxsize = maxsize

    def put_nowait(self, item: Any) -> None:
        if len(self._items) >= self.maxsize:
            raise queue.Full
        self._items.append(item)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._items) >= self.maxsize:
            if not block or (deadline is not None and time.monotonic() > deadline):
                raise queue.Full
            time.sleep(self.poll_s)
        self._items.append(item)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._items.popleft()
            except IndexError:
                if not block or (deadline is not None and time.monotonic() > deadline):
                    raise queue.Empty from None
                time.sleep(self.poll_s)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def drain(self) -> list[Any]:
        """Everything queued right now, oldest first, without waiting."""
        items: list[Any] = []
        pop = self._items.popleft
        try:
            while True:
                items.append(pop())
        except IndexError:
            return items

    def qsize(self) -> int:
        return len(self._items)


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Enqueues without blocking; a full queue drops the record and counts it."""

    def __init__(self, q: Any) -> None:
        super().__init__(q)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The stock prepare formats the whole line here, in the caller's thread. Only resolve what
        # cannot cross threads safely (message arguments, the traceback) and leave JSON to the
        # listener thread.
        if not record.args and not record.exc_info and isinstance(record.msg, str):
            return record  # nothing to resolve (the request line): no copy needed
        record = logging.makeLogRecord(record.__dict__)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _BatchStreamHandler(logging.StreamHandler):
    """Writes the lines of many records with one write and one flush (one system call, not one a line)."""

    def emit_batch(self, records: list[logging.LogRecord]) -> None:
        lines: list[str] = []
        for record in records:
            try:
                lines.append(self.format(record))
            except Exception:
                self.handleError(record)
        if not lines:
            return
        lines.append("")
        self.acquire()
        try:
            self.stream.write("\n".join(lines))
            self.flush()
        except Exception:
            self.handleError(records[-1])
        finally:
            self.release()


class _Listener(logging.handlers.QueueListener):
    """Writes what accumulated since the last poll in one batch, and stops without hanging when the
    queue is full or the output is stuck (at most ``timeout_s``)."""

    timeout_s = 5.0

    def _monitor(self) -> None:
        records: _PolledQueue = self.queue  # type: ignore[assignment]
        output: _BatchStreamHandler = self.handlers[0]  # type: ignore[assignment]
        while True:
            batch = [records.get(block=True), *records.drain()]
            stop = next((i for i, item in enumerate(batch) if item is self._sentinel), None)  # type: ignore[attr-defined]
            if stop is not None:
                batch = batch[:stop]
            if batch:
                output.emit_batch([self.prepare(record) for record in batch])
            if stop is not None:
                return

    def enqueue_sentinel(self) -> None:
        try:
            self.queue.put(self._sentinel, timeout=self.timeout_s)  # type: ignore[attr-defined]
        except queue.Full:
            pass

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self.enqueue_sentinel()
        thread.join(self.timeout_s)
        self._thread = None


def configure_logging(level: str, *, stream: IO[str] | None = None) -> None:
    """Send every log record, as a JSON line, to stderr (or ``stream``) through a background thread.

    Idempotent: a second call replaces the first configuration (and flushes it). Handlers others
    installed on the root logger are left in place (a test runner's, an embedding application's).
    """
    global _listener, _handler
    shutdown_logging()
    output = _BatchStreamHandler(stream if stream is not None else sys.stderr)
    output.setFormatter(JsonFormatter())
    records = _PolledQueue(QUEUE_SIZE)
    _handler = _DroppingQueueHandler(records)
    _listener = _Listener(records, output, respect_handler_level=False)
    _listener.start()

    root = logging.getLogger()
    root.addHandler(_handler)
    root.setLevel(level.upper())
    # uvicorn installs its own plain-text handlers and levels; route its records through ours, at
    # the level configured here.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.setLevel(logging.NOTSET)
        uvicorn_logger.propagate = True
    # The HTTP clients log every upstream request at INFO: that is one line per call on the hot
    # path, and the pipeline's own line already says what happened.
    # uvicorn's access line duplicates the pipeline's request line (and `access_log=False` is undone
    # once its logger propagates to ours).
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name in ("httpx", "httpcore", "httpx2"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def shutdown_logging() -> None:
    """Write out every queued record and stop the writer thread (also runs at exit)."""
    global _listener, _handler
    if _listener is not None:
        _listener.stop()
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
    _listener = None
    _handler = None


def dropped_records() -> int:
    """Records dropped because the queue was full (the writer could not keep up)."""
    return _handler.dropped if _handler is not None else 0


atexit.register(shutdown_logging)


def log_request(
    event: UsageEvent,
    *,
    team_name: str | None,
    key_prefix: str | None,
    route: str | None,
    prompt: object | None = None,
    completion: str | None = None,
    log_prompts: bool = False,
) -> None:
    """Write the one line that describes a finished request.

    The key appears only as its public prefix (never the secret). ``prompt`` and ``completion`` are
    logged only with ``log_prompts``; the prompt is serialised in the writer thread, so the caller
    must not mutate it afterwards.
    """
    level = logging.WARNING if event.status >= 500 else logging.INFO
    if not request_logger.isEnabledFor(level):
        return
    fields: dict[str, Any] = {
        "request_id": event.request_id,
        "team": team_name,
        "team_id": event.team_id,
        "key_prefix": key_prefix,
        "client_api": event.client_format,
        "route": route,
        "requested_model": event.requested_model,
        "served_model": event.served_model,
        "provider": event.provider,
        "route_reason": event.route_reason,
        "attempts": event.attempts,
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "cache_write_tokens": event.cache_write_5m_tokens + event.cache_write_1h_tokens,
        "cache_read_tokens": event.cache_read_tokens,
        "cost_usd": event.cost_usd,
        "uncached_cost_usd": event.uncached_cost_usd,
        "latency_ms": round(event.latency_ms, 3),
        "ttft_ms": round(event.ttft_ms, 3) if event.ttft_ms is not None else None,
        "status": event.status,
        "error_type": event.error_type,
        "stop_reason": event.stop_reason,
        "streamed": event.streamed,
        "aborted": event.aborted,
        "response_cache_hit": event.response_cache_hit,
    }
    if log_prompts:
        fields["prompt"] = prompt
        fields["completion"] = completion
    request_logger.log(level, "request", extra=fields)
