"""The map runner (``task.map``'s :class:`MapRun`) and the polled :class:`Watcher`, without a broker.

:class:`MapRun` is driven through three seams of ``taskpool.client.fanout.maps``, replaced here:
``publish_chunk`` (the fake makes a :class:`FakeResult` per call and records each chunk),
``Watcher`` (:class:`ScriptedWatcher` finishes the results a test says, one ``wait`` at a time)
and ``time`` (a clock that moves only when a wait lets time pass). What is tested is the runner's
own logic: input order or finishing order, reading inputs lazily, topping up by a tenth of
``map_max_outstanding`` in chunks of at most ``PUBLISH_CHUNK``, a failure, an early close and the
timeout (what is revoked, what the message counts). Sending, the queue limit and Celery's async
result drainer run through real workers in tests/integration/test_fanout.py.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError

from taskpool.client.fanout import maps, waiting
from taskpool.client.fanout.maps import MapRun, run_eager
from taskpool.client.fanout.sending import PUBLISH_CHUNK
from taskpool.client.fanout.waiting import Watcher


class FakeResult:
    """What the runner reads of an ``AsyncResult``: ``id``, ``state``, ``get``, ``ready``."""

    _ids = itertools.count()

    def __init__(self, index: int, value: Any) -> None:
        self.id = f"task-{next(self._ids)}"
        self.index = index
        self.value = value  # the return value, or the exception it will fail with
        self.state = states.PENDING

    def finish(self) -> None:
        self.state = states.FAILURE if isinstance(self.value, BaseException) else states.SUCCESS

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def get(self, propagate: bool = True) -> Any:
        assert self.ready(), "the runner read a result that had not finished"
        if self.state == states.FAILURE and propagate:
            raise self.value
        return self.value


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class ScriptedWatcher:
    """Stands in for :class:`Watcher`: each ``wait`` finishes what ``pick`` chooses among the
    watched results not finished yet; when it picks nothing, the wait's whole timeout passes."""

    def __init__(self, clock: Clock, pick: Callable[[list[FakeResult]], list[FakeResult]]) -> None:
        self.clock = clock
        self.pick = pick
        self.finished: deque[str] = deque()
        self.pending: list[FakeResult] = []
        self.forgotten: list[int] = []
        self.waits = 0

    def watch(self, result: FakeResult) -> None:
        self.pending.append(result)

    def forget(self, result: FakeResult) -> None:
        self.forgotten.append(result.index)

    def wait(self, timeout: float | None) -> None:
        self.waits += 1
        chosen = self.pick(list(self.pending))
        for result in chosen:
            self.pending.remove(result)
            result.finish()
            self.finished.append(result.id)
        if not chosen:
            assert timeout is not None, "the runner waits for ever on results that never finish"
            self.clock.now += timeout


def oldest(pending: list[FakeResult]) -> list[FakeResult]:
    return pending[:1]


def newest(pending: list[FakeResult]) -> list[FakeResult]:
    return pending[-1:]


def every(pending: list[FakeResult]) -> list[FakeResult]:
    return pending


