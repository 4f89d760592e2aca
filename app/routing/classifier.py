"""The task classifier: which kind of work a request asks for, in about ten microseconds.

Pure Python, no model, bounded work. It reads the start and end of the system prompt, the latest
user message that has text (split into *instruction* — a short message, or the first and last
paragraphs of a long one — and *material*, a window of what lies between), the start of the
conversation's first user message (as material), and the request's structure. It scores each class:

* **Cue words and phrases** (``_CUES``): weighted stems such as ``summar`` (summarization),
  ``extract`` (extraction), ``classif``/``sentiment`` (classification), ``context:``/``cite``
  (RAG), ``refactor``/``traceback`` (code), ``prove``/``probability`` (reasoning),
  ``roadmap``/``milestone`` (planning). All cues are compiled into one trie-shaped regex, so a
  single left-to-right scan finds them; each distinct cue counts once. A cue in the material counts
  ``BODY_WEIGHT`` of its weight, at most ``BODY_CAP`` per class: a document that mentions a plan
  does not make its summary a planning task.
* **The system prompt's role and its standing text.** Its opening paragraph (all of a short,
  single-paragraph prompt) states the role or the task — "You are the triage step ...", "Extract
  the invoice fields ..." — and counts like the user's instruction. The paragraphs after it are
  *standing text*: policies, definitions, FAQ entries, few-shot examples, identical on every request
  of a service. They are read like material: "never promise delivery dates; quote the carrier's
  estimate" in a support prompt is not a request for an estimate.
* **Persona**: a system prompt that opens by casting the model as a conversational assistant for
  people ("You are Lumi, the friendly support assistant ...", "You are a patient Spanish tutor")
  adds ``PERSONA_WEIGHT`` to chat: what such a service mostly does is answer people, and a task in
  the user's turn has to outweigh that.
* **Structure**: structured output requested (``response_format``, or a forced tool used as an
  output schema) points to extraction, to classification when the schema is a few enums; a tiny
  ``max_tokens`` points to classification and rules out long-answer classes; code fences and code
  markers (``def ``, ``=>``, ``{\n`` ...) to code; a long input under a short instruction to
  summarization/RAG; several earlier assistant turns to chat; many digits to reasoning, and so does
  a *word problem* (several numbers and a "how much / how many / how long ..." question).

The class with the highest score wins, with two deliberate biases:

* **Ambiguity resolves upward.** If a class that needs a higher tier scores at least
  ``UPWARD_RATIO`` of the winner (60% over a small-tier winner, 75% over a medium-tier one), it wins
  instead, because routing a hard task to a small model costs quality while routing an easy task to a
  bigger model only costs money.
* **Weak evidence does not displace the default.** The request is ``chat`` (a medium-tier default)
  unless the winner scores at least ``MIN_EVIDENCE`` — one full-weight cue, or a structural signal:
  a few mentions in material or standing text alone (0.35 each) do not decide.

``confidence`` is the winner's margin over the runner-up, ``(best - second) / best`` (0 when
nothing decided); ``features`` holds what was measured, for the explain endpoint. It is built on
first access: the routing hot path never reads it.

**Memo.** What the classifier reads in a system prompt (cue hits of the role and of the standing
text, the persona, punctuation counts) is a pure function of the prompt's window, and the system
prompt is usually the same on every request of a service. ``_read_system`` keeps the last
``SYSTEM_MEMO_SIZE`` readings in an LRU keyed by the window text itself (≤ 1,301 characters, so the
memo holds at most ~330 K characters): a hit returns exactly what a fresh reading would, a different
prompt is a different key, and nothing else (request, team, time) enters the result.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, get_args

from app.config import TaskClass
from app.domain import Block, ChatRequest, Message

TASK_CLASSES: tuple[str, ...] = get_args(TaskClass)

# How demanding each class is, used only to break near-ties upward (mirrors the default task tiers).
DEMAND: dict[str, int] = {
    "classification": 0,
    "extraction": 0,
    "summarization": 1,
    "rag": 1,
    "chat": 1,
    "code": 1,
    "reasoning": 2,
    "planning": 2,
}
# Tie order: the more demanding class first, then the order of TASK_CLASSES.
_RANK_ORDER = tuple(sorted(TASK_CLASSES, key=lambda task: -DEMAND[task]))
_LONG_ANSWERS = ("summarization", "chat", "code", "planning")
# A more demanding class wins when it scores at least this share of the winner: readily when the
# winner is a small-tier class (an under-served hard task is the expensive mistake), only on a near
# tie between a medium- and a large-tier class (over-serving costs money too).
UPWARD_RATIO = {0: 0.6, 1: 0.75}
MIN_UPWARD_SCORE = 2.0
# The winner needs at least this much evidence to displace the chat default: one full-weight cue or
# a structural signal. Mentions in material or in standing text (0.35 of a cue each) alone do not.
MIN_EVIDENCE = 1.0
PERSONA_WEIGHT = 2.0  # a system prompt that casts the model as a conversational assistant
WORD_PROBLEM_WEIGHT = 2.0  # several numbers and a quantity question: as strong as "how many"
WORD_PROBLEM_NUMBERS = 3

# Text windows (characters) the classifier reads: instructions live at the start and end.
SYSTEM_HEAD, SYSTEM_TAIL = 1000, 300
USER_HEAD, USER_TAIL = 700, 500
SHORT_MESSAGE = 700  # a user message this short is all instruction
PARAGRAPH_MAX = 400  # longest opening/closing paragraph read as instruction
BODY_HEAD, BODY_TAIL = 600, 300  # of the material between them
BODY_WEIGHT = 0.35  # cue weight inside the material (a document mentioning "plan" is not a plan)
BODY_CAP = 2.0  # most a class can gain from the material, however many of its cues it contains
FIRST_USER_HEAD = 400
LOOKBACK_MESSAGES = 6
SYSTEM_MEMO_SIZE = 256  # distinct system prompts whose reading is kept (one per service, typically)

# ---- cues -------------------------------------------------------------------------------------------
# (cue, class, weight). A cue ending in "$" must end at a word boundary; otherwise it is a prefix
# (stem). Every cue must start after whitespace or punctuation.
_CUES: tuple[tuple[str, str, float], ...] = (
    # classification
    ("classif", "classification", 3.0),
    ("categori", "classification", 3.0),
    ("category", "classification", 2.5),
    ("which category", "classification", 1.0),
    ("label", "classification", 2.0),
    ("sentiment", "classification", 3.0),
    ("intent", "classification", 2.0),
    ("spam", "classification", 2.0),
    ("toxic", "classification", 2.0),
    ("triage", "classification", 2.5),
    ("tag$", "classification", 1.5),
    ("tags$", "classification", 1.5),
    ("one of:", "classification", 2.0),
    ("one of the following", "classification", 1.0),
    ("yes or no", "classification", 2.5),
    ("true or false", "classification", 2.0),
    ("positive or negative", "classification", 2.5),
    ("positive, negative", "classification", 2.5),
    ("only the label", "classification", 2.0),
    ("just the label", "classification", 2.0),
    ("a single word", "classification", 1.5),
    ("one word", "classification", 1.5),
    ("priority", "classification", 1.5),
    ("severity", "classification", 1.5),
    ("urgency", "classification", 1.5),
    ("detect the language", "classification", 2.5),
    ("what language", "classification", 2.0),
    ("which language", "classification", 1.5),
    ("moderat", "classification", 1.5),
    ("nsfw", "classification", 2.0),
    ("which team", "classification", 1.5),
    ("department", "classification", 1.0),
    ("is relevant", "classification", 1.0),
    ("relevant or", "classification", 1.5),
    ("flag$", "classification", 1.0),
    ("respond with only", "classification", 1.0),
    ("reply with only", "classification", 1.0),
    ("answer with only", "classification", 1.0),
    ("output only", "classification", 1.0),
    # extraction
    ("extract", "extraction", 3.5),
    ("parse", "extraction", 1.5),
    ("pull out", "extraction", 2.5),
    ("fields", "extraction", 1.5),
    ("field$", "extraction", 1.0),
    ("json", "extraction", 1.5),
    ("as json", "extraction", 1.0),
    ("key-value", "extraction", 2.0),
    ("invoice", "extraction", 1.5),
    ("receipt", "extraction", 1.5),
    ("purchase order", "extraction", 1.5),
    ("entities", "extraction", 2.0),
    ("named entit", "extraction", 2.5),
    ("fill in", "extraction", 1.5),
    ("populate", "extraction", 1.5),
    ("normaliz", "extraction", 1.5),
    ("normalis", "extraction", 1.5),
    ("list all", "extraction", 1.5),
    ("list every", "extraction", 1.5),
    ("find all", "extraction", 1.0),
    ("email address", "extraction", 1.0),
    ("phone number", "extraction", 1.0),
    ("line items", "extraction", 2.0),
    ("structured", "extraction", 1.5),
    ("schema", "extraction", 1.5),
    ("csv", "extraction", 1.0),
    ("dates$", "extraction", 1.0),
    ("amounts", "extraction", 1.0),
    ("return only", "extraction", 1.0),
    ("null if", "extraction", 2.0),
    ("use null", "extraction", 2.0),
    # summarization
    ("summar", "summarization", 4.0),
    ("tl;dr", "summarization", 4.0),
    ("tldr", "summarization", 4.0),
    ("recap", "summarization", 3.0),
    ("condense", "summarization", 3.0),
    ("shorten", "summarization", 2.0),
    ("key points", "summarization", 2.5),
    ("takeaways", "summarization", 3.0),
    ("main points", "summarization", 2.5),
    ("highlights", "summarization", 1.5),
    ("gist", "summarization", 3.0),
    ("bullet", "summarization", 1.0),
    ("digest", "summarization", 1.5),
    ("brief overview", "summarization", 2.0),
    ("abstract$", "summarization", 1.5),
    ("transcript", "summarization", 1.5),
    ("meeting notes", "summarization", 1.0),
    ("minutes$", "summarization", 1.0),
    ("in one sentence", "summarization", 1.5),
    ("in two sentences", "summarization", 1.5),
    ("in a paragraph", "summarization", 1.0),
    ("boil", "summarization", 1.5),
    # rag
    ("context:", "rag", 2.5),
    ("<context", "rag", 3.0),
    ("<document", "rag", 2.5),
    ("<search_result", "rag", 3.0),
    ("based on the context", "rag", 3.0),
    ("based on the provided", "rag", 3.0),
    ("based on the following", "rag", 2.0),
    ("based on the documents", "rag", 3.0),
    ("based on these", "rag", 2.0),
    ("base your answer", "rag", 2.5),
    ("using only", "rag", 2.5),
    ("only the information", "rag", 3.0),
    ("only the provided", "rag", 3.0),
    ("from the context", "rag", 3.0),
    ("in the context", "rag", 1.5),
    ("the provided context", "rag", 3.0),
    ("if the answer is not", "rag", 3.0),
    ("not in the$", "rag", 1.0),
    ("don't know", "rag", 1.0),
    ("do not know", "rag", 1.0),
    ("cite", "rag", 2.5),
    ("citation", "rag", 2.5),
    ("sources", "rag", 1.0),
    ("passage", "rag", 2.0),
    ("retrieved", "rag", 2.5),
    ("knowledge base", "rag", 2.0),
    ("excerpt", "rag", 1.5),
    ("search results", "rag", 2.5),
    ("according to the", "rag", 1.5),
    ("question:", "rag", 1.0),
    ("answer the question", "rag", 1.5),
    ("help center", "rag", 1.5),
    ("documentation", "rag", 0.5),
    ("contexto:", "rag", 2.5),
    ("faq", "rag", 2.0),
    ("only from the", "rag", 2.5),
    ("from the results", "rag", 2.0),
    # chat
    ("hi$", "chat", 1.5),
    ("hello", "chat", 1.5),
    ("hey$", "chat", 1.5),
    ("thanks", "chat", 1.0),
    ("thank you", "chat", 1.0),
    ("how are you", "chat", 2.0),
    ("friendly", "chat", 1.0),
    ("what do you think", "chat", 1.5),
    ("recommend", "chat", 1.5),
    ("suggest", "chat", 1.0),
    ("advice", "chat", 1.5),
    ("tips", "chat", 1.5),
    ("ideas for", "chat", 1.5),
    ("how do i$", "chat", 0.8),
    ("tell me", "chat", 1.0),
    ("poem", "chat", 2.0),
    ("story", "chat", 1.5),
    ("draft", "chat", 1.5),
    ("rewrite", "chat", 1.5),
    ("rephrase", "chat", 2.0),
    ("proofread", "chat", 2.0),
    ("translate", "chat", 1.5),
    ("translation", "chat", 1.5),
    ("polite", "chat", 1.0),
    ("tone", "chat", 1.0),
    ("email to$", "chat", 1.0),
    ("message to$", "chat", 1.0),
    ("explain", "chat", 1.0),
    ("what's the difference", "chat", 1.5),
    ("what is the difference", "chat", 1.5),
    ("could you", "chat", 0.5),
    ("can you", "chat", 0.5),
    ("i'm", "chat", 0.5),
    # code
    ("function", "code", 2.0),
    ("implement", "code", 2.5),
    ("refactor", "code", 3.0),
    ("debug", "code", 2.5),
    ("bug", "code", 2.0),
    ("stack trace", "code", 3.0),
    ("traceback", "code", 3.0),
    ("exception", "code", 1.5),
    ("compile", "code", 2.0),
    ("unit test", "code", 3.0),
    ("test case", "code", 2.0),
    ("pytest", "code", 3.0),
    ("regex", "code", 3.0),
    ("regular expression", "code", 3.0),
    ("sql", "code", 2.5),
    ("script", "code", 2.0),
    ("code", "code", 2.0),
    ("endpoint", "code", 1.5),
    ("class$", "code", 1.0),
    ("method", "code", 1.0),
    ("variable", "code", 1.0),
    ("coding", "code", 2.0),
    ("test suite", "code", 2.5),
    ("tests$", "code", 1.5),
    ("python", "code", 2.5),
    ("javascript", "code", 2.5),
    ("typescript", "code", 2.5),
    ("rust$", "code", 1.5),
    ("golang", "code", 2.5),
    ("java$", "code", 1.5),
    ("kotlin", "code", 2.5),
    ("bash", "code", 2.0),
    ("dockerfile", "code", 3.0),
    ("kubernetes", "code", 1.5),
    ("yaml", "code", 1.5),
    ("terraform", "code", 2.0),
    ("react", "code", 1.5),
    ("async", "code", 1.5),
    ("segfault", "code", 3.0),
    ("memory leak", "code", 2.0),
    ("pull request", "code", 2.0),
    ("diff$", "code", 1.5),
    ("commit", "code", 1.5),
    ("git$", "code", 1.5),
    ("lint", "code", 2.0),
    ("typeerror", "code", 3.0),
    ("syntax", "code", 2.0),
    ("npm", "code", 2.0),
    ("compiler", "code", 1.0),
    ("big-o", "code", 2.0),
    ("time complexity", "code", 2.0),
    ("repo", "code", 1.5),
    ("api$", "code", 1.0),
    ("snippet", "code", 1.5),
    ("null pointer", "code", 2.0),
    ("nullpointer", "code", 3.0),
    ("undefined is not", "code", 3.0),
    ("returns none", "code", 1.5),
    ("query", "code", 1.0),
    # reasoning
    ("prove", "reasoning", 3.0),
    ("proof", "reasoning", 3.0),
    ("deriv", "reasoning", 2.5),
    ("step by step", "reasoning", 2.0),
    ("step-by-step", "reasoning", 1.5),
    ("think through", "reasoning", 2.0),
    ("reasoning", "reasoning", 2.0),
    ("logic", "reasoning", 2.0),
    ("puzzle", "reasoning", 3.0),
    ("riddle", "reasoning", 3.0),
    ("calculat", "reasoning", 2.0),
    ("how many", "reasoning", 2.0),
    ("probability", "reasoning", 3.0),
    ("expected value", "reasoning", 3.0),
    ("estimate", "reasoning", 1.5),
    ("minimum", "reasoning", 1.5),
    ("maximum", "reasoning", 1.5),
    ("optimal", "reasoning", 2.0),
    ("why$", "reasoning", 1.0),
    ("explain why", "reasoning", 2.0),
    ("what would happen", "reasoning", 1.5),
    ("trade-off", "reasoning", 1.5),
    ("tradeoff", "reasoning", 1.5),
    ("analy", "reasoning", 1.5),
    ("implication", "reasoning", 1.5),
    ("counterexample", "reasoning", 3.0),
    ("contradict", "reasoning", 2.0),
    ("theorem", "reasoning", 3.0),
    ("lemma", "reasoning", 3.0),
    ("equation", "reasoning", 2.5),
    ("solve", "reasoning", 2.0),
    ("integral", "reasoning", 3.0),
    ("derivative", "reasoning", 2.5),
    ("math", "reasoning", 1.5),
    ("paradox", "reasoning", 2.5),
    ("hypothes", "reasoning", 1.5),
    ("deduc", "reasoning", 2.5),
    ("knave", "reasoning", 3.0),
    ("always lie", "reasoning", 2.5),
    ("tell the truth", "reasoning", 1.5),
    ("determine", "reasoning", 1.5),
    ("arrangement", "reasoning", 2.0),
    ("rule out", "reasoning", 2.0),
    ("ruled out", "reasoning", 2.0),
    ("sensitiv", "reasoning", 1.5),
    ("which is cheaper", "reasoning", 2.0),
    ("statistic", "reasoning", 2.5),
    ("significan", "reasoning", 2.0),
    ("compute", "reasoning", 1.0),
    ("p-value", "reasoning", 3.0),
    ("confidence interval", "reasoning", 3.0),
    ("infer$", "reasoning", 1.5),
    ("if and only if", "reasoning", 2.5),
    ("root cause", "reasoning", 2.0),
    ("which is more likely", "reasoning", 2.0),
    ("fallac", "reasoning", 2.5),
    ("argument", "reasoning", 1.5),
    ("evaluate whether", "reasoning", 2.0),
    ("is it possible", "reasoning", 1.5),
    ("worst case", "reasoning", 1.5),
    ("break even", "reasoning", 2.0),
    ("break-even", "reasoning", 2.0),
    ("consistent", "reasoning", 1.0),
    ("verify that", "reasoning", 1.5),
    # planning
    ("plan$", "planning", 3.0),
    ("plans$", "planning", 2.5),
    ("roadmap", "planning", 3.5),
    ("strategy", "planning", 2.5),
    ("strategic", "planning", 2.0),
    ("milestone", "planning", 3.0),
    ("timeline", "planning", 2.0),
    ("schedule$", "planning", 2.0),
    ("schedules$", "planning", 2.0),
    ("scheduling", "planning", 2.0),
    ("itinerary", "planning", 3.0),
    ("phases", "planning", 2.0),
    ("phased", "planning", 2.5),
    ("rollout", "planning", 2.5),
    ("roll out", "planning", 2.0),
    ("migration", "planning", 2.0),
    ("prioritiz", "planning", 2.0),
    ("prioritis", "planning", 2.0),
    ("backlog", "planning", 2.0),
    ("sprint", "planning", 2.0),
    ("next quarter", "planning", 1.5),
    ("okr", "planning", 2.5),
    ("goals", "planning", 1.5),
    ("objectives", "planning", 1.5),
    ("deadline", "planning", 1.5),
    ("system design", "planning", 2.5),
    ("design a$", "planning", 1.5),
    ("architecture", "planning", 2.0),
    ("launch", "planning", 1.5),
    ("go-to-market", "planning", 3.0),
    ("break down", "planning", 2.0),
    ("break this down", "planning", 2.0),
    ("week-by-week", "planning", 3.0),
    ("day-by-day", "planning", 3.0),
    ("how should we", "planning", 2.0),
    ("how should i", "planning", 1.5),
    ("dependencies", "planning", 1.5),
    ("risks", "planning", 1.5),
    ("contingency", "planning", 2.5),
    ("stakeholder", "planning", 2.0),
    ("agenda", "planning", 1.5),
    ("outline", "planning", 1.5),
    ("curriculum", "planning", 2.5),
    ("step plan", "planning", 2.0),
    ("sequence of$", "planning", 1.5),
    ("next steps", "planning", 2.0),
    ("allocate", "planning", 1.5),
    ("staffing", "planning", 2.0),
    ("headcount", "planning", 2.0),
)


def _cue_regex(cues: tuple[tuple[str, str, float], ...]) -> re.Pattern[str]:
    """One trie-shaped alternation of every cue: the regex engine rejects most positions on the
    first character instead of trying each cue in turn."""
    end = "\x00"  # a trie leaf
    trie: dict[str, Any] = {}
    for cue, _, _ in cues:
        node = trie
        for ch in cue:
            node = node.setdefault(ch, {})
        node[end] = {}

    def build(node: dict[str, Any]) -> str:
        branches: list[str] = []
        optional = end in node
        for ch in sorted(k for k in node if k != end):
            piece = r"\b" if ch == "$" else re.escape(ch)
            branches.append(piece + build(node[ch]))
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if optional else body

    # A cue must follow a separator (the scanned text starts with one). Matching the separator is
    # cheaper for the engine than a \b or look-behind assertion at every position; it is consumed,
    # the group returns the cue itself.
    return re.compile(r"[\s(\[\"'/,.;:<>*#_-](" + build(trie) + ")")


_CUE_RE = _cue_regex(_CUES)
_CUE_TABLE: dict[str, tuple[str, float]] = {cue.rstrip("$"): (task, weight) for cue, task, weight in _CUES}
# Substrings that are rare in prose and common in source code. Counted with str.count, which is
# several times cheaper than a regex over the same text.
_CODE_MARKERS = (
    "def ",
    "return ",
    "import ",
    "function",
    "const ",
    "=>",
    "();",
    ");",
    "{\n",
    "}\n",
    "self.",
    "print(",
    "console.",
    "#include",
    "::",
    "!=",
    "==",
    "/>",
    "fn ",
    "func ",
    "let ",
    "var ",
    "):\n",
)
_DIGIT_RE = re.compile(r"[0-9]")
# "You are [Name,] [a|an|the] [up to three words] assistant|tutor|..." at the start of the system
# prompt: the model is cast as someone people talk to. "You are the intent detector for Acme's
# assistant" does not match (the detector is the role), nor does "You are a coding agent".
_PERSONA_RE = re.compile(
    r"\s*(?:you are|you're|act as)\s+(?:[^\s,.]+,\s+)?(?:(?:a|an|the)\s+)?(?:[^\s,.;:]+\s+){0,3}?"
    r"(?:assistant|concierge|tutor|coach|companion|advis[eo]r|representative|(?:support|service|sales) agent)\b"
)
_QUANTITY_QUESTION_RE = re.compile(r"how (?:much|many|long|far)\b|what time\b")
_NUMBER_RE = re.compile(r"[0-9]+(?:[.,][0-9]+)*")


@dataclass(frozen=True, slots=True)
class _SystemReading:
    """What the classifier takes from a system prompt's window: a pure function of that text."""

    role_cues: frozenset[str]  # in the opening paragraph (all of a short single-paragraph prompt)
    standing_cues: frozenset[str]  # only in the paragraphs after it
    persona: bool
    punctuation: int  # "{", ";", "()", "=>" in the window: code density
    chars: int  # characters scanned


