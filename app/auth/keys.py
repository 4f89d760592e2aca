"""Tollway API keys: how they look, how they are made, and how they are stored (as a hash).

A key is ``tw-`` + 8 visible characters + 43 characters of secret (32 random bytes, URL-safe
base64), e.g. ``tw-k3v9x2ab`` + ``Qm9…``. The first 11 characters (``tw-k3v9x2ab``) are the *prefix*:
stored in clear and shown in listings so people can tell keys apart. The whole key is the secret: it
is shown once, at creation, and only its SHA-256 is stored.

Why SHA-256 and not bcrypt/argon2: those slow KDFs protect *low-entropy* human passwords against
guessing. A key carries 256 random bits; nobody can enumerate that space however fast the hash, so a
slow KDF would add milliseconds to every uncached lookup and buy nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass

KEY_SCHEME = "tw-"
PREFIX_RANDOM_CHARS = 8
PREFIX_LENGTH = len(KEY_SCHEME) + PREFIX_RANDOM_CHARS
# Short-lived tokens a backend mints for a browser (app/api/browser_tokens.py).
BROWSER_TOKEN_SCHEME = "twb_"
BROWSER_PREFIX_LENGTH = len(BROWSER_TOKEN_SCHEME) + PREFIX_RANDOM_CHARS
SECRET_BYTES = 32
# token_urlsafe(32) is 43 characters; anything much longer than a key is not one of ours.
MAX_KEY_LENGTH = 256
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True, slots=True)
class NewKey:
    secret: str  # the full key, to hand to its owner once
    prefix: str
    secret_hash: str


def generate_key() -> NewKey:
    visible = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_RANDOM_CHARS))
    secret = f"{KEY_SCHEME}{visible}{secrets.token_urlsafe(SECRET_BYTES)}"
    return NewKey(secret=secret, prefix=key_prefix(secret), secret_hash=hash_key(secret))


def generate_browser_token() -> NewKey:
    """A browser token: ``twb_`` + 8 visible + 43 secret characters, hashed like a key (docs/browser.md)."""
    visible = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_RANDOM_CHARS))
    secret = f"{BROWSER_TOKEN_SCHEME}{visible}{secrets.token_urlsafe(SECRET_BYTES)}"
    return NewKey(secret=secret, prefix=secret[:BROWSER_PREFIX_LENGTH], secret_hash=hash_key(secret))


def is_browser_token(secret: str) -> bool:
    return secret.startswith(BROWSER_TOKEN_SCHEME)


def hash_key(secret: str) -> str:
    """SHA-256 hex of the whole key (see the module docstring for why a fast hash is right)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def key_prefix(secret: str) -> str:
    """The visible part of a key. For a key not in Tollway's format (a literal key from the config),
    the first characters, so listings can still tell it apart."""
    return secret[:PREFIX_LENGTH]


def looks_like_key(value: str) -> bool:
    return 0 < len(value) <= MAX_KEY_LENGTH
