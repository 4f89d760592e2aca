"""The router: a request's ``model`` (a concrete model or a route) → a ``Plan`` of candidates.

For a **route**, every candidate model is checked against the request's hard constraints and the
task tier, priced for this request, and the adequate ones are returned cheapest first:

1. *Needed tier* (``app.routing.model``): the learned model's calibrated probability that each tier
   is adequate for this request; the needed tier is the cheapest whose probability reaches the team's
   ``quality`` threshold (strict 0.95, balanced 0.85, economy 0.7). Without a model artefact the
   needed tier falls back to ``catalog.task_tiers[task]``.
   *Task class* (for the output-length forecast only): the ``x-tollway-task`` header
   (``task_hint``) wins, then the route's fixed ``task`` (``auto:extraction``), then the classifier.
2. *Minimum tier*: the needed tier, raised to the route's and the team's ``min_tier``.
   When the team has used ``downgrade_at_budget_share`` of its budget the minimum drops one tier
   (never below the team's or the route's minimum), and the reason says ``downgraded``. The team's
   ``max_tier`` is a ceiling: models above it are inadequate, and a minimum above it is lowered to it.
3. *Hard constraints* (``Candidate.verdicts``): ``context`` (estimated input tokens + output budget ≤
   context window — the calibrated estimate, not the byte upper bound, which overstates 3-4x),
   ``max_output`` (``max_tokens`` ≤ the model's maximum output), ``tools``, ``vision``,
   ``documents``, ``structured_output``, ``logprobs`` (asked for, and the model returns them),
   ``parameters`` (no parameter the model's upstream format would lose: ``app.wire.parameters``),
   ``team_allowed``, ``tier`` and ``healthy`` (some deployment
   is not cooling down).
4. *Expected cost* (``app.ledger.pricing.expected_cost``): estimated input tokens, of which the
   likely cached prefix is priced as a cache read; output = the task's typical length
   (``EXPECTED_OUTPUT``) capped by the output budget. Ties go to the higher tier (same price, more
   capable), then to the route's candidate order.
5. *Sticky conversations* (``sticky_model``, from ``app.routing.sticky``): a later turn of a
   conversation goes first to the model the conversation already uses when it is adequate (its tier
   reaches this turn's minimum), else first to adequate models of the same provider (its prompt
   cache keeps paying), cheapest first.

For a **concrete model** (or alias) the plan holds that one model. Its constraints are still checked:
context, output and capability failures are 400s, a team that may not use it gets 403, a model whose
every deployment is cooling down gets 503 (fail fast, with ``retry_after_s``).

Errors carry ``status`` and a ``kind`` from ``app.errors.ErrorKind``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, get_args

import orjson

from app.auth.principal import Principal, TeamPolicy
from app.config import TIER_ORDER, Catalog, ModelConfig, RouteConfig, TaskClass
from app.domain import Block, ChatRequest
from app.ledger.pricing import expected_cost
from app.routing.classifier import Classification, classify
from app.routing.features import FeatureExtractor
from app.routing.health import DeploymentHealth
from app.routing.model import DEFAULT_QUALITY, QUALITY_THRESHOLDS, ModelFileError, TierEstimate, TierModel
from app.tokens import BYTES_PER_TOKEN_ESTIMATE, PER_BLOCK_OVERHEAD, block_bytes, request_bytes
from app.wire.parameters import UpstreamKind, unsupported

log = logging.getLogger("tollway.routing")

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
    "logprobs",
    "parameters",
    "team_allowed",
    "tier",
    "healthy",
)
# Constraints that belong to the request itself: a concrete model failing one is a 400.
_REQUEST_CONSTRAINTS = (
    "context",
    "max_output",
    "tools",
    "vision",
    "documents",
    "structured_output",
    "logprobs",
    "parameters",
)
NO_LOGPROBS = "does not return logprobs"


class RouteError(Exception):
    """The request cannot be routed. ``status``: 404 unknown model or route, 403 not allowed for the
    team, 400 no adequate model (the message says why, per candidate), 503 every adequate model is
    cooling down (``retry_after_s`` says when one comes back)."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        retry_after_s: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        self.param = param  # the request parameter at fault, when one is (OpenAI's error.param)


