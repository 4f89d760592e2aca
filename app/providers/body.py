"""Reading an upstream body under bounds: size, compression ratio, and a few milliseconds per step.

aiohttp is asked not to decompress (``auto_decompress=False``): with chunked framing it inflates a
whole network read at once, so a gzip bomb's 64 KB read became 64 MB in one callback (a 19 ms loop
stall, measured). Here the body is inflated in steps of ``STEP_BYTES``, each counted before the next,
letting the loop run between every few: the read stops at the first bound passed, having inflated at
most one step beyond it.

Tollway sends no ``Accept-Encoding``; an upstream that compresses anyway may use gzip or deflate.
Any other encoding is refused rather than passed on undecoded.
"""

from __future__ import annotations

import asyncio
import zlib

import aiohttp

from app.providers.base import UpstreamError

# Decoded bytes per inflate step: small enough to stay below malloc's mmap threshold (a fresh 256 KiB
# buffer per step page-faults its way to ~1 ms), large enough to keep the per-step cost negligible.
STEP_BYTES = 64 << 10
YIELD_EVERY = 4  # inflate steps between two yields to the event loop (about 1 ms, measured)
RATIO_FLOOR = 1 << 20  # decoded bytes below which the compression ratio is not judged


def malformed(detail: str | Exception) -> UpstreamError:
    """The error for a reply Tollway will not trust; ``detail`` is Tollway's own words, never the body."""
    return UpstreamError(502, "api_error", f"the upstream provider sent a malformed reply: {detail}")


def too_large(what: str, limit: int) -> UpstreamError:
    return malformed(f"{what} is larger than the configured limit of {limit} bytes")


def _decoder(encoding: str, what: str) -> zlib._Decompress | None:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib-wrapped or gzip, detected from the header
    raise malformed(f"{what} uses a content encoding Tollway cannot decode")


class BoundedBody:
    """Decodes one response body piece by piece and counts it against ``limit`` decoded bytes and
    ``ratio`` decoded bytes per received byte; ``UpstreamError`` as soon as either is passed."""

    __slots__ = ("_decoder", "_limit", "_ratio", "_what", "decoded", "received")

    def __init__(self, response: aiohttp.ClientResponse, limit: int, ratio: float, what: str) -> None:
        declared = response.content_length
        if declared is not None and declared > limit:
            raise too_large(what, limit)  # refused before a byte of it is read
        encoding = response.headers.get("content-encoding", "") if response.headers else ""
        self._decoder = _decoder(encoding.strip().lower(), what)
        self._limit = limit
        self._ratio = ratio
        self._what = what
        self.decoded = 0
        self.received = 0

    def _count(self, size: int, pending: int = 0) -> None:
        """Count ``size`` more decoded bytes; ``pending`` received bytes are not inflated yet."""
        self.decoded += size
        if self.decoded > self._limit:
            raise too_large(self._what, self._limit)
        if self.decoded > RATIO_FLOOR and self.decoded > (self.received - pending) * self._ratio:
            raise malformed(f"{self._what} decompresses more than {self._ratio:g} times its size")

    @property
    def plain(self) -> bool:
        """Not compressed: ``decode`` is enough (and costs next to nothing)."""
        return self._decoder is None

    def decode(self, piece: bytes) -> bytes:
        """One received piece of a plain body, counted (UpstreamError past the limit)."""
        self.received += len(piece)
        self._count(len(piece))
        return piece

    async def inflate(self, piece: bytes) -> bytes:
        """The decoded bytes of one received piece of a compressed body, inflated a step at a time
        with the loop let go every ``YIELD_EVERY`` steps: a well-compressed megabyte must not hold
        the event loop for the milliseconds it takes to inflate (UpstreamError at the first bound)."""
        decoder = self._decoder
        assert decoder is not None
        self.received += len(piece)
        out: list[bytes] = []
        data = piece
        try:
            while data:
                step = decoder.decompress(data, STEP_BYTES)
                data = decoder.unconsumed_tail
                self._count(len(step), len(data))
                out.append(step)
                if data and len(out) % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        except zlib.error:
            raise malformed(f"{self._what} is not valid compressed data") from None
        return out[0] if len(out) == 1 else b"".join(out)


async def read_body(response: aiohttp.ClientResponse, limit: int, ratio: float, what: str) -> bytes:
    """The whole body, read as it arrives, stopping at the first bound passed (UpstreamError)."""
    body = BoundedBody(response, limit, ratio, what)
    parts: list[bytes] = []
    async for piece in response.content.iter_any():
        parts.append(body.decode(piece) if body.plain else await body.inflate(piece))
    return parts[0] if len(parts) == 1 else b"".join(parts)
