"""Every response carries a request id, including the ones no endpoint wrote (404s, 405s, crashes).

The chat pipeline sets its own ids (the ledger's key); this pure ASGI middleware only fills in
``request-id`` / ``x-request-id`` where a response started without one.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import new_request_id

_NAMES = (b"request-id", b"x-request-id")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                present = {name.lower() for name, _ in headers if name.lower() in _NAMES}
                if len(present) < len(_NAMES):
                    existing = next((v for n, v in headers if n.lower() in _NAMES), None)
                    rid = existing or new_request_id().encode()
                    headers.extend((name, rid) for name in _NAMES if name not in present)
            await send(message)

        await self.app(scope, receive, send_with_id)
