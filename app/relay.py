"""Stage 6 for streams: forward an upstream's events to the client as they arrive.

The events of one upstream read go out in one write (same bytes, same moment, far fewer sends).
Every way a stream can end leaves a well-formed ending for the client and an ``Ending`` for the
ledger: done; the upstream failed or ended early (the client's in-stream error event, 502); the
request's deadline passed (504); the gateway is shutting down (an error event, recorded as
``shutdown``); the provider ran past ``max_tokens`` (cut there, recorded with a usage flag); the
client left (recorded as ``client_aborted``; the upstream call is closed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from app.bookkeeping import Ending
from app.config import ModelConfig
from app.context import Trail
from app.domain import StreamEvent
from app.errors import GatewayError
from app.lifecycle import Lifecycle
from app.observability.metrics import Metrics
from app.providers.base import UpstreamError, UpstreamStream
from app.providers.dispatch import record_usage
from app.tokens import estimate_tokens
from app.wire.accumulate import StreamTracker
from app.wire.codec import ClientCodec
from app.wire.errors import kind_from_anthropic_type

# A provider is cut off only when it is clearly past the cap: output is estimated from characters
# here (the provider's own count arrives at the end), so allow for the estimate's error.
OVERRUN_FACTOR = 1.5
OVERRUN_SLACK_TOKENS = 16
CHARS_PER_TOKEN = 4


class Relay:
    def __init__(
        self,
        *,
        codec: ClientCodec,
        trail: Trail,
        upstream: UpstreamStream,
        model: ModelConfig,
        deadline_s: float,
        keep_content: bool,
        lifecycle: Lifecycle,
        metrics: Metrics,
    ) -> None:
        assert trail.chat is not None
        self.codec = codec
        self.trail = trail
        self.upstream = upstream
        self.model = model
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.tracker = StreamTracker(keep_content=keep_content)
        self.encode = codec.stream_encoder(trail.chat, trail.calls.served_model or trail.chat.model)
        self.deadline = asyncio.get_running_loop().time() + max(0.0, deadline_s - (time.perf_counter() - trail.started))
        self.max_output_chars = _overrun_chars(trail.chat.max_tokens)
        self.output_chars = 0
        # Until the stream ends one way or another, it counts as the client having left.
        self.ending = Ending(status=499, usage=trail.calls.total_usage(), error_type="client_aborted", aborted=True)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        watch = self.lifecycle.open_stream()
        fmt = self.trail.client_format
        last = time.perf_counter()
        batches = self.upstream.batches().__aiter__()
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self.deadline) as watch.timeout:
                        batch = await batches.__anext__()
                except StopAsyncIteration:
                    break
                parts, stop = self._encode(batch)
                if parts:
                    now = time.perf_counter()
                    self.metrics.observe_inter_event(now - last, fmt)
                    last = now
                    yield parts[0] if len(parts) == 1 else b"".join(parts)
                if stop:
                    return
            if not self.tracker.finished:
                yield self._fail(502, GatewayError("api_error", "the upstream stream ended early"))
            else:
                self._done()
        except TimeoutError:
            if self.lifecycle.stopping:
                err = GatewayError("unavailable", "the gateway is shutting down; retry the request")
                yield self._fail(503, err, error_type="shutdown")
            else:
                yield self._fail(504, GatewayError("timeout", "the request exceeded its deadline"))
        except UpstreamError as err:
            yield self._fail(502, GatewayError(err.kind, err.message), error_type=err.kind)  # type: ignore[arg-type]
        finally:
            watch.timeout = None
            self.lifecycle.close_stream(watch)
            self._settle_usage()  # before any await: a second cancellation must not skip it
            await asyncio.shield(self.upstream.aclose())

    def _encode(self, batch: list[StreamEvent]) -> tuple[list[bytes], bool]:
        """Encode one upstream read; True when the stream must end here (upstream error, overrun)."""
        parts: list[bytes] = []
        for event in batch:
            self.tracker.see(event)
            if event.type == "error":
                upstream_type = (self.tracker.error or {}).get("type")
                err = GatewayError(kind_from_anthropic_type(upstream_type), "the upstream provider failed mid-stream")
                parts.append(self._fail(502, err, error_type=upstream_type or "api_error"))
                return parts, True
            if event.type == "content_block_delta":
                self.output_chars += _delta_chars(event)
                if self.output_chars > self.max_output_chars:
                    parts.extend(self.encode(e) for e in _cut_at_max_tokens(self.tracker, event.data.get("index", 0)))
                    self.trail.usage_flag = "over_reservation"
                    self._done()
                    return [p for p in parts if p], True
            chunk = self.encode(event)
            if chunk:
                parts.append(chunk)
        return parts, False

    def _fail(self, status: int, err: GatewayError, *, error_type: str | None = None) -> bytes:
        stop_reason = self.tracker.stop_reason
        kind = error_type or err.kind
        self.ending = Ending(status=status, usage=self.ending.usage, stop_reason=stop_reason, error_type=kind)
        return self.codec.stream_error(err, self.encode)

    def _done(self) -> None:
        self.ending = Ending(status=200, usage=self.ending.usage, stop_reason=self.tracker.stop_reason)

    def _settle_usage(self) -> None:
        """What the stream used, also when it was cut: priced onto the last attempt."""
        trail = self.trail
        assert trail.chat is not None
        self.trail.calls.first_token_at = self.tracker.first_token_at
        if trail.calls.attempts:
            attempt = trail.calls.attempts[-1]
            answer = self.tracker.response()
            answer.usage = self.tracker.usage_so_far(estimate_tokens(trail.chat))
            record_usage(attempt, self.model, answer)
        self.ending.usage = trail.calls.total_usage()
        if self.ending.status == 200 and self.tracker.keep_content:
            self.ending.completion = "".join(
                b.get("text", "") for b in self.tracker.response().content if b.get("type") == "text"
            )


def _overrun_chars(max_tokens: int | None) -> float:
    if max_tokens is None:
        return float("inf")
    return (max_tokens * OVERRUN_FACTOR + OVERRUN_SLACK_TOKENS) * CHARS_PER_TOKEN


def _delta_chars(event: StreamEvent) -> int:
    delta = event.data.get("delta") or {}
    for key in ("text", "partial_json", "thinking"):
        value = delta.get(key)
        if isinstance(value, str):
            return len(value)
    return 0


def _cut_at_max_tokens(tracker: StreamTracker, open_index: int) -> list[StreamEvent]:
    """The events that end a stream the provider would not end: close the open block, stop for max_tokens."""
    events = [
        StreamEvent("content_block_stop", {"type": "content_block_stop", "index": open_index}),
        StreamEvent(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": {"output_tokens": tracker.usage.output_tokens or tracker.deltas},
            },
        ),
        StreamEvent("message_stop", {"type": "message_stop"}),
    ]
    for event in events:
        tracker.see(event)
    return events
