"""The labelled routing corpus: items on disk, their canonical requests, and the fixed split.

Each line of ``app/routing/corpus/*.jsonl`` is one request with its minimum adequate tier (by the
definitions in ``docs/routing.md``)::

    {"id": "a-0001", "task": "extraction", "language": "de", "tags": [...], "tier": "medium",
     "reason": "...", "judgements": {"writer": "medium", "judge": "small", "third"?: "medium"},
     "request": {"system"?, "messages", "tools"?, "response_format"?, "max_tokens"?}}

``tier`` is the adjudicated label (the two judgements when they agree, else the third's settlement);
``judgements`` keeps every independent judgement (training uses their shares, see
``app.routing.training``).

Items with ``"source": "legacy"`` (the old evaluation set, labelled by task class rather than by the
request's difficulty) are kept for reference but left out of training and evaluation by default.

**The split** is a pure function of the item's id: ``sha256(SPLIT_SEED + id)`` mapped to [0, 1):
below 0.2 is *test*, below 0.4 *validation*, the rest *train* (60/20/20). Adding items never moves
existing ones, and relabelling an item (a judge changing its tier) never moves it either — which is
why the split is not stratified by tier: stratifying by a label that adjudication may still change
would move items between splits. The tier mix per split is reported instead. The cross-validation
folds over train + validation are the same hash, in five buckets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from app.domain import ChatRequest, Message, ResponseFormat, Tool

CORPUS_DIR = Path(__file__).with_name("corpus")
SPLIT_SEED = "tollway-routing-split-v1"
TIERS: tuple[str, ...] = ("small", "medium", "large")
TIER_INDEX = {tier: index for index, tier in enumerate(TIERS)}
Split = Literal["train", "validation", "test"]
FOLDS = 5


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    task: str
    tier: str
    language: str
    tags: tuple[str, ...]
    source: str  # the file's stem, or "legacy"
    request: dict[str, Any]
    judgements: tuple[str, ...] = ()  # every independent judgement's tier (writer, judge, third?)

    @property
    def label(self) -> int:
        return TIER_INDEX[self.tier]


def _unit(text: str) -> float:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(item_id: str) -> Split:
    """train / validation / test for an id: fixed, independent of every other item."""
    u = _unit(SPLIT_SEED + item_id)
    if u < 0.2:
        return "test"
    return "validation" if u < 0.4 else "train"


def fold_of(item_id: str, folds: int = FOLDS) -> int:
    """The cross-validation fold (0..folds-1) of a train or validation item."""
    return int(_unit(SPLIT_SEED + "/fold/" + item_id) * folds)


def load_items(paths: Iterable[Path], *, include_legacy: bool = False) -> list[Item]:
    """Every item of ``paths`` (files or directories of ``*.jsonl``), sorted by id; ids must be unique."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.jsonl")) if path.is_dir() else [path])
    items: dict[str, Item] = {}
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw = orjson.loads(line)
                item = _item(raw, file.stem)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{file}:{number}: not a corpus item: {exc}") from exc
            if item.source == "legacy" and not include_legacy:
                continue
            if item.id in items:
                raise ValueError(f"{file}:{number}: duplicate id {item.id}")
            items[item.id] = item
    return [items[key] for key in sorted(items)]


def _item(raw: dict[str, Any], stem: str) -> Item:
    tier = raw["tier"]
    if tier not in TIER_INDEX:
        raise ValueError(f"unknown tier {tier!r}")
    request = raw["request"]
    if not isinstance(request, dict) or not request.get("messages"):
        raise ValueError("request.messages is required")
    return Item(
        id=str(raw["id"]),
        task=str(raw["task"]),
        tier=tier,
        language=str(raw.get("language") or "en"),
        tags=tuple(raw.get("tags") or ()),
        source=str(raw.get("source") or stem),
        request=request,
        judgements=_judgements(raw.get("judgements"), tier),
    )


def _judgements(raw: Any, tier: str) -> tuple[str, ...]:
    """The tiers of an item's judgements in file order; just its label when none are recorded."""
    if not isinstance(raw, dict) or not raw:
        return (tier,)
    tiers = tuple(str(t) for t in raw.values())
    unknown = [t for t in tiers if t not in TIER_INDEX]
    if unknown:
        raise ValueError(f"unknown tier in judgements: {unknown[0]!r}")
    return tiers


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def to_chat_request(request: dict[str, Any], model: str = "auto") -> ChatRequest:
    """The canonical request for one corpus item (Anthropic-shaped JSON)."""
    system = request.get("system")
    fmt = request.get("response_format")
    return ChatRequest(
        model=model,
        messages=[Message(role=m["role"], content=_blocks(m["content"])) for m in request["messages"]],
        max_tokens=request.get("max_tokens"),
        client_format="anthropic",
        system=_blocks(system) if system else [],
        tools=[
            Tool(name=t["name"], description=t.get("description"), input_schema=t.get("input_schema") or {})
            for t in request.get("tools") or []
        ],
        tool_choice=request.get("tool_choice"),
        response_format=(
            ResponseFormat(type=fmt.get("type", "json_object"), schema=fmt.get("schema"), name=fmt.get("name"))
            if fmt
            else None
        ),
    )


def corpus_digest(items: Iterable[Item]) -> str:
    """A short fingerprint of the ids and labels a model was trained on (recorded in the artefact)."""
    h = hashlib.sha256()
    for item in items:
        h.update(f"{item.id}\t{item.tier}\n".encode())
    return h.hexdigest()[:16]
