"""Per-team and per-key token budgets and rate limits: admit (reserve the worst case), then settle.

See ``docs/budgets.md``. The pipeline uses ``create_limiter`` and the ``Limiter`` protocol from
``limiter.py``, and ``worst_case`` from ``estimate.py``; the admin API uses ``validate_limits``.
"""

from app.budgets.estimate import InvalidBudgetRequest, worst_case
from app.budgets.limiter import (
    Admission,
    BudgetBackendUnavailable,
    BudgetExceeded,
    BudgetLimiter,
    Limiter,
    create_limiter,
)
from app.budgets.limits import InvalidLimits, validate_limits

__all__ = [
    "Admission",
    "BudgetBackendUnavailable",
    "BudgetExceeded",
    "BudgetLimiter",
    "InvalidBudgetRequest",
    "InvalidLimits",
    "Limiter",
    "create_limiter",
    "validate_limits",
    "worst_case",
]
