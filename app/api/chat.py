"""The chat endpoints: Anthropic ``/v1/messages``, OpenAI ``/v1/chat/completions`` and ``/v1/responses``.

Ordinary Starlette routes behind the normal middleware stack. Each reads the body within its size
limit, hands the pipeline an ``Inbound`` and renders the ``Outcome``. While a non-streaming request
is in flight, one task watches for the client leaving and cancels the pipeline (which closes the
upstream call and records the request as aborted); a stream watches for itself (``EventStreamResponse``).
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app.api.errors import error_response
from app.api.event_stream import EventStreamResponse
from app.context import new_request_id
from app.domain import ClientFormat
from app.errors import GatewayError
from app.exchange import Inbound, Outcome
from app.pipeline import Pipeline, parse, route_error
from app.routing.router import RouteError
from app.tokens import estimate_tokens
from app.wire.codec import codec_for

CLIENT_CLOSED_REQUEST = 499


def _pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError("request_too_large", f"request body is larger than the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise GatewayError("request_too_large", f"request body is larger than the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise GatewayError("invalid_request", "client disconnected while sending the request") from exc
    return b"".join(chunks)


async def inbound(request: Request, fmt: ClientFormat) -> Inbound:
    body = await read_body(request, _pipeline(request).settings.max_body_bytes)
    client = request.client.host if request.client else None
    return Inbound(format=fmt, headers=request.headers, body=body, client_address=client)


def render(outcome: Outcome) -> Response:
    if outcome.stream is not None:
        return EventStreamResponse(outcome.stream, headers=outcome.headers)
    background = BackgroundTask(outcome.after) if outcome.after is not None else None
    return Response(outcome.body, status_code=outcome.status, headers=outcome.headers, background=background)


async def serve(request: Request, fmt: ClientFormat) -> Response:
    try:
        message = await inbound(request, fmt)
    except GatewayError as err:
        return error_response(err, fmt, new_request_id())
    this = asyncio.current_task()
    assert this is not None
    client_gone = False

    async def watch_for_disconnect() -> None:
        nonlocal client_gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        client_gone = True
        this.cancel()

    watcher = asyncio.get_running_loop().create_task(watch_for_disconnect())
    try:
        outcome = await _pipeline(request).handle(message)
    except asyncio.CancelledError:
        if not client_gone:
            raise  # the server is stopping, or someone else cancelled us
        this.uncancel()
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody is listening; the ledger has it
    finally:
        watcher.cancel()
    return render(outcome)


async def messages(request: Request) -> Response:
    return await serve(request, "anthropic")


async def chat_completions(request: Request) -> Response:
    return await serve(request, "openai")


async def responses(request: Request) -> Response:
    return await serve(request, "responses")


async def count_tokens(request: Request) -> Response:
    pipeline = _pipeline(request)
    request_id = new_request_id()
    try:
        message = await inbound(request, "anthropic")
        principal = await pipeline.authenticate(message.headers)
        body = orjson.loads(message.body) if message.body else None
        if isinstance(body, dict) and "max_tokens" not in body:
            body = {**body, "max_tokens": 1}  # count_tokens has no max_tokens; the parser wants one
        chat = parse(codec_for("anthropic"), Inbound("anthropic", message.headers, orjson.dumps(body)))
        try:
            plan = pipeline.router.plan(chat, principal)
        except RouteError as err:
            raise route_error(err) from err
        candidate = plan.candidates[0]
        deployment = candidate.model.all_deployments(candidate.name)[0]
        provider = pipeline.dispatcher.providers.get(deployment.provider)
        counted = await provider.count_tokens(chat, deployment.upstream_model or candidate.name)
        tokens = counted if counted is not None else estimate_tokens(chat)
    except orjson.JSONDecodeError:
        not_json = GatewayError("invalid_request", "request body is not valid JSON")
        return error_response(not_json, "anthropic", request_id)
    except GatewayError as err:
        return error_response(err, "anthropic", request_id)
    return Response(
        orjson.dumps({"input_tokens": tokens}),
        media_type="application/json",
        headers={"request-id": request_id, "x-request-id": request_id},
    )
