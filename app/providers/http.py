"""The pooled HTTP client both adapters share, the bounds on what an upstream may send, and the
mapping of upstream failures to errors.

Every upstream call goes through ``aiohttp`` (one ``ClientSession`` and ``TCPConnector`` per provider:
keep-alive, TLS verified against the system trust store, an HTTP(S) proxy from the environment
resolved once). aiohttp's parser refuses oversized or too many header lines, malformed chunking and
a second response spliced after the first (the connection is then not reused). On top of it, this
module bounds the body — ``max_response_bytes`` for an answer, ``max_stream_bytes`` for a stream,
``max_event_bytes`` per SSE event, ``max_decompression_ratio`` for compressed bodies — reading it
incrementally (``app.providers.body``, which also inflates in bounded steps) and stopping, dropping
the connection, as soon as a bound is passed: a gzip bomb is never inflated and no single response
holds the event loop for long. Time is bounded too:
``response_timeout_s`` for a whole answer (and a stream's head), ``event_timeout_s`` between the
events of a stream, ``read_timeout_s`` between any two reads. Closing a streamed response closes its
connection, which is how a client disconnect cancels the upstream request.

Every failure becomes an ``UpstreamError`` with a Tollway-written message (docs/configuration.md).
"""

from __future__ import annotations

import asyncio
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
from app.providers.body import BoundedBody, malformed, read_body
from app.routing.retry_after import parse_retry_after
from app.wire.checks import MalformedReply
from app.wire.sse import SSEError, SSEEvent, SSEParser

SIMULATOR_HEADER_PREFIX = "x-sim-"
_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
_ERROR_BODY_BYTES = 64 << 10  # of an error reply, only its message is read


class UpstreamClient:
    """A provider's connection pool (an aiohttp session, made on first use inside the running loop)
    and the bounds its responses are read under."""

    def __init__(self, cfg: ProviderConfig, base_url: str | None = None) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        self.proxy = environment_proxy(base_url or cfg.base_url)
        self.answer_timeout = aiohttp.ClientTimeout(
            total=cfg.response_timeout_s,
            # waiting for a pooled connection plus connecting: bounded like a read
            connect=cfg.read_timeout_s,
            sock_connect=cfg.connect_timeout_s,
            sock_read=cfg.read_timeout_s,
        )
        self.stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=cfg.read_timeout_s, sock_connect=cfg.connect_timeout_s, sock_read=cfg.read_timeout_s
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            cfg = self.cfg
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=cfg.max_connections, keepalive_timeout=30),
                timeout=self.stream_timeout,
                auto_decompress=False,  # app.providers.body inflates, in bounded steps
                raise_for_status=False,
                # trust_env would re-read ~/.netrc and the proxy variables on every request (measured at
                # a fifth of the gateway's CPU); the proxy is resolved once, in __init__, instead.
                trust_env=False,
                # no Accept-Encoding: provider answers are small, and a compressed one is decoded
                # (bounded) when an upstream sends it unasked, but not invited
                skip_auto_headers=("Accept-Encoding",),
                max_line_size=cfg.max_header_line_bytes,
                max_field_size=cfg.max_header_line_bytes,
                max_headers=cfg.max_header_count,
            )
        return self._session

    async def aclose(self) -> None:
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
    retry_after = parse_retry_after(headers)
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
    if isinstance(exc, aiohttp.ClientResponseError):
        # aiohttp's parser refused the response head (a line too long, too many headers, bad syntax)
        return malformed("its HTTP response could not be parsed")
    return UpstreamError(None, "api_error", f"could not reach the upstream provider '{provider}'")


