"""The one task strategy composes batching and admission from the task's options."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from celery.utils.imports import symbol_by_name

from taskpool.core.batch import Batch
from taskpool.worker import state, strategy
from taskpool.worker.batcher import Batcher
from taskpool.worker.gate import Gate
from tests.unit.consumer_fakes import FakeConsumer, fake_task


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The consumers Celery's default strategy is built over (instead of building it)."""
    seen: list[Any] = []
    monkeypatch.setattr(strategy, "default", lambda task, app, consumer, **kw: seen.append(consumer))
    return seen


def consumer_with_gate() -> tuple[FakeConsumer, Gate]:
    app = SimpleNamespace(settings=SimpleNamespace(keyspace="test"))
    consumer = FakeConsumer(app=app)
    gate = Gate(app, consumer, client=None, ttl=30.0, on_refused=lambda r, e: None)  # type: ignore[arg-type]
    state.set_gate(consumer, gate)
    state.set_batchers(consumer, {})
    return consumer, gate


def test_limits_only_go_through_the_gate(built: list[Any]) -> None:
    consumer, gate = consumer_with_gate()
    strategy.strategy(fake_task(max_in_flight=1), None, consumer)
    (target,) = built
    assert target.on_task_request == gate.admit
    assert target.pool.apply_async is not consumer.pool.apply_async  # releases before completion
    assert state.batchers_of(consumer) == {}


def test_batch_only_goes_to_a_batcher_then_to_the_pool(built: list[Any]) -> None:
    consumer, _ = consumer_with_gate()
    task = fake_task(batch=Batch(max_size=4, wait_ms=10))
    strategy.strategy(task, None, consumer)
    (target,) = built
    batcher = state.batchers_of(consumer)[task.name]
    assert isinstance(batcher, Batcher)
    assert target.on_task_request == batcher.add and target.apply_eta_task == batcher.add_eta
    assert batcher.dispatch == consumer.on_task_request
    assert batcher.apply_async == consumer.pool.apply_async


def test_batch_and_limits_send_each_flush_through_the_gate(built: list[Any]) -> None:
    consumer, gate = consumer_with_gate()
    task = fake_task(batch=Batch(max_size=4, wait_ms=10), gpu_slots=1)
    strategy.strategy(task, None, consumer)
    batcher = state.batchers_of(consumer)[task.name]
    assert built[0].on_task_request == batcher.add
    assert batcher.dispatch == gate.admit
    assert batcher.apply_async is not consumer.pool.apply_async


def test_limits_without_a_gate_fail_loudly(built: list[Any]) -> None:
    consumer = FakeConsumer()
    with pytest.raises(RuntimeError, match="no admission gate"):
        strategy.strategy(fake_task(max_in_flight=1), None, consumer)


@pytest.mark.parametrize(
    "path",
    [
        "taskpool.worker.admission:strategy",
        "taskpool.worker.batching:strategy",
        "taskpool.admission:strategy",
        "taskpool.batching:strategy",
    ],
)
def test_older_strategy_paths_name_the_same_function(path: str) -> None:
    assert symbol_by_name(path) is strategy.strategy


def test_a_client_imports_nothing_of_the_worker_side() -> None:
    code = """
import sys
from taskpool import TaskPool
from taskpool.core.batch import Batch
app = TaskPool("client", config=False)

@app.task(max_in_flight=2, batch=Batch(max_size=4, wait_ms=10))
def f(x):
    return [x]

assert f.Strategy == "taskpool.worker.strategy:strategy", f.Strategy
loaded = sorted(m for m in sys.modules if m.startswith(("taskpool.worker", "taskpool.ops")))
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
