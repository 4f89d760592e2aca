"""Turn a gateway benchmark result into Markdown tables, a PNG chart, and the generated part of the docs.

``docs/benchmarks.md`` keeps its hand-written text; only what lies between the ``GENERATED`` markers
is replaced by a full run. The chart needs matplotlib (``pip install matplotlib``); without it the
tables are still written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

BEGIN = "<!-- BEGIN GENERATED: python -m bench.run -->"
END = "<!-- END GENERATED -->"
CHART = "benchmark-chart.png"

TARGETS = {
    "cpu_json_ms": 1.0,
    "cpu_stream_ms": 2.0,
    "added_p50_ms": 1.0,
    "added_p99_ms": 5.0,
    "added_ttft_p50_ms": 1.0,
    "scaling_ratio": 1.8,
}


def _f(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int) and not signed:
        return f"{value:,}"
    return f"{value:+.{digits}f}" if signed else f"{value:,.{digits}f}"


def _cells(results: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [c for c in results.get("cells", []) if all(c.get(k) == v for k, v in match.items())]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def other_load(side: dict[str, Any]) -> float | None:
    """Cores busy with anything but the gateway, simulator and client (Redis, PostgreSQL, other jobs)."""
    if "other_util" in side:
        return float(side["other_util"])
    try:  # results from before other_util: utilisations over slightly different windows
        return max(0.0, side["machine_busy_util"] - side["gateway_cpu_util"] - side["client_core_util"])
    except (KeyError, TypeError):
        return None


def matrix_table(results: dict[str, Any], config: str) -> str:
    rows = []
    for cell in _cells(results, config=config, kind="closed-loop", workers=1):
        d, g, a = cell["direct"], cell["gateway"], cell["added"]
        rows.append(
            [
                cell["format"],
                cell["mode"],
                str(cell["concurrency"]),
                _f(d["rps"], 0),
                _f(g["rps"], 0),
                f"{_f(d['latency_ms'].get('p50'))} / {_f(d['latency_ms'].get('p99'))}",
                f"{_f(g['latency_ms'].get('p50'))} / {_f(g['latency_ms'].get('p99'))}",
                " / ".join(_f(a["latency_ms"].get(p), signed=True) for p in ("p50", "p90", "p99")),
                _f(a.get("ttft_ms", {}).get("p50"), signed=True) if "ttft_ms" in a else "",
                _f(g["gateway_cpu_ms_per_req"], 3),
                _f(g["client_core_util"], 2),
                _f(other_load(g), 2),
                _f(g["gateway_peak_rss_mb"], 0),
                str(g["errors"] + d["errors"]),
            ]
        )
    return _table(
        [
            "format",
            "mode",
            "conc.",
            "direct req/s",
            "gateway req/s",
            "direct p50 / p99 ms",
            "gateway p50 / p99 ms",
            "added p50 / p90 / p99 ms",
            "added TTFT p50 ms",
            "gateway CPU ms/req",
            "client-core util",
            "other load",
            "peak RSS MB",
            "errors",
        ],
        rows,
    )


def below_saturation_table(results: dict[str, Any]) -> str:
    rows = []
    for cell in _cells(results, kind="below-saturation"):
        d, g, a = cell["direct"], cell["gateway"], cell["added"]
        rows.append(
            [
                cell["config"],
                f"{cell.get('load_share', 0.5):.0%}",
                cell["format"],
                cell["mode"],
                _f(cell["rate"], 0),
                f"{_f(d['latency_ms'].get('p50'))} / {_f(d['latency_ms'].get('p99'))}",
                f"{_f(g['latency_ms'].get('p50'))} / {_f(g['latency_ms'].get('p99'))}",
                " / ".join(_f(a["latency_ms"].get(p), signed=True) for p in ("p50", "p90", "p99")),
                " / ".join(_f(a["ttft_ms"].get(p), signed=True) for p in ("p50", "p99")) if "ttft_ms" in a else "",
                _f(g["gateway_cpu_ms_per_req"], 3),
                _f(g["gateway_cpu_util"], 2),
                _f(other_load(g), 2),
                str(g["errors"] + d["errors"]),
            ]
        )
    return _table(
        [
            "config",
            "load (share of capacity)",
            "format",
            "mode",
            "offered req/s",
            "direct p50 / p99 ms",
            "gateway p50 / p99 ms",
            "added p50 / p90 / p99 ms",
            "added TTFT p50 / p99 ms",
            "gateway CPU ms/req",
            "gateway core util",
            "other load",
            "errors",
        ],
        rows,
    )


def long_stream_table(results: dict[str, Any]) -> str:
    rows = []
    for cell in _cells(results, kind="long-stream"):
        d, g, a = cell["direct"], cell["gateway"], cell["added"]
        rows.append(
            [
                cell["config"],
                cell["format"],
                str(cell["concurrency"]),
                str(g["requests"]),
                _f(a["ttft_ms"].get("p50"), signed=True),
                f"{_f(d['gap_ms'].get('p50'))} / {_f(d['gap_ms'].get('p99'))}",
                f"{_f(g['gap_ms'].get('p50'))} / {_f(g['gap_ms'].get('p99'))}",
                " / ".join(_f(a["gap_ms"].get(p), 3, signed=True) for p in ("p50", "p90", "p99")),
                _f(a["latency_ms"].get("p50"), signed=True),
                _f(g["gateway_cpu_ms_per_req"], 2),
                _f(g.get("gateway_cpu_us_per_event"), 1),
                str(g["errors"] + d["errors"]),
            ]
        )
    return _table(
        [
            "config",
            "format",
            "conc.",
            "streams",
            "added TTFT p50 ms",
            "direct gap p50 / p99 ms",
            "gateway gap p50 / p99 ms",
            "added gap p50 / p90 / p99 ms",
            "added total p50 ms",
            "gateway CPU ms/stream",
            "CPU µs/event",
            "errors",
        ],
        rows,
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets (everything on, one worker) against what was measured."""
    out: list[dict[str, Any]] = []

    def worst(cells: list[dict[str, Any]], get: Any) -> tuple[float | None, str]:
        values = [(get(c), f"{c['format']} c={c['concurrency']}") for c in cells]
        values = [(v, w) for v, w in values if v is not None]
        return max(values, key=lambda vw: vw[0]) if values else (None, "")

    on = [c for c in _cells(results, config="everything-on", kind="closed-loop", workers=1)]
    for mode, key, label in (
        ("json", "cpu_json_ms", "CPU per non-streaming request"),
        ("stream", "cpu_stream_ms", "CPU per streamed 50-token request"),
    ):
        cells = [c for c in on if c["mode"] == mode]
        value, where = worst(
            [c for c in cells if c["concurrency"] == 32], lambda c: c["gateway"]["gateway_cpu_ms_per_req"]
        )
        every = [c["gateway"]["gateway_cpu_ms_per_req"] for c in cells if c["gateway"]["gateway_cpu_ms_per_req"]]
        span = f"; {min(every):.2f}–{max(every):.2f} ms over both formats, concurrency 1–128" if every else ""
        out.append(
            {
                "target": f"{label} ≤ {TARGETS[key]:g} ms",
                "measured": value,
                "unit": "ms",
                "where": f"worse format at concurrency 32 ({where}){span}",
                "met": value is not None and value <= TARGETS[key],
            }
        )
    below_all = _cells(results, config="everything-on", kind="below-saturation")
    for share in sorted({c.get("load_share", 0.5) for c in below_all}, reverse=True):
        below = [c for c in below_all if c.get("load_share", 0.5) == share]
        load = f"{share:.0%} of capacity"
        for pct, key in (("p50", "added_p50_ms"), ("p99", "added_p99_ms")):
            value, where = worst(
                [c for c in below if c["mode"] == "json"], lambda c, p=pct: c["added"]["latency_ms"].get(p)
            )
            out.append(
                {
                    "target": f"added latency {pct} at concurrency 32 below saturation ≤ {TARGETS[key]:g} ms",
                    "measured": value,
                    "unit": "ms",
                    "where": f"Poisson arrivals at {load}; worst format, JSON ({where})",
                    "met": value is not None and value <= TARGETS[key],
                }
            )
        value, where = worst([c for c in below if c["mode"] == "stream"], lambda c: c["added"]["ttft_ms"].get("p50"))
        out.append(
            {
                "target": "added TTFT p50 ≤ 1 ms (concurrency 32 below saturation)",
                "measured": value,
                "unit": "ms",
                "where": f"Poisson arrivals at {load}; {where}",
                "met": value is not None and value <= TARGETS["added_ttft_p50_ms"],
            }
        )
    soak = results.get("soak")
    if soak:
        growth = soak["rss_mb_steady_last"] - soak["rss_mb_steady_first"]
        out.append(
            {
                "target": "memory flat over the soak",
                "measured": soak["rss_slope_mb_per_min"],
                "unit": "MB/min",
                "where": f"{soak['seconds']:.0f} s, steady {soak['rss_mb_steady_first']} → "
                f"{soak['rss_mb_steady_last']} MB ({growth:+.1f} MB)",
                "met": abs(growth) <= max(2.0, 0.02 * soak["rss_mb_steady_first"]),
            }
        )
    slow = results.get("slow_streams")
    if slow:
        out.append(
            {
                "target": f"bounded memory under {slow['streams']} concurrent slow streams",
                "measured": slow["rss_mb_peak_sampled"],
                "unit": "MB peak",
                "where": f"{slow['completed']}/{slow['streams']} completed, {slow['kb_per_stream']} KB/stream",
                "met": slow["completed"] == slow["streams"] and slow["errors"] == 0,
            }
        )
    scaling = results.get("scaling", {}).get("rows", [])
    if scaling:
        best = max(scaling, key=lambda r: r["ratio"] or 0)
        out.append(
            {
                "target": "two workers ≥ 1.8× one worker",
                "measured": best["ratio"],
                "unit": "×",
                "where": f"best cell {best['format']} {best['mode']} c={best['concurrency']}; on dedicated cores "
                f"(projected) ×{best['projected_ratio_dedicated_cores']}",
                "met": (best["ratio"] or 0) >= TARGETS["scaling_ratio"],
            }
        )
    return out


