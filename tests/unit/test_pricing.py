"""Decimal cost from the price table: each token type at its own rate, bands, and savings."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.config import ModelConfig, load_catalog
from app.domain import Usage
from app.ledger.pricing import QUANTUM, cost_of, expected_cost


def model(**prices: object) -> ModelConfig:
    base: dict[str, object] = {
        "input": "3",
        "output": "15",
        "cache_write_5m": "3.75",
        "cache_write_1h": "6",
        "cache_read": "0.30",
    }
    base.update(prices)
    return ModelConfig.model_validate(
        {
            "provider": "p",
            "tier": "medium",
            "context_window": 200000,
            "max_output_tokens": 1000,
            "prices": base,
        }
    )


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(input_tokens=1_000_000), Decimal("3")),
        (Usage(output_tokens=1_000_000), Decimal("15")),
        (Usage(cache_write_5m_tokens=1_000_000), Decimal("3.75")),
        (Usage(cache_write_1h_tokens=1_000_000), Decimal("6")),
        (Usage(cache_read_tokens=1_000_000), Decimal("0.30")),
        (Usage(input_tokens=1), Decimal("0.000003")),
        (Usage(cache_read_tokens=1), Decimal("0.0000003")),
    ],
)
def test_each_token_type_at_its_rate(usage: Usage, expected: Decimal) -> None:
    assert cost_of(model(), usage).total == expected


def test_mixed_usage_is_the_sum_of_its_parts() -> None:
    usage = Usage(
        input_tokens=1234,
        output_tokens=567,
        cache_write_5m_tokens=2048,
        cache_write_1h_tokens=4096,
        cache_read_tokens=8192,
    )
    expected = (Decimal(1234) * 3 + Decimal(567) * 15 + Decimal(2048) * Decimal("3.75") + Decimal(4096) * 6) / Decimal(
        1_000_000
    ) + Decimal(8192) * Decimal("0.30") / Decimal(1_000_000)
    cost = cost_of(model(), usage)
    assert cost.total == expected.quantize(QUANTUM)
    assert isinstance(cost.total, Decimal)


def test_uncached_cost_prices_all_input_at_the_input_rate() -> None:
    usage = Usage(input_tokens=100, output_tokens=10, cache_write_5m_tokens=1000, cache_read_tokens=9000)
    cost = cost_of(model(), usage)
    assert cost.uncached == (Decimal(10_100) * 3 + Decimal(10) * 15) / Decimal(1_000_000)
    # Reading 9000 tokens from cache at 0.30 instead of 3.00 saves more than the 1000-token write costs.
    assert cost.savings == cost.uncached - cost.total
    assert cost.savings > 0


def test_cache_write_costs_more_than_uncached_input() -> None:
    cost = cost_of(model(), Usage(cache_write_1h_tokens=10_000))
    assert cost.total > cost.uncached
    assert cost.savings < 0


def test_openai_cached_input_priced_at_cached_rate() -> None:
    catalog = load_catalog(None)
    gpt = catalog.models["gpt-5"]
    # OpenAI reports prompt_tokens=10_000 of which cached_tokens=8_000: the canonical Usage holds
    # 2_000 uncached input and 8_000 cache reads.
    cost = cost_of(gpt, Usage(input_tokens=2_000, cache_read_tokens=8_000, output_tokens=100))
    expected = (
        Decimal(2_000) * gpt.prices.input + Decimal(8_000) * gpt.prices.cache_read + Decimal(100) * gpt.prices.output
    ) / Decimal(1_000_000)
    assert cost.total == expected.quantize(QUANTUM)


def test_price_band_applies_above_threshold_counting_all_prompt_tokens() -> None:
    banded = model(
        bands=[
            {
                "above_input_tokens": 100_000,
                "input": "6",
                "output": "30",
                "cache_write_5m": "7.5",
                "cache_write_1h": "12",
                "cache_read": "0.6",
            }
        ]
    )
    below = cost_of(banded, Usage(input_tokens=50_000, cache_read_tokens=50_000))
    assert below.total == (Decimal(50_000) * 3 + Decimal(50_000) * Decimal("0.30")) / Decimal(1_000_000)
    # 50_001 + 50_000 prompt tokens crosses 100_000 only with the cache reads counted.
    above = cost_of(banded, Usage(input_tokens=50_001, cache_read_tokens=50_000))
    assert above.total == (Decimal(50_001) * 6 + Decimal(50_000) * Decimal("0.6")) / Decimal(1_000_000)


def test_expected_cost_moves_cached_input_to_cache_reads() -> None:
    m = model()
    assert (
        expected_cost(m, 10_000, 100, cached_tokens=4_000)
        == cost_of(m, Usage(input_tokens=6_000, cache_read_tokens=4_000, output_tokens=100)).total
    )
    assert expected_cost(m, 100, 0, cached_tokens=1_000) == cost_of(m, Usage(cache_read_tokens=100)).total


def test_costs_are_quantized_to_the_ledger_scale() -> None:
    m = model()
    costs = [cost_of(m, Usage(input_tokens=i, cache_read_tokens=3 * i, output_tokens=i // 7)) for i in range(1, 500)]
    # 10 decimal places: exactly what NUMERIC(20,10) (and SQLite's integer 1e-10 units) store, so a
    # stored row reads back equal to the Decimal the pipeline computed.
    for cost in costs:
        assert cost.total == cost.total.quantize(QUANTUM) and cost.total.as_tuple().exponent == -10
        assert cost.uncached == cost.uncached.quantize(QUANTUM) and cost.uncached.as_tuple().exponent == -10
