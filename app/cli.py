"""The ``tollway`` command: serve, run the simulator, migrate the database, manage teams and keys.

Each command group lives next to what it manages (``app/teams/cli.py``, ``app/ledger/cli.py``,
``app/budgets/cli.py``); this module only assembles them.
"""

from __future__ import annotations

import argparse
import sys

from app.config import ConfigError


def _cmd_serve(args: argparse.Namespace) -> int:
    from app.server import run_server

    return run_server(host=args.host, port=args.port, workers=args.workers)


def _cmd_simulator(args: argparse.Namespace) -> int:
    from app.simulator.__main__ import main as sim_main

    return sim_main(["--host", args.host, "--port", str(args.port)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollway", description="Tollway LLM gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", default=None, help="bind address (default TOLLWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default TOLLWAY_PORT or 8080)")
    serve.add_argument("--workers", type=int, default=None, help="worker processes (default 1)")
    serve.set_defaults(func=_cmd_serve)

    sim = sub.add_parser("simulator", help="run the provider simulator on its own")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8091)
    sim.set_defaults(func=_cmd_simulator)

    from app.budgets.cli import register as register_budgets
    from app.db.cli import register as register_db
    from app.ledger.cli import register as register_ledger
    from app.routing.cli import register as register_routing
    from app.teams.cli import register as register_teams

    register_db(sub)
    register_teams(sub)
    register_budgets(sub)
    register_ledger(sub)
    register_routing(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"tollway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
