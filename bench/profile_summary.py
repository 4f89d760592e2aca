"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): where the gateway's CPU goes.

Each line of the file is ``frame;frame;…;leaf count``; a frame is ``function (path:line)``. The
summary gives, as a share of all samples: self time by area (the library or Tollway module the leaf
frame is in), the top functions by self time, the top Tollway functions by inclusive time, and the
split between threads (the event loop vs the log writer).

    python -m bench.profile_summary bench/results/profile-everything-on-anthropic-json.txt
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from typing import Any

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<path>[^():]+(?::\d+)?)\)$")

AREAS: tuple[tuple[str, str], ...] = (
    ("uvicorn/", "uvicorn (HTTP server)"),
    ("httptools/", "uvicorn (HTTP server)"),
    ("starlette/", "starlette/fastapi"),
    ("fastapi/", "starlette/fastapi"),
    ("anyio/", "anyio"),
    ("aiohttp/", "aiohttp (upstream client)"),
    ("multidict/", "aiohttp (upstream client)"),
    ("yarl/", "aiohttp (upstream client)"),
    ("concurrent/", "thread pool (concurrent.futures)"),
    ("urllib/", "urllib (environment proxy lookup)"),
    ("httpx/", "httpx/httpcore (upstream client)"),
    ("httpcore/", "httpx/httpcore (upstream client)"),
    ("h11/", "h11 (upstream HTTP parsing)"),
    ("redis/", "redis client"),
    ("sqlalchemy/", "sqlalchemy"),
    ("asyncpg/", "asyncpg"),
    ("aiosqlite/", "aiosqlite"),
    ("prometheus_client/", "prometheus_client"),
    ("pydantic", "pydantic"),
    ("uvloop/", "event loop (uvloop/asyncio)"),
    ("asyncio/", "event loop (uvloop/asyncio)"),
    ("logging/", "logging (stdlib)"),
    ("queue.py", "logging (stdlib)"),
    ("threading.py", "threads (stdlib)"),
    ("json/", "json (stdlib)"),
    ("contextlib.py", "other stdlib"),
)


def short_path(path: str) -> str:
    """A path as py-spy prints it is already relative to sys.path; absolute ones are shortened."""
    for marker in ("site-packages/", "/work/main/"):
        at = path.find(marker)
        if at >= 0:
            return path[at + len(marker) :]
    at = path.find("/python3.")
    if at >= 0:
        rest = path[at + 1 :]
        return rest.split("/", 1)[1] if "/" in rest else rest
    return path


def area_of(path: str) -> str:
    short = short_path(path)
    for prefix, area in AREAS:
        if short.startswith(prefix):
            return area
    if short.startswith("app/"):
        parts = short.split("/")
        module = "/".join(parts[1:3]) if len(parts) > 2 else parts[-1]
        return f"tollway {module.removesuffix('.py').split('/')[0]}"
    if "/" not in short and short.endswith(".py"):
        return "other stdlib"
    return f"other ({short.split('/')[0]})"


def _parse(line: str) -> tuple[list[tuple[str, str]], str, int] | None:
    line = line.strip()
    if not line:
        return None
    stack_text, _, count_text = line.rpartition(" ")
    if not count_text.isdigit():
        return None
    frames: list[tuple[str, str]] = []
    thread = "main"
    for raw in stack_text.split(";"):
        if raw.startswith("thread ") or raw.startswith("process "):
            if raw.startswith("thread "):
                thread = raw.rsplit(": ", 1)[-1]
            continue
        match = _FRAME.match(raw)
        if match:
            path = match.group("path").rsplit(":", 1)[0]
            frames.append((match.group("func"), path))
        else:
            frames.append((raw, ""))
    return frames, thread, int(count_text)


def summarise(text: str, top: int = 15) -> dict[str, Any]:
    total = 0
    by_area: Counter[str] = Counter()
    self_funcs: Counter[str] = Counter()
    inclusive_app: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in text.splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, thread, count = parsed
        if not frames:
            continue
        total += count
        func, path = frames[-1]
        by_area[area_of(path)] += count
        self_funcs[f"{func} ({short_path(path)})"] += count
        seen = set()
        for f, p in frames:
            short = short_path(p)
            if short.startswith("app/") and short not in ("app/cli.py", "app/server.py"):
                name = f"{f} ({short})"
                if name not in seen:
                    seen.add(name)
                    inclusive_app[name] += count
        threads["event loop (MainThread)" if thread in ("main", "MainThread") else f"thread {thread}"] += count

    def share(counter: Counter[str], n: int | None = None) -> dict[str, float]:
        return {k: round(v * 100 / total, 1) for k, v in counter.most_common(n)} if total else {}

    return {
        "samples": total,
        "by_area": share(by_area),
        "top_self": share(self_funcs, top),
        "top_tollway_inclusive": share(inclusive_app, top),
        "threads": share(threads),
    }


def main() -> int:
    import json

    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as fh:
            print(json.dumps({"file": path, **summarise(fh.read())}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