def parse_json(content: bytes) -> Any:
    """An upstream body as JSON; MalformedReply if it is not JSON (or not UTF-8)."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        raise MalformedReply("the body is not JSON") from None


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
            except MalformedReply as exc:
                return events, malformed(exc)
            if self.done:
                break
        return events, None


class SSEUpstreamStream:
    """An open upstream SSE response, iterated as canonical events.

    ``batches`` yields the events of each network read together, so the relay writes them to the
    client in one send: a fast upstream's 50-token answer often arrives in a handful of reads, and
    one write per read instead of one per event is most of a stream's CPU saving (docs/benchmarks.md).
    Nothing waits for more bytes than the read returned: batching never delays an event.

    Bounds (``cfg``): ``max_stream_bytes`` in all, ``max_event_bytes`` per event, the decompression
    ratio, and ``event_timeout_s`` without a complete event (an upstream trickling blank lines or
    comments is cut, not waited on forever).
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        translator: Callable[[], EventTranslator],
        provider: str,
        cfg: ProviderConfig,
    ) -> None:
        self._response = response
        self._translator = translator
        self._provider = provider
        self._cfg = cfg

    async def batches(self) -> AsyncIterator[list[StreamEvent]]:
        cfg = self._cfg
        parser = SSEParser(cfg.max_event_bytes)
        translator = self._translator()
        clock = time.monotonic
        last_event = clock()
        try:
            body = BoundedBody(self._response, cfg.max_stream_bytes, cfg.max_decompression_ratio, "a stream")
            async for chunk in self._response.content.iter_any():
                items = parser.feed(body.decode(chunk) if body.plain else await body.inflate(chunk))
                if not items:
                    if clock() - last_event > cfg.event_timeout_s:
                        raise UpstreamError(
                            None, "timeout", f"the upstream provider '{self._provider}' stopped sending events"
                        )
                    continue
                last_event = clock()
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
        except SSEError as exc:
            raise malformed(exc) from None
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
    client: UpstreamClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    provider: str,
    limits: aiohttp.ClientTimeout,
) -> aiohttp.ClientResponse:
    """Send the request; the response once its head arrived with status 200, else UpstreamError."""
    try:
        response = await client.session.post(
            url,
            data=orjson.dumps(body),
            headers=headers,
            allow_redirects=False,
            proxy=client.proxy,
            timeout=limits,
        )
    except _NETWORK_ERRORS as exc:
        raise connection_error(exc, provider) from exc
    except ValueError as exc:  # a header value with a line break in it
        raise UpstreamError(400, "invalid_request", "a request header cannot be sent upstream") from exc
    if response.status != 200:
        try:
            payload = await read_body(response, _ERROR_BODY_BYTES, client.cfg.max_decompression_ratio, "an error")
        except (*_NETWORK_ERRORS, UpstreamError):
            payload = b""
            response.close()
        finally:
            response.release()
        raise error_for_status(response.status, response.headers, payload, provider)
    return response


async def send(
    client: UpstreamClient, url: str, body: dict[str, Any], headers: dict[str, str], *, provider: str
) -> UpstreamResponse:
    """POST ``body`` and read the answer (bounded); raise UpstreamError unless the upstream answers 200."""
    response = await _post(client, url, body, headers, provider, client.answer_timeout)
    cfg = client.cfg
    try:
        content = await read_body(response, cfg.max_response_bytes, cfg.max_decompression_ratio, "the answer")
    except _NETWORK_ERRORS as exc:
        response.close()
        raise connection_error(exc, provider) from exc
    except BaseException:
        response.close()  # never hand back a connection with unread bytes on it
        raise
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
    """POST ``body`` and return its SSE stream once the upstream accepted it (status 200).

    The response head must arrive within ``response_timeout_s`` (a head trickled a byte at a time
    would otherwise hold the request as long as each byte beats ``read_timeout_s``)."""
    try:
        async with asyncio.timeout(client.cfg.response_timeout_s):
            response = await _post(client, url, body, headers, provider, client.stream_timeout)
    except TimeoutError as exc:
        raise connection_error(exc, provider) from exc
    return SSEUpstreamStream(response, translator, provider, client.cfg)
