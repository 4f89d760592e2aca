"""Key format, hashing and prefixes."""

from __future__ import annotations

import hashlib
import re

from app.auth.keys import KEY_SCHEME, PREFIX_LENGTH, generate_key, hash_key, key_prefix, looks_like_key


def test_generated_key_has_scheme_prefix_and_high_entropy_secret() -> None:
    new = generate_key()
    assert re.fullmatch(r"tw-[a-z0-9]{8}[A-Za-z0-9_-]{43}", new.secret), new.secret
    assert new.prefix == new.secret[:PREFIX_LENGTH]
    assert new.prefix.startswith(KEY_SCHEME)
    assert new.secret_hash == hashlib.sha256(new.secret.encode()).hexdigest()
    assert new.secret not in new.secret_hash


def test_keys_are_unique() -> None:
    keys = {generate_key().secret for _ in range(2000)}
    prefixes = {k[:PREFIX_LENGTH] for k in keys}
    assert len(keys) == 2000
    # 36^8 prefixes: collisions among 2000 are possible but vanishingly rare; the hash is the identity.
    assert len(prefixes) >= 1999


def test_hash_is_stable_and_distinguishes_keys() -> None:
    a, b = generate_key(), generate_key()
    assert hash_key(a.secret) == a.secret_hash
    assert hash_key(a.secret) != hash_key(b.secret)
    assert hash_key(a.secret + "x") != a.secret_hash
    assert len(a.secret_hash) == 64


def test_prefix_of_foreign_key_is_its_start() -> None:
    assert key_prefix("sk-literal-from-config") == "sk-literal-"
    assert key_prefix("short") == "short"


def test_looks_like_key_bounds_length() -> None:
    assert looks_like_key(generate_key().secret)
    assert not looks_like_key("")
    assert not looks_like_key("x" * 10_000)


def test_hash_survives_unpaired_surrogates() -> None:
    # A header value is never like this, but a lookup must not crash on odd input.
    assert len(hash_key("tw-\udcff")) == 64