@dataclass(slots=True)
class Candidate:
    name: str  # model name in the catalog
    model: ModelConfig
    cost: Decimal  # expected cost in USD (app.ledger.pricing.expected_cost)
    failures: dict[str, str]  # constraint → why it failed (the others are "ok")
    expected_output_tokens: int = 0
    cached_tokens: int = 0
    refused_parameters: dict[str, str] = field(default_factory=dict)  # parameter → why (``parameters``)

    @property
    def tier(self) -> str:
        return self.model.tier

    @property
    def adequate(self) -> bool:
        return not self.failures

    @property
    def expected_cost(self) -> Decimal:
        """In USD, rounded as the ledger rounds."""
        return self.cost

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
    estimate: TierEstimate | None = None  # the learned model's P(tier adequate), when it decided
    quality: str | None = None  # the quality policy applied, and its threshold
    threshold: float | None = None
    needed_tier: str | None = None  # the tier the estimate (or task_tiers) asked for, before policy
    sticky: str | None = None  # the conversation's model this plan put first, if any

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


@dataclass(frozen=True, slots=True)
class _Ask:
    """What the caller adds to the request: the task header, budget state, policy override, sticky model."""

    task_hint: str | None = None
    budget_share_used: float | None = None
    quality: str | None = None
    sticky_model: str | None = None
    price_rejected: bool = False  # explain shows every candidate's cost; plan needs the adequate ones only


@dataclass(frozen=True, slots=True)
class _Need:
    task: str
    source: str
    tier: str
    classification: Classification | None
    estimate: TierEstimate | None
    quality: str
    threshold: float


@functools.lru_cache(maxsize=1)
def default_tier_model() -> tuple[TierModel, FeatureExtractor] | None:
    """The shipped artefact and a feature extractor, loaded once per process (None when missing)."""
    try:
        return TierModel.load(), FeatureExtractor()
    except (ModelFileError, RuntimeError) as exc:
        log.warning("no learned tier model (%s): routing falls back to the catalog's task_tiers", exc)
        return None


