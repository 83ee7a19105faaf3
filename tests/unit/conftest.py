"""Unit tests run without Redis, a broker or a subprocess: the Redis fixtures fail here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def redis_server() -> None:
    """Refuses: a test that needs Redis belongs in tests/integration/."""
    pytest.fail("unit tests run without Redis: move this test to tests/integration/", pytrace=False)


@pytest.fixture(scope="session")
def redis_cluster() -> None:
    """Refuses: a test that needs Redis belongs in tests/integration/."""
    pytest.fail("unit tests run without Redis: move this test to tests/integration/", pytrace=False)


@pytest.fixture(autouse=True)
def celery_worker_state() -> Iterator[None]:
    """Celery keeps a worker's reserved and active requests in module-level sets: the fake
    requests a unit test reserves must not outlive it (a later test reads those sets)."""
    from celery.worker import state

    reserved, active = set(state.reserved_requests), set(state.active_requests)
    yield
    state.reserved_requests.clear()
    state.reserved_requests.update(reserved)
    state.active_requests.clear()
    state.active_requests.update(active)
