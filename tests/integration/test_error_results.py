"""Every error class survives Celery's JSON result backend, through a real worker."""

from __future__ import annotations

from typing import Any

import pytest

from taskpool.core import errors
from tests.conftest import Worker


@pytest.mark.parametrize("cls", errors.ALL_ERRORS, ids=lambda c: c.__name__)
def test_json_result_backend_round_trip(tp_app: Any, pool_workers: dict[str, Worker], cls: type) -> None:
    result = tp_app.raise_error.delay(cls.__name__, "task 'x': something is wrong")
    with pytest.raises(cls) as info:
        result.get(timeout=30)
    assert type(info.value) is cls
    assert str(info.value) == "task 'x': something is wrong"
