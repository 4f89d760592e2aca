"""Everything one simulator instance remembers: caches, fault counters, stats and recent requests."""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from app.simulator.config import SimulatorConfig
from app.simulator.prompt_cache import AnthropicPromptCache, OpenAIPromptCache

if TYPE_CHECKING:
    from app.simulator.http import SimRequest


@dataclass(slots=True)
class Stats:
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0  # reached the terminal events
    streams_cancelled: int = 0  # the client disconnected before the end
    streams_failed: int = 0  # ended with an in-stream error (x-sim-stream-error-after)
    streams_aborted: int = 0  # cut off without terminal events (x-sim-stream-abort-after)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def clear(self) -> None:
        for name in self.__slots__:  # in place: streams in flight keep a reference
            setattr(self, name, 0)


class SimulatorState:
    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.stats = Stats()
        self.recent: deque[SimRequest] = deque(maxlen=max(0, config.record_requests))
        self.anthropic_cache = AnthropicPromptCache()
        self.openai_cache = OpenAIPromptCache()
        self.error_counts: dict[str, int] = {}
        # Unique per instance and process, cheap per id: a random stem plus a counter.
        self._id_stem = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{self._id_stem}{next(self._counter):012x}"

    def record(self, request: SimRequest) -> None:
        self.stats.requests += 1
        self.recent.append(request)

    def recorded(self) -> list[dict[str, Any]]:
        return [
            {
                "method": r.method,
                "path": r.path,
                "query": r.query,
                "headers": r.headers,
                "body": r.recorded_body(),
            }
            for r in self.recent
        ]

    def min_cache_tokens(self, model: str, override: int | None) -> int:
        return override if override is not None else self.config.min_cache_tokens_for(model)

    def reset(self) -> None:
        self.stats.clear()
        self.recent.clear()
        self.anthropic_cache.store.clear()
        self.openai_cache.store.clear()
        self.error_counts.clear()
