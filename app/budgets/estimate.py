"""A request's worst case: the tokens and USD ``admit`` reserves before the upstream call.

Strict mode (the default) reserves a true upper bound, so no interleaving of concurrent requests can
spend past a limit:

* input: ``app.tokens.request_bytes`` — a byte-level BPE tokenizer never emits more than one token
  per byte of UTF-8, so the prompt's byte length plus a per-request/message/block overhead for the
  chat template bounds its input tokens (images and documents count their whole JSON size, far above
  what providers bill for them). Capped at the model's context window: a provider rejects a longer
  prompt without billing it.
* output: ``max_tokens``; without one, the team's ``default_max_tokens`` (the pipeline must then send
  that cap upstream) or else the model's ``max_output_tokens``.

Estimate mode reserves ``app.tokens.estimate_tokens`` (bytes / 3.5) for the input instead: a closer
forecast that admits more concurrent requests near a limit, at the price of a possible small
overshoot when prompts tokenize worse than the estimate. Settlement records actual usage either way.

USD prices the input at the model's highest input-side rate (input, cache write 5m / 1h, cache read)
and the output at its output rate, in the most expensive price band the input bound can fall into.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from app.auth.principal import Principal
from app.config import ModelConfig, PriceBand, Prices, Settings
from app.domain import ChatRequest
from app.ledger.pricing import MILLION, QUANTUM
from app.tokens import estimate_tokens, request_bytes


class InvalidBudgetRequest(ValueError):
    """The request cannot be budgeted as sent (e.g. max_tokens above the model's maximum): a 400."""


def output_cap(req: ChatRequest, model: ModelConfig, principal: Principal, *, model_name: str = "") -> int:
    """The most output tokens the request can produce, validated against the model."""
    name = f" of model '{model_name}'" if model_name else " of the model"
    if req.max_tokens is not None:
        if isinstance(req.max_tokens, bool) or req.max_tokens < 1:
            raise InvalidBudgetRequest(f"max_tokens must be a positive integer, got {req.max_tokens!r}")
        if req.max_tokens > model.max_output_tokens:
            raise InvalidBudgetRequest(
                f"max_tokens of {req.max_tokens} is above the maximum output{name} "
                f"({model.max_output_tokens} tokens)"
            )
        return req.max_tokens
    default = principal.policy.default_max_tokens
    if default is not None:
        return min(default, model.max_output_tokens)
    return model.max_output_tokens


def input_bound(req: ChatRequest, model: ModelConfig, mode: str) -> int:
    tokens = request_bytes(req) if mode == "strict" else estimate_tokens(req)
    return min(tokens, model.context_window)


def _worst_rates(prices: Prices, input_tokens: int) -> tuple[Decimal, Decimal]:
    """Highest input-side and output rates over the bands a prompt of up to ``input_tokens`` may use."""
    candidates: list[Prices | PriceBand] = [prices]
    candidates.extend(band for band in prices.bands if input_tokens > band.above_input_tokens)
    input_rate = max(max(p.input, p.cache_write_5m, p.cache_write_1h, p.cache_read) for p in candidates)
    output_rate = max(p.output for p in candidates)
    return input_rate, output_rate


def worst_case_usd(model: ModelConfig, input_tokens: int, output_tokens: int) -> Decimal:
    input_rate, output_rate = _worst_rates(model.prices, input_tokens)
    usd = (Decimal(input_tokens) * input_rate + Decimal(output_tokens) * output_rate) / MILLION
    return usd.quantize(QUANTUM, rounding=ROUND_CEILING)


@dataclass(frozen=True, slots=True)
class WorstCase:
    """What to reserve, and which part of it is output (the part a budget may cap)."""

    tokens: int
    usd: Decimal
    output_tokens: int
    output_usd: Decimal

    def admit_kwargs(self) -> dict[str, int | Decimal]:
        """Keyword arguments for ``Limiter.admit`` / ``readmit``."""
        return {
            "tokens": self.tokens,
            "usd": self.usd,
            "output_tokens": self.output_tokens,
            "output_usd": self.output_usd,
        }


def worst_case_parts(
    req: ChatRequest, model: ModelConfig, principal: Principal, settings: Settings, *, model_name: str = ""
) -> WorstCase:
    """The worst case of ``req`` served by ``model`` (see the module docstring), split into parts."""
    output_tokens = output_cap(req, model, principal, model_name=model_name)
    input_tokens = input_bound(req, model, settings.budget_mode)
    usd = worst_case_usd(model, input_tokens, output_tokens)
    return WorstCase(
        tokens=input_tokens + output_tokens,
        usd=usd,
        output_tokens=output_tokens,
        output_usd=usd - worst_case_usd(model, input_tokens, 0),
    )


def worst_case(
    req: ChatRequest, model: ModelConfig, principal: Principal, settings: Settings, *, model_name: str = ""
) -> tuple[int, Decimal]:
    """(tokens, usd) to reserve for ``req`` served by ``model``; see the module docstring."""
    parts = worst_case_parts(req, model, principal, settings, model_name=model_name)
    return parts.tokens, parts.usd
