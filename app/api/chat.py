"""The chat endpoints: Anthropic ``/v1/messages``, OpenAI ``/v1/chat/completions`` and ``/v1/responses``.

Plain Starlette endpoints (no per-request dependency solving): each hands the request to the
pipeline with its client format. ``count_tokens`` answers without calling a model.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.api.errors import error_response
from app.context import new_request_id
from app.errors import GatewayError
from app.pipeline import Pipeline, parse_chat, read_json_body
from app.tokens import estimate_tokens


def _pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


async def messages(request: Request) -> Response:
    return await _pipeline(request).handle(request, "anthropic")


async def chat_completions(request: Request) -> Response:
    return await _pipeline(request).handle(request, "openai")


async def responses(request: Request) -> Response:
    return await _pipeline(request).handle(request, "responses")


async def count_tokens(request: Request) -> Response:
    pipeline = _pipeline(request)
    request_id = new_request_id()
    try:
        body = await read_json_body(request, pipeline.s.settings.max_body_bytes)
        principal = await pipeline.authenticate(request)
        if isinstance(body, dict) and "max_tokens" not in body:
            body = {**body, "max_tokens": 1}  # count_tokens has no max_tokens; the parser wants one
        chat = parse_chat("anthropic", body, request)
        plan = pipeline.s.router.plan(chat, principal)
        candidate = plan.candidates[0]
        deployment = candidate.model.all_deployments(candidate.name)[0]
        provider = pipeline.s.providers.get(deployment.provider)
        counted = await provider.count_tokens(chat, deployment.upstream_model or candidate.name)
        tokens = counted if counted is not None else estimate_tokens(chat)
    except GatewayError as err:
        return error_response(err, "anthropic", request_id)
    except Exception as exc:  # RouteError and friends carry status/kind/message
        status = getattr(exc, "status", None)
        kind = getattr(exc, "kind", None)
        if status is None or kind is None:
            raise
        return error_response(
            GatewayError(kind, str(getattr(exc, "message", exc)), status=status), "anthropic", request_id
        )
    return Response(
        orjson.dumps({"input_tokens": tokens}),
        media_type="application/json",
        headers={"request-id": request_id, "x-request-id": request_id},
    )
