"""Cost of the router's ``parameters`` and ``logprobs`` checks per candidate model.

Times ``Router._refused_parameters`` (``app.wire.parameters.unsupported`` for each wire format the
model's deployments speak) for an Anthropic-format and an OpenAI-format request against an OpenAI and
an Anthropic model of the shipped catalog; ``auto`` evaluates six candidates per request.

    python -m bench.parameters_bench
"""

from __future__ import annotations

import functools
import timeit

from app.config import load_catalog
from app.domain import ChatRequest, Message
from app.routing.health import DeploymentHealth
from app.routing.router import Router

CALLS = 200_000


def main() -> None:
    catalog = load_catalog(None)
    router = Router(catalog, DeploymentHealth(), tier_model=None)
    messages = [Message("user", [{"type": "text", "text": "hi"}])]
    for fmt, extra in (("anthropic", {}), ("openai", {"seed": 1, "service_tier": "auto"})):
        req = ChatRequest(model="auto", messages=messages, max_tokens=100, client_format=fmt, extra=extra)  # type: ignore[arg-type]
        for name in ("gpt-4.1", "claude-haiku-5-5"):
            model = catalog.models[name]
            call = functools.partial(router._refused_parameters, req, name, model)
            seconds = min(timeit.repeat(call, number=CALLS, repeat=3))
            print(f"{fmt:9} client → {name:16} {seconds / CALLS * 1e6:5.2f} µs per candidate")


if __name__ == "__main__":
    main()
