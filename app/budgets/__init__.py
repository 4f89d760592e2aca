"""Per-team and per-key token budgets and rate limits: admit (reserve the worst case), then settle.

See ``docs/budgets.md``. The pipeline uses ``create_limiter`` and the ``Limiter`` protocol from
``limiter.py``, ``worst_case`` / ``worst_case_parts`` from ``estimate.py`` and ``as_gateway_error``
(a refused admit → the client's 429 / 503); the admin API uses ``validate_limits``.
"""

from app.budgets.errors import BudgetBackendUnavailable, BudgetExceeded, as_gateway_error
from app.budgets.estimate import InvalidBudgetRequest, WorstCase, worst_case, worst_case_parts
from app.budgets.limiter import Admission, BudgetLimiter, Limiter, create_limiter
from app.budgets.limits import InvalidLimits, validate_limits

__all__ = [
    "Admission",
    "BudgetBackendUnavailable",
    "BudgetExceeded",
    "BudgetLimiter",
    "InvalidBudgetRequest",
    "InvalidLimits",
    "Limiter",
    "WorstCase",
    "as_gateway_error",
    "create_limiter",
    "validate_limits",
    "worst_case",
    "worst_case_parts",
]