def targets_table(results: dict[str, Any]) -> str:
    rows = [
        [t["target"], f"{_f(t['measured'], 3)} {t['unit']}", t["where"], "yes" if t["met"] else "**no**"]
        for t in targets(results)
    ]
    return _table(["target (everything on, one worker)", "measured", "where", "met"], rows)


def scaling_table(results: dict[str, Any]) -> str:
    rows = []
    cells = results.get("scaling", {}).get("cells", {})
    for i, r in enumerate(results.get("scaling", {}).get("rows", [])):
        for workers in ("1", "2"):
            side = (cells.get(workers) or cells.get(int(workers)) or [None] * (i + 1))[i]
            if side:
                r[f"other_load_{workers}w"] = other_load(side["gateway"])
        rows.append(
            [
                r["format"],
                r["mode"],
                str(r["concurrency"]),
                _f(r["rps_1w"], 0),
                _f(r["rps_2w"], 0),
                _f(r["ratio"], 2),
                _f(r["gateway_cores_used_1w"], 2),
                _f(r["gateway_cores_used_2w"], 2),
                _f(r["cpu_ms_per_req_1w"], 3),
                _f(r["cpu_ms_per_req_2w"], 3),
                _f(r["projected_ratio_dedicated_cores"], 2),
                _f(r.get("other_load_1w"), 2),
                _f(r.get("other_load_2w"), 2),
            ]
        )
    return _table(
        [
            "format",
            "mode",
            "conc.",
            "1 worker req/s",
            "2 workers req/s",
            "ratio",
            "gateway cores used (1w)",
            "(2w)",
            "CPU ms/req (1w)",
            "(2w)",
            "projected ratio, a core per worker",
            "other load (1w)",
            "(2w)",
        ],
        rows,
    )


