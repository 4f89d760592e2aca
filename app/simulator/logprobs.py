"""Plausible Chat Completions ``logprobs`` for the simulator's text replies.

Each streamed text piece stands for one token (the real API's chunks carry one token each). Values are
deterministic per token text, so a test can compare the JSON and streamed answers. Shapes follow the
``openai`` SDK's ``ChoiceLogprobs`` / ``ChatCompletionTokenLogprob`` / ``TopLogprob``.
"""

from __future__ import annotations

import math
from hashlib import blake2b
from typing import Any

# Alternatives offered in top_logprobs when the chosen token is not the only candidate.
# Twenty, so top_logprobs up to its maximum of 20 is always filled even when the token is one of them.
_ALTERNATIVES = (
    " the",
    " a",
    ",",
    ".",
    " and",
    " of",
    " to",
    " in",
    " is",
    " that",
    " it",
    " for",
    " on",
    " with",
    " as",
    " was",
    " be",
    " at",
    " by",
    " this",
)


def _unit(text: str, salt: int) -> float:
    """A stable number in [0, 1) from a token's text."""
    digest = blake2b(text.encode() + bytes([salt]), digest_size=4).digest()
    return int.from_bytes(digest, "little") / 2**32


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def token_logprob(token: str, top: int) -> dict[str, Any]:
    """One ``ChatCompletionTokenLogprob``: the chosen token most likely, ``top`` alternatives after it."""
    chosen = round(math.log(0.55 + 0.45 * _unit(token, 0)), 6)  # probability 0.55-1.0
    entry = _entry(token, chosen)
    alternatives = [_entry(token, chosen)]
    remaining = 1.0 - math.exp(chosen)
    for i, alt in enumerate(a for a in _ALTERNATIVES if a != token):
        if len(alternatives) >= top:
            break
        share = remaining * (0.5 + 0.4 * _unit(token, i + 1)) / 2 ** (i + 1)  # sums below remaining, descending
        alternatives.append(_entry(alt, round(math.log(max(share, 1e-9)), 6)))
    entry["top_logprobs"] = alternatives[:top]
    return entry


def choice_logprobs(tokens: list[str], top: int) -> dict[str, Any]:
    """A choice's ``logprobs`` object for these tokens (``top`` = the request's ``top_logprobs``)."""
    return {"content": [token_logprob(t, top) for t in tokens], "refusal": None}
