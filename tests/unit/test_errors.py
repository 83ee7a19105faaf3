"""Every error class is listed, rooted in TaskpoolError, and survives pickle
(the JSON result backend round trip, through a real worker: tests/integration/test_error_results.py)."""

from __future__ import annotations

import pickle

import pytest

from taskpool.core import errors


@pytest.mark.parametrize("cls", errors.ALL_ERRORS, ids=lambda c: c.__name__)
def test_pickle_round_trip(cls: type[errors.TaskpoolError]) -> None:
    exc = cls("task 'x': something is wrong")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and str(back) == str(exc)


def test_every_error_is_listed_and_rooted() -> None:
    declared = {
        v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.TaskpoolError)
    }
    assert declared == set(errors.ALL_ERRORS)
    assert issubclass(errors.ConfigurationError, ValueError)
