"""CORS: closed unless ``TOLLWAY_CORS_ORIGINS`` lists origins, then open to exactly those.

Starlette's ``CORSMiddleware`` answers preflights and adds the headers to every response, streams
included (it decorates the response start, before the first byte of the body). Starlette matches
request headers exactly, so the headers the official SDKs send from a browser are listed one by one
(``x-stainless-*`` telemetry, ``anthropic-dangerous-direct-browser-access`` that the Anthropic SDK adds
with ``dangerouslyAllowBrowser``, ``openai-*`` from the OpenAI SDK). No credentials mode: a browser
authenticates with a bearer browser token (docs/browser.md), never with cookies.
"""

from __future__ import annotations

ALLOW_METHODS = ("GET", "POST", "OPTIONS")

ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "idempotency-key",
    # Tollway's own request headers.
    "x-tollway-task",
    "x-tollway-cache",
    "x-tollway-prompt-cache",
    # Stainless-generated SDKs (anthropic, openai) send these from browsers too.
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-read-timeout",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
)

# Response headers a page's script may read (beyond the CORS-safelisted few).
EXPOSE_HEADERS = (
    "request-id",
    "x-request-id",
    "retry-after",
    "x-should-retry",
    "x-tollway-served-model",
    "x-tollway-route-reason",
    "x-tollway-escalations",
    "x-tollway-simulated",
    "x-tollway-cache",
    "x-tollway-browser-budget-limit",
    "x-tollway-browser-budget-remaining",
    "x-tollway-budget-reserved-tokens",
    "x-tollway-budget-reserved-requests",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)

MAX_AGE_S = 600  # how long a browser may cache a preflight answer (Chromium caps it at 7,200 s)


def cors_middleware_options(origins: tuple[str, ...]) -> dict[str, object]:
    return {
        "allow_origins": list(origins),
        "allow_methods": list(ALLOW_METHODS),
        "allow_headers": list(ALLOW_HEADERS),
        "expose_headers": list(EXPOSE_HEADERS),
        "allow_credentials": False,
        "max_age": MAX_AGE_S,
    }
