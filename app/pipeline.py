"""One request's journey, top to bottom.

    authenticate → parse → route → admit → prepare (caches) → call → respond → settle + record

Each stage is a method here calling one module (auth/, routing/, budgets/, caching/, providers/,
ledger/); this file is the only place that knows their order. Nothing on the way to the client
touches the database: settlement, the ledger, metrics and the log line happen after the response.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from decimal import Decimal
from typing import Any

import anyio
import orjson
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app.api.errors import error_response
from app.api.event_stream import EventStreamResponse
from app.auth.keystore import KeyStoreUnavailable
from app.auth.principal import Principal
from app.budgets.estimate import InvalidBudgetRequest, worst_case
from app.budgets.limiter import BudgetBackendUnavailable, BudgetExceeded
from app.caching.prompt_cache import PROMPT_CACHE_HEADER, apply_breakpoints, prompt_cache_enabled
from app.caching.response_cache import cache_key, decide, decode_response, encode_response
from app.config import ModelConfig
from app.context import RequestContext, new_request_id
from app.domain import ChatRequest, ChatResponse, ClientFormat, Usage
from app.errors import GatewayError, invalid
from app.ledger.events import UsageEvent
from app.observability.logging import log_request
from app.observability.tracing import span
from app.providers.base import UpstreamError, UpstreamStream
from app.providers.dispatch import Dispatcher, record_usage, reject_sampling, without_sampling
from app.routing.router import Candidate, RouteError
from app.services import Services
from app.tokens import estimate_tokens
from app.wire import anthropic as anthropic_wire
from app.wire.accumulate import StreamTracker
from app.wire.errors import kind_from_anthropic_type, sse_error_event
from app.wire.openai import client as openai_wire

log = logging.getLogger("tollway.pipeline")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Pipeline:
    def __init__(self, services: Services) -> None:
        self.s = services
        self.dispatcher = Dispatcher(
            services.settings,
            services.catalog,
            services.providers,
            services.router,
            services.health,
            services.metrics,
            prepare=self.prepare_for_model,
        )

    # ---- the journey -------------------------------------------------------------------------------

    async def handle(self, request: Request, fmt: ClientFormat) -> Response:
        ctx = RequestContext(request_id=new_request_id(), client_format=fmt, headers=request.headers)
        self.s.metrics.request_started(fmt)
        streaming = False
        try:
            with span("tollway.authenticate"):
                ctx.principal = await self.authenticate(request)  # 1. who is calling
            body = await read_json_body(request, self.s.settings.max_body_bytes)
            ctx.chat = parse_chat(fmt, body, request)  # canonical form, once
            sticky = await self.sticky_model(ctx)
            with span("tollway.route"):
                ctx.plan = self.route(ctx, sticky)  # 2. which model
            with span("tollway.admit"):
                ctx.admission = await self.admit(ctx)  # 3. budget reservation
            cached = await self.lookup_response_cache(ctx)  # 4. caching
            if cached is not None:
                return self.respond_from_cache(ctx, cached)
            if ctx.chat.stream:  # 5 + 6, streaming
                response = await self.respond_stream(ctx)
                streaming = True
                return response
            answer = await self.dispatcher.complete(ctx)  # 5. call the provider
            return self.respond(ctx, answer)  # 6. respond; 7 runs after it is sent
        except GatewayError as err:
            return self.fail(ctx, err)
        finally:
            if not streaming:
                self.s.metrics.request_finished(fmt)

    # ---- 1. authenticate ---------------------------------------------------------------------------

    async def authenticate(self, request: Request) -> Principal:
        secret = bearer_or_api_key(request)
        if not secret:
            raise GatewayError("authentication", "missing API key: send it as 'x-api-key' or 'Authorization: Bearer'")
        try:
            principal = await self.s.keys.lookup(secret)
        except KeyStoreUnavailable as exc:
            raise GatewayError("unavailable", "key lookup is temporarily unavailable; retry shortly") from exc
        if principal is None:
            raise GatewayError("authentication", "invalid API key")
        await self.s.keys.touch_last_used(principal.key_id)
        return principal

    # ---- 2. route ----------------------------------------------------------------------------------

    async def sticky_model(self, ctx: RequestContext) -> str | None:
        """The model this conversation already uses (routes only, later turns only)."""
        assert ctx.chat is not None and ctx.principal is not None
        if ctx.chat.model not in self.s.catalog.routes or len(ctx.chat.messages) < 2:
            return None
        return await self.s.sticky.lookup(ctx.principal.team_id, ctx.chat)

    def route(self, ctx: RequestContext, sticky_model: str | None = None) -> Any:
        assert ctx.chat is not None and ctx.principal is not None
        try:
            return self.s.router.plan(
                ctx.chat,
                ctx.principal,
                task_hint=ctx.header("x-tollway-task"),
                budget_share_used=self.s.budget_share_used(ctx.principal),
                sticky_model=sticky_model,
            )
        except RouteError as err:
            retry_after = getattr(err, "retry_after_s", None)
            headers = {"retry-after": str(max(1, int(retry_after + 0.999)))} if retry_after else {}
            raise GatewayError(err.kind, err.message, status=err.status, headers=headers) from err  # type: ignore[arg-type]

    # ---- 3. admit ----------------------------------------------------------------------------------

    async def admit(self, ctx: RequestContext) -> Any:
        assert ctx.chat is not None and ctx.principal is not None and ctx.plan is not None
        model = ctx.plan.candidates[0].model
        try:
            # Reserve for exactly the output cap the upstream will be sent (see prepare_for_model).
            req = with_output_cap(ctx.chat, model, ctx.principal)
            tokens, usd = worst_case(req, model, ctx.principal, self.s.settings)
            admission = await self.s.limiter.admit(ctx.principal, tokens=tokens, usd=usd, request_id=ctx.request_id)
            if ctx.principal.policy.downgrade_at_budget_share is not None:
                self.s.note_budget_share(ctx.principal.team_id, admission.token_budget_share_used())
            return admission
        except InvalidBudgetRequest as err:
            raise invalid(str(err), "max_tokens") from err
        except BudgetExceeded as err:
            self.s.metrics.budget_rejected(ctx.principal.team_name, err.window)
            raise GatewayError(
                "rate_limit",
                err.message(),
                headers={
                    "retry-after": str(err.retry_after_s),
                    "x-should-retry": "false" if err.never_fits or err.retry_after_s > 60 else "true",
                },
            ) from err
        except BudgetBackendUnavailable as err:
            raise GatewayError("unavailable", "budget store unavailable: request refused (fail-closed policy)") from err

    # ---- 4. prepare: response cache, and per-model adaptation -------------------------------------

    async def lookup_response_cache(self, ctx: RequestContext) -> ChatResponse | None:
        assert ctx.chat is not None and ctx.principal is not None and ctx.plan is not None
        decision = decide(ctx.chat, ctx.principal.policy, ctx.header("x-tollway-cache"))
        if not (decision.lookup or decision.store):
            return None
        ctx.response_cache_key = cache_key(ctx.principal.team_id, ctx.plan.candidates[0].name, ctx.chat)
        ctx.response_cache_store = decision.store
        if not decision.lookup:
            return None
        data = await self.s.response_cache.get(ctx.response_cache_key)
        self.s.metrics.response_cache(hit=data is not None)
        if data is None:
            return None
        try:
            return decode_response(data)
        except ValueError:
            log.warning("unreadable response-cache entry, treated as a miss")
            return None

    async def prepare_for_model(self, ctx: RequestContext, req: ChatRequest, candidate: Candidate) -> ChatRequest:
        """Adapt the canonical request to one candidate model (called per model tried)."""
        assert ctx.principal is not None and ctx.admission is not None
        model = candidate.model
        has_sampling = req.temperature is not None or req.top_p is not None or req.top_k is not None
        if has_sampling and model.sampling == "reject":
            raise reject_sampling(candidate.name)
        if has_sampling and model.sampling == "drop":
            req = without_sampling(req)
        req = with_output_cap(req, model, ctx.principal)
        if ctx.plan is not None and candidate is not ctx.plan.candidates[0]:
            # A fallback or escalation to another model: the reservation must cover its price.
            tokens, usd = worst_case(req, model, ctx.principal, self.s.settings)
            try:
                ctx.admission = await self.s.limiter.readmit(ctx.admission, tokens=tokens, usd=usd)
            except BudgetExceeded as err:
                raise GatewayError(
                    "rate_limit", err.message(), headers={"retry-after": str(err.retry_after_s)}
                ) from err
        provider_kind = self.s.catalog.providers[model.all_deployments(candidate.name)[0].provider].kind
        policy = ctx.principal.policy
        route = self.s.catalog.routes.get(ctx.plan.route) if ctx.plan and ctx.plan.route else None
        mode = route.prompt_cache if route is not None and route.prompt_cache is not None else policy.prompt_cache
        if provider_kind == "anthropic" and prompt_cache_enabled(mode, ctx.header(PROMPT_CACHE_HEADER)):
            req = copy_for_breakpoints(req)
            apply_breakpoints(req, model, ttl=policy.prompt_cache_ttl)
        return req

    # ---- 6. respond --------------------------------------------------------------------------------

    def respond(self, ctx: RequestContext, answer: ChatResponse) -> Response:
        assert ctx.chat is not None
        answer.model = ctx.served_model or answer.model
        same_format = self._same_format(ctx)
        body = (
            anthropic_wire.encode_response(answer, same_format=same_format)
            if ctx.client_format == "anthropic"
            else openai_wire.encode_response(answer)
        )
        if self._cacheable(ctx):
            self._spawn(self.s.response_cache.put(ctx.response_cache_key or "", encode_response(answer)))
        usage = self._total_usage(ctx)
        return Response(
            body,
            media_type="application/json",
            headers=self.headers(ctx),
            background=BackgroundTask(
                self.finish_later,
                ctx,
                status=200,
                usage=usage,
                stop_reason=answer.stop_reason,
                completion=_text(answer),
            ),
        )

    def respond_from_cache(self, ctx: RequestContext, answer: ChatResponse) -> Response:
        assert ctx.chat is not None
        ctx.served_model = ctx.plan.candidates[0].name if ctx.plan else answer.model
        if ctx.plan:
            ctx.provider = ctx.plan.candidates[0].model.all_deployments(ctx.served_model)[0].provider
        headers = {**self.headers(ctx), "x-tollway-cache": "hit"}
        finish = BackgroundTask(
            self.finish_later, ctx, status=200, usage=Usage(), stop_reason=answer.stop_reason, cache_hit=True
        )
        if not ctx.chat.stream:
            body = (
                anthropic_wire.encode_response(answer, same_format=self._same_format(ctx))
                if ctx.client_format == "anthropic"
                else openai_wire.encode_response(answer)
            )
            return Response(body, media_type="application/json", headers=headers, background=finish)
        events = anthropic_wire.response_to_events(answer)
        encode = self._event_encoder(ctx)

        async def replay() -> AsyncIterator[bytes]:
            for event in events:
                yield encode(event)

        return EventStreamResponse(replay(), headers={**headers, **SSE_HEADERS}, background=finish)

    async def respond_stream(self, ctx: RequestContext) -> Response:
        assert ctx.chat is not None
        upstream = await self.dispatcher.open_stream(ctx)  # retries and fallbacks end here
        tracker = StreamTracker(keep_content=ctx.response_cache_store or self.s.settings.log_prompts)
        encode = self._event_encoder(ctx)
        metrics = self.s.metrics
        fmt = ctx.client_format
        return EventStreamResponse(
            self._relay(ctx, upstream, tracker, encode, metrics, fmt), headers={**self.headers(ctx), **SSE_HEADERS}
        )

    async def _relay(
        self,
        ctx: RequestContext,
        upstream: UpstreamStream,
        tracker: StreamTracker,
        encode: Any,
        metrics: Any,
        fmt: ClientFormat,
    ) -> AsyncIterator[bytes]:
        """Forward events as they arrive; on any ending (done, upstream error, client gone) settle.

        The events of one upstream read go out in one write: same bytes, same moment, far fewer
        sends (each costs the server a write call and a trip through the ASGI machinery)."""
        status, error_type, aborted = 200, None, True
        last = time.perf_counter()
        see = tracker.see
        try:
            async for batch in upstream.batches():
                parts: list[bytes] = []
                for event in batch:
                    see(event)
                    if event.type == "error":
                        upstream_type = (tracker.error or {}).get("type")
                        status, error_type = 502, upstream_type or "api_error"
                        kind = kind_from_anthropic_type(upstream_type)
                        parts.append(
                            sse_error_event(GatewayError(kind, "the upstream provider failed mid-stream"), fmt)
                        )
                        aborted = False
                        yield b"".join(parts)
                        return
                    chunk = encode(event)
                    if chunk:
                        parts.append(chunk)
                if parts:
                    now = time.perf_counter()
                    metrics.observe_inter_event(now - last, fmt)
                    last = now
                    yield parts[0] if len(parts) == 1 else b"".join(parts)
            aborted = False
            if not tracker.finished:
                status, error_type = 502, "api_error"
                yield sse_error_event(GatewayError("api_error", "the upstream stream ended early"), fmt)
        except UpstreamError as err:
            aborted = False
            status, error_type = 502, err.kind
            yield sse_error_event(GatewayError(err.kind, err.message), fmt)  # type: ignore[arg-type]
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            ctx.first_token_at = tracker.first_token_at
            if ctx.attempts:
                model = self.s.catalog.models[ctx.attempts[-1].model]
                answer = tracker.response()
                assert ctx.chat is not None
                answer.usage = tracker.usage_so_far(estimate_tokens(ctx.chat))
                record_usage(ctx.attempts[-1], model, answer)
            if not aborted and status == 200 and self._cacheable(ctx):
                answer = tracker.response()
                answer.model = ctx.served_model or answer.model
                self._spawn(self.s.response_cache.put(ctx.response_cache_key or "", encode_response(answer)))
            self.s.metrics.request_finished(fmt)
            self._spawn(
                self.finish(
                    ctx,
                    status=status if not aborted else 499,
                    usage=self._total_usage(ctx),
                    stop_reason=tracker.stop_reason,
                    error_type=error_type if not aborted else "client_aborted",
                    aborted=aborted,
                    completion=_text(tracker.response()) if tracker.keep_content else None,
                )
            )

    def fail(self, ctx: RequestContext, err: GatewayError) -> Response:
        response = error_response(err, ctx.client_format, ctx.request_id)
        response.headers.update(self.headers(ctx, with_budget=False))
        if err.kind == "authentication" or ctx.chat is None:
            # No team to charge: counted in metrics and logs, not in a team's ledger.
            self._spawn(self.finish(ctx, status=response.status_code, usage=Usage(), error_type=err.kind, record=False))
        else:
            response.background = BackgroundTask(
                self.finish_later,
                ctx,
                status=response.status_code,
                usage=self._total_usage(ctx),
                error_type=err.kind,
            )
        return response

    # ---- 7. settle and record (after the response) ------------------------------------------------

    async def finish_later(self, ctx: RequestContext, **outcome: Any) -> None:
        """Runs once the response is sent; hands settlement to its own task so the connection is
        free for the client's next request without waiting on Redis."""
        self._spawn(self.finish(ctx, **outcome))

    async def finish(
        self,
        ctx: RequestContext,
        *,
        status: int,
        usage: Usage,
        stop_reason: str | None = None,
        error_type: str | None = None,
        aborted: bool = False,
        cache_hit: bool = False,
        record: bool = True,
        completion: str | None = None,
    ) -> None:
        cost = sum((a.cost for a in ctx.attempts), Decimal(0))
        uncached = sum((a.uncached_cost for a in ctx.attempts), Decimal(0))
        if status == 200 and ctx.plan is not None and ctx.plan.route and ctx.served_model and ctx.principal:
            # The model that served this turn (the escalated one after an escalation) sticks.
            await self.s.sticky.remember(ctx.principal.team_id, ctx.chat, ctx.served_model)  # type: ignore[arg-type]
        if ctx.admission is not None:
            await self.s.limiter.settle(ctx.admission, tokens=usage.total_tokens, usd=cost)
        latency = time.perf_counter() - ctx.started
        ttft = (ctx.first_token_at - ctx.started) if ctx.first_token_at else None
        principal = ctx.principal
        event = UsageEvent(
            request_id=ctx.request_id,
            team_id=principal.team_id if principal else None,
            key_id=principal.key_id if principal else None,
            client_format=ctx.client_format,
            requested_model=ctx.requested_model,
            served_model=ctx.served_model,
            provider=ctx.provider,
            route_reason=ctx.plan.reason if ctx.plan else None,
            attempts=len(ctx.attempts),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_write_5m_tokens=usage.cache_write_5m_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cost_usd=cost,
            uncached_cost_usd=uncached,
            latency_ms=latency * 1000,
            ttft_ms=ttft * 1000 if ttft is not None else None,
            status=status,
            error_type=error_type,
            stop_reason=stop_reason,
            streamed=bool(ctx.chat and ctx.chat.stream),
            aborted=aborted,
            response_cache_hit=cache_hit,
        )
        if record and principal is not None:
            self.s.recorder.record(event)
        team_name = principal.team_name if principal else None
        route = ctx.plan.route if ctx.plan else None
        self.s.metrics.observe(event, team_name=team_name, route=route, upstream_s=ctx.upstream_seconds, ttft_s=ttft)
        log_request(
            event,
            team_name=team_name,
            key_prefix=principal.key_prefix if principal else None,
            route=route,
            prompt=ctx.chat if self.s.settings.log_prompts else None,
            completion=completion if self.s.settings.log_prompts else None,
            log_prompts=self.s.settings.log_prompts,
        )

    # ---- helpers ----------------------------------------------------------------------------------

    def headers(self, ctx: RequestContext, *, with_budget: bool = True) -> dict[str, str]:
        headers = {"request-id": ctx.request_id, "x-request-id": ctx.request_id}
        if ctx.served_model:
            headers["x-tollway-served-model"] = ctx.served_model
        elif ctx.plan is not None and ctx.plan.candidates:
            headers["x-tollway-served-model"] = ctx.plan.candidates[0].name
        if ctx.plan is not None:
            headers["x-tollway-route-reason"] = ctx.plan.reason
        if ctx.escalations:
            headers["x-tollway-escalations"] = str(ctx.escalations)
        if with_budget and ctx.admission is not None:
            headers.update(ctx.admission.headers_for(ctx.client_format))
        return headers

    def _cacheable(self, ctx: RequestContext) -> bool:
        # The key names the first candidate: an answer from a fallback model is not stored under it.
        first = ctx.plan.candidates[0].name if ctx.plan else None
        return bool(ctx.response_cache_key and ctx.response_cache_store and ctx.served_model == first)

    def _same_format(self, ctx: RequestContext) -> bool:
        provider = ctx.provider
        return provider is not None and self.s.catalog.providers[provider].kind == ctx.client_format

    def _event_encoder(self, ctx: RequestContext) -> Any:
        if ctx.client_format == "anthropic":
            return anthropic_wire.encode_event
        assert ctx.chat is not None
        model = ctx.served_model or (ctx.plan.candidates[0].name if ctx.plan else ctx.chat.model)
        return openai_wire.ChunkEncoder(include_usage=ctx.chat.include_usage, model=model).encode

    def _total_usage(self, ctx: RequestContext) -> Usage:
        total = Usage()
        for a in ctx.attempts:
            total.input_tokens += a.usage.input_tokens
            total.output_tokens += a.usage.output_tokens
            total.cache_write_5m_tokens += a.usage.cache_write_5m_tokens
            total.cache_write_1h_tokens += a.usage.cache_write_1h_tokens
            total.cache_read_tokens += a.usage.cache_read_tokens
        return total

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.s.spawn(coro)


