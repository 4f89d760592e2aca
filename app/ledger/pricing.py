"""Cost in USD, computed with Decimal from a model's price table.

Prices are per million tokens. A price band replaces the base prices when the whole prompt (uncached
input + cache writes + cache reads) is longer than the band's threshold; the highest matching band wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from app.config import ModelConfig, PriceBand, Prices
from app.domain import Usage

MILLION = Decimal(1_000_000)
# Costs are stored with 10 decimal places: a single cache-read token of the cheapest model is
# 1e-8 USD, and rows must sum to report totals exactly.
QUANTUM = Decimal("0.0000000001")


@dataclass(frozen=True, slots=True)
class Cost:
    total: Decimal
    uncached: Decimal  # the same usage billed as if nothing had been cached

    @property
    def savings(self) -> Decimal:
        return self.uncached - self.total


def _rates(prices: Prices, prompt_tokens: int) -> Prices | PriceBand:
    chosen: Prices | PriceBand = prices
    for band in sorted(prices.bands, key=lambda b: b.above_input_tokens):
        if prompt_tokens > band.above_input_tokens:
            chosen = band
    return chosen


def cost_of(model: ModelConfig, usage: Usage) -> Cost:
    rates = _rates(model.prices, usage.prompt_tokens)
    total = (
        Decimal(usage.input_tokens) * rates.input
        + Decimal(usage.output_tokens) * rates.output
        + Decimal(usage.cache_write_5m_tokens) * rates.cache_write_5m
        + Decimal(usage.cache_write_1h_tokens) * rates.cache_write_1h
        + Decimal(usage.cache_read_tokens) * rates.cache_read
    ) / MILLION
    uncached = (
        Decimal(usage.prompt_tokens) * rates.input + Decimal(usage.output_tokens) * rates.output
    ) / MILLION
    return Cost(
        total=total.quantize(QUANTUM, rounding=ROUND_HALF_EVEN),
        uncached=uncached.quantize(QUANTUM, rounding=ROUND_HALF_EVEN),
    )


def expected_cost(model: ModelConfig, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> Decimal:
    """A forecast for routing: ``cached_tokens`` of the input are expected to be read from cache."""
    usage = Usage(
        input_tokens=max(input_tokens - cached_tokens, 0),
        output_tokens=output_tokens,
        cache_read_tokens=min(cached_tokens, input_tokens),
    )
    return cost_of(model, usage).total