class Router:
    def __init__(
        self,
        catalog: Catalog,
        health: DeploymentHealth,
        tier_model: TierModel | bool | None = True,
        features: FeatureExtractor | None = None,
    ) -> None:
        """``tier_model``: True loads the shipped artefact (``default_tier_model``); None or False
        routes by ``catalog.task_tiers``; a ``TierModel`` is used as given (training, reports)."""
        self.catalog = catalog
        self.health = health
        self.tier_model: TierModel | None
        self.features: FeatureExtractor | None
        if tier_model is True:
            loaded = default_tier_model()
            self.tier_model, self.features = loaded if loaded is not None else (None, None)
        elif isinstance(tier_model, TierModel):
            self.tier_model, self.features = tier_model, features or FeatureExtractor()
        else:
            self.tier_model, self.features = None, None
        for name, model in catalog.models.items():
            health.register(name, model.all_deployments(name))
        # The wire formats a model's deployments speak (a parameter must survive every one of them).
        self._kinds: dict[str, tuple[UpstreamKind, ...]] = {
            name: tuple(sorted({catalog.providers[d.provider].kind for d in model.all_deployments(name)}))
            for name, model in catalog.models.items()
        }
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
        quality: str | None = None,
        sticky_model: str | None = None,
    ) -> Plan:
        """Route ``req``; raises ``RouteError`` when it cannot be served.

        ``quality`` overrides the team's policy (``strict`` / ``balanced`` / ``economy``);
        ``sticky_model`` is the model this conversation already uses (``app.routing.sticky``)."""
        ask = _Ask(task_hint, budget_share_used, quality, sticky_model)
        plan, error = self._evaluate(req, principal, ask)
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
        quality: str | None = None,
        sticky_model: str | None = None,
    ) -> dict[str, Any]:
        """The routing decision as JSON-able data, without calling any provider.

        Unknown models and routes the team may not use raise ``RouteError`` (404/403) as in ``plan``;
        a request no candidate can serve is explained, with ``chosen: null`` and the ``error``.
        """
        ask = _Ask(task_hint, budget_share_used, quality, sticky_model, price_rejected=True)
        plan, error = self._evaluate(req, principal, ask)
        candidates = plan.candidates + sorted(plan.rejected, key=lambda c: (c.cost, -TIER_ORDER[c.tier]))
        chosen = plan.candidates[0].name if plan.candidates and error is None else None
        classification = plan.classification
        return {
            "requested": plan.requested,
            "route": plan.route,
            "task": plan.task,
            "task_source": plan.task_source,
            "confidence": classification.confidence if classification else None,
            "features": classification.features if classification else {},
            "tier_model": self.tier_model.version if self.tier_model is not None else None,
            "tier_probabilities": plan.estimate.as_dict() if plan.estimate is not None else None,
            "quality": plan.quality,
            "threshold": plan.threshold,
            "needed_tier": plan.needed_tier,
            "min_tier": plan.min_tier,
            "downgraded": plan.downgraded,
            "sticky": plan.sticky,
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
        higher.sort(key=lambda c: (TIER_ORDER[c.tier], c.cost))
        return higher

    # ---- evaluation -----------------------------------------------------------------------------

    def _evaluate(self, req: ChatRequest, principal: Principal, ask: _Ask) -> tuple[Plan, RouteError | None]:
        route = self.catalog.routes.get(req.model)
        if route is not None:
            return self._evaluate_route(req, req.model, route, principal, ask)
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
        if "logprobs" in candidate.failures:
            return plan, self._logprobs_refused(f"model {req.model} does not return them")
        if candidate.refused_parameters:
            param, why = next(iter(candidate.refused_parameters.items()))
            message = f"{param}: not supported by model {req.model} ({why})"
            return plan, RouteError(400, "invalid_request", message, param=param)
        return plan, RouteError(
            400, "invalid_request", f"model {req.model} cannot serve this request: " + "; ".join(failures)
        )

    def _evaluate_route(
        self, req: ChatRequest, route_name: str, route: RouteConfig, principal: Principal, ask: _Ask
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
        need = self._need(req, route, policy, ask, shape.input_tokens)
        min_tier, downgraded = self._min_tier(need.tier, route, policy, ask.budget_share_used)
        expected_output = EXPECTED_OUTPUT[need.task]
        adequate: list[tuple[Decimal, int, int, Candidate]] = []
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
                price_rejected=ask.price_rejected,
            )
            if cand.adequate:
                adequate.append((cand.cost, -TIER_ORDER[cand.tier], index, cand))
            else:
                rejected.append(cand)
        adequate.sort(key=lambda item: item[:3])
        candidates, sticky, order = self._sticky_order([item[3] for item in adequate], ask.sticky_model)
        reason = f"route={route_name} task={need.task} src={need.source} tier>={min_tier}"
        if need.estimate is not None:
            p = need.estimate.adequate
            reason += f" p={p[0]:.2f}/{p[1]:.2f} q={need.threshold}"
        if downgraded:
            reason += " downgraded=budget"
        reason += f" {order}"
        plan = Plan(
            requested=req.model,
            route=route_name,
            task=need.task,
            task_source=need.source,
            min_tier=min_tier,
            candidates=candidates,
            rejected=rejected,
            reason=reason,
            # Streams skip escalation: verifying needs the whole answer, and buffering it would
            # throw away the reason to stream (and retrying after bytes reached the client is out).
            escalate=route.escalate and not req.stream,
            fallback=route.fallback,
            input_tokens=shape.input_tokens,
            downgraded=downgraded,
            classification=need.classification,
            estimate=need.estimate,
            quality=need.quality,
            threshold=need.threshold,
            needed_tier=need.tier,
            sticky=sticky,
        )
        if adequate:
            return plan, None
        if not ask.price_rejected:  # evaluate every verdict for the error message
            return self._evaluate_route(req, route_name, route, principal, replace(ask, price_rejected=True))
        return plan, self._no_adequate(route_name, rejected)

    def _need(
        self, req: ChatRequest, route: RouteConfig, policy: TeamPolicy, ask: _Ask, input_tokens: int
    ) -> _Need:
        """The tier this request needs (learned, or ``task_tiers``) and its task class."""
        quality = ask.quality or getattr(policy, "quality", None) or DEFAULT_QUALITY
        if quality not in QUALITY_THRESHOLDS:
            raise RouteError(
                400, "invalid_request", f"unknown quality policy '{quality}'; expected one of: "
                + ", ".join(QUALITY_THRESHOLDS)
            )
        threshold = QUALITY_THRESHOLDS[quality]
        classification: Classification | None = None
        estimate: TierEstimate | None = None
        if self.tier_model is not None and self.features is not None:
            extracted = self.features.extract(req, input_tokens=input_tokens)
            classification = extracted.classification
            estimate = self.tier_model.estimate(extracted)
        if ask.task_hint is not None:
            if ask.task_hint not in TASK_CLASSES:
                raise RouteError(
                    400,
                    "invalid_request",
                    f"unknown task class '{ask.task_hint}' in x-tollway-task; "
                    f"expected one of: {', '.join(sorted(TASK_CLASSES))}",
                )
            task, source = ask.task_hint, "header"
        elif route.task is not None:
            task, source = route.task, "route"
        else:
            if classification is None:
                classification = classify(req, input_tokens=input_tokens)
            task, source = classification.task, "classifier"
        if estimate is not None:
            tier = estimate.tier(threshold)
        else:
            tier = self.catalog.task_tiers[task]  # type: ignore[index]
        return _Need(task, source, tier, classification, estimate, quality, threshold)

    def _sticky_order(
        self, adequate: list[Candidate], sticky_model: str | None
    ) -> tuple[list[Candidate], str | None, str]:
        """Put the conversation's model first when it is adequate, else its provider's models."""
        if not sticky_model or not adequate:
            return adequate, None, "cheapest"
        name = self.catalog.resolve_model(sticky_model) or sticky_model
        for index, cand in enumerate(adequate):
            if cand.name == name:
                return [cand, *adequate[:index], *adequate[index + 1 :]], name, f"sticky={name}"
        model = self.catalog.models.get(name)
        if model is None:
            return adequate, None, "cheapest"
        provider = model.all_deployments(name)[0].provider
        same = [c for c in adequate if c.model.all_deployments(c.name)[0].provider == provider]
        if not same:
            return adequate, None, "cheapest"
        rest = [c for c in adequate if c not in same]
        return [*same, *rest], None, f"sticky-provider={provider}"

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
        if rejected and all("logprobs" in c.failures for c in rejected):
            return self._logprobs_refused(f"no model of route {route_name} returns them", why)
        # Other reasons too (a tier, a window): still name the parameter that ruled models out.
        param = next((p for c in rejected for p in c.refused_parameters), None)
        if any("logprobs" in c.failures for c in rejected):
            param = "logprobs"
        return RouteError(400, "invalid_request", f"no adequate model for route {route_name}: {why}", param=param)

    def _logprobs_refused(self, what: str, why: str | None = None) -> RouteError:
        """A 400 naming ``logprobs``, rather than forwarding the request and answering ``logprobs: null``."""
        able = sorted(n for n, m in self.catalog.models.items() if m.capabilities.logprobs)
        message = f"logprobs: {what} (Claude models and reasoning models never do); "
        message += f"models that do: {', '.join(able)}" if able else "no model in this catalog does"
        if why:
            message += f". Candidates: {why}"
        return RouteError(400, "invalid_request", message, param="logprobs")

    def _min_tier(
        self, needed: str, route: RouteConfig, policy: TeamPolicy, budget_share_used: float | None
    ) -> tuple[str, bool]:
        level = TIER_ORDER[needed]
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
        price_rejected: bool = True,
    ) -> Candidate:
        model = self.catalog.models[name]
        if not price_rejected and min_tier is not None and TIER_ORDER[model.tier] < TIER_ORDER[min_tier]:
            # Below the minimum: rejected whatever else holds; plan skips the other checks and the
            # price (explain, and the error path, evaluate it fully).
            failure = {"tier": f"{model.tier} is below the minimum {min_tier}"}
            return Candidate(name=name, model=model, cost=Decimal(0), failures=failure)
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
        if req.logprobs and not caps.logprobs:
            failures["logprobs"] = NO_LOGPROBS
        refused = self._refused_parameters(req, name, model)
        if refused:
            failures["parameters"] = "; ".join(f"{p}: {why}" for p, why in refused.items())
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
            # Pricing is most of a candidate's cost to evaluate; a rejected one is priced for explain only.
            cost=expected_cost(model, shape.input_tokens, output, cached)
            if price_rejected or not failures
            else Decimal(0),
            failures=failures,
            expected_output_tokens=output,
            cached_tokens=cached,
            refused_parameters=refused,
        )

    def _refused_parameters(self, req: ChatRequest, name: str, model: ModelConfig) -> dict[str, str]:
        """What an upstream of any of the model's deployments would lose (``app.wire.parameters``)."""
        refused: dict[str, str] = {}
        for kind in self._kinds[name]:
            refused.update(unsupported(req, kind, sampling=model.sampling))
        return refused

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
