"""What the web layer hands the pipeline, and what the pipeline hands back: no framework types.

``app/api`` turns an HTTP request into an ``Inbound`` (the body already read within its size limit)
and renders the ``Outcome``: a JSON body or an SSE stream, then ``after`` once the body was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from app.domain import ClientFormat


@dataclass(frozen=True, slots=True)
class Inbound:
    format: ClientFormat
    headers: Mapping[str, str]  # case-insensitive lookups, as the web layer provides them
    body: bytes
    client_address: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(slots=True)
class Outcome:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # An SSE body: chunks to send as they come. Its own ``finally`` settles and records the request.
    stream: AsyncIterator[bytes] | None = None
    # For a JSON body: settlement and recording, run once the body was sent.
    after: Callable[[], Awaitable[None]] | None = None

    @property
    def is_stream(self) -> bool:
        return self.stream is not None
