"""Sticky conversations: later turns of a conversation go to the model its first ``auto`` turn chose.

A conversation is identified by its team, its system prompt and its first user message (hashed:
``tw:sticky:<team>:<sha256>``); every later turn repeats them verbatim, so they name the
conversation without any client cooperation. Switching models mid-conversation throws away the
provider's prompt cache of everything said so far (and changes the voice of the answers), so
``Router.plan(sticky_model=...)`` puts the remembered model first whenever it is adequate for the turn.

``remember`` is called with the model that finally served the turn: after an escalation that is the
escalated model, which then sticks. Entries expire ``ttl_s`` after the last turn (refreshed on each).

Stores: Redis when the gateway has one (shared by every replica; single-key GET/SET PX, so Redis
Cluster works too), else a bounded in-process LRU with the same TTL. A Redis error, or an answer
slower than ``OP_TIMEOUT_S``, is a miss (logged at most every 10 s): stickiness is an optimisation,
never a reason to fail or stall a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from app.domain import Block, ChatRequest

log = logging.getLogger("tollway.routing.sticky")

KEY_PREFIX = "tw:sticky:"
DEFAULT_TTL_S = 3600.0
LOCAL_MAX_ENTRIES = 50_000
OP_TIMEOUT_S = 0.1  # a slow Redis costs a request at most this, then it routes without stickiness


def _text(content: list[Block]) -> str:
    return "\n".join(b["text"] for b in content if b.get("type") == "text" and isinstance(b.get("text"), str))


def conversation_key(team_id: str, chat: ChatRequest) -> str:
    """``tw:sticky:<team>:<hash of the system prompt and the first user message>``."""
    first_user = next((m for m in chat.messages if m.role == "user"), None)
    h = hashlib.sha256()
    h.update(_text(chat.system).encode())
    h.update(b"\x00")
    h.update(_text(first_user.content).encode() if first_user is not None else b"")
    return f"{KEY_PREFIX}{team_id}:{h.hexdigest()[:32]}"


class StickyConversations:
    """``lookup`` / ``remember`` over Redis (``redis`` given) or a local LRU."""

    def __init__(
        self,
        redis: Any | None = None,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = LOCAL_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        key_prefix: str = KEY_PREFIX,
        op_timeout_s: float = OP_TIMEOUT_S,
    ) -> None:
        self._op_timeout_s = op_timeout_s
        self._redis = redis
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._prefix = key_prefix
        self._local: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._last_warning = 0.0

    def _key(self, team_id: str, chat: ChatRequest) -> str:
        return self._prefix + conversation_key(team_id, chat)[len(KEY_PREFIX) :]

    async def lookup(self, team_id: str, chat: ChatRequest) -> str | None:
        """The model this conversation uses, or None (first turn, expired, or store unavailable)."""
        key = self._key(team_id, chat)
        if self._redis is None:
            entry = self._local.get(key)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._local[key]
                return None
            self._local.move_to_end(key)
            return entry[0]
        try:
            async with asyncio.timeout(self._op_timeout_s):
                value = await self._redis.get(key)
        except Exception as exc:
            self._warn("lookup", exc)
            return None
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def remember(self, team_id: str, chat: ChatRequest, model: str) -> None:
        """Record (or refresh) the model that served this turn."""
        key = self._key(team_id, chat)
        if self._redis is None:
            self._local[key] = (model, self._clock() + self._ttl_s)
            self._local.move_to_end(key)
            while len(self._local) > self._max:
                self._local.popitem(last=False)
            return
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await self._redis.set(key, model, px=int(self._ttl_s * 1000))
        except Exception as exc:
            self._warn("remember", exc)

    def _warn(self, op: str, exc: Exception) -> None:
        now = self._clock()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("sticky %s failed (%s); routing without stickiness", op, exc)
