"""The simulated prompt caches: Anthropic's explicit breakpoints and OpenAI's automatic prefixes.

Anthropic (wire-protocol.md §2.8): the prompt is the sequence tools → system → messages. Blocks carrying
``cache_control`` (plus the block the top-level ``cache_control`` marks) are breakpoints; a prefix up
to a breakpoint is cacheable when it reaches the model's minimum token count. A request reads the
furthest breakpoint whose prefix is cached, writes up to its last cacheable breakpoint, and stores
every cacheable breakpoint's prefix. The 20-block lookback of the real API is not modelled: only
prefixes ending exactly at one of the request's breakpoints can hit.

OpenAI: a prompt of at least the minimum caches automatically at whole-message boundaries; a later
prompt sharing such a prefix (same model, within 5 minutes) reports it as ``cached_tokens``.

Entries expire by the injected clock, are refreshed on every hit, and the stores are bounded LRUs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

import orjson

from app.simulator.counting import (
    PER_MESSAGE_TOKENS,
    PER_REQUEST_TOKENS,
    anthropic_block_tokens,
    json_tokens,
    text_tokens,
    tool_definition_tokens,
    without_cache_control,
)

MAX_BREAKPOINTS = 4
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
OPENAI_CACHE_TTL = 300.0
MAX_CACHE_ENTRIES = 10_000
UNCACHEABLE_BLOCK_TYPES = frozenset({"thinking", "redacted_thinking"})


class CacheControlError(ValueError):
    """A ``cache_control`` placement the real API rejects with a 400."""


class TTLStore:
    """A bounded LRU of prefix keys, each with an expiry that a hit pushes forward."""

    def __init__(self, max_entries: int = MAX_CACHE_ENTRIES) -> None:
        self._max_entries = max_entries
        # key -> (expires_at, ttl)
        self._entries: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def hit(self, key: bytes, now: float) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        expires_at, ttl = entry
        if expires_at <= now:
            del self._entries[key]
            return False
        self._entries[key] = (now + ttl, ttl)
        self._entries.move_to_end(key)
        return True

    def put(self, key: bytes, ttl: float, now: float) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now + ttl:
            ttl = entry[1]  # a live 1h entry is not shortened by a 5m write
        self._entries[key] = (now + ttl, ttl)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


@dataclass(slots=True)
class CacheUsage:
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def written(self) -> int:
        return self.write_5m + self.write_1h


@dataclass(slots=True)
class Breakpoint:
    unit: int  # index of the marked unit in AnthropicPrompt.units
    tokens: int  # prefix tokens up to and including that unit
    ttl: str  # "5m" | "1h"


@dataclass(slots=True)
class AnthropicPrompt:
    """An Anthropic request flattened into prefix order, with token positions and breakpoints.

    ``units`` holds ``(marker, block)``: the marker records where a section or message starts (so two
    prompts with the same blocks but different roles or message boundaries never share a key).
    """

    total_tokens: int
    units: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    breakpoints: list[Breakpoint] = field(default_factory=list)

    def prefix_keys(self, model: str) -> dict[int, bytes]:
        """The cache key of each breakpoint's prefix: hash(model, canonical prefix)."""
        wanted = {bp.unit for bp in self.breakpoints}
        last = max(wanted)
        hasher = blake2b(model.encode(), digest_size=16)
        keys: dict[int, bytes] = {}
        for index in range(last + 1):
            marker, block = self.units[index]
            data = _canonical_block(block)
            hasher.update(marker)
            hasher.update(len(data).to_bytes(4, "little"))
            hasher.update(data)
            if index in wanted:
                keys[index] = hasher.copy().digest()
        return keys


def _canonical_block(block: dict[str, Any]) -> bytes:
    """A block's bytes for cache matching: markers removed, keys sorted, but a ``tool_use`` input kept
    in its sent key order (the real API misses the cache when that order changes)."""
    block = without_cache_control(block)
    if block.get("type") == "tool_use" and "input" in block:
        block = {**block, "input": orjson.dumps(block["input"]).decode()}
    return orjson.dumps(block, option=orjson.OPT_SORT_KEYS)


def _cache_ttl(cache_control: Any) -> str:
    if not isinstance(cache_control, dict) or cache_control.get("type") != "ephemeral":
        raise CacheControlError("cache_control.type: Input should be 'ephemeral'")
    ttl = cache_control.get("ttl", "5m")
    if ttl is None:
        ttl = "5m"
    if ttl not in TTL_SECONDS:
        raise CacheControlError("cache_control.ttl: Input should be '5m' or '1h'")
    return str(ttl)


def _is_cacheable_content(block: dict[str, Any]) -> bool:
    btype = block.get("type")
    if btype in UNCACHEABLE_BLOCK_TYPES:
        return False
    return not (btype == "text" and not block.get("text"))


