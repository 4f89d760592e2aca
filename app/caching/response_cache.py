"""The opt-in response cache: complete answers to deterministic requests, replayed exactly.

Three parts, used by the pipeline in this order:

* ``decide`` — whether a request may be looked up and/or stored, from the team policy, the request
  (deterministic: temperature 0 or top_k 1) and the ``x-tollway-cache`` header.
* ``cache_key`` — a canonical hash of everything that affects the answer: the team, the served model,
  system, messages, tools and every output-affecting parameter. Not the ``cache_control`` markers (they
  never change the output), not ``stream`` nor the client's format: a streamed and a non-streamed
  identical request share one entry, rendered in whichever format asks.
* A store — Redis when configured (``RedisResponseCache``), else a bounded in-process LRU
  (``MemoryResponseCache``). Either way a store failure is a miss, never a failed request.

Entries are the canonical ``ChatResponse`` encoded with orjson (``encode_response``/``decode_response``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from app.auth.principal import TeamPolicy
from app.config import Settings
from app.domain import Block, ChatRequest, ChatResponse, Usage

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger("tollway.caching")

# Request header: "bypass" (neither read nor write), "refresh" (write only), "use" (opt in).
RESPONSE_CACHE_HEADER = "x-tollway-cache"
REDIS_KEY_PREFIX = "tw:rc:"

Clock = Callable[[], float]


# ---- Decision --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheDecision:
    lookup: bool
    store: bool
    reason: str


def _asks_for_several_answers(req: ChatRequest) -> bool:
    """OpenAI's ``n`` / ``best_of`` > 1: one cached answer cannot stand for several samples."""
    for name in ("n", "best_of"):
        value = req.extra.get(name)
        if isinstance(value, int) and value > 1:
            return True
    return False


def _is_deterministic(req: ChatRequest) -> bool:
    return req.temperature == 0 or req.top_k == 1


def decide(req: ChatRequest, policy: TeamPolicy, header: str | None) -> CacheDecision:
    """Whether to look the request up in the response cache, and whether to store its answer."""
    mode = header.strip().lower() if header else ""
    if mode == "bypass":
        return CacheDecision(lookup=False, store=False, reason="bypass header")
    if _asks_for_several_answers(req):
        return CacheDecision(lookup=False, store=False, reason="several answers requested (n > 1)")
    if req.logprobs:
        # A cached answer keeps no logprobs (streams are cached as text): never answer them with null.
        return CacheDecision(lookup=False, store=False, reason="logprobs requested")
    if mode == "refresh":
        return CacheDecision(lookup=False, store=True, reason="refresh header")
    if mode == "use":
        return CacheDecision(lookup=True, store=True, reason="use header")
    if not policy.response_cache:
        return CacheDecision(lookup=False, store=False, reason="team policy off")
    if not _is_deterministic(req):
        return CacheDecision(lookup=False, store=False, reason="not deterministic")
    return CacheDecision(lookup=True, store=True, reason="deterministic")


# ---- Key -------------------------------------------------------------------------------------------

# Pass-through fields that cannot change the answer: identity, telemetry, transport, provider-side
# caching and billing. Everything else in ``extra`` is part of the key: an unknown field might.
_EXTRA_NOT_IN_KEY = frozenset(
    {
        "metadata",
        "user",
        "safety_identifier",
        "stream",
        "stream_options",
        "store",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
        "diagnostics",
        "cache_control",
    }
)


def _without_marker(block: Block) -> Block:
    """A block without its ``cache_control`` (and without those of blocks nested in a tool_result)."""
    if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
        block = {
            **block,
            "content": [_without_marker(b) if isinstance(b, dict) else b for b in block["content"]],
        }
    if "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _number(value: float | None) -> float | None:
    # 0 and 0.0 are the same temperature but not the same JSON.
    return None if value is None else float(value)


def _canonical(team_id: str, served_model: str, req: ChatRequest) -> dict[str, Any]:
    rf = req.response_format
    return {
        "team": team_id,
        "model": served_model,
        "system": [_without_marker(b) for b in req.system],
        "messages": [{"role": m.role, "content": [_without_marker(b) for b in m.content]} for m in req.messages],
        "tools": [
            {
                "name": t.name,
                "description": t.description,
                "input_schema": t.input_schema,
                "extra": {k: v for k, v in t.extra.items() if k != "cache_control"},
            }
            for t in req.tools
        ],
        "tool_choice": req.tool_choice,
        "response_format": None
        if rf is None
        else {"type": rf.type, "schema": rf.schema, "name": rf.name, "strict": rf.strict},
        "max_tokens": req.max_tokens,
        "stop_sequences": req.stop_sequences,
        "temperature": _number(req.temperature),
        "top_p": _number(req.top_p),
        "top_k": req.top_k,
        "seed": req.seed,
        "anthropic_beta": req.anthropic_beta,  # a beta can change behaviour
        "extra": {k: v for k, v in req.extra.items() if k not in _EXTRA_NOT_IN_KEY},
    }


def cache_key(team_id: str, served_model: str, req: ChatRequest) -> str:
    """``<team_id>:<sha256>``: the team both prefixes the key and is hashed into it."""
    payload = orjson.dumps(_canonical(team_id, served_model, req), option=orjson.OPT_SORT_KEYS)
    return f"{team_id}:{hashlib.sha256(payload).hexdigest()}"


