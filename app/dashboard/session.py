"""Dashboard sessions: a signed, expiring token in a cookie, derived from the admin key.

A token is ``v1.<expires-at unix seconds>.<signature>``, the signature being HMAC-SHA256 over
``v1.<expires-at>`` with a key derived from the admin key. Any replica holding the same admin key
verifies it, so there is no server-side session store; changing the admin key signs every session
out. Logging out removes the cookie from the browser; a copied token stays valid until it expires,
which is why sessions are short.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta

COOKIE_NAME = "tollway_dashboard"
COOKIE_PATH = "/dashboard"
SESSION_TTL = timedelta(hours=12)
_VERSION = "v1"
_PURPOSE = b"tollway dashboard session v1"


def _signing_key(admin_key: str) -> bytes:
    # A key of its own: a session token never reveals anything usable as, or about, the admin key.
    return hmac.new(admin_key.encode(), _PURPOSE, hashlib.sha256).digest()


def _sign(admin_key: str, payload: str) -> str:
    digest = hmac.new(_signing_key(admin_key), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_admin_key(presented: str, admin_key: str) -> bool:
    """Constant-time comparison of what was typed with the configured admin key."""
    return hmac.compare_digest(presented.encode(), admin_key.encode())


def issue_token(admin_key: str, now: datetime, ttl: timedelta = SESSION_TTL) -> str:
    expires = int((now + ttl).timestamp())
    payload = f"{_VERSION}.{expires}"
    return f"{payload}.{_sign(admin_key, payload)}"


def verify_token(token: str | None, admin_key: str, now: datetime) -> bool:
    """True when ``token`` was issued with this admin key and has not expired at ``now``."""
    if not token:
        return False
    version, _, rest = token.partition(".")
    expires, _, signature = rest.partition(".")
    if version != _VERSION or not expires.isdigit() or not signature:
        return False
    expected = _sign(admin_key, f"{version}.{expires}")
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return False
    return now.timestamp() < int(expires)
