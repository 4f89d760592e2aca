"""``tollway usage``: a usage report from the ledger, as a table or CSV."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.cli import add_database_url_option, fail, run_with_engine
from app.db.migrate import SchemaNotMigrated
from app.ledger.reports import GROUP_BY_CHOICES, BadRange, UsageReport, parse_range, usage_report
from app.teams.store import StoreError, TeamStore


def register(subparsers: Any) -> None:
    usage = subparsers.add_parser("usage", help="usage and cost report from the ledger")
    usage.add_argument("--from", dest="start", default=None, help="start, inclusive (default: 30 days ago)")
    usage.add_argument("--to", dest="end", default=None, help="end, exclusive (default: now)")
    usage.add_argument("--group-by", choices=GROUP_BY_CHOICES, default="team")
    usage.add_argument("--team", default=None, help="only this team (name or id)")
    output = usage.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="CSV on stdout")
    output.add_argument("--json", action="store_true", help="JSON on stdout")
    add_database_url_option(usage)
    usage.set_defaults(func=_cmd_usage)


def _cmd_usage(args: argparse.Namespace) -> int:
    try:
        start, end = parse_range(args.start, args.end)
    except BadRange as exc:
        return fail(str(exc), 2)

    async def work(engine: AsyncEngine) -> UsageReport:
        team_id = (await TeamStore(engine).get_team(args.team)).id if args.team else None
        return await usage_report(engine, start=start, end=end, group_by=args.group_by, team_id=team_id)

    try:
        report = run_with_engine(args, work)
    except (StoreError, SchemaNotMigrated) as exc:
        return fail(str(exc))
    if args.csv:
        print(report.to_csv(), end="")
    elif args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render_table(report))
    return 0


def render_table(report: UsageReport) -> str:
    header = ("", "requests", "input", "output", "cache write", "cache read", "cost USD", "saved USD")
    lines = [
        (
            row.label,
            str(row.requests),
            str(row.input_tokens),
            str(row.output_tokens),
            str(row.cache_write_tokens),
            str(row.cache_read_tokens),
            f"{row.cost_usd:.6f}",
            f"{row.savings_usd:.6f}",
        )
        for row in [*report.rows, report.total]
    ]
    widths = [max(len(str(col)) for col in column) for column in zip(header, *lines, strict=True)]

    def fmt(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    title = f"usage {report.start.isoformat()} → {report.end.isoformat()}, by {report.group_by}"
    rule = "-" * len(fmt(header))
    return "\n".join([title, fmt(header), rule, *(fmt(line) for line in lines[:-1]), rule, fmt(lines[-1])])
