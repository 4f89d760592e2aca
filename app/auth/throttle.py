"""Throttle failed sign-ins per client address (the admin API and the dashboard's sign-in form).

A guesser gets ``max_failures`` wrong keys per ``window_s``; after that every attempt from that
address is refused with a ``retry-after`` until the window has passed, right or wrong key alike (so
the refusal leaks nothing about a guess). A correct key before the limit clears the count. Memory is
bounded: at most ``max_addresses`` addresses are tracked, the stalest forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class FailedAuthThrottle:
    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_s: float = 60.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()  # address → (window start, count)

    def retry_after(self, address: str | None) -> float | None:
        """Seconds until ``address`` may try again, or None when it may try now."""
        entry = self._failures.get(address or "")
        if entry is None:
            return None
        started, count = entry
        remaining = started + self.window_s - self._clock()
        if remaining <= 0:
            del self._failures[address or ""]
            return None
        return remaining if count >= self.max_failures else None

    def failed(self, address: str | None) -> None:
        key = address or ""
        now = self._clock()
        started, count = self._failures.pop(key, (now, 0))
        if now - started >= self.window_s:
            started, count = now, 0
        self._failures[key] = (started, count + 1)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def succeeded(self, address: str | None) -> None:
        self._failures.pop(address or "", None)
