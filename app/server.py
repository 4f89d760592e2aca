"""Run the gateway under uvicorn (uvloop + httptools when installed), one or more workers."""

from __future__ import annotations

import os
import tempfile

import uvicorn

from app.config import load_catalog, load_settings


def run_server(host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    overrides = {k: v for k, v in (("host", host), ("port", port), ("workers", workers)) if v is not None}
    settings = load_settings(**overrides)
    load_catalog(settings.config)  # fail fast, with the bad field named, before forking workers
    # Workers re-read settings from the environment: pass the command-line overrides through it.
    os.environ["TOLLWAY_HOST"] = settings.host
    os.environ["TOLLWAY_PORT"] = str(settings.port)
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Several processes: metrics are aggregated through prometheus-client's multiprocess files.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tollway-metrics-")
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        access_log=False,  # one structured line per request comes from the pipeline instead
        timeout_graceful_shutdown=30,
        loop="auto",
        http="auto",
    )
    return 0
