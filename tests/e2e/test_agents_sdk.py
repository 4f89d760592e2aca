"""The OpenAI Agents SDK, unchanged, against Tollway: its default model speaks the Responses API.

Only the client is pointed at the gateway (``set_default_openai_client``) and tracing is off (it would
otherwise upload traces to OpenAI). A function tool makes the agent loop: call, tool output, answer.
"""

from __future__ import annotations

import asyncio

import pytest
from agents import Agent, Runner, function_tool, set_default_openai_client, set_tracing_disabled
from openai import AsyncOpenAI

from tests.e2e.helpers import clear_sim, upstream_requests
from tests.gateway import Gateway

MODELS = ["claude-haiku-5-5", "gpt-5-mini"]


@pytest.fixture(autouse=True)
def _fresh_sim(gateway: Gateway) -> None:
    clear_sim(gateway)


def _agent(gw: Gateway, model: str, calls: list[str]) -> Agent:
    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.team_key, max_retries=0)
    set_default_openai_client(client, use_for_tracing=False)

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"18 degrees in {city}"

    return Agent(name="helper", instructions="Answer briefly", model=model, tools=[get_weather])


@pytest.mark.parametrize("model", MODELS)
def test_agent_runs_a_tool_loop(gateway: Gateway, model: str) -> None:
    calls: list[str] = []
    result = asyncio.run(Runner.run(_agent(gateway, model, calls), "What's the weather in Paris?"))
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert len(calls) == 1 and isinstance(result.final_output, str) and result.final_output
    assert [r.usage.requests for r in result.raw_responses] == [1, 1]
    path = "/v1/messages" if model.startswith("claude") else "/v1/chat/completions"
    assert len(upstream_requests(gateway, path)) == 2  # the tool call, then the answer


@pytest.mark.parametrize("model", MODELS)
def test_agent_streams(gateway: Gateway, model: str) -> None:
    calls: list[str] = []

    async def run() -> tuple[list[str], object]:
        streamed = Runner.run_streamed(_agent(gateway, model, calls), "Weather in Oslo?")
        deltas = [
            event.data.delta  # type: ignore[union-attr]
            async for event in streamed.stream_events()
            if event.type == "raw_response_event" and event.data.type == "response.output_text.delta"
        ]
        return deltas, streamed.final_output

    deltas, final = asyncio.run(run())
    assert len(calls) == 1 and len(deltas) > 2 and "".join(deltas) == final
