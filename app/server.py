"""Run the gateway under uvicorn (uvloop + httptools when installed), one or more workers."""

from __future__ import annotations

import os

import uvicorn
from sqlalchemy.engine import make_url

from app.config import ConfigError, Settings, load_catalog, load_settings
from app.db.migrate import migrate_on_start
from app.http_protocol import HeaderTimeoutProtocol
from app.observability.metrics import Metrics, prepare_multiprocess_dir, remove_multiprocess_dir
from app.providers.registry import check_credentials


def run_server(host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    overrides = {k: v for k, v in (("host", host), ("port", port), ("workers", workers)) if v is not None}
    settings = load_settings(**overrides)
    catalog = load_catalog(settings.config)  # fail fast, with the bad field named, before forking workers
    check_credentials(settings, catalog)  # a missing provider key stops start-up (no silent simulation)
    if settings.auto_migrate:
        # Here, once, before the workers exist: workers that each migrated a fresh database raced
        # ("table alembic_version already exists"). The lock inside also covers other replicas.
        try:
            migrate_on_start(settings.database_url)
        except Exception as exc:  # unreachable database, bad URL ...: one clear line, exit 1
            where = make_url(settings.database_url).render_as_string(hide_password=True)
            raise ConfigError(f"could not migrate the database {where}: {type(exc).__name__}: {exc}") from exc
    # Workers re-read settings from the environment: pass the command-line overrides through it.
    os.environ["TOLLWAY_HOST"] = settings.host
    os.environ["TOLLWAY_PORT"] = str(settings.port)
    # Several processes: metrics are aggregated through prometheus-client's multiprocess files.
    metrics_dir = prepare_multiprocess_dir(settings.workers)
    if settings.metrics_port and metrics_dir:  # several workers: the supervisor serves the port, once
        from app.api.metrics import start_metrics_server

        start_metrics_server(
            Metrics(multiprocess_dir=metrics_dir),
            settings.metrics_port,
            settings.host,
            token=settings.metrics_token,
        )
    try:
        _run_uvicorn(settings)
    finally:
        remove_multiprocess_dir(metrics_dir)
    return 0


def _run_uvicorn(settings: Settings) -> None:
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        access_log=False,  # one structured line per request comes from the pipeline instead
        # Streams get shutdown_grace_s to finish, then an error event (app/lifecycle.py); then the rest.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
        loop="auto",
        http=HeaderTimeoutProtocol,  # uvicorn's httptools protocol + a deadline for the request head
        server_header=False,  # no "server: uvicorn" on every answer: nothing for a client to act on
    )
