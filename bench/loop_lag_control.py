"""A control for the gateway's loop-lag probe: the same probe in an idle Python process.

``python -m bench.loop_lag_control`` samples its own (empty) event loop every 10 ms, like a gateway
started with ``TOLLWAY_LOOP_LAG_PROBE_S=0.01``, until SIGTERM, then prints the largest lag in ms. Run
beside a gateway, it tells how much of the gateway's lag is the machine (CPU contention, scheduling)
rather than the gateway: an idle loop blocks on nothing.
"""

from __future__ import annotations

import asyncio
import signal

from app.observability.loop_lag import LoopLagProbe


async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    probe = LoopLagProbe(0.01, lambda _: None)
    probe.start()
    print("ready", flush=True)
    await stop.wait()
    await probe.aclose()
    print(f"{probe.max_lag_s * 1000:.1f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
