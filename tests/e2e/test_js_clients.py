"""JavaScript clients nobody here wrote, against Tollway's /v1/responses on a real socket.

The Vercel AI SDK's default ``openai(...)`` provider (it speaks the Responses API) and the OpenAI JS
SDK's ``responses.create`` run unchanged as Node 20 scripts under tests/js, installed with ``npm ci``
from the committed lockfile. Without Node the tests skip on a developer machine and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.gateway import Gateway

JS_DIR = Path(__file__).resolve().parents[1] / "js"
MODELS = ["claude-haiku-5-5", "gpt-5-mini"]


def _need(condition: bool, message: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a test that needs it fails rather than skips)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def node() -> str:
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    _need(node_bin is not None and npm_bin is not None, "node and npm are not installed")
    assert node_bin is not None and npm_bin is not None
    version = subprocess.run([node_bin, "--version"], capture_output=True, text=True, check=True).stdout
    _need(int(version.strip().lstrip("v").split(".")[0]) >= 20, f"Node 20+ is needed, found {version.strip()}")
    installed = JS_DIR / "node_modules" / ".package-lock.json"
    lock = JS_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [npm_bin, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stderr[-3000:]}"
    return node_bin


def _run(node: str, gw: Gateway, script: str, model: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "TOLLWAY_BASE_URL": gw.url + "/v1",
        "TOLLWAY_API_KEY": gw.team_key,
        "TOLLWAY_MODEL": model,
    }
    done = subprocess.run([node, script], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script} failed:\n{done.stderr[-3000:]}"
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("model", MODELS)
def test_vercel_ai_sdk_default_openai_provider(node: str, gateway: Gateway, model: str) -> None:
    out = _run(node, gateway, "vercel_ai.mjs", model)
    generate = out["generate"]
    assert generate["text"] and generate["finishReason"] == "stop"
    usage = generate["usage"]
    assert usage["outputTokens"] == len(generate["text"].split()) and usage["inputTokens"] > 0
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    stream = out["stream"]
    assert stream["parts"] > 2 and stream["text"] and stream["finishReason"] == "stop"
    # The tool loop: the SDK ran the tool and sent its result back as a function_call_output item.
    first, second = out["tools"]["steps"]
    assert first["finishReason"] == "tool-calls" and [c["name"] for c in first["toolCalls"]] == ["get_weather"]
    assert set(first["toolCalls"][0]["input"]) == {"city", "unit"}
    assert first["toolResults"][0].startswith("18 degrees and sunny in ")
    assert second["finishReason"] == "stop" and second["text"] and second["toolCalls"] == []
    person = out["object"]
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


@pytest.mark.parametrize("model", MODELS)
def test_openai_js_sdk_responses_create(node: str, gateway: Gateway, model: str) -> None:
    out = _run(node, gateway, "openai_sdk.mjs", model)
    create = out["create"]
    assert create["id"].startswith("resp_") and create["status"] == "completed" and create["text"]
    assert create["usage"]["output_tokens"] == len(create["text"].split())
    stream = out["stream"]
    types = stream["types"]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert types.count("response.output_text.delta") > 2
    assert stream["deltas"] == stream["completedText"] and stream["usage"]["total_tokens"] > 0
    refused = out["refused"]
    assert refused["status"] == 400 and "Tollway is stateless" in refused["message"]
