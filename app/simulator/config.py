"""Simulator settings: latency profile, default reply length, cache minimums, inspection depth."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT_MIN_CACHE_TOKENS = 1024


@dataclass(slots=True)
class SimulatorConfig:
    """How the simulated provider behaves when a request does not override it by header.

    ``ttft_ms`` is the wait before the first content delta; ``tokens_per_second`` paces the deltas
    after it (0 = no delay). ``min_cache_tokens`` maps a model id to its minimum cacheable prefix
    (default 1024 for every model). ``record_requests`` bounds the inspection log.
    """

    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0
    default_output_tokens: int = 40
    min_cache_tokens: Callable[[str], int] | None = None
    record_requests: int = 200

    def min_cache_tokens_for(self, model: str) -> int:
        if self.min_cache_tokens is None:
            return DEFAULT_MIN_CACHE_TOKENS
        return self.min_cache_tokens(model)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SimulatorConfig:
        """Read ``TOLLWAY_SIM_TTFT_MS``, ``TOLLWAY_SIM_TOKENS_PER_SECOND``, ``TOLLWAY_SIM_OUTPUT_TOKENS``."""
        env = os.environ if environ is None else environ
        config = cls()
        if value := env.get("TOLLWAY_SIM_TTFT_MS"):
            config.ttft_ms = float(value)
        if value := env.get("TOLLWAY_SIM_TOKENS_PER_SECOND"):
            config.tokens_per_second = float(value)
        if value := env.get("TOLLWAY_SIM_OUTPUT_TOKENS"):
            config.default_output_tokens = int(value)
        return config
