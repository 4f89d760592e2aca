"""The admin API: teams, keys and usage reports under ``/admin/…``.

Authenticated by the admin key (``TOLLWAY_ADMIN_KEY``), presented as ``Authorization: Bearer <key>``
or ``x-api-key``: no key or an unknown one is 401, a valid *team* key is 403 (it authenticates, but
not for this), and with no admin key configured every endpoint answers 503 saying how to enable it.

Bodies are read and validated here rather than by FastAPI's parameter machinery, so that every bad
input — oversized, not UTF-8, not JSON, unknown or out-of-range fields — gets a precise message in
the OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status, and
nothing is written before validation has passed.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.auth.keystore import KeyStoreUnavailable
from app.auth.principal import Limits
from app.auth.records import KeyRecord
from app.db.engine import is_unavailable
from app.errors import retry_after_value
from app.ledger.reports import GROUP_BY_CHOICES, BadRange, GroupBy, parse_range, usage_report
from app.teams.schemas import KeyCreate, KeyUpdate, PolicyIn, TeamCreate, TeamUpdate
from app.teams.store import Conflict, NotFound

log = logging.getLogger(__name__)

MAX_ADMIN_BODY_BYTES = 64 * 1024
ModelT = TypeVar("ModelT", bound=BaseModel)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error a client sees, in the OpenAI envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def response(self) -> Response:
        body = {
            "error": {
                "message": self.message,
                "type": _ERROR_TYPES.get(self.status, "api_error"),
                "param": self.param,
                "code": self.code,
            }
        }
        headers = {"www-authenticate": "Bearer"} if self.status == 401 else {}
        return json_response(body, self.status, headers={**headers, **self.headers})


def json_response(body: Any, status: int = 200, *, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class EnvelopeRoute(APIRoute):
    """Renders every error raised in a handler in the envelope, without app-level handlers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return exc.response()
            except NotFound as exc:
                return ApiError(404, str(exc)).response()
            except Conflict as exc:
                return ApiError(409, str(exc)).response()
            except BadRange as exc:
                return ApiError(400, str(exc), param=exc.param).response()
            except RequestValidationError as exc:
                message, param = _describe_errors(exc.errors())
                return ApiError(400, message, param=param).response()
            except StarletteHTTPException as exc:
                return ApiError(exc.status_code, str(exc.detail)).response()
            except Exception as exc:
                if not (isinstance(exc, KeyStoreUnavailable) or is_unavailable(exc)):
                    raise
                log.warning("database unavailable for %s %s", request.method, request.url.path, exc_info=True)
                return ApiError(
                    503, "the database is unavailable; retry shortly", code="database_unavailable"
                ).response()

        return route_handler


router = APIRouter(route_class=EnvelopeRoute, tags=["admin"])


# ---- authentication --------------------------------------------------------------------------------


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


async def require_admin(request: Request) -> Any:
    """The services object, once the request is known to carry the admin key."""
    services = request.app.state.services
    admin_key: str | None = services.settings.admin_key
    if not admin_key:
        raise ApiError(
            503,
            "the admin API is disabled: set TOLLWAY_ADMIN_KEY to an admin key and restart Tollway",
            code="admin_disabled",
        )
    address = request.client.host if request.client else None
    wait = services.auth_throttle.retry_after(address)
    if wait is not None:
        raise ApiError(
            429,
            "too many failed admin sign-ins from this address; retry later",
            code="rate_limit_exceeded",
            headers={"retry-after": retry_after_value(wait)},
        )
    token = presented_key(request)
    if token is None:
        raise ApiError(401, "missing admin key: send 'Authorization: Bearer <admin key>' or 'x-api-key'")
    if hmac.compare_digest(token.encode(), admin_key.encode()):
        services.auth_throttle.succeeded(address)
        return services
    services.auth_throttle.failed(address)
    if await services.keys.lookup(token) is not None:
        raise ApiError(403, "this is a team key; the admin API needs the admin key", code="not_admin")
    raise ApiError(401, "invalid admin key", code="invalid_api_key")


