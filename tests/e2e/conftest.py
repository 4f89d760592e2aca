from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway import Gateway, run_gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("gateway")
    with run_gateway(tmp) as gw:
        yield gw
