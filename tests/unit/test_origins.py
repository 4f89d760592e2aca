from __future__ import annotations

import pytest

from app.config import load_settings
from app.origins import normalize_origin, parse_origin_list


@pytest.mark.parametrize(
    ("raw", "origin"),
    [
        ("https://App.Example.com", "https://app.example.com"),
        ("https://app.example.com:443/", "https://app.example.com"),
        ("http://localhost:80", "http://localhost"),
        ("http://127.0.0.1:5173", "http://127.0.0.1:5173"),
        ("http://[::1]:3000", "http://[::1]:3000"),
    ],
)
def test_origins_are_normalised_as_a_browser_sends_them(raw: str, origin: str) -> None:
    assert normalize_origin(raw) == origin


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("*", "not an origin"),
        ("null", "not an origin"),
        ("app.example.com", "http:// or https://"),
        ("ftp://app.example.com", "http:// or https://"),
        ("https://app.example.com/path", "path"),
        ("https://app.example.com?x=1", "path, query"),
        ("https://user:pw@app.example.com", "credentials"),
        ("https://*.example.com", "wildcards"),
        ("https://app.example.com:99999", "invalid port"),
    ],
)
def test_anything_else_is_refused_with_a_reason(raw: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalize_origin(raw)
    assert fragment in str(caught.value)


def test_the_setting_is_a_comma_separated_list_without_duplicates() -> None:
    assert parse_origin_list(" https://a.test, https://A.test:443 ,,http://b.test:8080 ") == (
        "https://a.test",
        "http://b.test:8080",
    )
    settings = load_settings(cors_origins="https://a.test,http://b.test:8080")
    assert settings.cors_origin_list == ("https://a.test", "http://b.test:8080")
    assert load_settings().cors_origin_list == ()  # closed by default


def test_a_bad_origin_in_the_setting_stops_start_up_naming_it() -> None:
    with pytest.raises(Exception, match=r"cors_origins: .*must not have a path"):
        load_settings(cors_origins="https://a.test/app")
