"""``POST /v1/browser-tokens`` and ``DELETE /v1/browser-tokens/{id}``: short-lived tokens for browsers.

A team's backend, holding a team key, mints a token bound to one end user, the origins of its pages,
optionally a set of models or routes, a lifetime of at most an hour and a token budget of its own,
and hands it to the browser, which sends it as a bearer key to the chat endpoints (docs/browser.md).
The token acts for the minting key's team within that key's limits; revoking the key ends it too.
Errors use the OpenAI envelope, like the admin API.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from app.api.admin import ApiError, EnvelopeRoute, json_response, presented_key, read_body
from app.auth.keys import is_browser_token
from app.auth.principal import Principal
from app.origins import normalize_origin
from app.teams.browser_tokens import BrowserTokenNotFound

router = APIRouter(route_class=EnvelopeRoute, tags=["browser tokens"])

MAX_TTL_S = 3600
DEFAULT_TTL_S = 900
MAX_ORIGINS = 20
MAX_MODELS = 100
MAX_TOKEN_BUDGET = 10**15


def _printable(value: str) -> str:
    if value != value.strip() or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise ValueError("must not contain control characters or start or end with whitespace")
    return value


ModelName = Annotated[str, Field(min_length=1, max_length=200)]


class BrowserTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    end_user: Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]
    allowed_origins: Annotated[list[str], Field(min_length=1, max_length=MAX_ORIGINS)]
    allowed_models: Annotated[list[ModelName], Field(min_length=1, max_length=MAX_MODELS)] | None = None
    ttl_s: Annotated[int, Field(strict=True, ge=1, le=MAX_TTL_S)] = DEFAULT_TTL_S
    max_tokens_budget: Annotated[int, Field(strict=True, gt=0, le=MAX_TOKEN_BUDGET)]

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        return list(dict.fromkeys(normalize_origin(v) for v in values))


async def _team_principal(request: Request, services: Any) -> Principal:
    secret = presented_key(request)
    if secret is None:
        raise ApiError(401, "a team key is required: send 'Authorization: Bearer <key>' or 'x-api-key'")
    if is_browser_token(secret):
        raise ApiError(403, "a browser token cannot mint or revoke browser tokens; use a team key", code="not_team_key")
    principal: Principal | None = await services.keys.lookup(secret)
    if principal is None:
        raise ApiError(401, "invalid API key", code="invalid_api_key")
    return principal


def _check_origins(services: Any, origins: list[str]) -> None:
    configured = set(services.settings.cors_origin_list)
    outside = [o for o in origins if o not in configured]
    if outside:
        hint = ", ".join(sorted(configured)) if configured else "none: CORS is closed"
        raise ApiError(
            400,
            f"allowed_origins: {', '.join(outside)} not in TOLLWAY_CORS_ORIGINS ({hint}); "
            "a browser there could not read Tollway's answers",
            param="allowed_origins",
        )


def _check_models(services: Any, models: list[str] | None) -> None:
    if not models:
        return
    catalog = services.catalog
    unknown = [m for m in models if catalog.resolve_model(m) is None and m not in catalog.routes]
    if unknown:
        raise ApiError(400, f"allowed_models: unknown model or route: {', '.join(unknown)}", param="allowed_models")


@router.post("/v1/browser-tokens", status_code=201)
async def mint(request: Request) -> Response:
    services = request.app.state.services
    principal = await _team_principal(request, services)
    body = await read_body(request, BrowserTokenCreate)
    _check_origins(services, body.allowed_origins)
    _check_models(services, body.allowed_models)
    record, secret = await services.browser_tokens.create(
        team_id=principal.team_id,
        key_id=principal.key_id,
        end_user=body.end_user,
        allowed_origins=tuple(body.allowed_origins),
        allowed_models=tuple(body.allowed_models) if body.allowed_models is not None else None,
        token_budget=body.max_tokens_budget,
        ttl_s=body.ttl_s,
    )
    return json_response({**record.to_json(), "token": secret, "expires_in": body.ttl_s}, 201)


@router.delete("/v1/browser-tokens/{token_id}")
async def revoke(request: Request, token_id: str) -> Response:
    services = request.app.state.services
    admin_key: str | None = services.settings.admin_key
    secret = presented_key(request)
    is_admin = bool(admin_key and secret and hmac.compare_digest(secret.encode(), admin_key.encode()))
    team_id = None if is_admin else (await _team_principal(request, services)).team_id
    try:
        record = await services.browser_tokens.get(token_id)
    except BrowserTokenNotFound:
        record = None
    if record is None or (team_id is not None and record.team_id != team_id):
        # Another team's token is reported as missing: ids are not confirmed across teams.
        raise ApiError(404, f"no browser token with id '{token_id}'", code="not_found")
    record = await services.browser_tokens.revoke(token_id)
    services.keys.invalidate(record.secret_hash)  # this replica at once; others within the key-cache TTL
    return json_response({**record.to_json(), "revoked": True})