@dataclass(slots=True)
class Classification:
    task: TaskClass
    confidence: float
    # What was measured, kept raw: ``features`` turns it into JSON-able data when first read.
    evidence: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    _features: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def scores(self) -> dict[str, float]:
        """Each task class's score (0 for a class with no evidence); the learned router's features."""
        return dict(self.evidence[3]) if self.evidence else {}

    @property
    def structure(self) -> tuple[int, int, int, int]:
        """(code fences, code markers, digits in the instruction, scanned characters)."""
        if not self.evidence:
            return (0, 0, 0, 0)
        return (self.evidence[11], self.evidence[12], self.evidence[14], self.evidence[16])

    @property
    def features(self) -> dict[str, Any]:
        """Matched cues, per-class scores and structural measurements, for the explain endpoint."""
        if self._features is None:
            self._features = _features(*self.evidence) if self.evidence else {}
        return self._features


# ---- reading the request ---------------------------------------------------------------------------


def _text_blocks(content: list[Block]) -> str:
    if len(content) == 1:  # the common case, without building a list
        text = content[0].get("text") if content[0].get("type") == "text" else None
        return text if isinstance(text, str) else ""
    parts = [b["text"] for b in content if b.get("type") == "text" and isinstance(b.get("text"), str)]
    return parts[0] if len(parts) == 1 else "\n".join(parts)


