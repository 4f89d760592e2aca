"""Optional OpenTelemetry tracing of the pipeline stages and the upstream call.

Off unless ``TOLLWAY_OTEL_ENABLED=1`` *and* OpenTelemetry is installed; it is not a dependency::

    pip install opentelemetry-sdk opentelemetry-exporter-otlp

When off, ``span()`` returns one shared do-nothing context manager (a function call, a dict of
keyword arguments and one global check: well under a microsecond). When on, each ``span()`` is a
real span, a child of the current one (contextvars carry it across ``await``), exported by the
SDK as configured with the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME`` ...).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from typing import Any

ENABLED_ENV = "TOLLWAY_OTEL_ENABLED"

logger = logging.getLogger("tollway.tracing")

_NOOP: ContextManager[None] = contextlib.nullcontext()
_start_span: Callable[..., ContextManager[Any]] | None = None
_configured = False


def span(name: str, **attrs: Any) -> ContextManager[Any]:
    """A span named ``name`` with ``attrs`` (None values dropped), or a no-op when tracing is off.

    The first call configures tracing from the environment unless ``configure_tracing`` ran.
    """
    if _start_span is None:
        if _configured:
            return _NOOP
        configure_tracing()
        if _start_span is None:
            return _NOOP
    # OpenTelemetry attribute values must be str, bool, int, float or sequences of them.
    return _start_span(name, attributes={k: v for k, v in attrs.items() if v is not None})


def configure_tracing(service_name: str = "tollway", *, enabled: bool | None = None) -> bool:
    """Turn tracing on when asked for and possible; returns whether it is on.

    Installs an SDK tracer provider with a batching OTLP exporter when the SDK is present and no
    provider was set yet (an application embedding Tollway may have set its own).
    """
    global _configured, _start_span
    _configured = True
    _start_span = None
    if enabled is None:
        enabled = os.environ.get(ENABLED_ENV, "").lower() in ("1", "true", "yes", "on")
    if not enabled:
        return False
    try:
        from opentelemetry import trace
    except ImportError:
        logger.warning(
            "%s is set but OpenTelemetry is not installed "
            "(pip install opentelemetry-sdk opentelemetry-exporter-otlp): tracing stays off",
            ENABLED_ENV,
        )
        return False
    _install_sdk_provider(trace, service_name)
    _start_span = trace.get_tracer("tollway").start_as_current_span
    return True


def _install_sdk_provider(trace: Any, service_name: str) -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return  # somebody configured one already
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning("opentelemetry-sdk is not installed: spans are created but not exported")
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = _otlp_exporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _otlp_exporter() -> Any:
    """The OTLP span exporter (HTTP, else gRPC), or None when neither is installed."""
    for module in (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    ):
        try:
            return importlib.import_module(module).OTLPSpanExporter()
        except ImportError:
            continue
    logger.warning("no OTLP exporter installed (opentelemetry-exporter-otlp): spans are not exported")
    return None
