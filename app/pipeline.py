"""One request's journey, top to bottom.

    authenticate → parse → route → admit → response cache → call → respond → settle + record

Each stage is a method here calling one package (auth/, wire/, routing/, budgets/, caching/,
providers/, ledger/); this file is the only place that knows their order, and no stage calls back
into it. Each stage returns a typed result that is kept on the request's ``Trail``, so the closing
stage (``bookkeeping``) can settle and record the request however it ended. The pipeline takes an
``Inbound`` and returns an ``Outcome``: it knows no web framework; ``app/api`` renders the outcome.
Nothing on the way to the client touches the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any

import orjson

from app.auth.browser import check_model, check_origin
from app.auth.keystore import CredentialRejected, KeyStore, KeyStoreUnavailable
from app.auth.principal import Principal
from app.bookkeeping import Bookkeeper, Ending
from app.budgets.errors import as_gateway_error
from app.budgets.estimate import InvalidBudgetRequest, worst_case_parts
from app.budgets.lifetime import Hold, LifetimeBudget, LifetimeBudgetExceeded
from app.budgets.limiter import Admission, BudgetBackendUnavailable, BudgetExceeded, Limiter
from app.budgets.shares import BudgetShares
from app.caching.prompt_cache import PROMPT_CACHE_HEADER, apply_breakpoints, prompt_cache_enabled
from app.caching.response_cache import CacheDecision, ResponseCache, cache_key, decide, decode_response
from app.caching.response_cache import encode_response as encode_for_cache
from app.config import Catalog, ModelConfig, Settings
from app.context import Trail, new_request_id
from app.domain import ChatRequest, ChatResponse
from app.errors import GatewayError, invalid, retry_after_value
from app.exchange import Inbound, Outcome
from app.lifecycle import Lifecycle
from app.observability.metrics import Metrics
from app.observability.tracing import span
from app.providers.base import UpstreamError, UpstreamStream
from app.providers.dispatch import (
    Dispatcher,
    reject_sampling,
    upstream_failure,
    without_sampling,
    worth_another_model,
)
from app.relay import Relay
from app.routing.router import Candidate, Plan, RouteError, Router
from app.routing.sticky import StickyConversations
from app.routing.verify import verify
from app.wire.anthropic import response_to_events
from app.wire.codec import ClientCodec, codec_for

log = logging.getLogger("tollway.pipeline")

SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}
JSON_HEADERS = {"content-type": "application/json"}
Spawn = Callable[[Coroutine[Any, Any, Any]], None]


@dataclasses.dataclass(slots=True)
class CachePlan:
    """The response-cache stage's result: the key, and whether to look up and to store."""

    key: str | None = None
    store: bool = False
    hit: ChatResponse | None = None


class Pipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        keys: KeyStore,
        router: Router,
        limiter: Limiter,
        lifetime_budget: LifetimeBudget,
        budget_shares: BudgetShares,
        response_cache: ResponseCache,
        dispatcher: Dispatcher,
        bookkeeper: Bookkeeper,
        metrics: Metrics,
        lifecycle: Lifecycle,
        sticky: StickyConversations,
        spawn: Spawn,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.keys = keys
        self.router = router
        self.limiter = limiter
        self.lifetime_budget = lifetime_budget
        self.budget_shares = budget_shares
        self.response_cache = response_cache
        self.dispatcher = dispatcher
        self.bookkeeper = bookkeeper
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.sticky = sticky
        self.spawn = spawn

    # ---- the journey -------------------------------------------------------------------------------

    async def handle(self, inbound: Inbound) -> Outcome:
        codec = codec_for(inbound.format)
        trail = Trail(request_id=new_request_id(), client_format=inbound.format)
        self.metrics.request_started(inbound.format)
        streaming = False
        try:
            with span("tollway.authenticate"):
                trail.principal = await self.authenticate(inbound.headers)  # 1. who is calling
            trail.chat = chat = parse(codec, inbound)  # canonical form, once
            # A browser token's end user, else the client's own user id.
            trail.end_user = trail.principal.end_user or end_user_of(chat)
            with span("tollway.route"):
                sticky = await self.sticky_model(chat, trail.principal)  # a conversation keeps its model
                trail.plan = plan = self.route(chat, trail.principal, inbound.headers, sticky)  # 2. which model
            with span("tollway.admit"):
                trail.budget_hold = await self.hold_browser_budget(chat, plan, trail.principal, trail.request_id)
                trail.admission = await self.admit(chat, plan, trail.principal, trail.request_id)  # 3. budget
            cache = await self.look_up_cache(chat, plan, trail.principal, inbound.headers)  # 4. caching
            if cache.hit is not None:
                return self.replay(codec, trail, cache.hit)
            async with asyncio.timeout(self.deadline(plan)):
                if chat.stream:  # 5 + 6, streaming: settled by the relay when the stream ends
                    upstream, served = await self.call_candidates(
                        trail, chat, self.dispatcher.candidates(plan), inbound.headers, stream=True
                    )
                    streaming = True
                    self.remember_model(trail)
                    return self.stream(codec, trail, upstream, served, cache)
                answer = await self.complete(trail, chat, plan, inbound.headers)  # 5. call the provider
            self.remember_model(trail)
            return self.respond(codec, trail, answer, cache)  # 6. respond; 7 runs after it is sent
        except GatewayError as err:
            return self.fail(codec, trail, err)
        except TimeoutError:
            return self.fail(codec, trail, GatewayError("timeout", "the request exceeded its deadline"))
        except asyncio.CancelledError:
            # The client went away (or the server is stopping) before an answer: pass the
            # cancellation on (it closed the upstream call) and record what was used.
            self.spawn(self.bookkeeper.close(trail, self._aborted(trail)))
            raise
        except Exception:
            log.exception("unhandled error in the pipeline (%s)", trail.request_id)
            return self.fail(codec, trail, GatewayError("api_error", "internal error in Tollway", status=500))
        finally:
            if not streaming:
                self.metrics.request_finished(inbound.format)

    # ---- 1. authenticate ---------------------------------------------------------------------------

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        secret = bearer_or_api_key(headers)
        if not secret:
            raise GatewayError("authentication", "missing API key: send it as 'x-api-key' or 'Authorization: Bearer'")
        try:
            principal = await self.keys.identify(secret)
        except CredentialRejected as exc:
            raise GatewayError("authentication", str(exc)) from exc
        except KeyStoreUnavailable as exc:
            raise GatewayError("unavailable", "key lookup is temporarily unavailable; retry shortly") from exc
        if principal.browser is not None:
            check_origin(principal.browser, headers.get("origin"))
        await self.keys.touch_last_used(principal.key_id)
        return principal

    # ---- 2. route ----------------------------------------------------------------------------------

    async def sticky_model(self, chat: ChatRequest, principal: Principal) -> str | None:
        """The model this conversation already uses (routes only, later turns only)."""
        if chat.model not in self.catalog.routes or len(chat.messages) < 2:
            return None
        return await self.sticky.lookup(principal.team_id, chat)

    def route(
        self, chat: ChatRequest, principal: Principal, headers: Mapping[str, str], sticky: str | None = None
    ) -> Plan:
        if principal.browser is not None:
            check_model(principal.browser, chat.model, self.catalog)
        try:
            return self.router.plan(
                chat,
                principal,
                task_hint=headers.get("x-tollway-task"),
                budget_share_used=self.budget_shares.used(principal),
                sticky_model=sticky,
            )
        except RouteError as err:
            raise route_error(err) from err

    def deadline(self, plan: Plan) -> float:
        route = self.catalog.routes.get(plan.route) if plan.route else None
        if route is not None and route.deadline_s is not None:
            return route.deadline_s
        return self.settings.request_deadline_s

    def remember_model(self, trail: Trail) -> None:
        """The model that served this turn (the escalated one after an escalation) sticks to the
        conversation, in the background: the answer does not wait for Redis."""
        plan, served, principal = trail.plan, trail.calls.served_model, trail.principal
        if plan is not None and plan.route and served and principal is not None and trail.chat is not None:
            self.spawn(self.sticky.remember(principal.team_id, trail.chat, served))

    # ---- 3. admit ----------------------------------------------------------------------------------

    async def admit(self, chat: ChatRequest, plan: Plan, principal: Principal, request_id: str) -> Admission:
        model = plan.candidates[0].model
        try:
            # Reserve for exactly the output cap the upstream will be sent (see prepare).
            parts = worst_case_parts(with_output_cap(chat, model, principal), model, principal, self.settings)
            admission = await self.limiter.admit(principal, request_id=request_id, **parts.admit_kwargs())  # type: ignore[arg-type]
        except InvalidBudgetRequest as err:
            raise invalid(str(err), "max_tokens") from err
        except BudgetExceeded as err:
            self.metrics.budget_rejected(principal.team_name, err.window)
            raise as_gateway_error(err) from err
        except BudgetBackendUnavailable as err:
            raise as_gateway_error(err) from err
        if principal.policy.downgrade_at_budget_share is not None:
            self.budget_shares.note(principal.team_id, admission.token_budget_share_used())
        return admission

    async def hold_browser_budget(
        self, chat: ChatRequest, plan: Plan, principal: Principal, request_id: str
    ) -> Hold | None:
        """A browser token's own budget: reserve the same worst case the team budgets will."""
        grant = principal.browser
        if grant is None:
            return None
        model = plan.candidates[0].model
        try:
            tokens = worst_case_parts(with_output_cap(chat, model, principal), model, principal, self.settings).tokens
            return await self.lifetime_budget.reserve(
                team_id=principal.team_id,
                budget_id=grant.token_id,
                limit=grant.token_budget,
                tokens=tokens,
                request_id=request_id,
                lives_until=grant.expires_at.timestamp(),
            )
        except InvalidBudgetRequest as err:
            raise invalid(str(err), "max_tokens") from err
        except LifetimeBudgetExceeded as err:
            raise browser_budget_exceeded(err) from err
        except BudgetBackendUnavailable as err:
            raise as_gateway_error(err) from err

    # ---- 4. response cache -------------------------------------------------------------------------

    async def look_up_cache(
        self, chat: ChatRequest, plan: Plan, principal: Principal, headers: Mapping[str, str]
    ) -> CachePlan:
        decision: CacheDecision = decide(chat, principal.policy, headers.get("x-tollway-cache"))
        if not (decision.lookup or decision.store):
            return CachePlan()
        cache = CachePlan(key=cache_key(principal.team_id, plan.candidates[0].name, chat), store=decision.store)
        if not decision.lookup:
            return cache
        data = await self.response_cache.get(cache.key or "")
        self.metrics.response_cache(hit=data is not None)
        if data is not None:
            try:
                cache.hit = decode_response(data)
            except ValueError:
                log.warning("unreadable response-cache entry, treated as a miss")
        return cache

    # ---- 5. call the provider: candidates in order, each prepared here, then escalation ------------

    async def complete(
        self, trail: Trail, chat: ChatRequest, plan: Plan, headers: Mapping[str, str]
    ) -> ChatResponse:
        answer, candidate = await self.call_candidates(trail, chat, self.dispatcher.candidates(plan), headers)
        # Escalation cascade: verify, and go one tier up while the answer fails.
        while plan.escalate and (failure := verify(chat, answer)) is not None:
            higher = self.router.next_tier_candidates(plan, candidate.name)
            if not higher:
                break
            trail.calls.escalations += 1
            self.metrics.escalation(candidate.name, higher[0].name)
            log.info("escalating %s → %s: %s", candidate.name, higher[0].name, failure)
            answer, candidate = await self.call_candidates(trail, chat, higher, headers)
        return answer

    async def call_candidates(
        self,
        trail: Trail,
        chat: ChatRequest,
        candidates: list[Candidate],
        headers: Mapping[str, str],
        *,
        stream: bool = False,
    ) -> tuple[Any, Candidate]:
        last_error: UpstreamError | None = None
        for position, candidate in enumerate(candidates):
            if position:
                self.metrics.fallback(candidates[position - 1].name, candidate.name)
            request = await self.prepare(trail, chat, candidate, headers)
            try:
                if stream:
                    return await self.dispatcher.open_stream(candidate, request, trail.calls, headers), candidate
                return await self.dispatcher.complete(candidate, request, trail.calls, headers), candidate
            except UpstreamError as err:
                last_error = err
                if not worth_another_model(err):
                    break
        assert last_error is not None
        raise upstream_failure(last_error, tried=len(trail.calls.attempts))

    async def prepare(
        self, trail: Trail, chat: ChatRequest, candidate: Candidate, headers: Mapping[str, str]
    ) -> ChatRequest:
        """Adapt the canonical request to one candidate model: sampling policy, output cap, the budget
        reservation for a pricier fallback, prompt-cache breakpoints."""
        assert trail.principal is not None and trail.admission is not None and trail.plan is not None
        principal, plan, model = trail.principal, trail.plan, candidate.model
        has_sampling = chat.temperature is not None or chat.top_p is not None or chat.top_k is not None
        if has_sampling and model.sampling == "reject":
            raise reject_sampling(candidate.name)
        req = without_sampling(chat) if has_sampling and model.sampling == "drop" else chat
        req = with_output_cap(req, model, principal)
        if candidate is not plan.candidates[0]:
            # A fallback or escalation to another model: the reservation must cover its price.
            parts = worst_case_parts(req, model, principal, self.settings)
            try:
                trail.admission = await self.limiter.readmit(trail.admission, **parts.admit_kwargs())  # type: ignore[arg-type]
                if trail.budget_hold is not None:
                    trail.budget_hold = await self.lifetime_budget.resize(trail.budget_hold, tokens=parts.tokens)
            except (BudgetExceeded, BudgetBackendUnavailable) as err:
                raise as_gateway_error(err) from err
            except LifetimeBudgetExceeded as err:
                raise browser_budget_exceeded(err) from err
        cap = trail.admission.output_cap
        if cap is not None and req.max_tokens is not None and cap < req.max_tokens:
            # The team's policy lets the request run with its output capped to what the budget has left.
            req = dataclasses.replace(req, max_tokens=cap)
        provider_kind = self.catalog.providers[model.all_deployments(candidate.name)[0].provider].kind
        route = self.catalog.routes.get(plan.route) if plan.route else None
        policy = principal.policy
        mode = route.prompt_cache if route is not None and route.prompt_cache is not None else policy.prompt_cache
        if provider_kind == "anthropic" and prompt_cache_enabled(mode, headers.get(PROMPT_CACHE_HEADER)):
            req = copy_for_breakpoints(req)
            apply_breakpoints(req, model, ttl=policy.prompt_cache_ttl)
        return req

    # ---- 6. respond --------------------------------------------------------------------------------

    def respond(self, codec: ClientCodec, trail: Trail, answer: ChatResponse, cache: CachePlan) -> Outcome:
        assert trail.chat is not None
        answer.model = trail.calls.served_model or answer.model
        body = codec.encode_response(answer, trail.chat, same_format=self.same_format(codec, trail))
        if self.cacheable(trail, cache):
            self.spawn(self.response_cache.put(cache.key or "", encode_for_cache(answer)))
        trail.usage_flag = usage_flag(trail.chat, answer)
        ending = Ending(
            status=200, usage=trail.calls.total_usage(), stop_reason=answer.stop_reason, completion=_text(answer)
        )
        return Outcome(200, {**self.headers(trail), **JSON_HEADERS}, body, after=self._close_later(trail, ending))

    def replay(self, codec: ClientCodec, trail: Trail, answer: ChatResponse) -> Outcome:
        """A response-cache hit: the stored answer, as JSON or as a well-formed stream."""
        assert trail.chat is not None and trail.plan is not None
        first = trail.plan.candidates[0]
        trail.calls.served_model = first.name
        trail.calls.provider = first.model.all_deployments(first.name)[0].provider
        trail.cache_hit = True
        headers = {**self.headers(trail), "x-tollway-cache": "hit"}
        ending = Ending(status=200, usage=trail.calls.total_usage(), stop_reason=answer.stop_reason)
        if not trail.chat.stream:
            body = codec.encode_response(answer, trail.chat, same_format=self.same_format(codec, trail))
            return Outcome(200, {**headers, **JSON_HEADERS}, body, after=self._close_later(trail, ending))
        encode = codec.stream_encoder(trail.chat, first.name)
        events = [encode(event) for event in response_to_events(answer)]

        async def replayed() -> AsyncIterator[bytes]:
            try:
                yield b"".join(events)
            finally:
                self.metrics.request_finished(trail.client_format)
                self.spawn(self.bookkeeper.close(trail, ending))

        return Outcome(200, {**headers, **SSE_HEADERS}, stream=replayed())

    def stream(
        self, codec: ClientCodec, trail: Trail, upstream: UpstreamStream, served: Candidate, cache: CachePlan
    ) -> Outcome:
        assert trail.chat is not None
        keep_content = bool(cache.store) or self.settings.log_prompts
        relay = Relay(
            codec=codec,
            trail=trail,
            upstream=upstream,
            model=served.model,
            deadline_s=self.deadline(trail.plan) if trail.plan else self.settings.request_deadline_s,
            keep_content=keep_content,
            lifecycle=self.lifecycle,
            metrics=self.metrics,
        )
        return Outcome(200, {**self.headers(trail), **SSE_HEADERS}, stream=self._relayed(relay, trail, cache))

    async def _relayed(self, relay: Relay, trail: Trail, cache: CachePlan) -> AsyncIterator[bytes]:
        chunks = relay.chunks()
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            # Closed here, not by the garbage collector: the relay's own ending (what the stream
            # used, how it ended) must be settled before it is recorded.
            await chunks.aclose()
            # Runs on every ending: done, upstream failure, deadline, shutdown, client gone.
            self.metrics.request_finished(trail.client_format)
            if relay.ending.status == 200 and not relay.ending.aborted and self.cacheable(trail, cache):
                answer = relay.tracker.response()
                answer.model = trail.calls.served_model or answer.model
                self.spawn(self.response_cache.put(cache.key or "", encode_for_cache(answer)))
            self.spawn(self.bookkeeper.close(trail, relay.ending))

    def fail(self, codec: ClientCodec, trail: Trail, err: GatewayError) -> Outcome:
        body = codec.error_body(err, trail.request_id)
        headers = {**err.headers, **self.headers(trail, with_budget=False), **JSON_HEADERS}
        # No team to charge (bad key, unreadable body): counted in metrics and logs, not in a ledger.
        record = err.kind != "authentication" and trail.chat is not None and trail.principal is not None
        ending = Ending(
            status=err.status_for(codec.name),
            usage=trail.calls.total_usage(),
            error_type=err.kind,
            record=record,
        )
        return Outcome(ending.status, headers, body, after=self._close_later(trail, ending))

    # ---- 7. settle and record (after the response) ------------------------------------------------

    def _close_later(self, trail: Trail, ending: Ending) -> Callable[[], Awaitable[None]]:
        """Runs once the body is sent; hands the closing stage to its own task so the connection is
        free for the client's next request without waiting on Redis."""

        async def after() -> None:
            self.spawn(self.bookkeeper.close(trail, ending))

        return after

    def _aborted(self, trail: Trail) -> Ending:
        return Ending(
            status=499, usage=trail.calls.total_usage(), error_type="client_aborted", aborted=True
        )

    # ---- helpers ----------------------------------------------------------------------------------

    def headers(self, trail: Trail, *, with_budget: bool = True) -> dict[str, str]:
        headers = {"request-id": trail.request_id, "x-request-id": trail.request_id}
        calls, plan = trail.calls, trail.plan
        if calls.served_model:
            headers["x-tollway-served-model"] = calls.served_model
        elif plan is not None and plan.candidates:
            headers["x-tollway-served-model"] = plan.candidates[0].name
        if plan is not None:
            headers["x-tollway-route-reason"] = plan.reason
        if calls.escalations:
            headers["x-tollway-escalations"] = str(calls.escalations)
        if calls.simulated:
            headers["x-tollway-simulated"] = "true"  # never mistaken for a real model's answer
        if with_budget and trail.admission is not None:
            headers.update(trail.admission.headers_for(trail.client_format))
        if with_budget and trail.budget_hold is not None:
            headers.update(trail.budget_hold.headers())
        return headers

    def cacheable(self, trail: Trail, cache: CachePlan) -> bool:
        # The key names the first candidate: an answer from a fallback model is not stored under it.
        first = trail.plan.candidates[0].name if trail.plan else None
        return bool(cache.key and cache.store and trail.calls.served_model == first)

    def same_format(self, codec: ClientCodec, trail: Trail) -> bool:
        provider = trail.calls.provider
        return provider is not None and self.catalog.providers[provider].kind == codec.native_provider