def _window(text: str, head: int, tail: int) -> str:
    if len(text) <= head + tail:
        return text
    return text[:head] + "\n" + text[-tail:]


def _zones(text: str) -> tuple[str, str]:
    """Split a user message into (instruction, body).

    A short message is all instruction. A long one usually wraps material (a document, a log, a
    transcript) in an instruction at its start or end: the first and last paragraphs are the
    instruction, a window of what lies between is the body.
    """
    if len(text) <= SHORT_MESSAGE:
        return text, ""
    first_break = text.find("\n\n")
    last_break = text.rfind("\n\n")
    head_end = first_break if 0 < first_break <= PARAGRAPH_MAX else PARAGRAPH_MAX
    tail_start = last_break + 2 if last_break >= len(text) - PARAGRAPH_MAX else len(text) - PARAGRAPH_MAX
    tail_start = max(tail_start, head_end)
    instruction = text[:head_end] + "\n" + text[tail_start:]
    middle = text[head_end:tail_start]
    return instruction, _window(middle, BODY_HEAD, BODY_TAIL)


def _fences(text: str) -> int:
    # A one-character search (memchr) first: most texts have no backtick, and counting a
    # three-character pattern scans 50x slower.
    return text.count("```") if "`" in text else 0


def _has_block(messages: list[Message], kind: str) -> bool:
    for msg in messages:
        for block in msg.content:
            if block.get("type") == kind:
                return True
            if kind in ("image", "document") and block.get("type") == "tool_result":
                inner = block.get("content")
                if isinstance(inner, list) and any(b.get("type") == kind for b in inner):
                    return True
    return False


