"""``tollway teams create|list|show|delete`` and ``tollway keys create|list|revoke|rotate``.

The CLI talks to the database directly (``TOLLWAY_DATABASE_URL``), not to a running gateway, so it
works before the first server starts. Input goes through the admin API's own validation. A running
gateway picks changes up within its key-cache TTL (2 s by default).

``keys create`` and ``keys rotate`` print the new key alone on stdout (everything else goes to
stderr), so ``KEY=$(tollway keys create --team search)`` captures exactly the key.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from app.auth.records import KeyRecord, TeamRecord
from app.db.cli import add_database_url_option, fail, run_with_engine
from app.db.migrate import SchemaNotMigrated
from app.teams.schemas import KeyCreate, LimitsIn, PolicyIn, TeamCreate
from app.teams.store import StoreError, TeamStore

_LIMIT_OPTIONS = (
    ("tokens_per_day", int),
    ("tokens_per_month", int),
    ("requests_per_minute", int),
    ("tokens_per_minute", int),
    ("usd_per_day", str),
    ("usd_per_month", str),
)


def register(subparsers: Any) -> None:
    teams = subparsers.add_parser("teams", help="manage teams")
    tsub = teams.add_subparsers(dest="teams_command", required=True)

    create = tsub.add_parser("create", help="create a team")
    create.add_argument("name")
    _add_limit_options(create)
    create.add_argument("--allowed-models", default=None, help="comma-separated models/routes (default: all)")
    _common(create, _cmd_team_create)

    lst = tsub.add_parser("list", help="list teams")
    _common(lst, _cmd_team_list)

    show = tsub.add_parser("show", help="show a team and its keys")
    show.add_argument("team", help="team name or id")
    _common(show, _cmd_team_show)

    delete = tsub.add_parser("delete", help="delete a team and its keys (its usage history stays)")
    delete.add_argument("team", help="team name or id")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _common(delete, _cmd_team_delete)

    keys = subparsers.add_parser("keys", help="manage API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)

    kcreate = ksub.add_parser("create", help="create a key for a team (prints it once)")
    kcreate.add_argument("--team", required=True, help="team name or id")
    kcreate.add_argument("--name", default=None, help="a label for the key")
    kcreate.add_argument("--expires-in-days", type=float, default=None)
    _add_limit_options(kcreate)
    _common(kcreate, _cmd_key_create)

    klist = ksub.add_parser("list", help="list a team's keys (prefixes only)")
    klist.add_argument("--team", required=True, help="team name or id")
    _common(klist, _cmd_key_list)

    revoke = ksub.add_parser("revoke", help="revoke a key (stops working within the cache TTL)")
    revoke.add_argument("key_id")
    _common(revoke, _cmd_key_revoke)

    rotate = ksub.add_parser("rotate", help="replace a key with a new secret; the old one is revoked")
    rotate.add_argument("key_id")
    _common(rotate, _cmd_key_rotate)


def _common(parser: argparse.ArgumentParser, func: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_database_url_option(parser)
    parser.set_defaults(func=func)


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    for name, kind in _LIMIT_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)


def _limits_from(args: argparse.Namespace) -> LimitsIn:
    return LimitsIn.model_validate({name: getattr(args, name) for name, _ in _LIMIT_OPTIONS})


def _run(args: argparse.Namespace, work: Any) -> int:
    """Run ``work(store)`` and turn the errors a person can fix into a message and exit status."""
    try:
        return int(run_with_engine(args, lambda engine: work(TeamStore(engine))))
    except ValidationError as exc:
        return fail(_validation_message(exc), 2)
    except (StoreError, SchemaNotMigrated) as exc:
        return fail(str(exc))


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "invalid input: " + "; ".join(parts)


def _print_team(team: TeamRecord, as_json: bool) -> None:
    if as_json:
        print(json.dumps(team.to_json(), indent=2))
        return
    limits = {k: v for k, v in team.to_json()["limits"].items() if v is not None}
    print(f"{team.name}  id={team.id}  limits={limits or 'unlimited'}")


def _print_key(key: KeyRecord) -> None:
    now = datetime.now(UTC)
    expires = f"  expires={key.expires_at.isoformat()}" if key.expires_at else ""
    print(f"  {key.id}  {key.prefix}…  {key.status(now):8}  name={key.name or '-'}{expires}")


# ---- teams --------------------------------------------------------------------------------------------


def _cmd_team_create(args: argparse.Namespace) -> int:
    async def work(store: TeamStore) -> int:
        policy: dict[str, Any] = {}
        if args.allowed_models:
            policy["allowed_models"] = [m.strip() for m in args.allowed_models.split(",") if m.strip()]
        body = TeamCreate(name=args.name, limits=_limits_from(args), policy=PolicyIn.model_validate(policy))
        team = await store.create_team(body.name, limits=body.limits.to_limits(), policy=body.policy.to_policy())
        _print_team(team, args.json)
        return 0

    return _run(args, work)


def _cmd_team_list(args: argparse.Namespace) -> int:
    async def work(store: TeamStore) -> int:
        teams = await store.list_teams()
        if args.json:
            print(json.dumps([t.to_json() for t in teams], indent=2))
        elif not teams:
            print("no teams", file=sys.stderr)
        for team in [] if args.json else teams:
            _print_team(team, False)
        return 0

    return _run(args, work)


def _cmd_team_show(args: argparse.Namespace) -> int:
    async def work(store: TeamStore) -> int:
        team = await store.get_team(args.team)
        keys = await store.list_keys(team.id)
        if args.json:
            data = team.to_json()
            data["keys"] = [k.to_json(datetime.now(UTC)) for k in keys]
            print(json.dumps(data, indent=2))
            return 0
        _print_team(team, False)
        print(f"  policy={team.to_json()['policy']}")
        print(f"  {len(keys)} key(s):" if keys else "  no keys")
        for key in keys:
            _print_key(key)
        return 0

    return _run(args, work)


def _cmd_team_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            return fail("refusing to delete without --yes (stdin is not a terminal)", 2)
        answer = input(f"delete team '{args.team}' and all its keys? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return fail("not deleted")

    async def work(store: TeamStore) -> int:
        team = await store.delete_team(args.team)
        print(f"deleted team {team.name} ({team.id})")
        return 0

    return _run(args, work)


# ---- keys ---------------------------------------------------------------------------------------------


def _cmd_key_create(args: argparse.Namespace) -> int:
    async def work(store: TeamStore) -> int:
        expires = None
        if args.expires_in_days is not None:
            expires = (datetime.now(UTC) + timedelta(days=args.expires_in_days)).isoformat()
        body = KeyCreate.model_validate({"name": args.name, "limits": _limits_from(args), "expires_at": expires})
        created = await store.create_key(
            args.team, name=body.name, limits=body.limits.to_limits(), expires_at=body.expires_at
        )
        _print_secret(created.secret, created.record, args.json)
        return 0

    return _run(args, work)


def _print_secret(secret: str, record: KeyRecord, as_json: bool) -> None:
    if as_json:
        data = record.to_json(datetime.now(UTC))
        data["key"] = secret
        print(json.dumps(data, indent=2))
    else:
        print(secret)
    print(
        f"created key {record.id} ({record.prefix}…). This is the only time the key is shown: store it now.",
        file=sys.stderr,
    )


def _cmd_key_list(args: argparse.Namespace) -> int:
    async def work(store: TeamStore) -> int:
        keys = await store.list_keys(args.team)
        if args.json:
            print(json.dumps([k.to_json(datetime.now(UTC)) for k in keys], indent=2))
        elif not keys:
            print("no keys", file=sys.stderr)
        for key in [] if args.json else keys:
            _print_key(key)
        return 0

    return _run(args, work)


def _cmd_key_revoke(args: argparse.Namespace) -> int:
    async def work(store: TeamStore) -> int:
        key = await store.revoke_key(args.key_id)
        if args.json:
            print(json.dumps(key.to_json(datetime.now(UTC)), indent=2))
        else:
            print(f"revoked key {key.id} ({key.prefix}…)")
        return 0

    return _run(args, work)


def _cmd_key_rotate(args: argparse.Namespace) -> int:
    async def work(store: TeamStore) -> int:
        created = await store.rotate_key(args.key_id)
        _print_secret(created.secret, created.record, args.json)
        print(f"key {args.key_id} is revoked", file=sys.stderr)
        return 0

    return _run(args, work)
