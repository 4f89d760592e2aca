"""The application factory: routes, the lifespan that builds and closes every service.

``create_app()`` reads settings from the environment; tests pass their own.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from app import __version__
from app.api import chat, health, models, routing
from app.api.cors import cors_middleware_options
from app.api.errors import error_response
from app.api.request_id import RequestIdMiddleware
from app.config import Catalog, Settings, load_catalog, load_settings
from app.context import new_request_id
from app.domain import ClientFormat
from app.errors import GatewayError
from app.lifecycle import drain_on_sigterm
from app.observability.logging import configure_logging
from app.observability.loop_lag import LoopLagProbe
from app.services import build_pipeline, build_services

log = logging.getLogger("tollway")


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> FastAPI:
    settings = settings or load_settings()
    catalog = catalog or load_catalog(settings.config)
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings, catalog)
        app.state.services = services
        app.state.pipeline = build_pipeline(services)
        app.state.lifecycle = services.lifecycle
        if threading.current_thread() is threading.main_thread():
            drain_on_sigterm(services.lifecycle, settings.shutdown_grace_s)
        if settings.metrics_port and not services.metrics.multiprocess_dir:
            from app.api.metrics import start_metrics_server

            start_metrics_server(
                services.metrics, settings.metrics_port, settings.host, token=settings.metrics_token
            )
        # Everything loaded at start-up (catalog, models, SQLAlchemy, routes) lives for the whole
        # process: move it out of the collector's reach, so a full collection walks only request
        # garbage instead of stalling the event loop for ~80 ms (measured: docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        probe = None
        if settings.loop_lag_probe_s > 0:
            probe = LoopLagProbe(settings.loop_lag_probe_s, services.metrics.event_loop_lag_max.set)
            probe.start()
        log.info("tollway %s ready", __version__)
        try:
            yield
        finally:
            if probe is not None:
                await probe.aclose()
            await services.lifecycle.drain_streams(settings.shutdown_grace_s)
            await services.aclose()

    app = FastAPI(
        title="Tollway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    if settings.cors_origin_list:  # closed by default: no CORS headers, preflights refused
        app.add_middleware(CORSMiddleware, **cors_middleware_options(settings.cors_origin_list))  # type: ignore[arg-type]
    app.add_middleware(RequestIdMiddleware)  # outermost: preflight answers carry an id too

    # Chat endpoints are plain Starlette routes: no per-request dependency solving on the hot path.
    for path in ("/v1/messages", "/v1/v1/messages"):
        app.router.add_route(path, chat.messages, methods=["POST"])
    app.router.add_route("/v1/messages/count_tokens", chat.count_tokens, methods=["POST"])
    for path in ("/v1/chat/completions", "/chat/completions"):
        app.router.add_route(path, chat.chat_completions, methods=["POST"])
    for path in ("/v1/responses", "/responses"):
        app.router.add_route(path, chat.responses, methods=["POST"])
    app.router.add_route("/v1/models", models.list_models, methods=["GET"])
    app.router.add_route("/v1/models/{model_id:path}", models.get_model, methods=["GET"])
    app.router.add_route("/v1/routing/explain", routing.explain, methods=["POST"])
    app.router.add_route("/healthz", health.healthz, methods=["GET"])
    app.router.add_route("/readyz", health.readyz, methods=["GET"])

    from app.api import admin, admin_health, browser_tokens, me
    from app.api import metrics as metrics_api
    from app.dashboard import routes as dashboard

    app.include_router(admin.router)
    app.include_router(admin_health.router)
    app.include_router(me.router)
    app.include_router(browser_tokens.router)
    app.include_router(metrics_api.router)
    app.include_router(dashboard.router)

    if any(_simulated(settings, catalog, name) for name in catalog.providers) and not settings.simulator_url:
        from app.simulator import SimulatorConfig, create_simulator_app

        sim_config = SimulatorConfig.from_env()
        sim_config.min_cache_tokens = _min_cache_tokens(catalog)
        app.mount("/simulator", create_simulator_app(sim_config))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        fmt: ClientFormat = "anthropic" if request.url.path.startswith("/v1/messages") else "openai"
        kind = {
            401: "authentication",
            403: "permission",
            404: "not_found",
            405: "invalid_request",
            413: "request_too_large",
        }.get(exc.status_code, "invalid_request")
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        # A path that does not exist is not a missing model: OpenAI's default 404 code would say so.
        code = "not_found" if exc.status_code == 404 else None
        error = GatewayError(kind, message, status=exc.status_code, code=code)  # type: ignore[arg-type]
        return error_response(error, fmt)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        fmt: ClientFormat = "anthropic" if request.url.path.startswith("/v1/messages") else "openai"
        error = GatewayError("api_error", "internal error in Tollway", status=500)
        return error_response(error, fmt, request_id=new_request_id())

    return app


def _min_cache_tokens(catalog: Catalog) -> Callable[[str], int]:
    """The simulator caches prefixes by the same per-model minimums the catalog declares."""

    def lookup(model_id: str) -> int:
        name = catalog.resolve_model(model_id)
        return catalog.models[name].min_cache_tokens if name else 1024

    return lookup


def _simulated(settings: Settings, catalog: Catalog, provider: str) -> bool:
    if settings.simulator == "always":
        return True
    return settings.simulator == "on" and catalog.providers[provider].credential() is None