# ---- parsing helpers (stage 0: bytes → canonical) -------------------------------------------------


def with_output_cap(req: ChatRequest, model: ModelConfig, principal: Principal) -> ChatRequest:
    """A request without max_tokens gets the team's default cap or the model's (never above its max)."""
    if req.max_tokens is not None:
        return req
    cap = principal.policy.default_max_tokens or model.default_max_tokens
    return dataclasses.replace(req, max_tokens=min(cap, model.max_output_tokens))


def _text(answer: ChatResponse) -> str:
    return "".join(b.get("text", "") for b in answer.content if b.get("type") == "text")


def bearer_or_api_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


async def read_json_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError("request_too_large", f"request body is larger than the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise GatewayError("request_too_large", f"request body is larger than the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise GatewayError("invalid_request", "client disconnected while sending the request") from exc
    raw = b"".join(chunks)
    if not raw:
        raise invalid("request body is empty: expected a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"request body is not valid JSON: {exc}") from exc


def parse_chat(fmt: ClientFormat, body: Any, request: Request) -> ChatRequest:
    if fmt == "anthropic":
        return anthropic_wire.parse_request(
            body,
            anthropic_version=request.headers.get("anthropic-version"),
            anthropic_beta=request.headers.get("anthropic-beta"),
        )
    return openai_wire.parse_request(body)


def copy_for_breakpoints(req: ChatRequest) -> ChatRequest:
    """A copy whose blocks can take cache_control markers without touching the original request
    (the response-cache key and a fallback to another model must see the client's request)."""
    return dataclasses.replace(
        req,
        system=[dict(b) for b in req.system],
        messages=[dataclasses.replace(m, content=[dict(b) for b in m.content]) for m in req.messages],
        tools=[dataclasses.replace(t, extra=dict(t.extra)) for t in req.tools],
    )
