"""CPU per stream event of each client format's encoder: ``python -m bench.stream_encoders``.

One text stream of 1,000 deltas through a fresh encoder per run, best of 20 runs; reports
microseconds per canonical event. Speed only: correctness is tested in tests/unit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.domain import ChatResponse, StreamEvent, Usage
from app.wire.anthropic import response_to_events
from app.wire.codec import CODECS
from app.wire.responses import parse_request

DELTAS = 1000
RUNS = 20


def _events() -> list[StreamEvent]:
    answer = ChatResponse(
        id="msg_1", model="m", content=[{"type": "text", "text": "x"}], stop_reason="end_turn", usage=Usage(5, 5)
    )
    frame = response_to_events(answer)
    delta = StreamEvent(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word "}},
    )
    return frame[:2] + [delta] * DELTAS + frame[3:]


def _best(make: Callable[[], Callable[[StreamEvent], bytes]], events: list[StreamEvent]) -> float:
    best = float("inf")
    for _ in range(RUNS):
        encode = make()
        start = time.perf_counter()
        for event in events:
            encode(event)
        best = min(best, time.perf_counter() - start)
    return best / len(events)


def main() -> None:
    events = _events()
    req = parse_request({"model": "m", "input": "hi", "stream": True})
    for name in ("openai", "responses"):
        codec = CODECS[name]
        req.client_format = name  # type: ignore[assignment]
        per_event = _best(lambda codec=codec: codec.stream_encoder(req, "m"), events)  # type: ignore[misc]
        print(f"{name:10s} {per_event * 1e6:6.2f} µs/event  ({len(events)} events, best of {RUNS})")


if __name__ == "__main__":
    main()
