"""worst_case: the reservation is a true upper bound in strict mode, and bad max_tokens is a 400."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.auth.principal import Principal, TeamPolicy
from app.budgets.estimate import InvalidBudgetRequest, worst_case
from app.config import ModelConfig, PriceBand, Prices, Settings
from app.domain import ChatRequest, Message
from app.tokens import estimate_tokens, request_bytes

PRICES = Prices(
    input=Decimal("2"),
    output=Decimal("10"),
    cache_write_5m=Decimal("2.5"),
    cache_write_1h=Decimal("4"),
    cache_read=Decimal("0.2"),
    bands=[
        PriceBand(
            above_input_tokens=1000,
            input=Decimal("4"),
            output=Decimal("20"),
            cache_write_5m=Decimal("5"),
            cache_write_1h=Decimal("8"),
            cache_read=Decimal("0.4"),
        )
    ],
)
MODEL = ModelConfig(
    provider="p", tier="medium", prices=PRICES, context_window=200_000, max_output_tokens=8_000
)


def request(text: str, max_tokens: int | None) -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=[Message(role="user", content=[{"type": "text", "text": text}])],
        max_tokens=max_tokens,
        client_format="anthropic",
    )


def who(default_max_tokens: int | None = None) -> Principal:
    return Principal("t", "team", "k", "p", policy=TeamPolicy(default_max_tokens=default_max_tokens))


STRICT = Settings(budget_mode="strict")
ESTIMATE = Settings(budget_mode="estimate")


def test_strict_reserves_prompt_bytes_plus_max_tokens() -> None:
    req = request("héllo wörld, 世界", 100)
    tokens, usd = worst_case(req, MODEL, who(), STRICT)
    input_bound = request_bytes(req)
    assert input_bound >= len("héllo wörld, 世界".encode())  # multi-byte characters count per byte
    assert tokens == input_bound + 100
    # small prompt: base band; input at the highest input-side rate (cache write 1h = 4 $/M)
    assert usd == (Decimal(input_bound) * 4 + Decimal(100) * 10) / Decimal(1_000_000)


def test_estimate_mode_reserves_the_calibrated_estimate() -> None:
    req = request("x" * 3500, 50)
    tokens, _ = worst_case(req, MODEL, who(), ESTIMATE)
    assert tokens == estimate_tokens(req) + 50
    assert tokens < worst_case(req, MODEL, who(), STRICT)[0]


def test_large_prompts_are_priced_in_the_band_they_may_fall_into() -> None:
    req = request("y" * 5000, 10)
    tokens, usd = worst_case(req, MODEL, who(), STRICT)
    input_bound = tokens - 10
    assert usd == (Decimal(input_bound) * 8 + Decimal(10) * 20) / Decimal(1_000_000)


def test_without_max_tokens_the_team_default_or_the_model_maximum_is_reserved() -> None:
    req = request("hi", None)
    assert worst_case(req, MODEL, who(), STRICT)[0] == request_bytes(req) + 8_000
    assert worst_case(req, MODEL, who(default_max_tokens=512), STRICT)[0] == request_bytes(req) + 512
    # a team default above the model's maximum is capped by the model
    assert worst_case(req, MODEL, who(default_max_tokens=50_000), STRICT)[0] == request_bytes(req) + 8_000


def test_the_input_bound_is_capped_by_the_context_window() -> None:
    tiny = ModelConfig(provider="p", tier="small", prices=PRICES, context_window=100, max_output_tokens=10)
    tokens, _ = worst_case(request("z" * 10_000, 10), tiny, who(), STRICT)
    assert tokens == 110


@pytest.mark.parametrize(
    ("max_tokens", "complaint"),
    [(8_001, "above the maximum output of model 'm' \\(8000 tokens\\)"), (0, "positive"), (-3, "positive")],
)
def test_bad_max_tokens_is_an_invalid_request(max_tokens: int, complaint: str) -> None:
    with pytest.raises(InvalidBudgetRequest, match=complaint) as refused:
        worst_case(request("hi", max_tokens), MODEL, who(), STRICT, model_name="m")
    assert isinstance(refused.value, ValueError)