# ---- Entry encoding --------------------------------------------------------------------------------

_ENTRY_VERSION = 1


def encode_response(resp: ChatResponse) -> bytes:
    u = resp.usage
    return orjson.dumps(
        {
            "v": _ENTRY_VERSION,
            "id": resp.id,
            "model": resp.model,
            "content": resp.content,
            "stop_reason": resp.stop_reason,
            "stop_sequence": resp.stop_sequence,
            "usage": [
                u.input_tokens,
                u.output_tokens,
                u.cache_write_5m_tokens,
                u.cache_write_1h_tokens,
                u.cache_read_tokens,
            ],
            "extra": resp.extra,
            "created": resp.created,
        }
    )


def decode_response(data: bytes) -> ChatResponse:
    """The response stored by ``encode_response``. ``ValueError`` for anything else (treat as a miss)."""
    raw = orjson.loads(data)
    if not isinstance(raw, dict) or raw.get("v") != _ENTRY_VERSION:
        raise ValueError("not a response-cache entry of this version")
    try:
        input_tokens, output_tokens, write_5m, write_1h, read = raw["usage"]
        return ChatResponse(
            id=raw["id"],
            model=raw["model"],
            content=raw["content"],
            stop_reason=raw["stop_reason"],
            stop_sequence=raw["stop_sequence"],
            usage=Usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_write_5m_tokens=write_5m,
                cache_write_1h_tokens=write_1h,
                cache_read_tokens=read,
            ),
            extra=raw["extra"],
            created=raw["created"],
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed response-cache entry: {exc!r}") from exc


# ---- Stores ----------------------------------------------------------------------------------------


class ResponseCache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> bool:
        """Store ``value``; ``False`` when it was not stored (larger than the maximum entry size)."""
        ...

    async def aclose(self) -> None: ...


class MemoryResponseCache:
    """A bounded in-process LRU with a TTL: at most ``max_entries`` entries and ``max_total_bytes``."""

    def __init__(
        self,
        *,
        max_entries: int,
        ttl_s: float,
        max_entry_bytes: int,
        max_total_bytes: int = 256 * 1024 * 1024,
        clock: Clock = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._max_entry_bytes = max_entry_bytes
        self._max_total_bytes = max_total_bytes
        self._total_bytes = 0
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> bool:
        if len(value) > self._max_entry_bytes or len(value) > self._max_total_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + self._ttl_s, value)
        self._total_bytes += len(value)
        while len(self._entries) > self._max_entries or self._total_bytes > self._max_total_bytes:
            self._drop(next(iter(self._entries)))  # least recently used
        return True

    async def aclose(self) -> None:
        self._entries.clear()
        self._total_bytes = 0

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._total_bytes -= len(value)


class RedisResponseCache:
    """Entries in Redis under ``tw:rc:<team_id>:<sha256>``, expiring after ``ttl_s``.

    Single-key commands only (GET, SET PX), so it works unchanged on Redis Cluster. A Redis error or a
    slow Redis (beyond ``op_timeout_s``) is a miss / an entry not stored: logged, never raised. The
    client belongs to the caller (it is shared with the budgets), so ``aclose`` leaves it open.
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis | redis.asyncio.RedisCluster,
        *,
        ttl_s: float,
        max_entry_bytes: int,
        op_timeout_s: float = 0.25,
        clock: Clock = time.monotonic,
    ) -> None:
        self._redis = redis
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self._max_entry_bytes = max_entry_bytes
        self._op_timeout_s = op_timeout_s
        self._clock = clock
        self._warned_at: float | None = None
        self._suppressed = 0

    async def get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(self._op_timeout_s):
                value = await self._redis.get(REDIS_KEY_PREFIX + key)
        except Exception as exc:  # any store failure degrades to a miss
            self._warn("get", exc)
            return None
        if isinstance(value, str):  # a client created with decode_responses=True
            return value.encode()
        return value

    async def put(self, key: str, value: bytes) -> bool:
        if len(value) > self._max_entry_bytes:
            return False
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await self._redis.set(REDIS_KEY_PREFIX + key, value, px=self._ttl_ms)
        except Exception as exc:
            self._warn("put", exc)
            return False
        return True

    async def aclose(self) -> None:
        pass

    def _warn(self, operation: str, exc: BaseException) -> None:
        # One line per 10 s at most: a Redis outage must not flood the log from every request.
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < 10.0:
            self._suppressed += 1
            return
        logger.warning(
            "response cache %s failed, treated as a miss: %r (%d similar errors suppressed)",
            operation,
            exc,
            self._suppressed,
        )
        self._warned_at = now
        self._suppressed = 0


def create_response_cache(
    settings: Settings, redis: redis.asyncio.Redis | redis.asyncio.RedisCluster | None, clock: Clock = time.monotonic
) -> ResponseCache:
    """Redis when the app has a Redis client, else the in-process LRU."""
    if redis is not None:
        return RedisResponseCache(
            redis,
            ttl_s=settings.response_cache_ttl_s,
            max_entry_bytes=settings.response_cache_max_entry_bytes,
            clock=clock,
        )
    return MemoryResponseCache(
        max_entries=settings.response_cache_max_entries,
        ttl_s=settings.response_cache_ttl_s,
        max_entry_bytes=settings.response_cache_max_entry_bytes,
        max_total_bytes=settings.response_cache_max_memory_bytes,
        clock=clock,
    )
