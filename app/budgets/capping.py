"""Capping a request's output to what its budget has left (a team policy, off by default).

A request's worst case is a fixed part (its input bound, one request) plus an output part that is
linear in the output tokens allowed. When the worst case does not fit, the largest output that fits
every limited window is ``min`` over the windows of ``(remaining - fixed part) / cost per output
token``; the request then runs with ``max_tokens`` lowered to it. The reservation made for the capped
request goes through the same atomic check as any other, so capping never overspends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.budgets.store import WindowState
from app.budgets.windows import N_KINDS, TOKEN_KINDS, USD_KINDS

MIN_OUTPUT_TOKENS = 1


@dataclass(frozen=True, slots=True)
class Capped:
    output_tokens: int  # the cap to send upstream as max_tokens
    amounts: tuple[int, ...]  # what to reserve per kind (as ``amounts_vector``)


def cap_output(
    states: Sequence[WindowState],
    amounts: tuple[int, ...],
    output_tokens: int,
    output_micros: int = 0,
    held: tuple[int, ...] | None = None,
) -> Capped | None:
    """The largest output (≥ 1 token, ≤ ``output_tokens``) whose worst case fits every limited window.

    ``amounts`` is the full worst case per kind, of which ``output_tokens`` tokens and
    ``output_micros`` micro-USD are output. ``states`` come from a read (their ``reserved`` includes
    ``held``, this request's own reservation when it is a readmit). None when even one output token
    does not fit.
    """
    if output_tokens < MIN_OUTPUT_TOKENS:
        return None
    cap = output_tokens
    fixed_tokens = amounts[1] - output_tokens
    fixed_micros = amounts[4] - output_micros
    for state in states:
        if state.limit < 0:
            continue
        kind = state.w % N_KINDS
        room = state.limit - state.used - state.reserved + (held[kind] if held else 0)
        if kind in TOKEN_KINDS:
            cap = min(cap, room - fixed_tokens)
        elif kind in USD_KINDS:
            if room < fixed_micros:
                return None
            if output_micros > 0:
                cap = min(cap, (room - fixed_micros) * output_tokens // output_micros)
        elif room < amounts[kind]:  # requests: capping the output cannot help
            return None
    if cap < MIN_OUTPUT_TOKENS:
        return None
    tokens = fixed_tokens + cap
    micros = fixed_micros + -(-output_micros * cap // output_tokens)  # rounded up
    return Capped(cap, (amounts[0], tokens, tokens, tokens, micros, micros))