def analyse_anthropic_prompt(body: dict[str, Any]) -> AnthropicPrompt:
    """Count the prompt's tokens and locate its cache breakpoints (raises CacheControlError)."""
    units: list[tuple[bytes, dict[str, Any]]] = []
    ends: list[int] = []
    cacheable: list[bool] = []
    marked: list[tuple[int, Any]] = []
    tokens = PER_REQUEST_TOKENS

    def add(marker: bytes, block: dict[str, Any], block_tokens: int, is_tool: bool = False) -> None:
        nonlocal tokens
        tokens += block_tokens
        can_cache = is_tool or _is_cacheable_content(block)
        cache_control = block.get("cache_control")
        if cache_control is not None:
            if not can_cache:
                kind = "empty text blocks" if block.get("type") == "text" else f"{block.get('type')} blocks"
                raise CacheControlError(f"cache_control cannot be set for {kind}")
            marked.append((len(units), cache_control))
        units.append((marker, block))
        ends.append(tokens)
        cacheable.append(can_cache)

    def add_content_block(marker: bytes, block: dict[str, Any]) -> None:
        nested = block.get("content") if block.get("type") == "tool_result" else None
        if not (isinstance(nested, list) and nested):
            add(marker, block, anthropic_block_tokens(block))
            return
        # A tool_result holding blocks: each nested block is a unit of its own (it may carry a marker
        # too), and the tool_result's own marker ends the prefix after its last nested block.
        units.append((marker, {k: v for k, v in block.items() if k not in ("content", "cache_control")}))
        ends.append(tokens)
        cacheable.append(False)
        for inner in nested:
            add(b"\x02", inner if isinstance(inner, dict) else {}, anthropic_block_tokens(inner))
        if (cache_control := block.get("cache_control")) is not None:
            marked.append((len(units) - 1, cache_control))

    for tool in body.get("tools") or ():
        add(b"\x01tool", tool, tool_definition_tokens(tool), is_tool=True)

    system = body.get("system")
    if isinstance(system, str):
        if system:
            add(b"\x01system", {"type": "text", "text": system}, text_tokens(system))
    elif isinstance(system, list):
        for i, block in enumerate(system):
            add(b"\x01system" if i == 0 else b"", block, anthropic_block_tokens(block))

    for message in body["messages"]:
        tokens += PER_MESSAGE_TOKENS
        marker = b"\x01" + str(message.get("role")).encode()
        content = message.get("content")
        if isinstance(content, str):
            add(marker, {"type": "text", "text": content}, text_tokens(content))
        elif isinstance(content, list) and content:
            for i, block in enumerate(content):
                add_content_block(marker if i == 0 else b"", block)
        else:  # an empty message still shapes the prefix, but holds nothing to mark
            units.append((marker, {}))
            ends.append(tokens)
            cacheable.append(False)

    output_format = (body.get("output_config") or {}).get("format")
    if isinstance(output_format, dict) and isinstance(output_format.get("schema"), dict):
        tokens += json_tokens(output_format["schema"])

    prompt = AnthropicPrompt(total_tokens=tokens, units=units)
    breakpoints = [Breakpoint(unit, ends[unit], _cache_ttl(cc)) for unit, cc in marked]
    automatic = body.get("cache_control")
    if automatic is not None:
        ttl = _cache_ttl(automatic)
        last = next((i for i in range(len(units) - 1, -1, -1) if cacheable[i]), None)
        if last is not None and not (breakpoints and breakpoints[-1].unit == last):
            breakpoints.append(Breakpoint(last, ends[last], ttl))
    if len(breakpoints) > MAX_BREAKPOINTS:
        raise CacheControlError(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(breakpoints)}."
        )
    seen_5m = False
    for bp in breakpoints:
        if bp.ttl == "5m":
            seen_5m = True
        elif seen_5m:
            raise CacheControlError(
                "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block. "
                "Note that blocks are processed in the following order: `tools`, `system`, `messages`."
            )
    prompt.breakpoints = breakpoints
    return prompt


class AnthropicPromptCache:
    def __init__(self, max_entries: int = MAX_CACHE_ENTRIES) -> None:
        self.store = TTLStore(max_entries)

    def account(self, model: str, prompt: AnthropicPrompt, min_tokens: int, now: float) -> CacheUsage:
        """Read/write accounting for one request, then store its cacheable prefixes."""
        if not prompt.breakpoints:
            return CacheUsage()
        keys = prompt.prefix_keys(model)
        read = 0
        for bp in reversed(prompt.breakpoints):
            if self.store.hit(keys[bp.unit], now):
                read = bp.tokens
                break
        cacheable = [bp for bp in prompt.breakpoints if bp.tokens >= min_tokens]
        written = max(0, cacheable[-1].tokens - read) if cacheable else 0
        # 1h breakpoints come first: the 1h write runs from the read point to the last 1h breakpoint.
        hour_end = max((bp.tokens for bp in cacheable if bp.ttl == "1h"), default=0)
        write_1h = min(written, max(0, hour_end - read))
        for bp in cacheable:
            self.store.put(keys[bp.unit], TTL_SECONDS[bp.ttl], now)
        return CacheUsage(read=read, write_5m=written - write_1h, write_1h=write_1h)


class OpenAIPromptCache:
    def __init__(self, max_entries: int = MAX_CACHE_ENTRIES) -> None:
        self.store = TTLStore(max_entries)

    def account(
        self,
        model: str,
        tools: list[Any],
        messages: list[dict[str, Any]],
        message_tokens: list[int],
        total_tokens: int,
        min_tokens: int,
        now: float,
    ) -> int:
        """Cached prompt tokens for one request, then remember its message-boundary prefixes."""
        if total_tokens < min_tokens:
            return 0
        hasher = blake2b(model.encode(), digest_size=16)
        tokens = PER_REQUEST_TOKENS
        if tools:
            hasher.update(orjson.dumps(tools, option=orjson.OPT_SORT_KEYS))
            tokens += sum(tool_definition_tokens(t) for t in tools)
        boundaries: list[tuple[int, bytes]] = []
        for message, count in zip(messages, message_tokens, strict=True):
            data = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
            hasher.update(len(data).to_bytes(4, "little"))
            hasher.update(data)
            tokens += count
            if tokens >= min_tokens:
                boundaries.append((tokens, hasher.copy().digest()))
        cached = 0
        for prefix_tokens, key in reversed(boundaries):
            if self.store.hit(key, now):
                cached = prefix_tokens
                break
        for _, key in boundaries:
            self.store.put(key, OPENAI_CACHE_TTL, now)
        return cached
