"""Small helpers shared by the end-to-end tests: SDK clients for a gateway, and what the simulator saw."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai

from tests.gateway import Gateway

# A tool both SDKs describe the same way; the simulator calls the first tool it is given.
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
ANTHROPIC_WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": WEATHER_SCHEMA,
}
OPENAI_WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": WEATHER_SCHEMA,
    },
}
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
PDF_TINY = (
    "JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoKdHJhaWxlcgo8PC9Sb290IDEgMCBSPj4KJSVFT0YK"
)


def anthropic_client(gw: Gateway, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.team_key, max_retries=0, **kwargs)


def openai_client(gw: Gateway, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.team_key, max_retries=0, **kwargs)


def clear_sim(gw: Gateway) -> None:
    """Forget what the simulator recorded, so a test reads only its own upstream requests."""
    httpx.delete(gw.sim("/_sim/requests")).raise_for_status()


def upstream_requests(gw: Gateway, path: str | None = None) -> list[dict[str, Any]]:
    """The requests the simulator received (method, path, headers, body), oldest first."""
    recorded = gw.sim_requests()
    if path is None:
        return recorded
    return [r for r in recorded if r["path"].endswith(path)]


def only_upstream_request(gw: Gateway, path: str) -> dict[str, Any]:
    requests = upstream_requests(gw, path)
    assert len(requests) == 1, f"expected one upstream request to {path}, got {len(requests)}"
    return requests[0]


def old_sdk_headers(gw: Gateway) -> dict[str, str]:
    """What an anthropic SDK ≤ 1.x sends: the key in x-api-key and API version 2023-06-01."""
    return {"x-api-key": gw.team_key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
