"""The pooled HTTP client both adapters share, and the mapping of upstream failures to errors.

One ``aiohttp`` session per provider: keep-alive connections, configurable connect/read timeouts.
aiohttp, not httpx, because the upstream call is the hot path's largest cost: measured on the
simulator, httpx's client spends about 660 µs of CPU per request, aiohttp about 165 µs
(`docs/benchmarks.md`). Closing a streamed response closes its connection, which is how a client
disconnect cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from app.config import ProviderConfig
from app.domain import StreamEvent
from app.providers.base import UpstreamError
from app.providers.transport import HttpPool, Response
from app.wire.sse import SSEEvent, SSEParser

SIMULATOR_HEADER_PREFIX = "x-sim-"
_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
_HEADERS = {"accept": "*/*", "user-agent": "tollway"}


class UpstreamClient:
    """A provider's connection pool: Tollway's lean HTTP/1.1 client (``app.providers.transport``),
    or an aiohttp session when the provider is reached through an HTTP(S) proxy (made on first use,
    inside the running loop)."""

    def __init__(self, cfg: ProviderConfig, base_url: str | None = None) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        url = base_url or cfg.base_url
        self.proxy = environment_proxy(url)
        self.pool: HttpPool | None = None
        if self.proxy is None:
            self.pool = HttpPool(
                url,
                max_connections=cfg.max_connections,
                connect_timeout_s=cfg.connect_timeout_s,
                read_timeout_s=cfg.read_timeout_s,
            )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.cfg.max_connections, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    # waiting for a pooled connection plus connecting: bounded like a read
                    connect=self.cfg.read_timeout_s,
                    sock_connect=self.cfg.connect_timeout_s,
                    sock_read=self.cfg.read_timeout_s,
                ),
                auto_decompress=True,
                raise_for_status=False,
                # trust_env would re-read ~/.netrc and the proxy variables on every request (measured at
                # a fifth of the gateway's CPU); the proxy is resolved once, below, instead.
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
        if self._session is not None and not self._session.closed:
            await self._session.close()


def make_client(cfg: ProviderConfig, base_url: str | None = None) -> UpstreamClient:
    return UpstreamClient(cfg, base_url)


def environment_proxy(url: str) -> str | None:
    """The HTTP(S)_PROXY an upstream URL should go through, honouring NO_PROXY (read once)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if not host or urllib.request.proxy_bypass_environment(host):  # type: ignore[attr-defined]
        return None
    return urllib.request.getproxies_environment().get(parts.scheme or "https")


def _retry_after(headers: Mapping[str, str]) -> float | None:
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


def error_for_status(status: int, headers: Mapping[str, str], body: bytes, provider: str) -> UpstreamError:
    retry_after = _retry_after(headers)
    if status == 429:
        return UpstreamError(status, "rate_limit", f"the upstream provider '{provider}' is rate limiting", retry_after)
    if status == 529 or status == 503:
        return UpstreamError(status, "overloaded", f"the upstream provider '{provider}' is overloaded", retry_after)
    if status in (408, 504):
        return UpstreamError(status, "timeout", f"the upstream provider '{provider}' timed out", retry_after)
    if status in (401, 403):
        # Tollway's own credential was refused: not the client's fault, and nothing of it is shown.
        return UpstreamError(status, "api_error", f"the upstream provider '{provider}' refused Tollway's credentials")
    if status == 413:
        return UpstreamError(status, "request_too_large", "the upstream provider says the request is too large")
    if 400 <= status < 500:
        detail = _upstream_message(body)
        message = (
            f"the upstream provider rejected the request: {detail}"
            if detail
            else "the upstream provider rejected the request"
        )
        kind = "not_found" if status == 404 else "invalid_request"
        return UpstreamError(status, kind, message)
    return UpstreamError(status, "api_error", f"the upstream provider '{provider}' failed (HTTP {status})", retry_after)


def connection_error(exc: Exception, provider: str) -> UpstreamError:
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamError(None, "timeout", f"the upstream provider '{provider}' timed out")
    return UpstreamError(None, "api_error", f"could not reach the upstream provider '{provider}'")


def forwarded_headers(client_headers: Mapping[str, str], *, is_simulator: bool) -> dict[str, str]:
    """Client headers that may travel upstream: only the simulator's test directives."""
    if not is_simulator:
        return {}
    return {k: v for k, v in client_headers.items() if k.startswith(SIMULATOR_HEADER_PREFIX)}


