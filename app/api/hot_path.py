"""The chat endpoints' fast lane through the ASGI stack.

Chat requests are most of the traffic, and the generic stack in front of every route (error and
exception middleware, FastAPI's telemetry and body-limit layers, routing by regex over every route)
costs tens of microseconds per request without doing anything they need: the pipeline reads the
body itself (with its own size limit), renders its own errors in the client's format and sets its own
request id. So POSTs to the chat paths go straight to the pipeline; everything else, and every other
scope type (lifespan included), continues down the normal stack.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.domain import ClientFormat
from app.errors import GatewayError

log = logging.getLogger("tollway")

CHAT_PATHS: dict[str, ClientFormat] = {
    "/v1/messages": "anthropic",
    "/v1/v1/messages": "anthropic",
    "/v1/chat/completions": "openai",
    "/chat/completions": "openai",
}


class HotPathRouter:
    def __init__(self, app: FastAPI, rest: ASGIApp) -> None:
        self.app = app
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fmt = CHAT_PATHS.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if fmt is None:
            await self.rest(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.app.state.pipeline.handle(request, fmt)
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            response = error_response(GatewayError("api_error", "internal error in Tollway", status=500), fmt)
        await response(scope, receive, send)


class TollwayApp(FastAPI):
    """FastAPI for the admin API and everything else, with the chat paths on the fast lane."""

    def build_middleware_stack(self) -> ASGIApp:
        return HotPathRouter(self, super().build_middleware_stack())
