"""The pooled HTTP client both adapters share, and the mapping of upstream failures to errors.

One ``httpx.AsyncClient`` per provider: keep-alive connections, configurable connect/read timeouts.
Closing a streamed response closes its connection, which is how a client disconnect cancels the
upstream request.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import orjson

from app.config import ProviderConfig
from app.domain import StreamEvent
from app.providers.base import UpstreamError
from app.wire.sse import SSEEvent, iter_sse

SIMULATOR_HEADER_PREFIX = "x-sim-"


def make_client(cfg: ProviderConfig) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(cfg.read_timeout_s, connect=cfg.connect_timeout_s),
        limits=httpx.Limits(
            max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_connections
        ),
        follow_redirects=False,
    )


def _retry_after(headers: httpx.Headers) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # neither seconds nor an HTTP date: ignore it rather than fail the request
    return max(parsed.timestamp() - time.time(), 0.0)


def _upstream_message(body: bytes) -> str | None:
    """The upstream's own error message (not its raw body), when it has one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return message[:500] if isinstance(message, str) else None


def error_for_status(status: int, headers: httpx.Headers, body: bytes, provider: str) -> UpstreamError:
    retry_after = _retry_after(headers)
    if status == 429:
        return UpstreamError(
            status, "rate_limit", f"the upstream provider '{provider}' is rate limiting", retry_after
        )
    if status == 529 or status == 503:
        return UpstreamError(
            status, "overloaded", f"the upstream provider '{provider}' is overloaded", retry_after
        )
    if status in (408, 504):
        return UpstreamError(status, "timeout", f"the upstream provider '{provider}' timed out", retry_after)
    if status in (401, 403):
        # Tollway's own credential was refused: not the client's fault, and nothing of it is shown.
        return UpstreamError(
            status, "api_error", f"the upstream provider '{provider}' refused Tollway's credentials"
        )
    if status == 413:
        return UpstreamError(
            status, "request_too_large", "the upstream provider says the request is too large"
        )
    if 400 <= status < 500:
        detail = _upstream_message(body)
        message = (
            f"the upstream provider rejected the request: {detail}"
            if detail
            else "the upstream provider rejected the request"
        )
        kind = "not_found" if status == 404 else "invalid_request"
        return UpstreamError(status, kind, message)
    return UpstreamError(
        status, "api_error", f"the upstream provider '{provider}' failed (HTTP {status})", retry_after
    )


def connection_error(exc: Exception, provider: str) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(None, "timeout", f"the upstream provider '{provider}' timed out")
    return UpstreamError(None, "api_error", f"could not reach the upstream provider '{provider}'")


def forwarded_headers(client_headers: Mapping[str, str], *, is_simulator: bool) -> dict[str, str]:
    """Client headers that may travel upstream: only the simulator's test directives."""
    if not is_simulator:
        return {}
    return {k: v for k, v in client_headers.items() if k.startswith(SIMULATOR_HEADER_PREFIX)}


class SSEUpstreamStream:
    """An open upstream SSE response, iterated as canonical events."""

    def __init__(
        self,
        response: httpx.Response,
        translate: Callable[[AsyncIterator[SSEEvent]], AsyncIterator[StreamEvent]],
        provider: str,
    ) -> None:
        self._response = response
        self._translate = translate
        self._provider = provider

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        try:
            async for event in self._translate(iter_sse(self._response.aiter_raw())):
                yield event
        except httpx.HTTPError as exc:
            raise connection_error(exc, self._provider) from exc
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


async def send(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    stream: bool,
    provider: str,
) -> httpx.Response:
    """POST ``body``; raise UpstreamError unless the upstream answers 200."""
    request = client.build_request("POST", url, content=orjson.dumps(body), headers=headers)
    try:
        response = await client.send(request, stream=stream)
    except httpx.HTTPError as exc:
        raise connection_error(exc, provider) from exc
    if response.status_code != 200:
        try:
            payload = await response.aread() if stream else response.content
        except httpx.HTTPError:
            payload = b""
        finally:
            if stream:
                await response.aclose()
        raise error_for_status(response.status_code, response.headers, payload, provider)
    return response
