"""What a browser token allows beyond its team's policy: which page may use it, for which models.

Both checks answer 403 (``permission``) in the client's format, naming what would be allowed, so a
frontend developer sees at once whether the token or the page is wrong. The ``Origin`` header is set
by the browser and cannot be changed by the page's script; outside a browser anyone can send any
``Origin``, which is why a browser token is also short-lived and carries a budget of its own.
"""

from __future__ import annotations

from app.auth.principal import BrowserGrant
from app.config import Catalog
from app.errors import GatewayError
from app.origins import normalize_origin


def check_origin(grant: BrowserGrant, origin: str | None) -> None:
    allowed = ", ".join(sorted(grant.allowed_origins))
    if not origin:
        raise GatewayError(
            "permission",
            f"a browser token is accepted only from a page on its allowed origins ({allowed}); "
            "this request carries no Origin header",
        )
    try:
        normalized = normalize_origin(origin)
    except ValueError:
        normalized = origin
    if normalized not in grant.allowed_origins:
        raise GatewayError(
            "permission", f"this browser token is not valid on origin {origin}; it is bound to {allowed}"
        )


def check_model(grant: BrowserGrant, requested: str, catalog: Catalog) -> None:
    """A model (by any of its names) or route the token lists; None lists: whatever the team allows."""
    allowed = grant.allowed_models
    if allowed is None or requested in allowed:
        return
    model = catalog.resolve_model(requested)
    if model is not None and model in {catalog.resolve_model(name) for name in allowed}:
        return
    raise GatewayError(
        "permission",
        f"model {requested} is not allowed for this browser token; it allows {', '.join(sorted(allowed))}",
    )
