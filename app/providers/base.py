"""The Provider interface and the errors an upstream call can end in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from app.domain import ChatRequest, ChatResponse, StreamEvent


@dataclass
class UpstreamError(Exception):
    """An upstream call failed. ``status`` is None for connection errors and timeouts.

    ``message`` is written by Tollway and safe to show a client: never the upstream's body, URL or
    credentials.
    """

    status: int | None
    kind: str  # an app.errors.ErrorKind
    message: str
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)


class UpstreamStream(Protocol):
    """An open upstream stream: iterate canonical events; ``aclose`` cancels the upstream request.

    ``batches`` yields the same events grouped as they arrived (one list per network read).
    """

    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    def batches(self) -> AsyncIterator[list[StreamEvent]]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str
    kind: str  # "anthropic" | "openai"
    is_simulator: bool

    async def complete(self, req: ChatRequest, upstream_model: str, headers: Mapping[str, str]) -> ChatResponse: ...

    async def open_stream(self, req: ChatRequest, upstream_model: str, headers: Mapping[str, str]) -> UpstreamStream:
        """Send the request; raise UpstreamError before any event if the upstream refuses it."""
        ...

    async def count_tokens(self, req: ChatRequest, upstream_model: str) -> int | None: ...

    async def aclose(self) -> None: ...
