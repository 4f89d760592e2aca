"""openapi.yaml is the committed spec of every endpoint: it must match what the app serves."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.config import Settings
from app.main import create_app
from app.openapi import UNDOCUMENTED, app_paths, build_spec

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"


def _app() -> object:
    return create_app(Settings(simulator="always"))


def test_committed_spec_matches_the_app() -> None:
    committed = yaml.safe_load(SPEC_PATH.read_text())
    generated = yaml.safe_load(yaml.safe_dump(build_spec(_app()), sort_keys=False))  # type: ignore[arg-type]
    assert committed == generated, "openapi.yaml drifted from the app: run `python -m app.openapi > openapi.yaml`"


def test_every_served_path_is_documented() -> None:
    app = _app()
    committed = yaml.safe_load(SPEC_PATH.read_text())
    documented = set(committed["paths"])
    served = app_paths(app)  # type: ignore[arg-type]
    missing = {p for p in served if p not in documented and p not in UNDOCUMENTED and not p.startswith("/dashboard")}
    assert not missing, f"served but not in openapi.yaml: {sorted(missing)}"
    stale = {p for p in documented if p not in served}
    assert not stale, f"in openapi.yaml but not served: {sorted(stale)}"


def test_chat_endpoints_document_their_error_envelopes() -> None:
    committed = yaml.safe_load(SPEC_PATH.read_text())
    messages = committed["paths"]["/v1/messages"]["post"]["responses"]
    chat = committed["paths"]["/v1/chat/completions"]["post"]["responses"]
    for status in ("400", "401", "404", "413", "429"):
        assert messages[status]["content"]["application/json"]["schema"]["properties"]["type"] == {"const": "error"}
        assert "error" in chat[status]["content"]["application/json"]["schema"]["properties"]
