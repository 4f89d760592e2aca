"""Streams are forwarded as they arrive (never buffered to the end), and a client that goes away
cancels the upstream request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.helpers import anthropic_client, clear_sim, openai_client
from tests.gateway import Gateway

TOKENS = 30
TOKENS_PER_SECOND = 20  # about 1.5 s of upstream streaming
PACED = {"x-sim-output-tokens": str(TOKENS), "x-sim-tokens-per-second": str(TOKENS_PER_SECOND)}
SLOW = {"x-sim-output-tokens": "200", "x-sim-tokens-per-second": "20"}  # ten seconds if left to finish


@pytest.fixture(autouse=True)
def _fresh_sim(gateway: Gateway) -> None:
    clear_sim(gateway)


def anthropic_texts(gw: Gateway, model: str, headers: dict[str, str]) -> Iterator[str]:
    with anthropic_client(gw).messages.stream(
        model=model, max_tokens=1000, messages=[{"role": "user", "content": "Go"}], extra_headers=headers
    ) as stream:
        yield from stream.text_stream


def openai_texts(gw: Gateway, model: str, headers: dict[str, str]) -> Iterator[str]:
    stream = openai_client(gw).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Go"}],
        stream=True,
        max_tokens=1000,
        extra_headers=headers,
    )
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
    finally:
        stream.close()


Texts = Callable[[Gateway, str, dict[str, str]], Iterator[str]]
COMBINATIONS = [
    pytest.param(anthropic_texts, "claude-haiku-5-5", id="anthropic-to-anthropic"),
    pytest.param(openai_texts, "gpt-5-mini", id="openai-to-openai"),
    pytest.param(openai_texts, "claude-haiku-5-5", id="openai-to-anthropic"),
    pytest.param(anthropic_texts, "gpt-5-mini", id="anthropic-to-openai"),
]


@pytest.fixture(scope="module", autouse=True)
def _warm_up(gateway: Gateway) -> None:
    """One unpaced request per combination first, so connection set-up is not in the timings."""
    for param in COMBINATIONS:
        texts, model = param.values
        list(texts(gateway, model, {}))  # type: ignore[operator]


@pytest.mark.parametrize(("texts", "model"), COMBINATIONS)
def test_events_arrive_incrementally(gateway: Gateway, texts: Texts, model: str) -> None:
    started = time.perf_counter()
    arrivals: list[float] = []
    for _ in texts(gateway, model, PACED):
        arrivals.append(time.perf_counter() - started)
    total = time.perf_counter() - started
    upstream_duration = (TOKENS - 1) / TOKENS_PER_SECOND
    assert len(arrivals) == TOKENS
    assert total >= upstream_duration * 0.9  # the pacing really happened upstream
    # the first delta reached the client long before the upstream finished ...
    assert arrivals[0] < total / 2, (arrivals[0], total)
    # ... and the rest trickled in at the upstream's pace rather than in one burst at the end
    # (generous bounds: the machine has two cores and other tests may be running)
    assert arrivals[-1] - arrivals[0] > upstream_duration * 0.5, arrivals
    middle = (arrivals[0] + arrivals[-1]) / 2
    assert 0.2 * TOKENS < sum(1 for t in arrivals if t < middle) < 0.8 * TOKENS, arrivals


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize(("texts", "model"), COMBINATIONS)
def test_client_disconnect_cancels_the_upstream_request(gateway: Gateway, texts: Texts, model: str) -> None:
    before = gateway.sim_stats()
    stream = texts(gateway, model, SLOW)
    received = [next(stream) for _ in range(3)]
    assert len(received) == 3
    disconnected_at = time.monotonic()
    stream.close()  # leaves the SDK's context: the client's connection closes mid-stream

    def cancelled() -> bool:
        return gateway.sim_stats()["streams_cancelled"] > before["streams_cancelled"]

    assert wait_for(cancelled), gateway.sim_stats()
    assert time.monotonic() - disconnected_at < 3.0
    after = gateway.sim_stats()
    assert after["streams_completed"] == before["streams_completed"]
    assert after["streams_started"] == before["streams_started"] + 1
