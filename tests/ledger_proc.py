"""A recorder as its own OS process, for the ledger's kill tests (no tests in this module).

    python -m tests.ledger_proc --database-url URL --redis-url URL --spool-dir DIR --stream-key KEY \
        --prefix P --count N --rate R

Builds the recorder exactly as the gateway does (``build_spool``: Redis stream, local file behind
it; settings' batch size, flush interval, shutdown grace), records ``count`` events with request ids
``P-0``, ``P-1`` … at ``rate`` per second, and prints ``recorded <i>`` after each ``record`` returns
(so the test knows what a SIGKILL interrupted). Then it waits: SIGTERM runs the same bounded
``aclose`` as the gateway's shutdown and exits 0, printing ``closed``.

With ``--drain`` it records nothing: it starts a recorder, which replays whatever the spool holds
(the local file a killed process left, the Redis stream), waits until the spool is empty, closes,
and prints ``drained``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from decimal import Decimal

from app.budgets.redis_store import connect_budget_redis
from app.config import load_settings
from app.db.engine import create_engine
from app.ledger.events import UsageEvent
from app.ledger.recorder import Recorder
from app.ledger.tiered_spool import build_spool


def make_event(request_id: str) -> UsageEvent:
    return UsageEvent(
        request_id=request_id,
        team_id="team-kill",
        key_id="key-kill",
        client_format="anthropic",
        requested_model="auto",
        served_model="claude-haiku-5-5",
        provider="anthropic",
        input_tokens=100,
        output_tokens=20,
        cost_usd=Decimal("0.0001"),
        uncached_cost_usd=Decimal("0.0001"),
    )


async def main(args: argparse.Namespace) -> int:
    settings = load_settings()
    engine = create_engine(args.database_url)
    redis = connect_budget_redis(args.redis_url)
    recorder = Recorder(
        engine,
        batch_size=settings.ledger_batch_size,
        flush_interval_s=settings.ledger_flush_interval_s,
        queue_max=settings.ledger_queue_max,
        spool=build_spool(redis, args.spool_dir, stream_key=args.stream_key),
        shutdown_grace_s=settings.ledger_shutdown_grace_s,
        write_timeout_s=args.write_timeout_s,
        replay_backoff_max_s=1.0,
        dead_letter_dir=args.spool_dir,
    )
    recorder.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("started", flush=True)
    if args.drain:
        while await recorder.spool.size() or recorder.queue_depth:  # noqa: ASYNC110 (polls the spool)
            await asyncio.sleep(0.1)
        print(f"drained {recorder.stats.replayed}", flush=True)
    else:
        interval = 1.0 / args.rate
        for i in range(args.count):
            if stop.is_set():
                break
            recorder.record(make_event(f"{args.prefix}-{i}"))
            # Unbuffered stdout: the line is in the pipe once print returns, so a SIGKILL right
            # after still leaves it for the test to read.
            sys.stdout.write(f"recorded {i}\n")
            await asyncio.sleep(interval)
        print("done", flush=True)
        await stop.wait()
    await recorder.aclose()
    await redis.aclose()
    await engine.dispose()
    print("closed", flush=True)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--spool-dir", required=True)
    parser.add_argument("--stream-key", required=True)
    parser.add_argument("--prefix", default="kill")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--write-timeout-s", type=float, default=5.0)
    parser.add_argument("--drain", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