class Harness:
    """A fake task and the runner's seams; ``function`` gives each input's value (or exception)."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        *,
        limit: int = 20,
        pick: Callable[[list[FakeResult]], list[FakeResult]] = oldest,
        function: Callable[[Any], Any] = lambda x: x * x,
    ) -> None:
        self.function = function
        self.clock = Clock()
        self.watcher = ScriptedWatcher(self.clock, pick)
        self.chunks: list[int] = []
        self.results: list[FakeResult] = []
        self.revoked: list[list[str]] = []
        self.reads = 0
        control = SimpleNamespace(revoke=lambda ids: self.revoked.append(list(ids)))
        settings = SimpleNamespace(map_max_outstanding=limit)
        self.task = SimpleNamespace(name="t.square", app=SimpleNamespace(settings=settings, control=control))
        self.task.backend = None
        monkeypatch.setattr(maps, "publish_chunk", self._publish_chunk)
        monkeypatch.setattr(maps, "Watcher", lambda backend: self.watcher)
        monkeypatch.setattr(maps, "time", self.clock)
        monkeypatch.setattr(maps, "no_consumer_hint", lambda task: "no live worker consumes queue 'q'")

    def _publish_chunk(self, task: Any, chunk: list[Any]) -> list[FakeResult]:
        self.chunks.append(len(chunk))
        sent = []
        for args, kwargs in chunk:
            try:
                value = self.function(*args, **kwargs)
            except Exception as exc:
                value = exc
            sent.append(FakeResult(len(self.results), value))
            self.results.append(sent[-1])
        return sent

    def calls(self, count: int) -> Iterator[Any]:
        for x in range(count):
            self.reads += 1
            yield ((x,), {})

    def run(
        self,
        count: int,
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        runner = MapRun(self.task, self.calls(count), ordered, return_exceptions, timeout, timeout)  # type: ignore[arg-type]
        return runner.run()

    def ids(self, indexes: range | list[int]) -> list[str]:
        return [self.results[i].id for i in indexes]


def test_ordered_map_yields_in_input_order_whatever_order_results_finish_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, pick=newest)
    assert list(h.run(6)) == [0, 1, 4, 9, 16, 25]
    assert h.chunks == [6] and h.revoked == []


def test_unordered_map_yields_results_as_they_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, pick=newest)
    assert list(h.run(6, ordered=False)) == [25, 16, 9, 4, 1, 0]
    assert h.revoked == [] and h.watcher.forgotten == []


def test_nothing_is_read_or_sent_before_the_first_next(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    results = h.run(5)
    assert (h.reads, h.chunks) == (0, [])
    assert next(results) == 0
    assert (h.reads, h.chunks) == (5, [5])


def test_inputs_are_read_at_most_the_limit_ahead_and_topped_up_by_a_tenth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, limit=20)
    taken = []
    for value in h.run(100):
        taken.append(value)
        assert h.reads - len(taken) <= 20  # sent and not yet given to the caller
    assert taken == [x * x for x in range(100)]
    # The first chunk fills the window; then a top-up each time 2 (a tenth of 20) are free.
    assert h.chunks == [20] + [2] * 40
    assert h.revoked == []


def test_a_top_up_is_sent_in_chunks_of_publish_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, limit=2 * PUBLISH_CHUNK + 500, pick=every)
    results = h.run(3 * PUBLISH_CHUNK)
    assert next(results) == 0
    assert h.chunks == [PUBLISH_CHUNK, PUBLISH_CHUNK, 500]
    assert sum(1 for _ in results) == 3 * PUBLISH_CHUNK - 1
    assert sum(h.chunks) == 3 * PUBLISH_CHUNK


def test_a_failure_raises_revokes_what_is_unfinished_and_sends_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def square_but_three(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x * x

    h = Harness(monkeypatch, limit=20, function=square_but_three)
    taken = []
    with pytest.raises(ValueError, match="three"):
        for value in h.run(30):
            taken.append(value)
    assert taken == [0, 1, 4]
    # 20 sent, 2 more once two were taken; #3's failure stopped the top-ups.
    assert h.chunks == [20, 2] and h.reads == 22
    assert h.revoked == [h.ids(range(4, 22))]  # #3 finished: only the unfinished are revoked
    # #3 went to the caller (as its exception), like a yielded result: the rest are let go.
    assert h.watcher.forgotten == list(range(4, 22))


def test_return_exceptions_yields_the_exception_in_its_place(monkeypatch: pytest.MonkeyPatch) -> None:
    def square_but_three(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x * x

    h = Harness(monkeypatch, function=square_but_three)
    taken = list(h.run(5, return_exceptions=True))
    assert taken[:3] == [0, 1, 4] and taken[4] == 16
    assert isinstance(taken[3], ValueError) and str(taken[3]) == "three"
    assert h.revoked == []


def test_closing_the_map_early_revokes_what_is_unfinished(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    results = h.run(10)
    assert [next(results), next(results)] == [0, 1]
    assert isinstance(results, Generator)
    results.close()
    assert h.revoked == [h.ids(range(2, 10))]
    assert h.watcher.forgotten == list(range(2, 10))


def test_timeout_raises_with_the_counts_and_revokes_what_is_unfinished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first wait finishes #0, #1 and #4; the next finishes nothing, and the whole 5 s pass.
    h = Harness(monkeypatch, pick=lambda pending: pending[:2] + pending[4:] if len(pending) == 5 else [])
    taken = []
    with pytest.raises(CeleryTimeoutError) as info:
        for value in h.run(5, timeout=5.0):
            taken.append(value)
    assert taken == [0, 1]
    assert str(info.value) == (
        "task 't.square': map timed out after 5.0 s with 3 result(s) outstanding (2 unfinished, "
        "revoked); 2 of 5 sent were returned; no live worker consumes queue 'q'"
    )
    assert h.revoked == [h.ids([2, 3])]  # #4 finished: it is not revoked
    assert h.watcher.forgotten == [2, 3, 4]


def test_results_that_finish_as_the_deadline_passes_are_yielded_before_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch)

    def late(pending: list[FakeResult]) -> list[FakeResult]:
        h.clock.now += 10.0  # this wait took the whole timeout, and #0 came at its end
        return pending[:1] if len(pending) == 3 else []

    h.watcher.pick = late
    results = h.run(3, timeout=1.0)
    assert next(results) == 0
    with pytest.raises(
        CeleryTimeoutError, match=r"2 result\(s\) outstanding \(2 unfinished, revoked\); 1 of 3"
    ):
        next(results)
    assert h.revoked == [h.ids([1, 2])]


def test_eager_map_times_out_between_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(maps, "time", clock)

    def apply_async(args: tuple[Any, ...], kwargs: dict[str, Any]) -> FakeResult:
        clock.now += 0.6  # each input takes 0.6 s in-process
        result = FakeResult(args[0], args[0] * 10)
        result.finish()
        return result

    task = SimpleNamespace(name="t.eager", apply_async=apply_async)
    results = run_eager(task, iter([((1,), {}), ((2,), {}), ((3,), {})]), False, 1.0)  # type: ignore[arg-type]
    assert [next(results), next(results)] == [10, 20]
    with pytest.raises(CeleryTimeoutError, match=r"map timed out after 1.0 s \(eager, before input #2\)"):
        next(results)


# -- the polled Watcher (result backends without the async API) -----------------------------------
class CountingResult(FakeResult):
    """Finished from its ``polls``-th ``ready()`` on."""

    def __init__(self, index: int, polls: int) -> None:
        super().__init__(index, index)
        self.polls = polls

    def ready(self) -> bool:
        self.polls -= 1
        if self.polls <= 0:
            self.finish()
        return super().ready()


def test_polled_watcher_reports_results_in_the_order_they_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "POLL_INTERVAL", 0.001)
    watcher = Watcher(SimpleNamespace())  # no is_async, no get_many: each result's ready() is polled
    slow, fast = CountingResult(0, polls=3), CountingResult(1, polls=1)
    for result in (slow, fast):
        watcher.watch(result)
    watcher.wait(None)
    assert list(watcher.finished) == [fast.id]
    watcher.wait(None)  # returns at once: a finished result is waiting to be collected
    assert list(watcher.finished) == [fast.id]
    watcher.finished.clear()
    watcher.wait(None)
    assert list(watcher.finished) == [slow.id]


def test_polled_watcher_wait_returns_at_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "POLL_INTERVAL", 0.001)
    watcher = Watcher(SimpleNamespace())
    never = CountingResult(0, polls=10**9)
    watcher.watch(never)
    watcher.wait(0.01)
    assert not watcher.finished
    watcher.forget(never)
    watcher.wait(None)  # nothing watched: returns instead of polling for ever
    assert not watcher.finished


def test_polled_watcher_asks_get_many_once_per_poll() -> None:
    asked: list[list[str]] = []
    ready_ids: list[str] = []

    def get_many(ids: list[str], interval: float, max_iterations: int) -> Iterator[tuple[str, Any]]:
        asked.append(list(ids))
        assert max_iterations == 1
        return iter([(task_id, {}) for task_id in ids if task_id in ready_ids])

    watcher = Watcher(SimpleNamespace(get_many=get_many))
    first, second = FakeResult(0, 0), FakeResult(1, 1)
    for result in (first, second):
        watcher.watch(result)
    ready_ids.append(second.id)
    watcher.wait(None)
    assert list(watcher.finished) == [second.id]
    assert asked == [[first.id, second.id]]
    watcher.finished.clear()
    ready_ids.append(first.id)
    watcher.wait(None)
    assert list(watcher.finished) == [first.id] and asked[-1] == [first.id]
