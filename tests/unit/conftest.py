"""Unit tests run without Redis, a broker or a subprocess: the Redis fixtures fail here."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def redis_server() -> None:
    """Refuses: a test that needs Redis belongs in tests/integration/."""
    pytest.fail("unit tests run without Redis: move this test to tests/integration/", pytrace=False)


@pytest.fixture(scope="session")
def redis_cluster() -> None:
    """Refuses: a test that needs Redis belongs in tests/integration/."""
    pytest.fail("unit tests run without Redis: move this test to tests/integration/", pytrace=False)
