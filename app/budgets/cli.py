"""``tollway budgets set`` and ``tollway budgets show``.

``set`` changes a team's (or one of its keys') limits in the database — only the windows given;
``none`` clears a window, meaning unlimited — and, when ``TOLLWAY_REDIS_URL`` is set, publishes them
to Redis so every gateway replica enforces them on its next request. Without Redis (the embedded
single-process setup) a running gateway picks the change up within its key-cache TTL (2 s).

``show`` prints the limits and, with Redis, the current usage of every window.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from app.auth.principal import Limits, Principal
from app.auth.records import TeamRecord
from app.budgets.limiter import BudgetBackendUnavailable, BudgetLimiter
from app.budgets.limits import limits_vector, validate_limits
from app.budgets.redis_store import RedisStore, connect_budget_redis
from app.budgets.store import StoreUnavailable
from app.budgets.windows import WINDOW_NAMES
from app.config import load_settings
from app.db.cli import add_database_url_option, fail, run_with_engine
from app.db.migrate import SchemaNotMigrated
from app.teams.store import StoreError, TeamStore

_CLEAR = ("none", "null", "unlimited")


def register(subparsers: Any) -> None:
    budgets = subparsers.add_parser("budgets", help="team and key budgets and rate limits")
    sub = budgets.add_subparsers(dest="budgets_command", required=True)

    set_ = sub.add_parser(
        "set",
        help="set limits for a team or one of its keys (only the windows given; 'none' = unlimited)",
    )
    set_.add_argument("--team", required=True, help="team name or id")
    set_.add_argument("--key", default=None, help="a key id of that team: set the key's own limits")
    for name in WINDOW_NAMES:
        set_.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="N|none")
    _common(set_, _cmd_set)

    show = sub.add_parser("show", help="show a team's limits (and usage, when Redis is configured)")
    show.add_argument("--team", required=True, help="team name or id")
    _common(show, _cmd_show)


def _common(parser: argparse.ArgumentParser, func: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_database_url_option(parser)
    parser.set_defaults(func=func)


def merge_limits(current: Limits, changes: dict[str, str | None]) -> Limits:
    """``current`` with the given windows replaced (``none`` clears one), validated."""
    values: dict[str, Any] = asdict(current)
    for name, raw in changes.items():
        if raw is None:
            continue
        values[name] = None if raw.strip().lower() in _CLEAR else raw
    return validate_limits(values)


def _redis_url() -> str | None:
    return load_settings().redis_url


async def _publish(team_id: str, key_id: str | None, limits: Limits) -> str | None:
    """Publish to Redis when configured; returns an error message or None."""
    url = _redis_url()
    if not url:
        return None
    redis = connect_budget_redis(url)
    try:
        await RedisStore(redis).publish(team_id, key_id, limits_vector(limits), now=time.time())
    except StoreUnavailable as exc:
        return str(exc)
    finally:
        await redis.aclose()
    return None


def _cmd_set(args: argparse.Namespace) -> int:
    changes = {name: getattr(args, name) for name in WINDOW_NAMES}
    if all(v is None for v in changes.values()):
        return fail("give at least one window, e.g. --tokens-per-day 5000000 (or 'none' to clear)", 2)

    async def work(store: TeamStore) -> int:
        team = await store.get_team(args.team)
        if args.key is None:
            limits = merge_limits(team.limits, changes)
            await store.update_team(team.id, limits=limits)
        else:
            key = await store.get_key(args.key)
            if key.team_id != team.id:
                return fail(f"key '{args.key}' does not belong to team '{team.name}'")
            limits = merge_limits(key.limits, changes)
            await store.update_key(key.id, limits=limits)
        error = await _publish(team.id, args.key, limits)
        shown = _limits_json(limits)
        if args.json:
            print(
                json.dumps({"team": team.name, "key": args.key, "limits": shown, "published": error is None})
            )
        else:
            owner = f"key {args.key} of team {team.name}" if args.key else f"team {team.name}"
            print(f"{owner}: {_describe(shown)}")
        if error is not None:
            print(
                f"tollway: limits saved in the database, but publishing them to Redis failed ({error}); "
                "replicas fall back to the database copy within 10 minutes",
                file=sys.stderr,
            )
            return 1
        return 0

    return _run(args, work)


def _cmd_show(args: argparse.Namespace) -> int:
    async def work(store: TeamStore) -> int:
        team = await store.get_team(args.team)
        keys = [k for k in await store.list_keys(team.id) if not k.limits.is_unlimited()]
        report: dict[str, Any] = {
            "team": team.name,
            "team_id": team.id,
            "limits": _limits_json(team.limits),
            "keys": {k.id: {"limits": _limits_json(k.limits)} for k in keys},
        }
        url = _redis_url()
        if url:
            usage = await _usage(team, [(k.id, k.limits) for k in keys], url)
            report["usage"] = usage.pop("team")
            for key_id, key_usage in usage.items():
                report["keys"][key_id]["usage"] = key_usage
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_show(report)
        return 0

    return _run(args, work)


async def _usage(team: TeamRecord, keys: list[tuple[str, Limits]], url: str) -> dict[str, Any]:
    redis = connect_budget_redis(url)
    limiter = BudgetLimiter(RedisStore(redis))
    out: dict[str, Any] = {}
    try:
        for key_id, key_limits in [("-", Limits()), *keys]:
            principal = Principal(
                team.id, team.name, key_id, "", team_limits=team.limits, key_limits=key_limits
            )
            status = await limiter.status(principal)
            if key_id == "-":
                out["team"] = status["team"]
            else:
                out[key_id] = status["key"]
    finally:
        await redis.aclose()
    return out


def _limits_json(limits: Limits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in WINDOW_NAMES}


def _describe(limits: dict[str, Any]) -> str:
    set_ = {k: v for k, v in limits.items() if v is not None}
    return ", ".join(f"{k}={v}" for k, v in set_.items()) if set_ else "unlimited"


def _print_show(report: dict[str, Any]) -> None:
    print(f"team {report['team']}  id={report['team_id']}")
    print(f"  limits: {_describe(report['limits'])}")
    if "usage" in report:
        _print_usage(report["usage"])
    else:
        print("  usage: counted per gateway process (no TOLLWAY_REDIS_URL); see GET /v1/me")
    for key_id, entry in report["keys"].items():
        print(f"  key {key_id}: {_describe(entry['limits'])}")
        if "usage" in entry:
            _print_usage(entry["usage"], indent="    ")


def _print_usage(usage: dict[str, Any], indent: str = "  ") -> None:
    for window, state in usage.items():
        if state["limit"] is None:
            continue
        print(
            f"{indent}{window:20} used {state['used']} + in flight {state['reserved']} "
            f"of {state['limit']} (remaining {state['remaining']}, resets {state['reset_at']})"
        )


def _run(args: argparse.Namespace, work: Any) -> int:
    try:
        return int(run_with_engine(args, lambda engine: work(TeamStore(engine))))
    except ValueError as exc:  # InvalidLimits
        return fail(f"invalid limits: {exc}", 2)
    except (StoreError, SchemaNotMigrated) as exc:
        return fail(str(exc))
    except BudgetBackendUnavailable:
        return fail("Redis (TOLLWAY_REDIS_URL) cannot be reached to read usage")