# ---- request bodies --------------------------------------------------------------------------------


async def read_body(request: Request, model: type[ModelT], *, required: bool = True) -> ModelT:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_ADMIN_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_ADMIN_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if required:
            raise ApiError(400, "request body must be a JSON object")
        return model()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding") from None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = _describe_errors(exc.errors())
        raise ApiError(400, message, param=param) from None


def _too_large() -> ApiError:
    return ApiError(413, f"request body is larger than {MAX_ADMIN_BODY_BYTES} bytes")


def _describe_errors(errors: Any) -> tuple[str, str | None]:
    """The first validation error as 'field: reason', and the field's dotted path."""
    parts = []
    first_param: str | None = None
    for error in list(errors):
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        first_param = first_param or where or None
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{where}: {message}" if where else message)
    return ("; ".join(parts[:5]) or "invalid request", first_param)


def _check_models(services: Any, policy: PolicyIn | None) -> None:
    catalog = getattr(services, "catalog", None)
    if catalog is None or policy is None or not policy.allowed_models:
        return
    known = set(catalog.model_index) | set(catalog.routes)
    unknown = [m for m in policy.allowed_models if m not in known]
    if unknown:
        raise ApiError(
            400,
            f"policy.allowed_models: unknown model or route: {', '.join(unknown)}",
            param="policy.allowed_models",
        )


async def _limits_changed(services: Any, team_id: str, key_id: str | None, limits: Limits) -> None:
    """Tell the budgets pillar (when present) and drop this replica's cached principals."""
    services.keys.invalidate()
    publish = getattr(getattr(services, "limiter", None), "publish_limits", None)
    if publish is None:
        return
    try:
        await publish(team_id, key_id, limits)
    except Exception:
        # The change is committed; replicas see it in principals within the key-cache TTL anyway.
        log.exception("could not publish new limits for team %s key %s", team_id, key_id)


def _now() -> datetime:
    return datetime.now(UTC)


def _key_json(key: KeyRecord, secret: str | None = None) -> dict[str, Any]:
    data = key.to_json(_now())
    if secret is not None:
        data["key"] = secret
    return data


# ---- teams -----------------------------------------------------------------------------------------


@router.post("/admin/teams", status_code=201)
async def create_team(request: Request) -> Response:
    services = await require_admin(request)
    body = await read_body(request, TeamCreate)
    _check_models(services, body.policy)
    team = await services.teams.create_team(body.name, limits=body.limits.to_limits(), policy=body.policy.to_policy())
    if not team.limits.is_unlimited():
        await _limits_changed(services, team.id, None, team.limits)
    return json_response(team.to_json(), 201)


@router.get("/admin/teams")
async def list_teams(request: Request) -> Response:
    services = await require_admin(request)
    teams = await services.teams.list_teams()
    return json_response({"object": "list", "data": [t.to_json() for t in teams]})


@router.get("/admin/teams/{team}")
async def get_team(request: Request, team: str) -> Response:
    services = await require_admin(request)
    return json_response((await services.teams.get_team(team)).to_json())


@router.patch("/admin/teams/{team}")
async def update_team(request: Request, team: str) -> Response:
    services = await require_admin(request)
    body = await read_body(request, TeamUpdate)
    _check_models(services, body.policy)
    current = await services.teams.get_team(team)
    limits = body.limits.merged_into(current.limits) if body.limits is not None else None
    try:
        policy = body.policy.merged_into(current.policy) if body.policy is not None else None
    except ValueError as exc:
        raise ApiError(400, f"policy: {exc}", param="policy") from None
    updated = await services.teams.update_team(current.id, name=body.name, limits=limits, policy=policy)
    if limits is not None:
        await _limits_changed(services, updated.id, None, updated.limits)
    else:
        services.keys.invalidate()  # names and policies live in cached principals too
    return json_response(updated.to_json())