def soak_text(results: dict[str, Any]) -> str:
    s = results.get("soak")
    if not s:
        return "No soak in this run."
    return (
        f"{s['seconds']:.0f} s, {s['mix']} ({s['concurrency']} users): {s['requests']:,} requests, "
        f"{s['rps']:,.0f} req/s, {s['errors']} errors, {s['gateway_cpu_ms_per_req']:.3f} ms CPU/request. "
        f"Gateway RSS: {s['rss_mb_start']} MB at the start, {s['rss_mb_steady_first']} MB after warm-up (first 10 %), "
        f"{s['rss_mb_steady_last']} MB at the end, max {s['rss_mb_max']} MB; least-squares slope over the steady part "
        f"**{s['rss_slope_mb_per_min']:+.3f} MB/min**."
    )


def slow_text(results: dict[str, Any]) -> str:
    s = results.get("slow_streams")
    if not s:
        return "No slow-stream test in this run."
    return (
        f"{s['streams']:,} concurrent {s['format']} streams of {s['tokens']} tokens at {s['tokens_per_second']:g} "
        f"tokens/s (ideal {s['ideal_duration_s']:.1f} s each): **{s['completed']:,} completed**, {s['errors']} errors; "
        f"latency p50 {_f(s['latency_ms'].get('p50'), 0)} ms, p99 {_f(s['latency_ms'].get('p99'), 0)} ms; "
        f"gateway RSS {s['rss_mb_before']} MB before, **{s['rss_mb_peak_sampled']} MB peak** "
        f"(≈ {s['kb_per_stream']} KB per open stream), {s['rss_mb_after']} MB after (VmHWM {s['vm_hwm_mb']} MB)."
    )


