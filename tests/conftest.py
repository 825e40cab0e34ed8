"""Session fixtures shared by the test packages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka import Tansu, tansu_session


@pytest.fixture(scope="session")
def kafka() -> Iterator[Tansu]:
    """The test Kafka broker (Tansu, memory storage), started once per session on demand."""
    yield from tansu_session()
