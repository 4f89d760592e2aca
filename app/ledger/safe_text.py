"""Strings as every store accepts them: the one escape applied to text before the ledger keeps it.

PostgreSQL ``text`` refuses the NUL character, and no store (PostgreSQL, SQLite, JSON in the spool)
can encode a lone surrogate (U+D800–U+DFFF: what invalid UTF-8 becomes when decoded with
``surrogateescape``, or a JSON ``"\\ud800"`` escape). Any such string in a usage event — a client's
model name, a provider's stop reason, an end-user id — would make its row fail. So each of those
characters is replaced by its Python escape, as ``backslashreplace`` writes it: NUL becomes the
four characters ``\\x00``, a lone surrogate ``\\udc80`` the six characters ``\\udc80``. Everything
else is kept as it is (backslashes included: the escape is for reading, not reversible when the
original already contained such a sequence literally). A value that is not a string (a provider
sending a number for ``stop_reason``) is stored as its ``str()``.
"""

from __future__ import annotations

import re
from typing import Any

_REFUSED = re.compile("[\x00\ud800-\udfff]")


def _escape_match(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_text(value: Any) -> str | None:
    """``value`` as a string every store accepts (None stays None)."""
    if value is None:
        return None
    if type(value) is not str:
        value = str(value)
    if value.isascii():  # the common case: one C-level scan, and NUL is the only refused ASCII
        return value.replace("\x00", "\\x00") if "\x00" in value else value
    return _REFUSED.sub(_escape_match, value)


def is_safe_text(value: Any) -> bool:
    """True when ``escape_text`` would return ``value`` unchanged."""
    if value is None:
        return True
    if type(value) is not str:
        return False
    if value.isascii():
        return "\x00" not in value
    return _REFUSED.search(value) is None