def profile_text(results: dict[str, Any]) -> str:
    parts = []
    for p in results.get("profiles", []):
        areas = ", ".join(f"{k} {v}%" for k, v in list(p["by_area"].items())[:10])
        top = "; ".join(f"`{k}` {v}%" for k, v in list(p["top_self"].items())[:8])
        incl = "; ".join(f"`{k}` {v}%" for k, v in list(p["top_tollway_inclusive"].items())[:10])
        parts.append(
            f"**{p['format']} {p['mode']}** ({p['samples']:,} samples, `{p['file']}`)\n\n"
            f"- self time by area: {areas}\n- top functions (self): {top}\n- Tollway functions (inclusive): {incl}\n"
            f"- threads: " + ", ".join(f"{k} {v}%" for k, v in p["threads"].items())
        )
    return "\n\n".join(parts) if parts else "No profile in this run."


def machine_text(results: dict[str, Any]) -> str:
    m = results["machine"]
    v = m["versions"]
    pin = results["pinning"]
    return (
        f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['ram_gb']} GB RAM, Linux {m['kernel']}; "
        f"Python {v['python']}, uvicorn {v.get('uvicorn')}, uvloop {v.get('uvloop', '–')}, httptools "
        f"{v.get('httptools', '–')}, aiohttp {v.get('aiohttp', '–')}, httpx {v.get('httpx')}. Load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_average_at_end', []))}. Pinning: gateway on core(s) "
        f"{pin['gateway']}, simulator + load generator on {pin['simulator_and_loadgen']} ({pin['note']})."
    )


