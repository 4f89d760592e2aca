"""Request parameters an upstream of a given wire format would lose, and that a client relies on.

Translation to the other format (``build_request`` of ``app.wire.anthropic`` and
``app.wire.openai.provider``) keeps what has an equivalent and leaves out what has none. Most of what is
left out changes nothing the client can rely on (``seed`` is best effort even at OpenAI, ``service_tier``
is billing); what is listed here would change the answer, so a request carrying it is refused with a
400 naming the parameter instead (the router's ``parameters`` constraint, so ``auto`` routes around it).
docs/parameters.md has the whole table.
"""

from __future__ import annotations

from typing import Any, Literal

from app.domain import ChatRequest

UpstreamKind = Literal["anthropic", "openai"]
OPENAI_MAX_STOP = 4  # Chat Completions accepts at most four stop sequences
# The pass-through fields checked below (most requests carry none: one set test rules them out).
_OPENAI_ONLY = frozenset(
    {
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "functions",
        "function_call",
        "modalities",
        "audio",
        "web_search_options",
    }
)
_ANTHROPIC_ONLY = frozenset({"mcp_servers", "container"})


def _set(value: Any) -> bool:
    """Whether a pass-through field asks for something (0, false, null and empty ask for nothing)."""
    return value not in (None, 0, False, "", [], {})


def _openai_only_fields(extra: dict[str, Any]) -> dict[str, str]:
    """OpenAI request fields with no Anthropic equivalent that change the answer."""
    refused: dict[str, str] = {}
    if extra.keys().isdisjoint(_OPENAI_ONLY):
        return refused
    for name in ("frequency_penalty", "presence_penalty"):
        if _set(extra.get(name)):
            refused[name] = "Anthropic models have no repetition penalties"
    if _set(extra.get("logit_bias")):
        refused["logit_bias"] = "Anthropic models take no token biases"
    for name in ("functions", "function_call"):
        if _set(extra.get(name)):
            refused[name] = "the legacy functions API is not translated; send tools and tool_choice"
    modalities = extra.get("modalities")
    if _set(extra.get("audio")) or (isinstance(modalities, list) and "audio" in modalities):
        refused["audio" if _set(extra.get("audio")) else "modalities"] = "Anthropic models give no audio output"
    if _set(extra.get("web_search_options")):
        refused["web_search_options"] = "Anthropic models search the web through the web_search tool instead"
    return refused


def _anthropic_only_fields(req: ChatRequest, sampling: str) -> dict[str, str]:
    """Anthropic request fields and tools that an OpenAI-style upstream cannot honour."""
    refused: dict[str, str] = {}
    if req.top_k is not None and sampling == "pass":
        refused["top_k"] = "OpenAI models have no top_k"
    for name in _ANTHROPIC_ONLY.intersection(req.extra):
        if _set(req.extra[name]):
            refused[name] = "MCP connectors and code-execution containers run only on Anthropic models"
    for i, tool in enumerate(req.tools):
        kind = tool.extra.get("type")
        if kind not in (None, "custom"):
            refused.setdefault("tools", f"tools[{i}]: server tool '{kind}' runs only on Anthropic models")
    return refused


def unsupported(req: ChatRequest, kind: UpstreamKind, *, sampling: str = "pass") -> dict[str, str]:
    """Parameter → why an upstream of ``kind`` cannot honour it, for every such parameter in ``req``.

    ``sampling`` is the model's sampling policy: with ``drop`` every sampling parameter is removed by
    design (the model refuses them), so ``top_k`` is not singled out."""
    if kind == "openai":
        refused = {} if req.client_format != "anthropic" else _anthropic_only_fields(req, sampling)
        if len(req.stop_sequences) > OPENAI_MAX_STOP:
            name = "stop_sequences" if req.client_format == "anthropic" else "stop"
            refused[name] = f"OpenAI models take at most {OPENAI_MAX_STOP} stop sequences"
        return refused
    if req.client_format == "openai":
        return _openai_only_fields(req.extra)
    return {}