@router.delete("/admin/teams/{team}")
async def delete_team(request: Request, team: str) -> Response:
    services = await require_admin(request)
    deleted = await services.teams.delete_team(team)
    services.keys.invalidate()
    return json_response({"id": deleted.id, "name": deleted.name, "deleted": True})


# ---- keys ------------------------------------------------------------------------------------------


@router.post("/admin/teams/{team}/keys", status_code=201)
async def create_key(request: Request, team: str) -> Response:
    services = await require_admin(request)
    body = await read_body(request, KeyCreate, required=False)
    created = await services.teams.create_key(
        team, name=body.name, limits=body.limits.to_limits(), expires_at=body.expires_at
    )
    if not created.record.limits.is_unlimited():
        await _limits_changed(services, created.record.team_id, created.record.id, created.record.limits)
    return json_response(_key_json(created.record, created.secret), 201)


@router.get("/admin/teams/{team}/keys")
async def list_keys(request: Request, team: str) -> Response:
    services = await require_admin(request)
    keys = await services.teams.list_keys(team)
    return json_response({"object": "list", "data": [_key_json(k) for k in keys]})


@router.get("/admin/keys/{key_id}")
async def get_key(request: Request, key_id: str) -> Response:
    services = await require_admin(request)
    return json_response(_key_json(await services.teams.get_key(key_id)))


@router.post("/admin/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    services = await require_admin(request)
    key = await services.teams.revoke_key(key_id)
    services.keys.invalidate()
    return json_response(_key_json(key))


@router.post("/admin/keys/{key_id}/rotate", status_code=201)
async def rotate_key(request: Request, key_id: str) -> Response:
    services = await require_admin(request)
    created = await services.teams.rotate_key(key_id)
    services.keys.invalidate()
    data = _key_json(created.record, created.secret)
    data["replaces"] = key_id
    return json_response(data, 201)


@router.patch("/admin/keys/{key_id}")
async def update_key(request: Request, key_id: str) -> Response:
    services = await require_admin(request)
    body = await read_body(request, KeyUpdate)
    current = await services.teams.get_key(key_id)
    changes: dict[str, Any] = {}
    if "name" in body.model_fields_set:
        changes["name"] = body.name
    if "expires_at" in body.model_fields_set:
        changes["expires_at"] = body.expires_at
    if body.limits is not None:
        changes["limits"] = body.limits.merged_into(current.limits)
    key = await services.teams.update_key(key_id, **changes)
    if "limits" in changes:
        await _limits_changed(services, key.team_id, key.id, key.limits)
    else:
        services.keys.invalidate()
    return json_response(_key_json(key))


# ---- usage -----------------------------------------------------------------------------------------


@router.get("/admin/usage")
async def usage(
    request: Request,
    start: str | None = None,
    end: str | None = None,
    group_by: str = "team",
    format: str = "json",
    team: str | None = None,
) -> Response:
    services = await require_admin(request)
    if group_by not in GROUP_BY_CHOICES:
        raise ApiError(400, f"group_by must be one of: {', '.join(GROUP_BY_CHOICES)}", param="group_by")
    if format not in ("json", "csv"):
        raise ApiError(400, "format must be json or csv", param="format")
    start_at, end_at = parse_range(start, end)  # BadRange → 400 naming the bad bound
    team_id = (await services.teams.get_team(team)).id if team else None
    report = await usage_report(
        services.engine, start=start_at, end=end_at, group_by=cast(GroupBy, group_by), team_id=team_id
    )
    if format == "csv":
        filename = f"tollway-usage-{start_at:%Y%m%dT%H%M}-{end_at:%Y%m%dT%H%M}-{group_by}.csv"
        return Response(
            report.to_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{filename}"'},
        )
    return json_response(report.to_json())
