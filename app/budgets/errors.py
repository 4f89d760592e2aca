"""Why a request was not admitted, and the one client-facing error each reason becomes.

``BudgetExceeded`` → 429 ``rate_limit`` with ``retry-after`` and ``x-should-retry``;
``BudgetBackendUnavailable`` → 503 ``unavailable``. ``as_gateway_error`` is the only place that
mapping is written: admit and readmit (a fallback to a pricier model) answer the same way.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from app.budgets.headers import rfc3339
from app.errors import GatewayError, retry_after_value

# openai-python 1.x honours retry-after only up to 60 s (3.x up to 120 s): a longer wait means
# "this budget is spent for the window", which a client should not retry automatically.
MAX_AUTO_RETRY_S = 60


class BudgetExceeded(Exception):
    """A request does not fit a budget window. The API answers 429 in the client's format.

    ``used`` is settled usage in the window; ``reserved`` what requests in flight hold (not counting
    this one). ``retry_after_s`` is the true wait: the window's reset when settled usage alone leaves
    no room, 1 s when only in-flight reservations were in the way. (openai-python 1.x honours
    ``retry-after`` only up to 60 s and 3.x up to 120 s — beyond that it does not retry at all, which
    is right for a day or month budget.)
    """

    def __init__(
        self,
        *,
        window: str,
        scope: str,
        used: int | Decimal,
        reserved: int | Decimal,
        limit: int | Decimal,
        requested: int | Decimal,
        reset_at: datetime,
        retry_after_s: int,
    ) -> None:
        self.window = window
        self.scope = scope
        self.used = used
        self.reserved = reserved
        self.limit = limit
        self.requested = requested
        self.reset_at = reset_at
        self.retry_after_s = retry_after_s
        super().__init__(self.message())

    @property
    def blocked_by_in_flight(self) -> bool:
        """Settled usage alone would have left room: other requests' reservations were in the way."""
        return self.used + self.requested <= self.limit

    @property
    def never_fits(self) -> bool:
        """The request alone is larger than the whole limit (retrying cannot help)."""
        return self.requested > self.limit

    @property
    def should_retry(self) -> bool:
        """Whether a client should retry on its own (after ``retry_after_s``)."""
        return not self.never_fits and self.retry_after_s <= MAX_AUTO_RETRY_S

    def _amount(self, value: int | Decimal) -> str:
        if isinstance(value, Decimal):
            return f"${value:,.6f}".rstrip("0").rstrip(".")
        unit = "requests" if self.window == "requests_per_minute" else "tokens"
        return f"{value:,} {unit}"

    def message(self) -> str:
        owner = "Team" if self.scope == "team" else "API key"
        text = f"{owner} budget '{self.window}' exceeded: {self._amount(self.used)} used of {self._amount(self.limit)}"
        if self.reserved:
            text += f" ({self._amount(self.reserved)} more reserved by requests in flight)"
        text += f"; this request needs up to {self._amount(self.requested)}."
        if self.never_fits:
            text += " That is more than the whole limit: lower max_tokens or shorten the prompt."
        text += f" The window resets at {rfc3339(self.reset_at.timestamp())}."
        return text


class BudgetBackendUnavailable(Exception):
    """The budget store (Redis) is unreachable and the policy is fail-closed. The API answers 503."""

    def message(self) -> str:
        return "Budget enforcement is temporarily unavailable (its Redis cannot be reached); retry shortly."


def as_gateway_error(err: BudgetExceeded | BudgetBackendUnavailable) -> GatewayError:
    """The client-facing error for a refused admit or readmit (raise it ``from err``)."""
    if isinstance(err, BudgetBackendUnavailable):
        return GatewayError("unavailable", "budget store unavailable: request refused (fail-closed policy)")
    return GatewayError(
        "rate_limit",
        err.message(),
        headers={
            "retry-after": retry_after_value(err.retry_after_s),
            "x-should-retry": "true" if err.should_retry else "false",
        },
    )
