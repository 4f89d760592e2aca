"""Per-request behaviour switches: the ``x-sim-*`` headers, with the config as fallback.

Fault headers (``x-sim-error*``) are read by ``faults.py``; everything else a request can tune is
gathered here once, so the wire modules read plain attributes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.simulator.config import SimulatorConfig
from app.simulator.http import SimRequest


@dataclass(slots=True)
class Knobs:
    output_tokens: int
    forced_reply: str | None
    refuse: bool
    invalid_json_models: list[str]
    ttft_s: float
    interval_s: float  # between content deltas; 0 = no pacing
    latency_s: float | None  # total delay of a non-streaming reply, when set explicitly
    min_cache_tokens: int | None
    stream_error_after: int | None
    stream_abort_after: int | None

    def nonstreaming_delay(self, output_tokens: int) -> float:
        """``x-sim-latency-ms`` when given, else the time a stream of the same reply would take."""
        if self.latency_s is not None:
            return self.latency_s
        return self.ttft_s + output_tokens * self.interval_s


def knobs_for(request: SimRequest, config: SimulatorConfig) -> Knobs:
    ttft_ms = request.header_float("x-sim-ttft-ms")
    tokens_per_second = request.header_float("x-sim-tokens-per-second")
    if tokens_per_second is None:
        tokens_per_second = config.tokens_per_second
    latency_ms = request.header_float("x-sim-latency-ms")
    output_tokens = request.header_int("x-sim-output-tokens")
    forced_reply = request.headers.get("x-sim-reply")
    if forced_reply is not None and not forced_reply.isascii():
        # ASGI hands header values over as latin-1; a client sending UTF-8 meant UTF-8.
        forced_reply = forced_reply.encode("latin-1").decode("utf-8", "replace")
    return Knobs(
        output_tokens=max(0, config.default_output_tokens if output_tokens is None else output_tokens),
        forced_reply=forced_reply,
        refuse=request.header_flag("x-sim-refuse"),
        invalid_json_models=request.header_list("x-sim-invalid-json-models"),
        ttft_s=max(0.0, config.ttft_ms if ttft_ms is None else ttft_ms) / 1000,
        interval_s=1 / tokens_per_second if tokens_per_second > 0 else 0.0,
        latency_s=None if latency_ms is None else max(0.0, latency_ms) / 1000,
        min_cache_tokens=request.header_int("x-sim-min-cache-tokens"),
        stream_error_after=request.header_int("x-sim-stream-error-after"),
        stream_abort_after=request.header_int("x-sim-stream-abort-after"),
    )


async def pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)
