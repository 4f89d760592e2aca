"""Automatic prompt caching: ``cache_control`` breakpoints added to Claude requests.

Anthropic bills a prefix read from its prompt cache at a fraction of the input price, but only when
the request marks where cacheable prefixes end, and few clients do. ``apply_breakpoints`` adds those
markers, in place, on the canonical request, with these rules (docs/caching.md explains them):

* At most ``MAX_BREAKPOINTS`` markers in total. The client's own markers are kept untouched and count
  first (a top-level automatic ``cache_control`` counts as one); Tollway uses what is left.
* Nothing changes but the added ``cache_control`` keys: no reordering, merging or rewriting.
* Candidates in priority order, in prefix order tools → system → messages:
  1. the end of the stable head: the last system block, or the last tool when there is no system;
  2. the last block of the final message: this turn writes the whole conversation to the cache;
  3. the last block of the previous user turn: what the previous turn wrote, so this turn reads it
     even from an upstream that does not look back from a later breakpoint.
* A candidate is used only when the prefix up to it reaches the model's ``min_cache_tokens`` (an
  estimate, erring towards placing: a marker on too short a prefix is silently ignored and costs
  nothing, a missing one forfeits the discount), only on a block that can carry ``cache_control``, and
  not where a client marker already sits.
* Every 1h marker must precede every 5m marker; the TTL of an added marker yields to the client's
  markers when the policy's TTL would break that order.

It is on the hot path of every Claude request, so it never serialises the request: it sizes blocks one
by one and stops sizing as soon as the prefix is long enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from app.config import ModelConfig
from app.domain import Block, ChatRequest
from app.tokens import (
    BYTES_PER_TOKEN_ESTIMATE,
    PER_BLOCK_OVERHEAD,
    PER_MESSAGE_OVERHEAD,
    PER_REQUEST_OVERHEAD,
    block_bytes,
)

MAX_BREAKPOINTS = 4
# The request header that opts one request out of automatic prompt caching.
PROMPT_CACHE_HEADER = "x-tollway-prompt-cache"

Ttl = Literal["5m", "1h"]

# Blocks the API accepts ``cache_control`` on. Not thinking/redacted_thinking (cached implicitly with
# their turn), not server-tool blocks, not unknown types: a marker there would be a 400.
_CACHEABLE_BLOCK_TYPES = frozenset({"text", "image", "document", "tool_use", "tool_result"})


def prompt_cache_enabled(policy_mode: str, header: str | None) -> bool:
    """Whether automatic caching applies: the team's policy is ``auto`` and the request didn't opt out."""
    if policy_mode != "auto":
        return False
    return header is None or header.strip().lower() != "off"


# ---- The client's own markers ----------------------------------------------------------------------


def _ttl_of(marker: Any) -> Ttl:
    if isinstance(marker, dict) and marker.get("ttl") == "1h":
        return "1h"
    return "5m"


def _collect_markers(block: Block, position: int, into: list[tuple[int, Ttl]]) -> None:
    """Markers on a block and on the blocks nested in a tool_result (they take slots too)."""
    marker = block.get("cache_control")
    if marker is not None:
        into.append((position, _ttl_of(marker)))
    if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
        for sub in block["content"]:
            if isinstance(sub, dict) and sub.get("cache_control") is not None:
                into.append((position, _ttl_of(sub["cache_control"])))


@dataclass(slots=True)
class _Layout:
    """The client's markers, and where each message starts, in prefix positions.

    Positions number the tools, then the system blocks, then the message blocks, from 0. A marker
    nested in a tool_result takes its parent's position. The top-level automatic marker lands on the
    last cacheable block, so it sits after every other position.
    """

    markers: list[tuple[int, Ttl]]  # (position, ttl), in prefix order
    message_starts: list[int]


def _layout(req: ChatRequest) -> _Layout:
    # One pass over every block: the only part of the work that grows with the whole conversation,
    # so it does nothing but a key lookup per block unless a marker or a tool_result is there.
    markers: list[tuple[int, Ttl]] = []
    position = 0
    for tool in req.tools:
        marker = tool.extra.get("cache_control")
        if marker is not None:
            markers.append((position, _ttl_of(marker)))
        position += 1
    for block in req.system:
        if "cache_control" in block or block.get("type") == "tool_result":
            _collect_markers(block, position, markers)
        position += 1
    message_starts: list[int] = []
    for message in req.messages:
        message_starts.append(position)
        for block in message.content:
            if "cache_control" in block or block.get("type") == "tool_result":
                _collect_markers(block, position, markers)
            position += 1
    if req.cache_control is not None:
        markers.append((position, _ttl_of(req.cache_control)))
    return _Layout(markers, message_starts)


def count_breakpoints(req: ChatRequest) -> int:
    """How many breakpoints the client placed itself (tools, system, messages, top-level)."""
    return len(_layout(req).markers)


# ---- Where the prefix becomes long enough ----------------------------------------------------------


def _tool_bytes(req: ChatRequest, index: int) -> int:
    # Same formula as app.tokens.request_bytes, so the estimate is the calibrated one.
    tool = req.tools[index]
    return (
        len(tool.name)
        + len((tool.description or "").encode())
        + len(orjson.dumps(tool.input_schema))
        + PER_BLOCK_OVERHEAD
    )


def _first_long_enough_position(req: ChatRequest, min_tokens: int) -> int | None:
    """The first prefix position whose prefix (up to and including it) reaches ``min_tokens``.

    Sums block sizes in prefix order and stops as soon as the threshold is reached, so a long
    conversation costs no more than its first few thousand tokens. ``None``: the prompt is too short.
    """
    threshold_bytes = min_tokens * BYTES_PER_TOKEN_ESTIMATE
    total = PER_REQUEST_OVERHEAD
    position = 0
    for index in range(len(req.tools)):
        total += _tool_bytes(req, index)
        if total >= threshold_bytes:
            return position
        position += 1
    for block in req.system:
        total += block_bytes(block)
        if total >= threshold_bytes:
            return position
        position += 1
    for message in req.messages:
        total += PER_MESSAGE_OVERHEAD
        for block in message.content:
            total += block_bytes(block)
            if total >= threshold_bytes:
                return position
            position += 1
    return None


# ---- Candidates ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Spot:
    position: int  # prefix position (see _Layout)
    label: str  # for logs and tests: "tools", "system", "messages[3]"
    target: dict[str, Any]  # the dict that receives "cache_control" (a block, or a Tool's extra)


def _can_carry(block: Block) -> bool:
    btype = block.get("type")
    if btype not in _CACHEABLE_BLOCK_TYPES:
        return False
    return not (btype == "text" and not block.get("text"))


def _head_spot(req: ChatRequest) -> _Spot | None:
    """(1) The end of the stable head: the last cacheable system block, else the last tool."""
    tools = len(req.tools)
    for index in range(len(req.system) - 1, -1, -1):
        if _can_carry(req.system[index]):
            return _Spot(tools + index, "system", req.system[index])
    if tools:
        return _Spot(tools - 1, "tools", req.tools[-1].extra)
    return None


def _message_spot(req: ChatRequest, layout: _Layout, message_index: int) -> _Spot | None:
    """The last block of a message that can carry a marker (walking back past thinking blocks)."""
    position = layout.message_starts[message_index]
    content = req.messages[message_index].content
    for index in range(len(content) - 1, -1, -1):
        if _can_carry(content[index]):
            return _Spot(position + index, f"messages[{message_index}]", content[index])
    return None


def _previous_user_index(req: ChatRequest) -> int | None:
    for index in range(len(req.messages) - 2, -1, -1):
        if req.messages[index].role == "user":
            return index
    return None


def _candidates(req: ChatRequest, layout: _Layout) -> list[_Spot]:
    """Candidate spots in priority order (the caller filters them)."""
    spots: list[_Spot | None] = [_head_spot(req)]
    if req.messages:
        # The top-level automatic marker already sits on the last cacheable block.
        if req.cache_control is None:
            spots.append(_message_spot(req, layout, len(req.messages) - 1))
        previous_user = _previous_user_index(req)
        if previous_user is not None:
            spots.append(_message_spot(req, layout, previous_user))
    return [spot for spot in spots if spot is not None]


# ---- TTL -------------------------------------------------------------------------------------------


def _marker_ttl(position: int, wanted: Ttl, client: list[tuple[int, Ttl]]) -> Ttl:
    """The TTL for a marker at ``position``, keeping every 1h marker before every 5m marker.

    * 1h wanted, but a client 5m marker comes at or before this spot: 5m here (a 1h marker after a
      5m one is a 400; the prefix is billed at 5m up to the client's marker anyway).
    * 5m wanted, but a client 1h marker comes after this spot: 1h here. It costs nothing extra: the
      provider bills the whole prefix up to the last 1h marker at the 1h write price regardless.
    """
    if wanted == "1h":
        if any(ttl == "5m" and where <= position for where, ttl in client):
            return "5m"
        return "1h"
    if any(ttl == "1h" and where > position for where, ttl in client) and not any(
        ttl == "5m" and where <= position for where, ttl in client
    ):
        return "1h"
    return "5m"


def _marker(ttl: Ttl) -> dict[str, str]:
    # 5m is the API default: leave ttl out, the shape every API version and upstream accepts.
    return {"type": "ephemeral", "ttl": "1h"} if ttl == "1h" else {"type": "ephemeral"}


# ---- Entry point -----------------------------------------------------------------------------------


def apply_breakpoints(req: ChatRequest, model: ModelConfig, *, ttl: Ttl) -> list[str]:
    """Add cache breakpoints to ``req`` in place; return where they went, in prefix order."""
    layout = _layout(req)
    client = layout.markers
    free = MAX_BREAKPOINTS - len(client)
    if free <= 0:
        return []
    long_enough_from = _first_long_enough_position(req, model.min_cache_tokens)
    if long_enough_from is None:
        return []

    chosen: list[_Spot] = []
    for spot in _candidates(req, layout):
        if len(chosen) == free:
            break
        if spot.position < long_enough_from or spot.target.get("cache_control") is not None:
            continue
        chosen.append(spot)

    chosen.sort(key=lambda spot: spot.position)
    for spot in chosen:
        spot.target["cache_control"] = _marker(_marker_ttl(spot.position, ttl, client))
    return [spot.label for spot in chosen]
