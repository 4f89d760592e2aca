"""``GET /admin/health``: every deployment's circuit-breaker state, and the ledger's backlog."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.admin import EnvelopeRoute, json_response, require_admin

router = APIRouter(route_class=EnvelopeRoute, tags=["admin"])


@router.get("/admin/health")
async def deployment_health(request: Request) -> Response:
    services = await require_admin(request)
    return json_response(
        {
            "deployments": services.health.snapshot(),
            "ledger": {"queue_depth": services.recorder.queue_depth, "spool_size": services.recorder.spool_size},
        }
    )