def _schema_shape(schema: dict[str, Any] | None) -> tuple[int, int]:
    """(number of top-level properties, number of them that are enums) of an object schema."""
    if not isinstance(schema, dict):
        return 0, 0
    props = schema.get("properties")
    if not isinstance(props, dict):
        return 0, 1 if "enum" in schema else 0
    enums = sum(1 for p in props.values() if isinstance(p, dict) and ("enum" in p or "const" in p))
    return len(props), enums


def _system_zones(lowered: str) -> tuple[str, str]:
    """Split a system prompt's window into (role, standing text).

    The opening paragraph states the role or the task; what follows — policies, definitions, FAQ
    entries, few-shot examples — is standing text. A single-paragraph prompt up to
    ``SHORT_MESSAGE`` characters is all role; a longer one without an early paragraph break is
    split after ``PARAGRAPH_MAX`` characters.
    """
    first_break = lowered.find("\n\n")
    if 0 < first_break <= PARAGRAPH_MAX:
        return lowered[:first_break], lowered[first_break:]
    if len(lowered) <= SHORT_MESSAGE:
        return lowered, ""
    return lowered[:PARAGRAPH_MAX], lowered[PARAGRAPH_MAX:]


@functools.lru_cache(maxsize=SYSTEM_MEMO_SIZE)
def _read_system(window: str) -> _SystemReading:
    """Cue hits, persona and punctuation of a system prompt's window (memoised: see the module
    docstring; the key is the window, at most ``SYSTEM_HEAD + SYSTEM_TAIL + 1`` characters)."""
    lowered = window.lower()
    role, standing = _system_zones(lowered)
    role_cues = frozenset(_CUE_RE.findall("\n" + role))
    standing_cues = frozenset(_CUE_RE.findall("\n" + standing)) - role_cues if standing else frozenset()
    punctuation = lowered.count("{") + lowered.count(";") + lowered.count("()") + lowered.count("=>")
    return _SystemReading(
        role_cues=role_cues,
        standing_cues=standing_cues,
        persona=_PERSONA_RE.match(role) is not None,
        punctuation=punctuation,
        chars=len(lowered) + 1,
    )


