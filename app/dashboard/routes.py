"""Routes of the built-in web dashboard under ``/dashboard``.

* ``GET /dashboard/login`` and ``POST /dashboard/login``: a form that takes the admin key and, when it
  matches (compared in constant time), sets a signed session cookie (see ``session.py``).
* ``POST /dashboard/logout``: removes the cookie.
* ``GET /dashboard``: the page (HTML); without a valid session it redirects to the login form.
* ``GET /dashboard/api/summary?range=24h|7d|30d``: the data the page draws; 401 without a session.
  Everything comes from the ledger except escalations (the ledger has no column for them), which
  are the metrics' count since the server started.
* ``GET /dashboard/static/{dashboard.js,dashboard.css,favicon.svg}``: assets, served from memory.

Nothing is loaded from anywhere else: the Content-Security-Policy allows only this origin, so no
inline script or style and no external font, script or image can run even if one slipped in.
"""

from __future__ import annotations

import hashlib
import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from app.dashboard.session import (
    COOKIE_NAME,
    COOKIE_PATH,
    SESSION_TTL,
    check_admin_key,
    issue_token,
    verify_token,
)
from app.dashboard.summary import DEFAULT_RANGE, RANGES, build_summary
from app.errors import retry_after_value

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).parent / "static"
MAX_LOGIN_BODY_BYTES = 4096
LOGIN_PATH = "/dashboard/login"

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
_NO_STORE = {"cache-control": "no-store"}


def _load_assets() -> dict[str, tuple[bytes, str, str]]:
    """The page and its assets, read once at import (no file I/O on the event loop later)."""
    types = {
        "index.html": "text/html; charset=utf-8",
        "dashboard.js": "text/javascript; charset=utf-8",
        "dashboard.css": "text/css; charset=utf-8",
    }
    assets = {}
    for name, media_type in types.items():
        body = (STATIC_DIR / name).read_bytes()
        assets[name] = (body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


_ASSETS = _load_assets()
_ICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect width="16" height="16" rx="3" fill="#141b26"/>'
    b'<path d="M8 2 14 8 8 14 2 8z" fill="#7aa2ff"/></svg>'
)
_ASSETS["favicon.svg"] = (_ICON, "image/svg+xml", '"' + hashlib.sha256(_ICON).hexdigest()[:32] + '"')


def _now() -> datetime:
    return datetime.now(UTC)


def _admin_key(request: Request) -> str | None:
    key: str | None = request.app.state.services.settings.admin_key
    return key or None


def _signed_in(request: Request) -> bool:
    admin_key = _admin_key(request)
    return admin_key is not None and verify_token(request.cookies.get(COOKIE_NAME), admin_key, _now())


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={**SECURITY_HEADERS, **_NO_STORE},
    )


def _json_error(status: int, message: str, code: str) -> Response:
    return _json({"error": {"message": message, "type": "dashboard_error", "code": code}}, status)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={**SECURITY_HEADERS, **_NO_STORE})


def _secure(request: Request) -> bool:
    # Behind a TLS-terminating load balancer the scheme arrives in X-Forwarded-Proto.
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


# ---- the login form ----------------------------------------------------------------------------------

_LOGIN_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Tollway dashboard</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
<link rel="icon" type="image/svg+xml" href="/dashboard/static/favicon.svg">
</head>
<body class="login-body">
<main class="login-card">
  <h1><span class="brand-mark">◆</span> Tollway</h1>
  <p class="muted">Sign in to the dashboard with the admin key.</p>
  {message}
  <form method="post" action="/dashboard/login" autocomplete="off">
    <label for="admin-key">Admin key</label>
    <input id="admin-key" name="admin_key" type="password" autocomplete="current-password"
           spellcheck="false" required autofocus {disabled}>
    <button id="sign-in" type="submit" {disabled}>Sign in</button>
  </form>
</main>
</body>
</html>
"""


def _login_page(status: int = 200, error: str | None = None, disabled: bool = False) -> Response:
    message = (
        f'<p id="login-error" class="login-error" role="alert">{html.escape(error)}</p>' if error else ""
    )
    body = _LOGIN_PAGE.format(message=message, disabled="disabled" if disabled else "")
    return Response(
        body,
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, **_NO_STORE},
    )


_DISABLED = "The dashboard is disabled: set TOLLWAY_ADMIN_KEY to an admin key and restart Tollway."


@router.get(LOGIN_PATH)
async def login_form(request: Request) -> Response:
    if _admin_key(request) is None:
        return _login_page(503, _DISABLED, disabled=True)
    if _signed_in(request):
        return _redirect("/dashboard")
    return _login_page()


@router.post(LOGIN_PATH)
async def login(request: Request) -> Response:
    admin_key = _admin_key(request)
    if admin_key is None:
        return _login_page(503, _DISABLED, disabled=True)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _login_page(415, "Send the form as application/x-www-form-urlencoded.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BODY_BYTES:
            return _login_page(413, "The form is too large.")
    throttle = request.app.state.services.auth_throttle
    address = request.client.host if request.client else None
    wait = throttle.retry_after(address)
    if wait is not None:
        page = _login_page(429, "Too many failed sign-ins from this address. Try again later.")
        page.headers["retry-after"] = retry_after_value(wait)
        return page
    presented = parse_qs(body.decode("utf-8", errors="replace")).get("admin_key", [""])[0]
    if not presented or not check_admin_key(presented, admin_key):
        throttle.failed(address)
        return _login_page(401, "That is not the admin key.")
    throttle.succeeded(address)
    response = _redirect("/dashboard")
    response.set_cookie(
        COOKIE_NAME,
        issue_token(admin_key, _now()),
        max_age=int(SESSION_TTL.total_seconds()),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.post("/dashboard/logout")
async def logout(request: Request) -> Response:
    response = _redirect(LOGIN_PATH)
    response.delete_cookie(
        COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure(request)
    )
    return response


# ---- the page, its data and its assets ------------------------------------------------------------------


@router.get("/dashboard")
async def page(request: Request) -> Response:
    if not _signed_in(request):
        return _redirect(LOGIN_PATH)
    body, media_type, _ = _ASSETS["index.html"]
    return Response(body, media_type=media_type, headers={**SECURITY_HEADERS, **_NO_STORE})


@router.get("/dashboard/")
async def page_slash() -> Response:
    return _redirect("/dashboard")


@router.get("/dashboard/api/summary")
async def summary(request: Request) -> Response:
    if _admin_key(request) is None:
        return _json_error(503, _DISABLED, "dashboard_disabled")
    if not _signed_in(request):
        return _json_error(401, "sign in at /dashboard/login first", "not_signed_in")
    range_name = request.query_params.get("range", DEFAULT_RANGE)
    if range_name not in RANGES:
        return _json_error(400, f"range must be one of: {', '.join(RANGES)}", "invalid_range")
    services = request.app.state.services
    teams = await services.teams.list_teams()
    tiers = {name: model.tier for name, model in services.catalog.models.items()}
    escalations = await run_in_threadpool(services.metrics.escalation_counts)
    summary = await build_summary(
        services.engine, teams, range_name, _now(), tiers=tiers, escalations=escalations
    )
    return _json(summary)


@router.get("/dashboard/static/{name}")
async def asset(request: Request, name: str) -> Response:
    if name not in ("dashboard.js", "dashboard.css", "favicon.svg"):
        return Response("not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
    body, media_type, etag = _ASSETS[name]
    headers = {**SECURITY_HEADERS, "etag": etag, "cache-control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)
