"""Every error class survives pickle and Celery's JSON result backend (through a real worker)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from taskpool.core import errors
from tests.conftest import Worker


@pytest.mark.parametrize("cls", errors.ALL_ERRORS, ids=lambda c: c.__name__)
def test_pickle_round_trip(cls: type[errors.TaskpoolError]) -> None:
    exc = cls("task 'x': something is wrong")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and str(back) == str(exc)


@pytest.mark.parametrize("cls", errors.ALL_ERRORS, ids=lambda c: c.__name__)
def test_json_result_backend_round_trip(tp_app: Any, pool_workers: dict[str, Worker], cls: type) -> None:
    result = tp_app.raise_error.delay(cls.__name__, "task 'x': something is wrong")
    with pytest.raises(cls) as info:
        result.get(timeout=30)
    assert type(info.value) is cls
    assert str(info.value) == "task 'x': something is wrong"


def test_every_error_is_listed_and_rooted() -> None:
    declared = {
        v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.TaskpoolError)
    }
    assert declared == set(errors.ALL_ERRORS)
    assert issubclass(errors.ConfigurationError, ValueError)
