"""Browser origins (``scheme://host[:port]``) as Tollway compares them: exactly, after normalising.

A browser sends ``Origin`` with the scheme and host in lower case and without a default port
(``https://app.example.com``, never ``https://App.example.com:443/``), so configured origins are
normalised the same way and then compared as plain strings. Anything that is not an origin — a
path, a wildcard, ``null``, credentials — is refused with a message naming it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_ORIGIN_LENGTH = 253 + 20


def normalize_origin(value: str) -> str:
    """The origin as a browser would send it; ``ValueError`` naming the problem otherwise."""
    raw = value.strip()
    if not raw or raw == "*" or raw.lower() == "null":
        raise ValueError(f"{value!r} is not an origin: give scheme://host[:port], e.g. https://app.example.com")
    if len(raw) > MAX_ORIGIN_LENGTH:
        raise ValueError(f"origin {raw[:40]!r}… is too long")
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"origin {raw!r} must start with http:// or https://")
    if parts.path not in ("", "/") or parts.query or parts.fragment or raw.endswith("?") or raw.endswith("#"):
        raise ValueError(f"origin {raw!r} must not have a path, query or fragment (scheme://host[:port] only)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"origin {raw!r} must not contain credentials")
    host = parts.hostname
    if not host or "*" in host:
        raise ValueError(f"origin {raw!r} has no host (wildcards are not supported: list each origin)")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"origin {raw!r} has an invalid port") from exc
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_origin_list(value: str) -> tuple[str, ...]:
    """A comma-separated list of origins, normalised, duplicates dropped, order kept."""
    origins: dict[str, None] = {}
    for item in value.split(","):
        if item.strip():
            origins[normalize_origin(item)] = None
    return tuple(origins)
