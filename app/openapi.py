"""The OpenAPI document of every endpoint, committed as ``openapi.yaml``.

The chat endpoints are plain Starlette routes (kept off FastAPI's per-request machinery for speed),
so their part of the spec is written here; the admin, ``/v1/me``, metrics and dashboard routes are
FastAPI routers and contribute their generated schemas. ``python -m app.openapi > openapi.yaml``
regenerates the file; a test fails when the committed file and the app disagree.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import Mount, Route

from app import __version__

_ERROR_ANTHROPIC = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
        "request_id": {"type": "string"},
    },
}
_ERROR_OPENAI = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_MESSAGES_REQUEST = {
    "type": "object",
    "required": ["model", "max_tokens", "messages"],
    "additionalProperties": True,
    "description": "Anthropic Messages request. Unknown fields are passed through to Anthropic upstreams.",
    "properties": {
        "model": {"type": "string", "description": "A model id, alias, or Tollway route such as `auto`."},
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": {"type": "array", "items": {"type": "object"}},
        "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "stream": {"type": "boolean"},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "top_k": {"type": "integer"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"type": "object"},
        "metadata": {"type": "object"},
        "cache_control": {"type": "object"},
        "output_config": {"type": "object"},
    },
}
_CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": True,
    "description": "OpenAI Chat Completions request. "
    "Unknown fields are passed through to OpenAI-compatible upstreams.",
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": {"type": "object"}},
        "max_tokens": {"type": "integer"},
        "max_completion_tokens": {"type": "integer"},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "seed": {"type": "integer"},
        "n": {"type": "integer", "enum": [1]},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "response_format": {"type": "object"},
    },
}
_RESPONSES_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "additionalProperties": False,
    "description": "OpenAI Responses request, stateless: send the whole conversation in `input`. "
    "`previous_response_id`, `conversation`, `prompt`, `background`, built-in tools and logprobs are "
    "refused with a 400; `store`, `include`, `reasoning`, `truncation`, `service_tier`, `prompt_cache_key`, "
    "`prompt_cache_retention`, `stream_options` and `max_tool_calls` are accepted and ignored "
    "(docs/responses.md). Any other unknown field is a 400.",
    "properties": {
        "model": {"type": "string"},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "instructions": {"type": "string"},
        "tools": {"type": "array", "items": {"type": "object", "properties": {"type": {"const": "function"}}}},
        "tool_choice": {"oneOf": [{"type": "string", "enum": ["none", "auto", "required"]}, {"type": "object"}]},
        "parallel_tool_calls": {"type": "boolean"},
        "text": {"type": "object", "properties": {"format": {"type": "object"}}},
        "max_output_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "stream": {"type": "boolean"},
        "metadata": {"type": "object"},
        "user": {"type": "string"},
        "safety_identifier": {"type": "string"},
        "store": {"type": "boolean"},
        "reasoning": {"type": "object"},
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(schema: dict[str, Any], *statuses: int) -> dict[str, Any]:
    names = {
        400: "Invalid request",
        401: "Missing or unknown key",
        403: "Not allowed for this team",
        404: "Unknown model",
        413: "Body too large",
        429: "Budget or rate limit exceeded (retry-after set)",
        500: "Internal error",
        502: "Upstream failed",
        503: "Overloaded or budget store unavailable",
        504: "Upstream timed out",
        529: "Upstream overloaded",
    }
    return {str(s): {"description": names[s], "content": _json(schema)} for s in statuses}


_BROWSER_TOKEN_REQUEST = {
    "type": "object",
    "required": ["end_user", "allowed_origins", "max_tokens_budget"],
    "additionalProperties": False,
    "properties": {
        "end_user": {"type": "string", "minLength": 1, "maxLength": 256, "description": "Your id for the end user"},
        "allowed_origins": {
            "type": "array",
            "minItems": 1,
            "maxItems": 20,
            "items": {"type": "string", "description": "scheme://host[:port], one of TOLLWAY_CORS_ORIGINS"},
        },
        "allowed_models": {
            "type": ["array", "null"],
            "minItems": 1,
            "maxItems": 100,
            "items": {"type": "string"},
            "description": "Model names, aliases or routes; absent: whatever the team may use",
        },
        "ttl_s": {"type": "integer", "minimum": 1, "maximum": 3600, "default": 900},
        "max_tokens_budget": {"type": "integer", "minimum": 1, "description": "Tokens over the token's life"},
    },
}
_BROWSER_TOKEN = {
    "type": "object",
    "properties": {
        "object": {"const": "browser_token"},
        "id": {"type": "string"},
        "token": {"type": "string", "description": "twb_…; only in the answer to POST"},
        "prefix": {"type": "string"},
        "team_id": {"type": "string"},
        "key_id": {"type": "string"},
        "end_user": {"type": "string"},
        "allowed_origins": {"type": "array", "items": {"type": "string"}},
        "allowed_models": {"type": ["array", "null"], "items": {"type": "string"}},
        "max_tokens_budget": {"type": "integer"},
        "expires_at": {"type": "string", "format": "date-time"},
        "expires_in": {"type": "integer", "description": "Seconds; only in the answer to POST"},
        "revoked_at": {"type": ["string", "null"], "format": "date-time"},
        "created_at": {"type": "string", "format": "date-time"},
    },
}

_CHAT_ERRORS = (400, 401, 403, 404, 413, 429, 500, 502, 503, 504)

CORE_PATHS: dict[str, Any] = {
    "/v1/messages": {
        "post": {
            "summary": "Anthropic Messages (JSON or SSE when stream=true)",
            "operationId": "createMessage",
            "requestBody": {"required": True, "content": _json(_MESSAGES_REQUEST)},
            "responses": {
                "200": {
                    "description": "A message, or an SSE stream of Anthropic events",
                    "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
                },
                **_errors(_ERROR_ANTHROPIC, *_CHAT_ERRORS, 529),
            },
        }
    },
    "/v1/messages/count_tokens": {
        "post": {
            "summary": "Count input tokens (Anthropic format)",
            "operationId": "countTokens",
            "requestBody": {
                "required": True,
                "content": _json({"type": "object", "required": ["model", "messages"]}),
            },
            "responses": {
                "200": {
                    "description": "Token count",
                    "content": _json({"type": "object", "properties": {"input_tokens": {"type": "integer"}}}),
                },
                **_errors(_ERROR_ANTHROPIC, 400, 401, 404),
            },
        }
    },
    "/v1/chat/completions": {
        "post": {
            "summary": "OpenAI Chat Completions (JSON or SSE when stream=true)",
            "operationId": "createChatCompletion",
            "requestBody": {"required": True, "content": _json(_CHAT_REQUEST)},
            "responses": {
                "200": {
                    "description": "A chat completion, or an SSE stream of chunks ending in [DONE]",
                    "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
                },
                **_errors(_ERROR_OPENAI, *_CHAT_ERRORS),
            },
        }
    },
    "/v1/responses": {
        "post": {
            "summary": "OpenAI Responses (JSON, or SSE of response.* events when stream=true); stateless",
            "operationId": "createResponse",
            "requestBody": {"required": True, "content": _json(_RESPONSES_REQUEST)},
            "responses": {
                "200": {
                    "description": "A response object, or an SSE stream from response.created to response.completed",
                    "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
                },
                **_errors(_ERROR_OPENAI, *_CHAT_ERRORS),
            },
        }
    },
    "/v1/models": {
        "get": {
            "summary": "Models and routes the caller may use (Anthropic shape when anthropic-version is sent)",
            "operationId": "listModels",
            "responses": {
                "200": {"description": "Model list", "content": _json({"type": "object"})},
                **_errors(_ERROR_OPENAI, 401),
            },
        }
    },
    "/v1/models/{model_id}": {
        "get": {
            "summary": "One model or route",
            "operationId": "getModel",
            "parameters": [
                {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "Model", "content": _json({"type": "object"})},
                **_errors(_ERROR_OPENAI, 401, 404),
            },
        }
    },
    "/v1/routing/explain": {
        "post": {
            "summary": "Explain the routing decision for a request without calling any provider",
            "operationId": "explainRoute",
            "parameters": [
                {
                    "name": "format",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["openai", "anthropic"]},
                }
            ],
            "requestBody": {"required": True, "content": _json({"type": "object"})},
            "responses": {
                "200": {
                    "description": "Candidates, verdicts, expected costs and the choice",
                    "content": _json({"type": "object"}),
                },
                **_errors(_ERROR_OPENAI, 400, 401, 403, 404),
            },
        }
    },
    "/v1/browser-tokens": {
        "post": {
            "summary": "Mint a short-lived browser token (authenticated with a team key; docs/browser.md)",
            "operationId": "createBrowserToken",
            "requestBody": {"required": True, "content": _json(_BROWSER_TOKEN_REQUEST)},
            "responses": {
                "201": {
                    "description": "The token (shown once) and its terms",
                    "content": _json(_BROWSER_TOKEN),
                },
                **_errors(_ERROR_OPENAI, 400, 401, 403, 413, 503),
            },
        }
    },
    "/v1/browser-tokens/{token_id}": {
        "delete": {
            "summary": "Revoke a browser token (its team's key or the admin key)",
            "operationId": "revokeBrowserToken",
            "parameters": [{"name": "token_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "The revoked token's record", "content": _json(_BROWSER_TOKEN)},
                **_errors(_ERROR_OPENAI, 401, 403, 404, 503),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (Bearer token when TOLLWAY_METRICS_TOKEN is set)",
            "operationId": "metrics",
            "responses": {
                "200": {"description": "Prometheus text exposition format", "content": {"text/plain": {}}},
                "401": {"description": "Missing or wrong metrics token"},
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness",
            "operationId": "healthz",
            "responses": {"200": {"description": "Alive"}},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: database, Redis and config",
            "operationId": "readyz",
            "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}},
        }
    },
}

# Forgiving aliases (SDK base_url mistakes) that are deliberately not documented as endpoints.
UNDOCUMENTED = {"/v1/v1/messages", "/chat/completions", "/responses", "/simulator"}


def build_spec(app: FastAPI) -> dict[str, Any]:
    generated = get_openapi(title="Tollway", version=__version__, routes=app.routes)
    paths: dict[str, Any] = dict(CORE_PATHS)
    for path, item in sorted(generated.get("paths", {}).items()):
        paths.setdefault(path, item)
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Tollway",
            "version": __version__,
            "description": "LLM gateway: Anthropic Messages, OpenAI Chat Completions and OpenAI Responses "
            "with team budgets, "
            "cheapest-adequate routing, prompt caching and a usage ledger.",
        },
        "paths": dict(sorted(paths.items())),
    }
    if generated.get("components"):
        spec["components"] = generated["components"]
    return spec


def app_paths(app: FastAPI) -> set[str]:
    """Every path the app serves (documented or not), with path converters stripped."""
    found: set[str] = set()

    def walk(routes: list[Any]) -> None:
        for route in routes:
            if isinstance(route, Mount):
                found.add(route.path)
            elif isinstance(route, Route):
                found.add(route.path.replace(":path}", "}"))
            elif hasattr(route, "original_router"):  # FastAPI's included router wrapper
                walk(list(route.original_router.routes))

    walk(list(app.routes))
    return found


def main() -> int:
    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(simulator="always"))
    yaml.safe_dump(build_spec(app), sys.stdout, sort_keys=False, allow_unicode=True, width=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