def summary_markdown(results: dict[str, Any]) -> str:
    code = results.get("code", {})
    start = code.get("at_start", {})
    code_line = (
        "Gateway code: not recorded (a run from before the benchmark recorded it)"
        if not code
        else (
            f"Gateway code: commit `{start.get('commit')}`, app/ sha256 `{start.get('app_sha256')}`"
            + (
                f", uncommitted: {', '.join(start['uncommitted_app_files'])}"
                if start.get("uncommitted_app_files")
                else ""
            )
            + (
                " — **app/ changed during the run: results mix versions**"
                if code.get("changed_during_run")
                else " (unchanged throughout the run)"
                if code
                else ""
            )
        )
    )
    parts = [
        f"Run {results['started']} → {results.get('finished')}: `{results['command']}`",
        code_line,
        machine_text(results),
        "### Targets\n\n" + targets_table(results),
    ]
    for config in ("everything-on", "bare"):
        if _cells(results, config=config, kind="closed-loop"):
            models = results.get("models", {}).get(config, {})
            parts.append(
                f"### {config}, one worker, closed loop\n\nrequested models {models.get('gateway')}, "
                f"served/direct {models.get('direct')}\n\n" + matrix_table(results, config)
            )
    if _cells(results, kind="below-saturation"):
        parts.append("### Concurrency 32 below saturation (Poisson arrivals)\n\n" + below_saturation_table(results))
    if _cells(results, kind="long-stream"):
        parts.append("### Long streams (per-event overhead)\n\n" + long_stream_table(results))
    if results.get("scaling"):
        parts.append("### One worker vs two\n\n" + scaling_table(results))
    parts.append("### Soak\n\n" + soak_text(results))
    parts.append("### Slow streams\n\n" + slow_text(results))
    if results.get("profiles"):
        parts.append("### Profile\n\n" + profile_text(results))
    if results.get("litellm"):
        parts.append("### LiteLLM\n\n" + litellm_text(results))
    if results.get("pillars"):
        parts.append(
            "### Pillar benchmarks\n\n"
            + "\n".join(
                f"- {name}: `{p['command']}` → exit {p['exit_code']} in {p['seconds']} s"
                for name, p in results["pillars"].items()
            )
        )
    return "\n\n".join(parts) + "\n"


def litellm_text(results: dict[str, Any]) -> str:
    lite = results.get("litellm") or {}
    if lite.get("error"):
        return f"LiteLLM was not measured: {lite['error']}"
    rows = []
    for cell in lite.get("cells", []):
        g = cell["gateway"]
        rows.append(
            [
                cell["format"],
                cell["mode"],
                str(cell["concurrency"]),
                _f(g["rps"], 0),
                _f(g["latency_ms"].get("p50")),
                _f(g["latency_ms"].get("p99")),
                _f(cell.get("added", {}).get("latency_ms", {}).get("p50"), signed=True),
                _f(g["gateway_cpu_ms_per_req"], 2),
                _f(g["gateway_peak_rss_mb"], 0),
                str(g["errors"]),
            ]
        )
    note = lite.get("note", "")
    return (
        note
        + "\n\n"
        + _table(
            [
                "format",
                "mode",
                "conc.",
                "req/s",
                "p50 ms",
                "p99 ms",
                "added p50 ms",
                "CPU ms/req",
                "peak RSS MB",
                "errors",
            ],
            rows,
        )
    )


def failures(results: dict[str, Any]) -> list[str]:
    """Requests that failed (not timings): the smoke run's only reason to fail."""
    out = []
    for cell in results.get("cells", []) + [
        c for cells in results.get("scaling", {}).get("cells", {}).values() for c in cells
    ]:
        for side in ("direct", "gateway"):
            s = cell.get(side)
            if s and s["errors"]:
                out.append(
                    f"{cell['config']} {cell['workers']}w {cell['format']} {cell['mode']} "
                    f"c={cell['concurrency']} {side}: {s['errors']} errors {s['error_samples'][:1]}"
                )
    for name in ("soak", "slow_streams"):
        s = results.get(name)
        if s and s["errors"]:
            out.append(f"{name}: {s['errors']} errors {s['error_samples'][:1]}")
        if name == "slow_streams" and s and s["completed"] != s["streams"]:
            out.append(f"slow streams: only {s['completed']} of {s['streams']} completed")
    return out


