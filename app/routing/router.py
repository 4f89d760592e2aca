"""The router: a request's ``model`` (a concrete model or a route) → a ``Plan`` of candidates.

For a **route**, every candidate model is checked against the request's hard constraints and the
task tier, priced for this request, and the adequate ones are returned cheapest first:

1. *Task class*: the ``x-tollway-task`` header (``task_hint``) wins, then the route's fixed ``task``
   (``auto:extraction``), then the classifier.
2. *Minimum tier*: ``catalog.task_tiers[task]``, raised to the route's and the team's ``min_tier``.
   When the team has used ``downgrade_at_budget_share`` of its budget the minimum drops one tier
   (never below the team's or the route's minimum), and the reason says ``downgraded``. The team's
   ``max_tier`` is a ceiling: models above it are inadequate, and a minimum above it is lowered to it.
3. *Hard constraints* (``Candidate.verdicts``): ``context`` (estimated input tokens + output budget ≤
   context window — the calibrated estimate, not the byte upper bound, which overstates 3-4x),
   ``max_output`` (``max_tokens`` ≤ the model's maximum output), ``tools``, ``vision``,
   ``documents``, ``structured_output``, ``team_allowed``, ``tier`` and ``healthy`` (some deployment
   is not cooling down).
4. *Expected cost* (``forecast_cost``: the formula of ``app.ledger.pricing.expected_cost``, with each
   model's price bands sorted once): estimated input tokens, of which the likely cached prefix is
   priced as a cache read; output = the task's typical length (``EXPECTED_OUTPUT``) capped by the
   output budget. Ties go to the higher tier (same price, more capable), then to the
   route's candidate order.

For a **concrete model** (or alias) the plan holds that one model. Its constraints are still checked:
context, output and capability failures are 400s, a team that may not use it gets 403, a model whose
every deployment is cooling down gets 503 (fail fast, with ``retry_after_s``).

Errors carry ``status`` and a ``kind`` from ``app.errors.ErrorKind``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, get_args

import orjson

from app.auth.principal import Principal, TeamPolicy
from app.config import TIER_ORDER, Catalog, ModelConfig, RouteConfig, TaskClass
from app.domain import Block, ChatRequest
from app.ledger.pricing import QUANTUM
from app.routing.classifier import Classification, classify
from app.routing.health import DeploymentHealth
from app.tokens import BYTES_PER_TOKEN_ESTIMATE, PER_BLOCK_OVERHEAD, block_bytes, request_bytes

TASK_CLASSES: frozenset[str] = frozenset(get_args(TaskClass))
TIER_NAMES: tuple[str, ...] = tuple(sorted(TIER_ORDER, key=TIER_ORDER.__getitem__))

# Typical answer length per task class, in tokens (capped by the request's output budget). From the
# shape of the answers: a label; a JSON record; a few paragraphs; an answer with citations; a chat
# turn; a function or a patch with explanation; a worked argument; a multi-phase plan.
EXPECTED_OUTPUT: dict[str, int] = {
    "classification": 20,
    "extraction": 300,
    "summarization": 400,
    "rag": 350,
    "chat": 350,
    "code": 900,
    "reasoning": 1200,
    "planning": 1500,
}
EXPECTED_OUTPUT_EXPLICIT = 500  # a concrete model: no task class is computed

VERDICT_OK = "ok"
CONSTRAINTS: tuple[str, ...] = (
    "context",
    "max_output",
    "tools",
    "vision",
    "documents",
    "structured_output",
    "team_allowed",
    "tier",
    "healthy",
)
# Constraints that belong to the request itself: a concrete model failing one is a 400.
_REQUEST_CONSTRAINTS = ("context", "max_output", "tools", "vision", "documents", "structured_output")


class RouteError(Exception):
    """The request cannot be routed. ``status``: 404 unknown model or route, 403 not allowed for the
    team, 400 no adequate model (the message says why, per candidate), 503 every adequate model is
    cooling down (``retry_after_s`` says when one comes back)."""

    def __init__(self, status: int, kind: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class Candidate:
    name: str  # model name in the catalog
    model: ModelConfig
    cost_units: int  # expected cost in COST_UNITS_PER_USD: exact integers, compared per request
    failures: dict[str, str]  # constraint → why it failed (the others are "ok")
    expected_output_tokens: int = 0
    cached_tokens: int = 0

    @property
    def tier(self) -> str:
        return self.model.tier

    @property
    def adequate(self) -> bool:
        return not self.failures

    @property
    def expected_cost(self) -> Decimal:
        """In USD, rounded as the ledger rounds (``app.ledger.pricing.QUANTUM``)."""
        return units_to_usd(self.cost_units)

    @property
    def verdicts(self) -> dict[str, str]:
        """Every constraint → "ok" or why it failed, in ``CONSTRAINTS`` order (for explain)."""
        failures = self.failures
        return {c: failures.get(c, VERDICT_OK) for c in CONSTRAINTS}


@dataclass(slots=True)
class Plan:
    requested: str  # what the client sent in "model"
    route: str | None  # route name when a route was requested
    task: str | None  # task class used (None for a concrete model)
    task_source: str | None  # "header" | "route" | "classifier"
    min_tier: str | None
    candidates: list[Candidate]  # adequate ones, cheapest first; for a concrete model: that model
    rejected: list[Candidate]  # inadequate ones (for explain)
    reason: str  # short machine-readable reason for headers and the ledger
    escalate: bool
    fallback: bool
    input_tokens: int = 0  # the calibrated input estimate used for adequacy and cost
    downgraded: bool = False
    classification: Classification | None = field(default=None, repr=False)

    @property
    def chosen(self) -> Candidate:
        return self.candidates[0]


@dataclass(slots=True)
class _RequestShape:
    """What the request needs from a model, read in one pass over its blocks."""

    input_tokens: int
    uses_tools: bool
    uses_vision: bool
    uses_documents: bool
    structured: bool
    breakpoint_tokens: int | None  # estimated tokens up to the last cache_control breakpoint
    static_prefix_tokens: int  # tools + system: what automatic prompt caching would cache


def _tokens(n_bytes: int) -> int:
    return int(n_bytes / BYTES_PER_TOKEN_ESTIMATE) + 1


def _scan(req: ChatRequest) -> _RequestShape:
    kinds: set[str] = set()
    last_marked: tuple[int, int] | None = None  # (message index, block index) of the last breakpoint
    for m_index, msg in enumerate(req.messages):
        for b_index, block in enumerate(msg.content):
            kind = block.get("type")
            if kind != "text":
                kinds.add(kind or "")
                if kind == "tool_result":
                    _inner_kinds(block, kinds)
            if "cache_control" in block:
                last_marked = (m_index, b_index)

    static_bytes = 0
    breakpoint_bytes: int | None = None
    for tool in req.tools:
        static_bytes += len(tool.name) + len((tool.description or "").encode())
        static_bytes += len(orjson.dumps(tool.input_schema)) + PER_BLOCK_OVERHEAD
        if "cache_control" in tool.extra:
            breakpoint_bytes = static_bytes
    for block in req.system:
        static_bytes += block_bytes(block)
        if "cache_control" in block:
            breakpoint_bytes = static_bytes
    if last_marked is not None or (req.cache_control is not None and len(req.messages) > 1):
        # Only walk the conversation's sizes when a breakpoint lies in it. Automatic caching
        # (top-level cache_control) marks the last block: on the next turn everything before the
        # newest message is read from cache.
        stop = last_marked if last_marked is not None else (len(req.messages) - 2, 1 << 30)
        if req.cache_control is not None:
            stop = max(stop, (len(req.messages) - 2, 1 << 30))
        running = static_bytes
        for m_index, msg in enumerate(req.messages[: stop[0] + 1]):
            for b_index, block in enumerate(msg.content):
                if (m_index, b_index) > stop:
                    break
                running += block_bytes(block)
        breakpoint_bytes = running
    return _RequestShape(
        input_tokens=_tokens(request_bytes(req)),
        uses_tools=bool(req.tools) or "tool_use" in kinds or "tool_result" in kinds,
        uses_vision="image" in kinds,
        uses_documents="document" in kinds,
        structured=req.response_format is not None,
        breakpoint_tokens=_tokens(breakpoint_bytes) if breakpoint_bytes else None,
        static_prefix_tokens=_tokens(static_bytes) if static_bytes else 0,
    )


def _inner_kinds(block: Block, kinds: set[str]) -> None:
    inner = block.get("content")
    if isinstance(inner, list):
        for item in inner:
            if isinstance(item, dict) and item.get("type") != "text":
                kinds.add(item.get("type") or "")


# Prices are USD per million tokens with at most PRICE_DECIMALS decimals, so a forecast is an exact
# integer in COST_UNITS_PER_USD: integer arithmetic is several times cheaper than Decimal, and every
# routed request prices every candidate of its route.
PRICE_DECIMALS = 9
COST_UNITS_PER_USD = 10**PRICE_DECIMALS * 1_000_000


def _price_units(price: Decimal) -> int:
    units = price * 10**PRICE_DECIMALS
    if units != units.to_integral_value():
        raise ValueError(f"price {price} has more than {PRICE_DECIMALS} decimals")
    return int(units)


def units_to_usd(units: int) -> Decimal:
    return (Decimal(units) / COST_UNITS_PER_USD).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class _Rates:
    """A model's prices, pre-sorted for ``forecast_units``: (threshold, input, output, cache_read),
    prices as integers (``_price_units``)."""

    bands: tuple[tuple[int, int, int, int], ...]

    @classmethod
    def of(cls, model: ModelConfig) -> _Rates:
        p = model.prices
        bands = [(0, p.input, p.output, p.cache_read)]
        bands += [(b.above_input_tokens, b.input, b.output, b.cache_read) for b in p.bands]
        bands.sort(key=lambda b: b[0])
        return cls(tuple((t, _price_units(i), _price_units(o), _price_units(c)) for t, i, o, c in bands))


def forecast_units(rates: _Rates, input_tokens: int, output_tokens: int, cached_tokens: int) -> int:
    """``app.ledger.pricing.expected_cost`` in exact integer units, band lookup precomputed."""
    cached = min(cached_tokens, input_tokens)
    chosen = rates.bands[0]
    for band in rates.bands:
        if input_tokens > band[0]:
            chosen = band
    return max(input_tokens - cached, 0) * chosen[1] + output_tokens * chosen[2] + cached * chosen[3]


def forecast_cost(rates: _Rates, input_tokens: int, output_tokens: int, cached_tokens: int) -> Decimal:
    """``app.ledger.pricing.expected_cost`` (same formula and rounding: a test holds them equal)."""
    return units_to_usd(forecast_units(rates, input_tokens, output_tokens, cached_tokens))


class Router:
    def __init__(self, catalog: Catalog, health: DeploymentHealth) -> None:
        self.catalog = catalog
        self.health = health
        self._rates = {name: _Rates.of(model) for name, model in catalog.models.items()}
        for name, model in catalog.models.items():
            health.register(name, model.all_deployments(name))
        self._aliases: dict[str, tuple[str, ...]] = {
            name: (name, *model.aliases) for name, model in catalog.models.items()
        }

    # ---- public ---------------------------------------------------------------------------------

    def plan(
        self,
        req: ChatRequest,
        principal: Principal,
        *,
        task_hint: str | None = None,
        budget_share_used: float | None = None,
    ) -> Plan:
        """Route ``req``; raises ``RouteError`` when it cannot be served."""
        plan, error = self._evaluate(req, principal, task_hint, budget_share_used)
        if error is not None:
            raise error
        return plan

    def explain(
        self,
        req: ChatRequest,
        principal: Principal,
        *,
        task_hint: str | None = None,
        budget_share_used: float | None = None,
    ) -> dict[str, Any]:
        """The routing decision as JSON-able data, without calling any provider.

        Unknown models and routes the team may not use raise ``RouteError`` (404/403) as in ``plan``;
        a request no candidate can serve is explained, with ``chosen: null`` and the ``error``.
        """
        plan, error = self._evaluate(req, principal, task_hint, budget_share_used)
        candidates = sorted(
            plan.candidates + plan.rejected,
            key=lambda c: (not c.adequate, c.cost_units, -TIER_ORDER[c.tier]),
        )
        chosen = plan.candidates[0].name if plan.candidates and error is None else None
        classification = plan.classification
        return {
            "requested": plan.requested,
            "route": plan.route,
            "task": plan.task,
            "task_source": plan.task_source,
            "confidence": classification.confidence if classification else None,
            "features": classification.features if classification else {},
            "min_tier": plan.min_tier,
            "downgraded": plan.downgraded,
            "input_tokens": plan.input_tokens,
            "chosen": chosen,
            "reason": plan.reason,
            "escalate": plan.escalate,
            "fallback": plan.fallback,
            "candidates": [
                {
                    "model": c.name,
                    "tier": c.tier,
                    "adequate": c.adequate,
                    "chosen": c.name == chosen,
                    "expected_cost": str(c.expected_cost),
                    "expected_output_tokens": c.expected_output_tokens,
                    "cached_tokens": c.cached_tokens,
                    "verdicts": dict(c.verdicts),
                }
                for c in candidates
            ],
            "error": ({"status": error.status, "kind": error.kind, "message": error.message} if error else None),
        }

    def next_tier_candidates(self, plan: Plan, after: str) -> list[Candidate]:
        """Escalation targets after model ``after``: the plan's adequate candidates of a strictly
        higher tier, the lowest such tier first and cheapest first within a tier (so escalation
        climbs one tier at a time)."""
        name = self.catalog.resolve_model(after) or after
        model = self.catalog.models.get(name)
        if model is None:
            return []
        floor = TIER_ORDER[model.tier]
        higher = [c for c in plan.candidates if TIER_ORDER[c.tier] > floor]
        higher.sort(key=lambda c: (TIER_ORDER[c.tier], c.cost_units))
        return higher

    # ---- evaluation -----------------------------------------------------------------------------

    def _evaluate(
        self,
        req: ChatRequest,
        principal: Principal,
        task_hint: str | None,
        budget_share_used: float | None,
    ) -> tuple[Plan, RouteError | None]:
        route = self.catalog.routes.get(req.model)
        if route is not None:
            return self._evaluate_route(req, req.model, route, principal, task_hint, budget_share_used)
        name = self.catalog.resolve_model(req.model)
        if name is None:
            raise RouteError(404, "not_found", f"model not found: {req.model}")
        return self._evaluate_model(req, name, principal)

    def _evaluate_model(self, req: ChatRequest, name: str, principal: Principal) -> tuple[Plan, RouteError | None]:
        policy = principal.policy
        model = self.catalog.models[name]
        if not self._model_allowed(policy, name, req.model):
            raise RouteError(403, "permission", f"model {req.model} is not allowed for this team")
        if policy.max_tier and TIER_ORDER[model.tier] > TIER_ORDER[policy.max_tier]:
            raise RouteError(
                403,
                "permission",
                f"model {req.model} is a {model.tier}-tier model; this team is limited to {policy.max_tier}",
            )
        shape = _scan(req)
        candidate = self._candidate(
            req,
            shape,
            name,
            policy,
            expected_output=EXPECTED_OUTPUT_EXPLICIT,
            min_tier=None,
            allowed_models=None,
        )
        plan = Plan(
            requested=req.model,
            route=None,
            task=None,
            task_source=None,
            min_tier=None,
            candidates=[candidate] if candidate.adequate else [],
            rejected=[] if candidate.adequate else [candidate],
            reason="explicit",
            escalate=False,
            fallback=False,
            input_tokens=shape.input_tokens,
        )
        if candidate.adequate:
            return plan, None
        failures = [f"{k}: {v}" for k, v in candidate.verdicts.items() if v != VERDICT_OK]
        if all(candidate.verdicts[k] == VERDICT_OK for k in _REQUEST_CONSTRAINTS):
            return plan, RouteError(
                503,
                "unavailable",
                f"model {req.model} is temporarily unavailable (upstream failures); retry later",
                retry_after_s=self.health.retry_after_s(name),
            )
        return plan, RouteError(
            400, "invalid_request", f"model {req.model} cannot serve this request: " + "; ".join(failures)
        )

    def _evaluate_route(
        self,
        req: ChatRequest,
        route_name: str,
        route: RouteConfig,
        principal: Principal,
        task_hint: str | None,
        budget_share_used: float | None,
    ) -> tuple[Plan, RouteError | None]:
        policy = principal.policy
        allowed_models: frozenset[str] | None = None
        if policy.allowed_models is not None:
            if route_name not in policy.allowed_models:
                raise RouteError(403, "permission", f"route {route_name} is not allowed for this team")
            named = {self.catalog.resolve_model(n) for n in policy.allowed_models}
            named.discard(None)
            allowed_models = frozenset(n for n in named if n is not None) or None

        shape = _scan(req)
        classification: Classification | None = None
        if task_hint is not None:
            if task_hint not in TASK_CLASSES:
                raise RouteError(
                    400,
                    "invalid_request",
                    f"unknown task class '{task_hint}' in x-tollway-task; "
                    f"expected one of: {', '.join(sorted(TASK_CLASSES))}",
                )
            task, source = task_hint, "header"
        elif route.task is not None:
            task, source = route.task, "route"
        else:
            classification = classify(req, input_tokens=shape.input_tokens)
            task, source = classification.task, "classifier"

        min_tier, downgraded = self._min_tier(task, route, policy, budget_share_used)
        expected_output = EXPECTED_OUTPUT[task]
        adequate: list[tuple[int, int, int, Candidate]] = []
        rejected: list[Candidate] = []
        for index, name in enumerate(route.candidates):
            cand = self._candidate(
                req,
                shape,
                name,
                policy,
                expected_output=expected_output,
                min_tier=min_tier,
                allowed_models=allowed_models,
            )
            if cand.adequate:
                adequate.append((cand.cost_units, -TIER_ORDER[cand.tier], index, cand))
            else:
                rejected.append(cand)
        adequate.sort(key=lambda item: item[:3])
        reason = f"route={route_name} task={task} src={source} tier>={min_tier}"
        if downgraded:
            reason += " downgraded=budget"
        reason += " cheapest"
        plan = Plan(
            requested=req.model,
            route=route_name,
            task=task,
            task_source=source,
            min_tier=min_tier,
            candidates=[item[3] for item in adequate],
            rejected=rejected,
            reason=reason,
            # Streams skip escalation: verifying needs the whole answer, and buffering it would
            # throw away the reason to stream (and retrying after bytes reached the client is out).
            escalate=route.escalate and not req.stream,
            fallback=route.fallback,
            input_tokens=shape.input_tokens,
            downgraded=downgraded,
            classification=classification,
        )
        if adequate:
            return plan, None
        return plan, self._no_adequate(route_name, rejected)

    def _no_adequate(self, route_name: str, rejected: list[Candidate]) -> RouteError:
        def only_fails(cand: Candidate, constraint: str) -> bool:
            return all(v == VERDICT_OK or k == constraint for k, v in cand.verdicts.items()) and (
                cand.verdicts[constraint] != VERDICT_OK
            )

        cooling = [c for c in rejected if only_fails(c, "healthy")]
        if cooling:
            waits = [w for c in cooling if (w := self.health.retry_after_s(c.name)) is not None]
            return RouteError(
                503,
                "unavailable",
                f"every model adequate for route {route_name} is temporarily unavailable; retry later",
                retry_after_s=min(waits) if waits else None,
            )
        if (
            rejected
            and all(c.verdicts["team_allowed"] != VERDICT_OK for c in rejected)
            and any(only_fails(c, "team_allowed") for c in rejected)
        ):
            return RouteError(403, "permission", f"no model adequate for route {route_name} is allowed for this team")
        why = "; ".join(
            f"{c.name}: " + ", ".join(f"{k} {v}" for k, v in c.verdicts.items() if v != VERDICT_OK) for c in rejected
        )
        return RouteError(400, "invalid_request", f"no adequate model for route {route_name}: {why}")

    def _min_tier(
        self, task: str, route: RouteConfig, policy: TeamPolicy, budget_share_used: float | None
    ) -> tuple[str, bool]:
        level = TIER_ORDER[self.catalog.task_tiers[task]]  # type: ignore[index]
        floor = 0
        if route.min_tier:
            floor = max(floor, TIER_ORDER[route.min_tier])
        if policy.min_tier:
            floor = max(floor, TIER_ORDER[policy.min_tier])
        level = max(level, floor)
        downgraded = False
        threshold = policy.downgrade_at_budget_share
        if threshold is not None and budget_share_used is not None and budget_share_used >= threshold:
            lowered = max(level - 1, floor)
            downgraded = lowered < level
            level = lowered
        if policy.max_tier:
            level = min(level, TIER_ORDER[policy.max_tier])
        return TIER_NAMES[level], downgraded

    def _model_allowed(self, policy: TeamPolicy, name: str, requested: str) -> bool:
        allowed = policy.allowed_models
        if allowed is None or requested in allowed:
            return True
        return any(alias in allowed for alias in self._aliases[name])

    def _candidate(
        self,
        req: ChatRequest,
        shape: _RequestShape,
        name: str,
        policy: TeamPolicy,
        *,
        expected_output: int,
        min_tier: str | None,
        allowed_models: frozenset[str] | None,
    ) -> Candidate:
        model = self.catalog.models[name]
        caps = model.capabilities
        output_budget = req.max_tokens or policy.default_max_tokens or model.default_max_tokens
        failures: dict[str, str] = {}
        needed = shape.input_tokens + output_budget
        if needed > model.context_window:
            failures["context"] = (
                f"needs ~{needed} tokens (input ~{shape.input_tokens} + output {output_budget}), "
                f"window is {model.context_window}"
            )
        if req.max_tokens is not None and req.max_tokens > model.max_output_tokens:
            failures["max_output"] = (
                f"max_tokens {req.max_tokens} exceeds the model's maximum output {model.max_output_tokens}"
            )
        if shape.uses_tools and not caps.tools:
            failures["tools"] = "no tool support"
        if shape.uses_vision and not caps.vision:
            failures["vision"] = "no image input"
        if shape.uses_documents and not caps.documents:
            failures["documents"] = "no document input"
        if shape.structured and not caps.structured_output:
            failures["structured_output"] = "no structured output"
        if allowed_models is not None and name not in allowed_models:
            failures["team_allowed"] = "not in the team's allowed models"
        if min_tier is not None:
            tier = TIER_ORDER[model.tier]
            if tier < TIER_ORDER[min_tier]:
                failures["tier"] = f"{model.tier} is below the minimum {min_tier}"
            elif policy.max_tier and tier > TIER_ORDER[policy.max_tier]:
                failures["tier"] = f"{model.tier} is above the team's maximum {policy.max_tier}"
        if not self.health.is_available(name):
            failures["healthy"] = "every deployment is cooling down"

        output = min(expected_output, output_budget)
        cached = self._cached_tokens(shape, model, policy)
        return Candidate(
            name=name,
            model=model,
            cost_units=forecast_units(self._rates[name], shape.input_tokens, output, cached),
            failures=failures,
            expected_output_tokens=output,
            cached_tokens=cached,
        )

    @staticmethod
    def _cached_tokens(shape: _RequestShape, model: ModelConfig, policy: TeamPolicy) -> int:
        """The input likely read from cache: the prefix up to the client's last breakpoint, else the
        tools + system prefix when Tollway's automatic prompt caching is on. Either counts only when
        it reaches the model's minimum cacheable length (shorter prefixes are never cached)."""
        prefix = shape.breakpoint_tokens
        if prefix is None and policy.prompt_cache == "auto":
            prefix = shape.static_prefix_tokens
        if not prefix or prefix < model.min_cache_tokens:
            return 0
        return min(prefix, shape.input_tokens)
