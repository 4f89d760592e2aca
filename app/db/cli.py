"""``tollway db upgrade | check | partitions | prune-usage``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import load_settings
from app.db.engine import create_engine
from app.db.migrate import SchemaNotMigrated, check_schema, prepare_database, upgrade
from app.db.partitions import ensure_usage_partitions, list_usage_partitions, prune_usage

T = TypeVar("T")


def add_database_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help="database URL (default: TOLLWAY_DATABASE_URL or sqlite+aiosqlite:///./tollway.db)",
    )


def database_url(args: argparse.Namespace) -> str:
    return str(getattr(args, "database_url", None) or load_settings().database_url)


def run_with_engine(args: argparse.Namespace, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Open the database (migrating an embedded SQLite one), run ``work``, close it."""

    async def main() -> T:
        engine = await prepare_database(database_url(args), auto_migrate=True)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def fail(message: str, code: int = 1) -> int:
    print(f"tollway: {message}", file=sys.stderr)
    return code


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="database schema and ledger maintenance")
    sub = db.add_subparsers(dest="db_command", required=True)

    up = sub.add_parser("upgrade", help="apply migrations up to the latest revision")
    add_database_url_option(up)
    up.set_defaults(func=_cmd_upgrade)

    check = sub.add_parser("check", help="exit 0 if the schema is current, 1 if not")
    add_database_url_option(check)
    check.set_defaults(func=_cmd_check)

    parts = sub.add_parser("partitions", help="create the coming months' usage partitions (PostgreSQL)")
    parts.add_argument("--months-ahead", type=int, default=3)
    add_database_url_option(parts)
    parts.set_defaults(func=_cmd_partitions)

    prune = sub.add_parser("prune-usage", help="delete usage rows older than a date (retention)")
    prune.add_argument("--before", required=True, help="UTC date, YYYY-MM-DD; rows before it go")
    add_database_url_option(prune)
    prune.set_defaults(func=_cmd_prune)


def _cmd_upgrade(args: argparse.Namespace) -> int:
    url = database_url(args)
    upgrade(url)
    print("database is at the latest revision")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    async def main() -> None:
        engine = create_engine(database_url(args))
        try:
            await check_schema(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(main())
    except SchemaNotMigrated as exc:
        return fail(str(exc))
    print("database schema is current")
    return 0


def _cmd_partitions(args: argparse.Namespace) -> int:
    async def work(engine: AsyncEngine) -> list[str]:
        await ensure_usage_partitions(engine, args.months_ahead)
        return await list_usage_partitions(engine)

    try:
        partitions = run_with_engine(args, work)
    except SchemaNotMigrated as exc:
        return fail(str(exc))
    if not partitions:
        print("this database does not partition usage (SQLite): nothing to do")
    for name in partitions:
        print(name)
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    try:
        before = datetime.strptime(args.before, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return fail(f"--before must be a date like 2025-01-01, not {args.before!r}", 2)
    try:
        result = run_with_engine(args, lambda engine: prune_usage(engine, before))
    except SchemaNotMigrated as exc:
        return fail(str(exc))
    for name in result.dropped_partitions:
        print(f"dropped partition {name}")
    print(f"deleted {result.deleted_rows} rows older than {args.before}")
    return 0