# ---- chart and docs -------------------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    colors = {"direct": "#888888", "everything-on": "#d62728", "bare": "#1f77b4"}

    ax = axes[0][0]
    for config in ("everything-on", "bare"):
        for fmt, style in (("anthropic", "-"), ("openai", "--")):
            cells = [c for c in _cells(results, config=config, kind="closed-loop", workers=1, format=fmt, mode="json")]
            if not cells:
                continue
            xs = [c["concurrency"] for c in cells]
            ax.plot(
                xs,
                [c["gateway"]["rps"] for c in cells],
                style,
                marker="o",
                color=colors[config],
                label=f"{config} {fmt}",
            )
            if config == "everything-on":
                ax.plot(
                    xs,
                    [c["direct"]["rps"] for c in cells],
                    style,
                    marker="s",
                    color=colors["direct"],
                    label=f"direct {fmt}",
                )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title("Non-streaming throughput (1 worker, log scale)")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("requests/s")
    ax.legend(fontsize=7)

    ax = axes[0][1]
    below = _cells(results, kind="below-saturation")
    labels = [
        f"{'on' if c['config'] == 'everything-on' else 'bare'} {c.get('load_share', 0.5):.0%}\n"
        f"{'ant' if c['format'] == 'anthropic' else 'oai'} {c['mode']}"
        for c in below
    ]
    xs = list(range(len(below)))
    for offset, pct, color in ((-0.27, "p50", "#2ca02c"), (0, "p90", "#ff7f0e"), (0.27, "p99", "#9467bd")):
        ax.bar(
            [x + offset for x in xs],
            [c["added"]["latency_ms"].get(pct, 0) for c in below],
            width=0.27,
            color=color,
            label=f"added {pct}",
        )
    ax.axhline(1.0, color="#2ca02c", linestyle=":", linewidth=1)
    ax.axhline(5.0, color="#9467bd", linestyle=":", linewidth=1)
    ax.set_xticks(xs, labels, fontsize=6, rotation=90)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title("Added latency, concurrency 32 below saturation (targets dotted; log scale)")
    ax.set_ylabel("ms")
    ax.legend(fontsize=7)

    ax = axes[1][0]
    bars = [c for c in _cells(results, kind="closed-loop", workers=1) if c["concurrency"] == 32]
    ax.bar(
        range(len(bars)),
        [c["gateway"]["gateway_cpu_ms_per_req"] or 0 for c in bars],
        color=[colors[c["config"]] for c in bars],
    )
    ax.set_xticks(range(len(bars)), [f"{c['config']}\n{c['format']} {c['mode']}" for c in bars], fontsize=6)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="target JSON 1 ms")
    ax.axhline(2.0, color="black", linestyle="--", linewidth=1, label="target stream 2 ms")
    ax.set_title("Gateway CPU per request (concurrency 32, 1 worker)")
    ax.set_ylabel("CPU ms / request")
    ax.legend(fontsize=7)

    ax = axes[1][1]
    soak = results.get("soak")
    if soak:
        ax.plot([s[0] / 60 for s in soak["rss_mb_samples"]], [s[1] for s in soak["rss_mb_samples"]], color="#d62728")
        ax.set_title(
            f"Gateway RSS during the soak ({soak['rps']:.0f} req/s, slope {soak['rss_slope_mb_per_min']:+.2f} MB/min)"
        )
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS MB")
        low = min(s[1] for s in soak["rss_mb_samples"])
        ax.set_ylim(bottom=max(0, low - 20), top=max(s[1] for s in soak["rss_mb_samples"]) + 20)
    fig.suptitle(f"Tollway gateway benchmark — {results['machine']['cpu_model']}, {results['started']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_docs(results: dict[str, Any], docs_dir: Path) -> list[Path]:
    written = []
    chart_path = docs_dir / CHART
    if chart(results, chart_path):
        written.append(chart_path)
    generated = f"{BEGIN}\n\n![benchmark chart]({CHART})\n\n{summary_markdown(results)}\n{END}"
    doc = docs_dir / "benchmarks.md"
    if doc.exists() and BEGIN in doc.read_text():
        text = doc.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        doc.write_text(head + generated + tail)
    else:
        doc.write_text(f"# Benchmarks\n\n{generated}\n")
    written.append(doc)
    return written


def main() -> int:
    """Rewrite the generated part of docs/benchmarks.md and the chart from a results file."""
    import json
    import sys

    from bench import profile_summary

    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results") / "gateway-latest.json")
    results = json.loads(path.read_text())
    for profile in results.get("profiles", []):  # re-summarise with the current area map
        raw = path.with_name(profile["file"])
        if raw.exists():
            profile.update(profile_summary.summarise(raw.read_text()))
    for written in write_docs(results, Path(__file__).resolve().parent.parent / "docs"):
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
