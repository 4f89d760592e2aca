"""``GET /metrics``: the Prometheus scrape endpoint, optionally behind a bearer token.

It can also be served on a separate port (``TOLLWAY_METRICS_PORT``) so it never shares a listener
with client traffic: ``start_metrics_server``.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from fastapi import APIRouter, Request
from prometheus_client import make_wsgi_app
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse, Response

from app.observability.metrics import Metrics

logger = logging.getLogger("tollway.metrics")

router = APIRouter()


def _authorized(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Constant-time comparison: the token guards the endpoint against guessing.
    return hmac.compare_digest(credential.strip().encode(), token.encode())


async def _refresh_gauges(services: Any) -> None:
    """Refresh pull-style gauges (remaining budgets, ledger backlog) when the app offers a hook.

    A failure (Redis down, say) must not fail the scrape: the other metrics matter most then.
    """
    refresh = getattr(services, "refresh_gauges", None)
    if refresh is None:
        return
    try:
        result = refresh()
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.warning("refreshing gauges before a scrape failed", exc_info=True)


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    services = request.app.state.services
    token: str | None = services.settings.metrics_token
    if token and not _authorized(request.headers.get("authorization"), token):
        return PlainTextResponse(
            "unauthorized\n", status_code=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'}
        )
    await _refresh_gauges(services)
    metrics: Metrics = services.metrics
    # Rendering reads the workers' files in multiprocess mode: keep it off the event loop.
    body, content_type = await run_in_threadpool(metrics.render)
    return Response(body, media_type=content_type)


def start_metrics_server(
    metrics: Metrics, port: int, host: str = "127.0.0.1", *, token: str | None = None
) -> None:
    """Serve ``/metrics`` on its own port from a daemon thread, behind ``token`` when given.

    With several workers, call it once, from the ``tollway serve`` process that supervises them
    (a ``Metrics`` there renders every worker's files); one call per worker would race for the port.
    Pull-style gauges show their value as of the last refresh, as nothing refreshes them here.
    """
    app = make_wsgi_app(metrics.exposition_registry)

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        if token and not _authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
            )
            return [b"unauthorized\n"]
        return app(environ, start_response)

    server = make_server(host, port, guarded, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="tollway-metrics", daemon=True).start()
    logger.info("metrics served on %s:%d", host, server.server_port)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line
        pass
