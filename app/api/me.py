"""``GET /v1/me``: what a team key may know about itself.

The key's own team — name, limits, policy — its usage today and this month from the ledger, and its
budget status when the budgets pillar provides ``limiter.status``. Every query is filtered by the
team the *key* belongs to; nothing in the request can name another team.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.admin import ApiError, EnvelopeRoute, json_response, presented_key
from app.auth.principal import Principal
from app.auth.records import limits_to_json, policy_to_json
from app.ledger.reports import usage_totals

log = logging.getLogger(__name__)
router = APIRouter(route_class=EnvelopeRoute, tags=["me"])


@router.get("/v1/me")
async def me(request: Request) -> Response:
    services = request.app.state.services
    token = presented_key(request)
    principal = await services.keys.lookup(token) if token else None
    if principal is None:
        raise ApiError(
            401,
            "a valid team key is required: send 'Authorization: Bearer <key>' or 'x-api-key'",
            code="invalid_api_key",
        )
    now = datetime.now(UTC)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    usage = {
        "today": await _usage(services, principal, day_start, day_start + timedelta(days=1)),
        "this_month": await _usage(services, principal, month_start, next_month),
    }
    return json_response(
        {
            "object": "me",
            "team": {
                "id": principal.team_id,
                "name": principal.team_name,
                "limits": limits_to_json(principal.team_limits),
                "policy": policy_to_json(principal.policy),
            },
            "key": {
                "id": principal.key_id,
                "prefix": principal.key_prefix,
                "limits": limits_to_json(principal.key_limits),
            },
            "usage": usage,
            "budget": await _budget(services, principal),
        }
    )


async def _usage(services: Any, principal: Principal, start: datetime, end: datetime) -> dict[str, Any]:
    totals = await usage_totals(services.engine, start=start, end=end, team_id=principal.team_id)
    data = totals.to_json()
    data.pop("group")
    data.pop("label")
    return {"start": start.isoformat(), "end": end.isoformat(), **data}


async def _budget(services: Any, principal: Principal) -> Any:
    status = getattr(getattr(services, "limiter", None), "status", None)
    if status is None:
        return None
    try:
        result = status(principal)
        if inspect.isawaitable(result):
            result = await result
    except Exception:
        # Usage above still comes from the ledger; only the live budget view is missing.
        log.warning("budget status unavailable for team %s", principal.team_id, exc_info=True)
        return {"error": "budget status is temporarily unavailable"}
    return _jsonable(result)


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    elif hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value
