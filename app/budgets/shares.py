"""The last known share of each team's tightest token budget, for budget-aware routing.

Read on the routing path without a Redis round trip: admission reports the share it saw, and the
router uses it on the team's next request (``downgrade_at_budget_share``).
"""

from __future__ import annotations

from app.auth.principal import Principal


class BudgetShares:
    def __init__(self) -> None:
        self._shares: dict[str, float] = {}

    def note(self, team_id: str, share: float | None) -> None:
        if share is not None:
            self._shares[team_id] = share

    def used(self, principal: Principal) -> float | None:
        if principal.policy.downgrade_at_budget_share is None:
            return None
        return self._shares.get(principal.team_id)
