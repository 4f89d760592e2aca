"""Run the simulator standalone: ``python -m app.simulator --host 127.0.0.1 --port 8091``.

Latency and reply length come from ``TOLLWAY_SIM_*`` environment variables or the flags below.
"""

from __future__ import annotations

import argparse
import importlib.util

import uvicorn

from app.simulator import SimulatorConfig, create_simulator_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--ttft-ms", type=float, help="wait before the first content delta")
    parser.add_argument("--tokens-per-second", type=float, help="pace of content deltas (0 = no delay)")
    parser.add_argument("--output-tokens", type=int, help="default reply length in tokens")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    config = SimulatorConfig.from_env()
    if args.ttft_ms is not None:
        config.ttft_ms = args.ttft_ms
    if args.tokens_per_second is not None:
        config.tokens_per_second = args.tokens_per_second
    if args.output_tokens is not None:
        config.default_output_tokens = args.output_tokens

    uvicorn.run(
        create_simulator_app(config),
        host=args.host,
        port=args.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
