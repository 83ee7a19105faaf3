"""A batched task inside its pool process: one call of the function for many inputs, then each
input traced with its own outcome (see :mod:`taskpool.worker.batcher` for the main process)."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
from collections.abc import Callable
from typing import Any

from taskpool.core.errors import BatchError

# -- the outcome of one input, read by the task's run() inside Celery's tracer ----------------
_NO_OUTCOME = object()
_outcome: contextvars.ContextVar[Any] = contextvars.ContextVar("taskpool_batch_outcome", default=_NO_OUTCOME)


def current_outcome() -> Any:
    """The outcome of the input being traced (:data:`_NO_OUTCOME` outside a batch)."""
    return _outcome.get()


def outside_batch(value: Any) -> bool:
    return value is _NO_OUTCOME


def deliver(outcome: Any) -> Any:
    """Return an input's result, or raise its exception (a copy: one exception of a whole-batch
    failure is raised once per input, and each raise would add to a shared traceback)."""
    if isinstance(outcome, BaseException):
        try:
            exc = copy.copy(outcome)
        except Exception:  # an exception type that cannot be copied: raise the one we have
            exc = outcome
        raise exc.with_traceback(outcome.__traceback__)
    return outcome


def call_batch(task_name: str, fun: Callable[..., Any], calls: list[tuple[Any, Any]]) -> list[Any]:
    """Call ``fun`` once for ``calls`` ([(args, kwargs)]); one outcome per call.

    Each parameter of ``fun`` receives the list of that argument across the calls. An outcome
    is the call's result or an exception: the function may put an exception in an item's
    place; if the call raises, every input gets that exception; a call whose arguments do not
    fit the function gets a ``TypeError``; a result that is not a list of the right length is
    a :class:`~taskpool.errors.BatchError` for every input.
    """
    signature = inspect.signature(fun)
    params = list(signature.parameters.values())
    outcomes: list[Any] = [None] * len(calls)
    columns: dict[str, list[Any]] = {p.name: [] for p in params}
    bound: list[int] = []
    for i, (args, kwargs) in enumerate(calls):
        try:
            arguments = signature.bind(*args, **kwargs)
        except TypeError as exc:
            outcomes[i] = TypeError(
                f"batched task {task_name!r}: input {args!r} {kwargs!r} does not fit: {exc}"
            )
            continue
        arguments.apply_defaults()
        for p in params:
            columns[p.name].append(arguments.arguments[p.name])
        bound.append(i)
    if not bound:
        return outcomes
    positional = [columns[p.name] for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    keywords = {p.name: columns[p.name] for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    try:
        results = fun(*positional, **keywords)
        if asyncio.iscoroutine(results):
            from taskpool.runtime import aio

            results = aio.run(results)
        if not isinstance(results, (list, tuple)) or len(results) != len(bound):
            got = f"{len(results)} results" if isinstance(results, (list, tuple)) else repr(type(results))
            raise BatchError(
                f"batched task {task_name!r} must return a list with one result per input: "
                f"called with {len(bound)} inputs, returned {got}"
            )
    except Exception as exc:  # the whole call failed: each input fails (and may retry) on its own
        results = [exc] * len(bound)
    for i, result in zip(bound, results, strict=True):
        outcomes[i] = result
    return outcomes


def check_function(task_name: str, fun: Callable[..., Any], bind: bool) -> None:
    """A batched function takes plain parameters (one list each); refuse what cannot work."""
    from taskpool.core.errors import ConfigurationError

    if bind:
        raise ConfigurationError(
            f"task {task_name!r}: batch=... cannot be combined with bind=True "
            "(one call serves many requests; there is no single self.request)"
        )
    for p in inspect.signature(fun).parameters.values():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ConfigurationError(
                f"task {task_name!r}: batch=... needs named parameters (each gets a list); got {p}"
            )


# -- in the pool ---------------------------------------------------------------------------
def run_batch(
    trace: Callable[..., Any],
    task_name: str,
    items: list[tuple[Any, ...]],
    gpus: list[int],
    leases: list[Any] | None = None,
) -> list[Any]:
    """The pool job of one batch: call the function once, then trace each input with its outcome.

    ``items`` are the arguments Celery's pool job would get for each input
    (``(type, id, request, body, content_type, content_encoding)``; the request holds the
    decoded args and kwargs); returns what that job would have returned, per input.
    """
    from celery import current_app

    from taskpool.runtime.gpu import leased_gpus, use_leased_device

    task = current_app.tasks[task_name]
    with leased_gpus(gpus):
        if gpus:
            use_leased_device(gpus)
        calls = [(list(item[2].get("args") or ()), dict(item[2].get("kwargs") or {})) for item in items]
        try:
            outcomes = call_batch(task_name, task.taskpool_function, calls)
        finally:
            if leases:
                from taskpool.runtime.leases import release_in_pool

                release_in_pool(task.app, leases)
    results = []
    for item, outcome in zip(items, outcomes, strict=True):
        token = _outcome.set(outcome)
        try:
            results.append(trace(*item))
        finally:
            _outcome.reset(token)
    return results


def eager_outcome(task: Any, args: Any, kwargs: Any) -> Any:
    """A batched task called outside a worker batch (eager, ``.apply()``, a direct call): a batch of one."""
    return call_batch(task.name, task.taskpool_function, [(args, kwargs)])[0]