class EventTranslator:
    """One stream's upstream SSE events → canonical events; subclasses implement ``translate``."""

    done = False  # the upstream said the stream is over (OpenAI's [DONE]): stop reading

    def translate(self, item: SSEEvent) -> list[StreamEvent]:
        """The canonical events for one upstream event; UpstreamError on a malformed stream."""
        raise NotImplementedError

    def end(self) -> list[StreamEvent]:
        """The upstream closed the stream without saying it was done: closing events, or UpstreamError."""
        return []

    def feed(self, items: list[SSEEvent]) -> tuple[list[StreamEvent], UpstreamError | None]:
        """Translate the events of one read: the events before a failure still reach the client."""
        events: list[StreamEvent] = []
        for item in items:
            try:
                events += self.translate(item)
            except UpstreamError as exc:
                return events, exc
            if self.done:
                break
        return events, None


class SSEUpstreamStream:
    """An open upstream SSE response, iterated as canonical events.

    ``batches`` yields the events of each network read together, so the relay writes them to the
    client in one send: a fast upstream's 50-token answer often arrives in a handful of reads, and
    one write per read instead of one per event is most of a stream's CPU saving (docs/benchmarks.md).
    Nothing waits for more bytes than the read returned: batching never delays an event.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse | Response,
        translator: Callable[[], EventTranslator],
        provider: str,
    ) -> None:
        self._response = response
        self._translator = translator
        self._provider = provider

    async def batches(self) -> AsyncIterator[list[StreamEvent]]:
        parser = SSEParser()
        translator = self._translator()
        try:
            async for chunk in self._response.content.iter_any():
                items = parser.feed(chunk)
                if items:
                    events, error = translator.feed(items)
                    if events:
                        yield events
                    if error is not None:
                        raise error
                    if translator.done:
                        return
            events, error = translator.feed(parser.close())
            if error is None and not translator.done:
                try:
                    events += translator.end()
                except UpstreamError as exc:
                    error = exc
            if events:
                yield events
            if error is not None:
                raise error
        except _NETWORK_ERRORS as exc:
            raise connection_error(exc, self._provider) from exc
        finally:
            self._finish()

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        async for batch in self.batches():
            for event in batch:
                yield event

    def _finish(self) -> None:
        # A stream read to its end goes back to the pool; one cut short closes its connection,
        # which is what tells the upstream to stop generating.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()

    async def aclose(self) -> None:
        self._finish()


class UpstreamResponse:
    """A complete (non-streamed) upstream answer."""

    __slots__ = ("content", "status")

    def __init__(self, status: int, content: bytes) -> None:
        self.status = status
        self.content = content


async def _post(
    client: UpstreamClient, url: str, body: dict[str, Any], headers: dict[str, str], provider: str
) -> aiohttp.ClientResponse | Response:
    try:
        if client.pool is not None:
            response: aiohttp.ClientResponse | Response = await client.pool.post(
                url, orjson.dumps(body), {**_HEADERS, **headers}
            )
        else:
            response = await client.session.post(
                url, data=orjson.dumps(body), headers=headers, allow_redirects=False, proxy=client.proxy
            )
    except _NETWORK_ERRORS as exc:
        raise connection_error(exc, provider) from exc
    except ValueError as exc:  # a header value with a line break in it
        raise UpstreamError(400, "invalid_request", f"a request header cannot be sent upstream: {exc}") from exc
    if response.status != 200:
        try:
            payload = await response.read()
        except _NETWORK_ERRORS:
            payload = b""
        finally:
            response.release()
        raise error_for_status(response.status, response.headers, payload, provider)
    return response


async def send(
    client: UpstreamClient, url: str, body: dict[str, Any], headers: dict[str, str], *, provider: str
) -> UpstreamResponse:
    """POST ``body`` and read the answer; raise UpstreamError unless the upstream answers 200."""
    response = await _post(client, url, body, headers, provider)
    try:
        content = await response.read()
    except _NETWORK_ERRORS as exc:
        response.close()
        raise connection_error(exc, provider) from exc
    response.release()
    return UpstreamResponse(response.status, content)


async def open_sse(
    client: UpstreamClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    translator: Callable[[], EventTranslator],
    *,
    provider: str,
) -> SSEUpstreamStream:
    """POST ``body`` and return its SSE stream once the upstream accepted it (status 200)."""
    response = await _post(client, url, body, headers, provider)
    return SSEUpstreamStream(response, translator, provider)
