from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.peers import Sink


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink().running() as s:
        yield s
