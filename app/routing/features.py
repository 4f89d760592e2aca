"""What the learned router reads from a request: a short vector of measurements plus token ids.

Bounded work whatever the request's size: the last user turn is read through a window of its first
``USER_HEAD`` and last ``USER_TAIL`` characters, the system prompt through its first ``SYSTEM_HEAD``,
and counts are ``str.count`` calls (C speed) over those windows. Lengths are measured on the whole
texts (``len`` is O(1)).

``DENSE_NAMES`` lists the measurements in order; ``Extracted.user_ids`` / ``system_ids`` are the
token ids of the user window and of the system window, embedded by ``app.routing.model``.

The keyword task classifier (``app.routing.classifier``) survives only here: its per-class scores
are eight of the features, not a decision.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from app.domain import Block, ChatRequest
from app.routing.classifier import TASK_CLASSES, Classification, classify
from app.routing.embedding import TokenIds

USER_HEAD, USER_TAIL = 800, 300
SYSTEM_HEAD = 800
SYSTEM_MEMO_SIZE = 256
BYTES_PER_TOKEN = 3.5

# Words that state a requirement or a constraint (English; the embedding covers other languages):
# the stems are matched per word, the phrases with str.count.
_CONSTRAINT_STEMS = (
    "must", "should", "never", "always", "without", "exactly", "ensure", "only", "require", "constraint",
    "cannot", "within", "unless", "except", "deadline", "budget", "limit",
)  # fmt: skip
_CONSTRAINT_PHRASES = (" at least", " at most", " no more than", " don't ", " do not ")
_TRACE_MARKS = ("traceback", "exception", "error:", "\n    at ", "panic:", "fatal", "stack trace", "line ")
_MATH_MARKS = ("=", "^", "∑", "√", "≤", "≥", "∫", "π", "∀", "∃", "\\frac", "mod ", "prove", "probab")
_CONTRAST_STEMS = ("but", "however", "although", "whereas", "versus", "vs", "instead", "trade-off", "tradeoff")
# Stems in several languages for what the tier definitions name as hard: proofs, conflicting
# evidence, concurrency and distributed systems, high-stakes domains; and the casual framing that
# often hides a hard question. Weights are learned: a stem is evidence, never a rule.
_PROOF_STEMS = (
    "prove",
    "proof",
    "demonstr",
    "beweis",
    "zeige",
    "dimostr",
    "montrer",
    "démontr",
    "prouve",
    "demuestr",
    "prueba",
    "provar",
    "докаж",
    "доказ",
    "证明",
    "証明",
    "증명",
    "सिद्ध",
    "أثبت",
    "برهن",
    "udowodnij",
    "wykaż",
    "lemma",
    "theorem",
    "induction",
)
_CONFLICT_STEMS = (
    "conflict",
    "contradict",
    "inconsisten",
    "discrepan",
    "disagree",
    "widersprech",
    "widerspr",
    "contradic",
    "conflit",
    "contraddi",
    "противореч",
    "矛盾",
    "모순",
    "विरोध",
    "تناقض",
    "sprzeczn",
    "diverg",
    "outdated",
    "veraltet",
    "obsolet",
    "supersed",
)
_CONCURRENCY_STEMS = (
    "race",
    "deadlock",
    "lock-free",
    "atomic",
    "mutex",
    "concurren",
    "thread",
    "ordering",
    "consensus",
    "raft",
    "paxos",
    "replica",
    "partition",
    "isolation",
    "linearizab",
    "idempot",
    "exactly-once",
    "distributed",
    "goroutine",
    "async",
    "transaction",
    "snapshot",
)
_RISK_STEMS = (
    "legal",
    "liabil",
    "indemn",
    "clause",
    "regulat",
    "complian",
    "gdpr",
    "tax",
    "medic",
    "dose",
    "drug",
    "interaction",
    "diagnos",
    "export",
    "sanction",
    "lawsuit",
    "court",
    "insur",
    "contract",
    "patient",
)
# Stem groups matched per word (once per distinct word, memoised with its token ids): bit i = group i.
_WORD_GROUPS = (_PROOF_STEMS, _CONFLICT_STEMS, _CONCURRENCY_STEMS, _RISK_STEMS, _CONSTRAINT_STEMS, _CONTRAST_STEMS)


def _word_flags(word: str) -> int:
    """Which stem groups a (lower-cased) word belongs to: an ASCII stem must start the word ("race"
    is not in "trace"); a stem in another script may sit anywhere (CJK text has no spaces)."""
    word = word.lstrip("\"'([{*_-`“«¿¡")
    flags = 0
    for bit, stems in enumerate(_WORD_GROUPS):
        if any(word.startswith(stem) if stem.isascii() else stem in word for stem in stems):
            flags |= 1 << bit
    return flags


_CASUAL_STEMS = (
    "quick q",
    "quick question",
    "simple question",
    "just wondering",
    "kurze frage",
    "kurz:",
    "pregunta rápida",
    "petite question",
    "简单问",
    "간단히",
    "быстрый вопрос",
    "domanda veloce",
    "pergunta rápida",
    "szybkie pytanie",
    "quick check",
    "real quick",
)

DENSE_NAMES: tuple[str, ...] = (
    *(f"task_score_{task}" for task in TASK_CLASSES),
    "user_chars_log",
    "user_bytes_per_char",
    "instruction_chars_log",
    "material_chars_log",
    "system_chars_log",
    "input_tokens_log",
    "messages_log",
    "assistant_turns_log",
    "tools_log",
    "tool_forced",
    "tool_result",
    "json_schema",
    "json_object",
    "json_mentioned",
    "max_tokens_log",
    "max_tokens_missing",
    "code_fences",
    "code_marks_log",
    "trace_marks",
    "table_pipes",
    "json_marks",
    "list_lines",
    "digit_share",
    "math_marks",
    "constraint_words",
    "contrast_words",
    "proof_stems",
    "conflict_stems",
    "concurrency_stems",
    "risk_stems",
    "casual_stems",
    "system_risk_stems",
    "system_conflict_stems",
    "question_marks",
    "instruction_lines_log",
    "system_present",
    "non_ascii",
)


@dataclass(slots=True)
class Extracted:
    dense: list[float]  # in DENSE_NAMES order
    user_ids: list[int]
    system_ids: list[int]
    classification: Classification


def _text(content: list[Block]) -> str:
    if len(content) == 1:
        text = content[0].get("text") if content[0].get("type") == "text" else None
        return text if isinstance(text, str) else ""
    return "\n".join(b["text"] for b in content if b.get("type") == "text" and isinstance(b.get("text"), str))


def _window(text: str, head: int, tail: int) -> str:
    return text if len(text) <= head + tail else text[:head] + "\n" + text[-tail:]


def _log(x: float) -> float:
    return math.log1p(x) if x > 0 else 0.0


def _count(text: str, marks: tuple[str, ...]) -> int:
    return sum(text.count(mark) for mark in marks)


class FeatureExtractor:
    """Request → ``Extracted``. Holds the tokenizer and the per-word and per-system-prompt memos."""

    def __init__(self, tokens: TokenIds | None = None) -> None:
        self.tokens = tokens or TokenIds(_word_flags, len(_WORD_GROUPS))
        self._system = functools.lru_cache(maxsize=SYSTEM_MEMO_SIZE)(self._read_system)

    def _read_system(self, window: str) -> tuple[tuple[int, ...], int, int, int]:
        ids, groups = self.tokens.read(window)
        return tuple(ids), groups[4], groups[3], groups[1]

    def extract(self, req: ChatRequest, *, input_tokens: int | None = None) -> Extracted:
        classification = classify(req, input_tokens=input_tokens)
        messages = req.messages
        user = ""
        tool_result = False
        for msg in reversed(messages):
            if msg.role != "user":
                continue
            if any(b.get("type") == "tool_result" for b in msg.content):
                tool_result = True
            user = _text(msg.content)
            if user.strip():
                break
        system = _text(req.system) if req.system else ""
        window = _window(user, USER_HEAD, USER_TAIL)
        lowered = " " + window.lower()
        instruction = user if len(user) <= 700 else user[:400] + "\n" + user[-300:]
        asked = " " + instruction.lower()
        user_ids, groups = self.tokens.read(window)
        system_ids, system_constraints, system_risk, system_conflict = (
            self._system(system[:SYSTEM_HEAD]) if system else ((), 0, 0, 0)
        )
        fences, code_marks, digits, _ = classification.structure
        scores = classification.scores
        n = max(len(window), 1)
        fmt = req.response_format
        choice = (req.tool_choice or {}).get("type")
        assistant_turns = sum(1 for m in messages if m.role == "assistant")
        tokens = input_tokens if input_tokens is not None else int((len(system) + len(user)) / BYTES_PER_TOKEN) + 1
        window_bytes = len(window.encode())
        dense = [
            *(_log(scores.get(task, 0.0)) for task in TASK_CLASSES),
            _log(len(user)),
            window_bytes / n - 1.0,
            _log(len(instruction)),
            _log(max(len(user) - len(instruction), 0)),
            _log(len(system)),
            _log(tokens),
            _log(len(messages)),
            _log(assistant_turns),
            _log(len(req.tools)),
            1.0 if req.tools and choice in ("tool", "any") else 0.0,
            1.0 if tool_result else 0.0,
            1.0 if fmt is not None and fmt.type == "json_schema" else 0.0,
            1.0 if fmt is not None and fmt.type != "json_schema" else 0.0,
            1.0 if "json" in lowered else 0.0,
            _log(req.max_tokens or 0),
            0.0 if req.max_tokens else 1.0,
            min(fences / 2, 5.0),
            _log(code_marks),
            _log(_count(lowered, _TRACE_MARKS)),
            _log(lowered.count("|") / 4),
            _log(lowered.count('":') + lowered.count('{"')),
            _log(lowered.count("\n- ") + lowered.count("\n* ") + lowered.count("\n1.") + lowered.count("\n2.")),
            min(digits / max(len(instruction), 1) * 10, 3.0),
            _log(_count(lowered, _MATH_MARKS)),
            _log(groups[4] + _count(asked, _CONSTRAINT_PHRASES) + system_constraints / 2),
            _log(groups[5]),
            _log(groups[0]),
            _log(groups[1]),
            _log(groups[2]),
            _log(groups[3]),
            _log(_count(asked, _CASUAL_STEMS)),
            _log(system_risk),
            _log(system_conflict),
            _log(instruction.count("?")),
            _log(instruction.count("\n")),
            1.0 if system else 0.0,
            1.0 if window_bytes > len(window) else 0.0,
        ]
        return Extracted(
            dense=dense,
            user_ids=user_ids,
            system_ids=list(system_ids),
            classification=classification,
        )