def classify(req: ChatRequest, *, input_tokens: int | None = None) -> Classification:
    """Classify ``req`` into one of the task classes (see the module docstring for the features).

    ``input_tokens`` is the router's estimate, when it has one (saves recomputing it).
    """
    scores = dict.fromkeys(TASK_CLASSES, 0.0)
    messages = req.messages

    # -- the text to read
    system_text = _text_blocks(req.system) if req.system else ""
    last_user = ""
    tool_loop = False
    for msg in reversed(messages[-LOOKBACK_MESSAGES:]):
        if msg.role != "user":
            continue
        text = _text_blocks(msg.content)
        for block in msg.content:
            if block.get("type") == "tool_result":
                tool_loop = True
                break
        if text.strip():
            last_user = text
            break
    first_user = ""
    if len(messages) > 2 and messages[0].role == "user":
        first_user = _text_blocks(messages[0].content)
        if first_user == last_user:
            first_user = ""
    instruction, body = _zones(last_user)
    if first_user:  # how the conversation started: context for the latest turn, weighed as material
        body = f"{first_user[:FIRST_USER_HEAD]}\n{body}"
    scanned = "\n" + instruction.lower()
    scanned_body = "\n" + body.lower() if body else ""
    system = _read_system(_window(system_text, SYSTEM_HEAD, SYSTEM_TAIL)) if system_text else None

    # -- cue words: full weight in instructions (the user's, the system prompt's role), BODY_WEIGHT
    # in the material they point at and in the system prompt's standing text
    hits = set(_CUE_RE.findall(scanned))
    if system is not None:
        hits |= system.role_cues
    for cue in hits:
        entry = _CUE_TABLE.get(cue)
        if entry is not None:
            scores[entry[0]] += entry[1]
    body_hits = set(_CUE_RE.findall(scanned_body)) - hits if scanned_body else set()
    standing_hits = system.standing_cues - hits if system is not None else frozenset()
    material = body_hits | standing_hits if standing_hits else body_hits
    if material:
        from_body: dict[str, float] = {}
        for cue in material:
            entry = _CUE_TABLE.get(cue)
            if entry is not None:
                from_body[entry[0]] = from_body.get(entry[0], 0.0) + entry[1] * BODY_WEIGHT
        for task, extra in from_body.items():
            scores[task] += extra if extra < BODY_CAP else BODY_CAP
    persona = system is not None and system.persona
    if persona:
        scores["chat"] += PERSONA_WEIGHT

    # -- structure
    assistant_turns = sum(1 for m in messages if m.role == "assistant")
    fmt = req.response_format
    tool_choice = req.tool_choice or {}
    forced_tool = bool(req.tools) and tool_choice.get("type") in ("tool", "any") and not tool_loop
    schema: dict[str, Any] | None = None
    if fmt is not None:
        schema = fmt.schema
        scores["extraction"] += 2.5 if fmt.type == "json_schema" else 1.5
    elif forced_tool:
        scores["extraction"] += 3.0  # a forced tool is a structured-output channel
        if len(req.tools) == 1:
            schema = req.tools[0].input_schema
    n_props, n_enums = _schema_shape(schema)
    if n_enums and n_props <= 3 and n_enums * 2 >= n_props:
        scores["classification"] += 2.5  # the answer is a choice among labels
    if req.tools and not forced_tool:
        scores["chat"] += 0.5

    max_tokens = req.max_tokens
    if max_tokens is not None:
        if max_tokens <= 16:
            scores["classification"] += 3.0
        elif max_tokens <= 64:
            scores["classification"] += 1.5

    fences = _fences(last_user) + _fences(system_text)
    code_window = _window(last_user, USER_HEAD, USER_TAIL)
    code_marks = 0
    if "=" in code_window or "{" in code_window or ";" in code_window or "def " in code_window:
        # Prose rarely has any of these: skip counting every marker when none is there.
        code_marks = sum(code_window.count(marker) for marker in _CODE_MARKERS)
    punctuation = scanned.count("{") + scanned.count(";") + scanned.count("()") + scanned.count("=>")
    window_len = len(scanned)
    if system is not None:
        punctuation += system.punctuation
        window_len += system.chars
    if fences >= 2:
        scores["code"] += 2.5
    if code_marks >= 3:
        scores["code"] += 2.0 if code_marks < 8 else 3.0
    if punctuation / window_len > 0.01:
        scores["code"] += 1.0

    tokens = input_tokens if input_tokens is not None else (len(system_text) + len(last_user)) // 4
    if tokens > 2500 and body and len(instruction) * 4 < tokens:  # a large body, a short instruction
        scores["summarization"] += 1.0
        scores["rag"] += 1.0
        scores["extraction"] += 0.5
    if assistant_turns >= 2:
        scores["chat"] += min(0.75 * assistant_turns, 2.5)
    head = instruction[:USER_HEAD]
    digits = len(_DIGIT_RE.findall(head))
    prose = fences == 0 and code_marks < 3
    if digits >= 15 and prose:
        scores["reasoning"] += 1.0
    # A word problem: the instruction gives several quantities and asks for one ("I ordered 4 chairs
    # at 129 and a table at 480 with 10% off ... how much do I get back?"): the answer is computed.
    word_problem = (
        digits >= WORD_PROBLEM_NUMBERS
        and prose
        and _QUANTITY_QUESTION_RE.search(scanned) is not None
        and len(_NUMBER_RE.findall(head)) >= WORD_PROBLEM_NUMBERS
    )
    if word_problem:
        scores["reasoning"] += WORD_PROBLEM_WEIGHT
    if _has_block(messages, "document"):
        scores["summarization"] += 0.5
        scores["extraction"] += 0.5
        scores["rag"] += 0.5

    if max_tokens is not None and max_tokens <= 32:  # no room for a summary, a chat turn, code, a plan
        for task in _LONG_ANSWERS:
            scores[task] *= 0.5

    # -- decide
    # Highest score first; a tie goes to the more demanding class (``_RANK_ORDER``; the sort is stable).
    ranked = sorted([(task, scores[task]) for task in _RANK_ORDER], key=itemgetter(1), reverse=True)
    best, best_score = ranked[0]
    second_score = ranked[1][1]
    upward = None
    if best_score >= MIN_EVIDENCE:
        floor = max(UPWARD_RATIO.get(DEMAND[best], 1.0) * best_score, MIN_UPWARD_SCORE)
        for task, score in ranked[1:]:
            if DEMAND[task] > DEMAND[best] and score >= floor:
                upward = task
                break
    if best_score <= 0 or (best_score < MIN_EVIDENCE and best != "chat"):
        chosen, confidence = "chat", 0.0  # nothing, or too little, points away from the default
    elif upward is not None:
        chosen = upward
        confidence = round(scores[upward] / best_score / 2, 3)
    else:
        chosen = best
        confidence = round((best_score - second_score) / best_score, 3)

    evidence = (
        hits,
        body_hits,
        standing_hits,
        ranked,
        best if upward is not None else None,
        persona,
        fmt.type if fmt else None,
        forced_tool,
        len(req.tools),
        tool_loop,
        max_tokens,
        fences,
        code_marks,
        assistant_turns,
        digits,
        word_problem,
        window_len + len(scanned_body),
    )
    return Classification(task=chosen, confidence=confidence, evidence=evidence)  # type: ignore[arg-type]


def _features(
    hits: set[str],
    body_hits: set[str],
    standing_hits: frozenset[str],
    ranked: list[tuple[str, float]],
    upward_from: str | None,
    persona: bool,
    response_format: str | None,
    forced_tool: bool,
    tools: int,
    tool_loop: bool,
    max_tokens: int | None,
    fences: int,
    code_marks: int,
    assistant_turns: int,
    digits: int,
    word_problem: bool,
    scanned_chars: int,
) -> dict[str, Any]:
    return {
        "cues": sorted(hits),
        "material_cues": sorted(body_hits),
        "standing_cues": sorted(standing_hits),
        "scores": {k: round(v, 2) for k, v in ranked if v > 0},
        "upward_from": upward_from,
        "persona": persona,
        "response_format": response_format,
        "forced_tool": forced_tool,
        "tools": tools,
        "tool_loop": tool_loop,
        "max_tokens": max_tokens,
        "code_fences": fences // 2,
        "code_marks": code_marks,
        "assistant_turns": assistant_turns,
        "digits": digits,
        "word_problem": word_problem,
        "scanned_chars": scanned_chars,
    }
