"""The requests the gateway benchmark sends, and how each is sent directly to the simulator.

One request shape for every cell: a support-assistant system prompt of about 1,200 tokens (long
enough that automatic prompt caching places a breakpoint on Sonnet-class models) and a short user
turn, answered in 50 tokens (``x-sim-output-tokens``). The same bytes go through the gateway and,
with the model the gateway served and the simulator's credentials, straight to the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

Format = Literal["anthropic", "openai"]
Mode = Literal["json", "stream"]

_POLICY = (
    "Refunds are available within 30 days of delivery for unused items in their original packaging. "
    "Damaged items may be returned at any time within 90 days; the customer is not charged for return "
    "shipping and may choose a replacement or a refund to the original payment method. "
    "Orders can be cancelled free of charge until they ship; after that they must be returned. "
    "Never promise delivery dates; quote the carrier's estimate and link the tracking page. "
    "Escalate to a human agent when the customer mentions a legal claim, a safety issue or a "
    "chargeback, or asks for a manager twice. Keep answers under 120 words, friendly and concrete. "
)
SYSTEM_PROMPT = (
    "You are the customer support assistant of Northwind Outfitters, an online shop for outdoor gear. "
    + "".join(f"\n\nPolicy section {i + 1}. {_POLICY}" for i in range(6))
)
USER_TURN = "My order #4412 arrived with a torn tent fly. What are my options, and do I pay for the return?"
OUTPUT_TOKENS = 50


@dataclass(frozen=True)
class Target:
    """Where a request goes and with which credential."""

    port: int
    api_key: str
    via_gateway: bool


def body(fmt: Format, model: str, stream: bool) -> dict[str, Any]:
    if fmt == "anthropic":
        data: dict[str, Any] = {
            "model": model,
            "max_tokens": 1024,
            "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": USER_TURN}],
        }
    else:
        data = {
            "model": model,
            "max_tokens": 1024,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": USER_TURN},
            ],
        }
        if stream:
            data["stream_options"] = {"include_usage": True}
    if stream:
        data["stream"] = True
    return data


def path(fmt: Format) -> str:
    return "/v1/messages" if fmt == "anthropic" else "/v1/chat/completions"


def headers(
    fmt: Format, api_key: str, *, output_tokens: int = OUTPUT_TOKENS, extra: dict[str, str] | None = None
) -> dict[str, str]:
    h = {"x-sim-output-tokens": str(output_tokens)}
    if fmt == "anthropic":
        h["anthropic-version"] = "2023-06-01"
        h["x-api-key"] = api_key
    else:
        h["authorization"] = f"Bearer {api_key}"
    h.update(extra or {})
    return h


def encoded(fmt: Format, model: str, stream: bool) -> bytes:
    return orjson.dumps(body(fmt, model, stream))
