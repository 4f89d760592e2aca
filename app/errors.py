"""The errors a request can end in, independent of any web framework or wire format.

A stage anywhere in the core raises ``GatewayError`` with a format-neutral ``kind``; ``app/wire/errors.py``
encodes it in the client's format and ``app/api`` sends it. Messages are written by Tollway: upstream
credentials, URLs and raw upstream bodies never go into one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ErrorKind = Literal[
    "invalid_request",
    "authentication",
    "permission",
    "not_found",
    "request_too_large",
    "rate_limit",
    "api_error",
    "overloaded",
    "timeout",
    "unavailable",
]

DEFAULT_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "request_too_large": 413,
    "rate_limit": 429,
    "api_error": 502,
    "overloaded": 529,
    "timeout": 504,
    "unavailable": 503,
}


@dataclass
class GatewayError(Exception):
    kind: ErrorKind
    message: str
    status: int = 0
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.status:
            self.status = DEFAULT_STATUS[self.kind]
        super().__init__(self.message)

    def status_for(self, fmt: str) -> int:
        # OpenAI has no 529: its overloaded answer is a 503.
        if fmt != "anthropic" and self.status == 529:
            return 503
        return self.status


def invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError("invalid_request", message, param=param)


MAX_RETRY_AFTER_S = 86_400


def retry_after_value(seconds: float) -> str:
    """A ``retry-after`` header value: whole seconds, at least 1, at most a day (never inf or nan)."""
    if seconds != seconds or seconds <= 0:  # nan, zero or negative
        return "1"
    if seconds >= MAX_RETRY_AFTER_S:  # also inf, which int() refuses
        return str(MAX_RETRY_AFTER_S)
    return str(max(1, int(seconds + 0.999)))
