"""Everything a request needs, built once at start-up and closed at shutdown.

Endpoints reach it as ``request.app.state.services``; tests build it with ``build_services``.
``build_pipeline`` hands the request pipeline exactly the services it uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.keystore import KeyStore
from app.auth.principal import Principal
from app.auth.throttle import FailedAuthThrottle
from app.bookkeeping import Bookkeeper
from app.budgets.lifetime import LifetimeBudget, create_lifetime_budget
from app.budgets.limiter import BudgetLimiter, Limiter, create_limiter
from app.budgets.redis_store import connect_budget_redis
from app.budgets.shares import BudgetShares
from app.caching.response_cache import ResponseCache, create_response_cache
from app.config import Catalog, Settings
from app.db.migrate import prepare_database
from app.ledger.recorder import Recorder
from app.ledger.tiered_spool import build_spool
from app.lifecycle import Lifecycle
from app.observability.metrics import Metrics
from app.pipeline import Pipeline
from app.providers.dispatch import Dispatcher
from app.providers.registry import ProviderRegistry
from app.routing.health import DeploymentHealth
from app.routing.router import Router
from app.routing.sticky import StickyConversations
from app.teams.browser_tokens import BrowserTokenStore
from app.teams.store import TeamStore

log = logging.getLogger("tollway")


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    providers: ProviderRegistry
    engine: AsyncEngine
    teams: TeamStore
    keys: KeyStore
    browser_tokens: BrowserTokenStore
    recorder: Recorder
    limiter: Limiter
    lifetime_budget: LifetimeBudget
    health: DeploymentHealth
    router: Router
    response_cache: ResponseCache
    metrics: Metrics
    redis: Redis | RedisCluster | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    budget_shares: BudgetShares = field(default_factory=BudgetShares)
    auth_throttle: FailedAuthThrottle = field(default_factory=FailedAuthThrottle)
    sticky: StickyConversations = field(default_factory=StickyConversations)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run work after the response without losing track of it (shutdown waits for it)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def refresh_gauges(self) -> None:
        """Pull-style gauges, refreshed when /metrics is scraped."""
        self.metrics.set_ledger(self.recorder.queue_depth, self.recorder.spool_size)
        for snap in self.health.snapshot():
            self.metrics.set_breaker_state(snap["deployment"], snap["state"])
        for team in await self.teams.list_teams():
            if team.limits.is_unlimited():
                continue
            principal = Principal(
                team_id=team.id, team_name=team.name, key_id="", key_prefix="", team_limits=team.limits
            )
            for window, state in (await self.limiter.status(principal))["team"].items():
                if state["limit"] is not None:
                    self.metrics.set_budget_remaining(
                        team.name, window, float(state["remaining"]), limit=float(state["limit"])
                    )

    async def drain(self, timeout_s: float = 10.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def aclose(self) -> None:
        await self.drain()
        await self.recorder.aclose()
        await self.keys.aclose()
        await self.limiter.aclose()
        await self.response_cache.aclose()
        await self.providers.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


def build_pipeline(services: Services) -> Pipeline:
    """The request pipeline, with every service it uses passed in explicitly."""
    return Pipeline(
        settings=services.settings,
        catalog=services.catalog,
        keys=services.keys,
        router=services.router,
        limiter=services.limiter,
        lifetime_budget=services.lifetime_budget,
        budget_shares=services.budget_shares,
        response_cache=services.response_cache,
        dispatcher=Dispatcher(services.settings, services.providers, services.health, services.metrics),
        bookkeeper=Bookkeeper(
            services.settings, services.limiter, services.recorder, services.metrics, services.lifetime_budget
        ),
        metrics=services.metrics,
        lifecycle=services.lifecycle,
        sticky=services.sticky,
        spawn=services.spawn,
    )


async def build_services(settings: Settings, catalog: Catalog) -> Services:
    # Short timeouts and one retry: when Redis is down a request must learn it in milliseconds.
    redis = connect_budget_redis(settings.redis_url, cluster=settings.redis_cluster) if settings.redis_url else None
    engine = await prepare_database(
        settings.database_url, auto_migrate=settings.database_url.startswith("sqlite")
    )
    teams = TeamStore(engine)
    await seed_teams(settings, catalog, teams)
    metrics = Metrics(
        team_label_cap=settings.metrics_team_label_cap,
        model_tiers={name: model.tier for name, model in catalog.models.items()},
    )
    recorder = Recorder(
        engine,
        batch_size=settings.ledger_batch_size,
        flush_interval_s=settings.ledger_flush_interval_s,
        queue_max=settings.ledger_queue_max,
        # Redis stream while Redis answers, the local file (settings.spool_dir) while it does not.
        spool=build_spool(redis, settings.spool_dir),
        shutdown_grace_s=settings.ledger_shutdown_grace_s,
        dead_letter_dir=settings.spool_dir,
        on_dead_letter=metrics.ledger_dead_letters,
    )
    recorder.start()
    health = DeploymentHealth(failures_to_trip=settings.cooldown_failures, cooldown_s=settings.cooldown_s)
    limiter = create_limiter(settings, redis)
    if isinstance(limiter, BudgetLimiter):
        limiter.resume_pending()  # settles a killed predecessor journaled during an outage
    return Services(
        settings=settings,
        catalog=catalog,
        providers=ProviderRegistry(settings, catalog),
        engine=engine,
        teams=teams,
        keys=KeyStore(engine, ttl_s=settings.key_cache_ttl_s),
        browser_tokens=BrowserTokenStore(engine),
        recorder=recorder,
        limiter=limiter,
        lifetime_budget=create_lifetime_budget(settings, redis),
        health=health,
        router=Router(catalog, health),
        sticky=StickyConversations(redis),
        response_cache=create_response_cache(settings, redis),
        metrics=metrics,
        redis=redis,
    )


async def seed_teams(settings: Settings, catalog: Catalog, teams: TeamStore) -> None:
    """Teams and keys declared in config or by TOLLWAY_DEV_KEY exist before the first request."""
    seeds = list(catalog.seed_teams)
    if settings.dev_key:
        from app.config import TeamSeed

        seeds.append(TeamSeed(name="dev", keys=[settings.dev_key]))
    for seed in seeds:
        await teams.ensure_seed(seed.name, seed.keys)