# ---- stage helpers: pure functions ---------------------------------------------------------------


def parse(codec: ClientCodec, inbound: Inbound) -> ChatRequest:
    if not inbound.body:
        raise invalid("request body is empty: expected a JSON object")
    try:
        body = orjson.loads(inbound.body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"request body is not valid JSON: {exc}") from exc
    return codec.parse_request(body, inbound.headers)


def bearer_or_api_key(headers: Mapping[str, str]) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def route_error(err: RouteError) -> GatewayError:
    headers = {"retry-after": retry_after_value(err.retry_after_s)} if err.retry_after_s else {}
    return GatewayError(err.kind, err.message, status=err.status, param=err.param, headers=headers)  # type: ignore[arg-type]


def browser_budget_exceeded(err: LifetimeBudgetExceeded) -> GatewayError:
    """429 for a browser token's own budget: retrying helps only when requests in flight hold it."""
    retry = err.blocked_by_in_flight
    headers = {"x-should-retry": "true" if retry else "false"}
    if retry:
        headers["retry-after"] = "1"
    return GatewayError("rate_limit", err.message(), code="browser_token_budget_exhausted", headers=headers)


def with_output_cap(req: ChatRequest, model: ModelConfig, principal: Principal) -> ChatRequest:
    """A request without max_tokens gets the team's default cap or the model's (never above its max)."""
    if req.max_tokens is not None:
        return req
    cap = principal.policy.default_max_tokens or model.default_max_tokens
    return dataclasses.replace(req, max_tokens=min(cap, model.max_output_tokens))


def end_user_of(chat: ChatRequest) -> str | None:
    """The client's own end-user id: OpenAI's ``user`` or Anthropic's ``metadata.user_id``."""
    value = (chat.metadata or {}).get("user_id") or chat.extra.get("user")
    return value[:256] if isinstance(value, str) and value else None


def usage_flag(chat: ChatRequest, answer: ChatResponse) -> str | None:
    """Flag an answer billed for more output than the request allowed (the reservation's worst case)."""
    if chat.max_tokens is not None and answer.usage.output_tokens > chat.max_tokens:
        return "over_reservation"
    return None


def copy_for_breakpoints(req: ChatRequest) -> ChatRequest:
    """A copy whose blocks can take cache_control markers without touching the original request
    (the response-cache key and a fallback to another model must see the client's request)."""
    return dataclasses.replace(
        req,
        system=[dict(b) for b in req.system],
        messages=[dataclasses.replace(m, content=[dict(b) for b in m.content]) for m in req.messages],
        tools=[dataclasses.replace(t, extra=dict(t.extra)) for t in req.tools],
    )


def _text(answer: ChatResponse) -> str:
    return "".join(b.get("text", "") for b in answer.content if b.get("type") == "text")
