"""``POST /v1/routing/explain``: what the router would do with a request, without calling a model.

The answer includes the learned model's per-tier probabilities (``tier_probabilities``), the team's
``quality`` policy and its ``threshold``, the ``needed_tier``, the conversation's ``sticky`` model
(a later turn of a conversation this team already routed), and the choice."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.api.chat import inbound
from app.api.errors import error_response
from app.domain import ClientFormat
from app.errors import GatewayError
from app.pipeline import Pipeline, parse, route_error
from app.routing.router import RouteError
from app.wire.codec import codec_for


async def explain(request: Request) -> Response:
    pipeline: Pipeline = request.app.state.pipeline
    fmt: ClientFormat = (
        "anthropic"
        if request.query_params.get("format") == "anthropic" or "anthropic-version" in request.headers
        else "openai"
    )
    try:
        message = await inbound(request, fmt)
        principal = await pipeline.authenticate(message.headers)
        chat = parse(codec_for(fmt), message)
        result = pipeline.router.explain(
            chat,
            principal,
            task_hint=request.headers.get("x-tollway-task"),
            budget_share_used=pipeline.budget_shares.used(principal),
            sticky_model=await pipeline.sticky_model(chat, principal),
        )
    except GatewayError as err:
        return error_response(err, fmt)
    except RouteError as err:
        return error_response(route_error(err), fmt)
    return Response(orjson.dumps(result), media_type="application/json")
