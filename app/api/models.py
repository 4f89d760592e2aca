"""``GET /v1/models``: the models and routes the caller's team may use.

Answered in Anthropic's list shape to Anthropic clients (they send ``anthropic-version``) and in
OpenAI's otherwise. Models served by the built-in simulator say so.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.api.errors import error_response
from app.auth.principal import Principal
from app.domain import ClientFormat
from app.errors import GatewayError
from app.pipeline import Pipeline

CREATED_AT = "2026-01-01T00:00:00Z"
CREATED_TS = 1767225600


def _is_anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers or "x-api-key" in request.headers


def _entries(pipeline: Pipeline, principal: Principal) -> list[dict[str, Any]]:
    catalog = pipeline.catalog
    allowed = principal.policy.allowed_models
    entries: list[dict[str, Any]] = []
    for name, model in catalog.models.items():
        if allowed is not None and name not in allowed:
            continue
        provider = model.all_deployments(name)[0].provider
        simulated = pipeline.dispatcher.providers.is_simulated(provider)
        display = model.display_name or name
        entries.append(
            {
                "id": name,
                "display_name": f"{display} (Tollway simulator)" if simulated else display,
                "owned_by": "tollway-simulator" if simulated else provider,
                "max_input_tokens": model.context_window,
                "max_tokens": model.max_output_tokens,
                "tier": model.tier,
            }
        )
    for name, route in catalog.routes.items():
        if allowed is not None and name not in allowed:
            continue
        entries.append(
            {
                "id": name,
                "display_name": f"Tollway route: {route.description or name}",
                "owned_by": "tollway-route",
                "max_input_tokens": max(catalog.models[c].context_window for c in route.candidates),
                "max_tokens": max(catalog.models[c].max_output_tokens for c in route.candidates),
                "tier": None,
            }
        )
    return entries


def _anthropic_entry(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "model",
        "id": e["id"],
        "display_name": e["display_name"],
        "created_at": CREATED_AT,
        "max_input_tokens": e["max_input_tokens"],
        "max_tokens": e["max_tokens"],
    }


def _openai_entry(e: dict[str, Any]) -> dict[str, Any]:
    return {"id": e["id"], "object": "model", "created": CREATED_TS, "owned_by": e["owned_by"]}


async def list_models(request: Request) -> Response:
    pipeline: Pipeline = request.app.state.pipeline
    anthropic = _is_anthropic(request)
    fmt: ClientFormat = "anthropic" if anthropic else "openai"
    try:
        principal = await pipeline.authenticate(request.headers)
    except GatewayError as err:
        return error_response(err, fmt)
    entries = _entries(pipeline, principal)
    if not anthropic:
        return Response(
            orjson.dumps({"object": "list", "data": [_openai_entry(e) for e in entries]}),
            media_type="application/json",
        )
    ids = [e["id"] for e in entries]
    start, end = 0, len(entries)
    after, before = request.query_params.get("after_id"), request.query_params.get("before_id")
    if after in ids:
        start = ids.index(after) + 1
    if before in ids:
        end = ids.index(before)
    try:
        limit = max(1, min(1000, int(request.query_params.get("limit", "20"))))
    except ValueError:
        return error_response(GatewayError("invalid_request", "limit: must be an integer"), fmt)
    page = entries[start:end][:limit]
    body = {
        "data": [_anthropic_entry(e) for e in page],
        "has_more": start + len(page) < end,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def get_model(request: Request) -> Response:
    pipeline: Pipeline = request.app.state.pipeline
    anthropic = _is_anthropic(request)
    fmt: ClientFormat = "anthropic" if anthropic else "openai"
    try:
        principal = await pipeline.authenticate(request.headers)
    except GatewayError as err:
        return error_response(err, fmt)
    wanted = request.path_params["model_id"]
    canonical = pipeline.catalog.resolve_model(wanted) or wanted
    for e in _entries(pipeline, principal):
        if e["id"] == canonical:
            entry = _anthropic_entry(e) if anthropic else _openai_entry(e)
            return Response(orjson.dumps(entry), media_type="application/json")
    return error_response(GatewayError("not_found", f"model not found: {wanted}"), fmt)
