"""Optional: the same cells against LiteLLM proxy, for a side-by-side comparison (``--litellm``).

LiteLLM is installed in a throwaway virtualenv (``/tmp/litellm-venv`` unless ``LITELLM_VENV`` names
another), never into Tollway's: ``python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip
install 'litellm[proxy]'``. The proxy runs with one worker on the gateway's core, no database, its
local model-cost map (``LITELLM_LOCAL_MODEL_COST_MAP=True``, so it fetches nothing at start-up), and a
config that points the same model names at a simulator of its own: LiteLLM does not forward the
``x-sim-*`` request headers upstream, so this simulator answers 50 tokens by default instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import stack
from bench.procs import ProcessGroup, free_port, wait_http

MASTER_KEY = "sk-tollway-bench"


def ensure_venv(log: Any) -> Path:
    venv = Path(os.environ.get("LITELLM_VENV", "/tmp/litellm-venv"))
    litellm = venv / "bin" / "litellm"
    if litellm.exists():
        return litellm
    log(f"installing LiteLLM proxy into {venv} (throwaway virtualenv)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"], check=True, timeout=1800)
    return litellm


def write_config(path: Path, sim_port: int, models: dict[str, str]) -> None:
    lines = ["model_list:"]
    for name in sorted(set(models.values())):
        kind = "anthropic" if name.startswith("claude") else "openai"
        base = f"http://127.0.0.1:{sim_port}" + ("/v1" if kind == "openai" else "")
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: {kind}/{name}",
            f"      api_base: {base}",
            "      api_key: tollway-simulator",
        ]
    lines += [
        "litellm_settings:",
        "  drop_params: true",
        "  telemetry: false",
        "general_settings:",
        f"  master_key: {MASTER_KEY}",
    ]
    path.write_text("\n".join(lines) + "\n")


def run(bench: Any, models: dict[str, dict[str, str]], work_dir: Path) -> dict[str, Any]:
    from bench.gateway_bench import Bench, Scenario, _describe, run_pair

    try:
        litellm = ensure_venv(bench.log)
    except (subprocess.SubprocessError, OSError) as exc:
        return {"error": f"LiteLLM could not be installed: {exc}"}
    group: ProcessGroup = bench.group
    sim_env = stack.base_env()
    sim_env["TOLLWAY_SIM_OUTPUT_TOKENS"] = "50"
    sim_port = free_port()
    simulator = group.start(
        "simulator-litellm",
        [sys.executable, "-m", "app.simulator", "--host", "127.0.0.1", "--port", str(sim_port)],
        env=sim_env,
        cores=bench.pins["client"],
    )
    wait_http(sim_port, "/_sim/stats", simulator)
    direct_models = models["direct"] or {"anthropic": "claude-opus-5-5", "openai": "claude-opus-5-5"}
    config = work_dir / "litellm.yaml"
    write_config(config, sim_port, direct_models)
    port = free_port()
    env = stack.base_env()
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"})
    child = group.start(
        "litellm",
        [
            str(litellm),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env=env,
        cores=bench.pins["gateway"],
    )
    try:
        wait_http(port, "/health/liveliness", child, timeout=180)
    except RuntimeError as exc:
        group.stop(child)
        group.stop(simulator)
        return {"error": f"LiteLLM proxy did not start: {exc}"}
    proxy = stack.Gateway("litellm", 1, port, MASTER_KEY, child, "", "")  # type: ignore[arg-type]
    lite = Bench(bench.plan, group, bench.loadgen, simulator, sim_port, bench.pins, bench.log)
    both = {"gateway": dict(direct_models), "direct": dict(direct_models)}
    cells: list[dict[str, Any]] = []
    try:
        for fmt in bench.plan.formats:
            for stream in (False, True):
                sc = Scenario(fmt, stream)
                lite.loadgen.run(_warm_spec(port, fmt, direct_models[fmt], stream))
                lite.measure_idle(proxy, 1.0)
                for c in [c for c in bench.plan.concurrencies if c <= 32]:
                    cell = run_pair(
                        lite,
                        proxy,
                        both,
                        sc,
                        concurrency=c,
                        count=min(bench.plan.counts[c], 600),
                        rounds=1,
                        max_seconds=bench.plan.max_seconds * 2,
                    )
                    cell["kind"] = "litellm"
                    bench.log(_describe(cell))
                    cells.append(cell)
    finally:
        peak = child.peak_rss_bytes()
        group.stop(child)
        group.stop(simulator)
    version = subprocess.run(
        [str(litellm.with_name("pip")), "show", "litellm"], capture_output=True, text=True, timeout=60
    ).stdout
    return {
        "version": next((ln.split(":", 1)[1].strip() for ln in version.splitlines() if ln.startswith("Version")), None),
        "note": "LiteLLM proxy, one worker pinned like Tollway's, no database, no budgets: its leanest setup",
        "peak_rss_mb": round(peak / 2**20, 1),
        "cells": cells,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _warm_spec(port: int, fmt: Any, model: str, stream: bool) -> Any:
    from bench import workload
    from bench.loadgen import CellSpec

    return CellSpec(
        host="127.0.0.1",
        port=port,
        path=workload.path(fmt),
        headers=workload.headers(fmt, MASTER_KEY),
        body=workload.encoded(fmt, model, stream),
        stream=stream,
        concurrency=4,
        count=100,
        max_seconds=60,
    )
