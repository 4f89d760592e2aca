"""The response that carries an SSE stream to the client, with client-disconnect detection.

Starlette's ``StreamingResponse`` does the same job, but under uvicorn (ASGI spec 2.3) it opens an
anyio task group per response to watch for the client leaving: a cancel scope, a second task and
their bookkeeping on every stream. Here one plain asyncio task waits on ``receive()``; when the
client disconnects it cancels the streaming task, which runs the body iterator's ``finally`` (the
relay closes its upstream connection and settles what was used) and ends quietly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        self.body_iterator = content
        self.status_code = 200
        self.background = background
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        client_gone = False
        finished = False

        async def watch_for_disconnect() -> None:
            nonlocal client_gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not finished:
                client_gone = True
                streaming.cancel()

        watcher = asyncio.get_running_loop().create_task(watch_for_disconnect())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not client_gone:
                raise  # the server is shutting down, or someone else cancelled us
            streaming.uncancel()  # our own cancellation, delivered: the client left
        finally:
            finished = True
            watcher.cancel()
            # Finish the body now (its ``finally`` settles and records), not whenever it is collected.
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
        if self.background is not None:
            await self.background()  # also after a disconnect: it records what was served
