"""The simulator's Starlette app: API routes (at the root and under a ``/{tag}`` prefix) and the
``/_sim/*`` inspection routes tests use."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from app.simulator.anthropic_wire import AnthropicWire
from app.simulator.config import SimulatorConfig
from app.simulator.http import Endpoint, JSONReply, SimRequest
from app.simulator.openai_wire import OpenAIWire
from app.simulator.state import SimulatorState


def create_simulator_app(
    config: SimulatorConfig | None = None, clock: Callable[[], float] = time.monotonic
) -> Starlette:
    """A wire-faithful fake Anthropic + OpenAI upstream (see docs/simulator.md).

    ``clock`` drives prompt-cache expiry, so tests can move time instead of sleeping.
    """
    state = SimulatorState(config or SimulatorConfig(), clock)
    anthropic = AnthropicWire(state)
    openai = OpenAIWire(state)

    async def list_models(request: SimRequest) -> JSONReply:
        wire = anthropic if "anthropic-version" in request.headers else openai
        return await wire.models(request)

    async def get_model(request: SimRequest) -> JSONReply:
        model_id = request.params["model_id"]
        wire = anthropic if "anthropic-version" in request.headers else openai
        return await wire.models(request, model_id)

    async def recorded_requests(request: SimRequest) -> JSONReply:
        if request.method == "DELETE":
            state.recent.clear()
            return JSONReply({"deleted": True})
        return JSONReply(state.recorded())

    async def stats(request: SimRequest) -> JSONReply:
        return JSONReply(state.stats.as_dict())

    async def reset(request: SimRequest) -> JSONReply:
        state.reset()
        return JSONReply({"reset": True})

    api = [
        ("/v1/messages", anthropic.messages, ["POST"]),
        ("/v1/messages/count_tokens", anthropic.count_tokens, ["POST"]),
        ("/v1/chat/completions", openai.chat_completions, ["POST"]),
        ("/v1/models", list_models, ["GET"]),
        ("/v1/models/{model_id:path}", get_model, ["GET"]),
    ]
    routes: list[BaseRoute] = []
    for path, handler, methods in api:
        endpoint = Endpoint(handler, state)
        routes.append(Route(path, endpoint, methods=methods))
        # Several "deployments" can share one simulator: base_url .../simulator/<tag>.
        routes.append(Route("/{tag:path}" + path, endpoint, methods=methods))
    routes += [
        Route("/_sim/requests", Endpoint(recorded_requests, state, record=False), methods=["GET", "DELETE"]),
        Route("/_sim/stats", Endpoint(stats, state, record=False), methods=["GET"]),
        Route("/_sim/reset", Endpoint(reset, state, record=False), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.simulator = state
    return app
