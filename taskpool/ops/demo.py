"""Run a pipeline (a chain per item) through running workers, with a progress bar, and report.

Used by `taskpool up --demo` and `taskpool demo`. The report comes from what the cluster
recorded, not from the client's clock alone: each step's results (``result_extended``: name,
worker, retries, date done), dead letters added during the run, GPU slots held (sampled from
the semaphores in Redis) and the workers' own ``inspect stats`` (autoscaler, admission).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery.result import AsyncResult
from celery.states import READY_STATES, SUCCESS
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from taskpool.core.names import GPU, kind_glob
from taskpool.stores.semaphores import holders_of, semaphore_names

#: Seconds between two looks at the results (one GET per unfinished chain).
POLL_INTERVAL = 0.2


@dataclass
class StepReport:
    """One step of the pipeline (a task name) over the run."""

    task: str
    done: int = 0
    failed: int = 0
    retries: int = 0
    last_done: float = 0.0  # seconds after the first submission
    workers: set[str] = field(default_factory=set)

    @property
    def throughput(self) -> float:
        """Items per second: done / time from the first submission to this step's last result."""
        return self.done / self.last_done if self.last_done > 0 else 0.0


@dataclass
class DemoReport:
    items: int
    elapsed: float
    completed: int
    failed: int
    unfinished: int
    steps: list[StepReport]
    dead_letters: int
    gpu_slots: int
    gpu_utilisation: float | None
    workers: dict[str, dict[str, Any]]


def chain_steps(result: AsyncResult) -> list[AsyncResult]:
    """The results of a chain, first step first (``apply_async`` returns the last one)."""
    steps = [result]
    while steps[0].parent is not None:
        steps.insert(0, steps[0].parent)
    return steps


def gpu_slots_held(app: Any) -> int:
    keyspace, client = app.settings.keyspace, app.redis
    gpu_semaphores = semaphore_names(client, keyspace, kind_glob(GPU))
    return sum(len(holders_of(client, name, keyspace)) for name in gpu_semaphores)


def run_pipeline(
    app: Any,
    make_chain: Callable[[int], Any],
    items: int,
    *,
    console: Console,
    timeout: float,
    gpu_slots: int = 0,
    watch: Callable[[], None] | None = None,
) -> DemoReport:
    """Send ``make_chain(i)`` for i in range(items), follow every step, and report.

    A chain ends when its last step is ready or one step failed (a dead letter). Chains still
    running after ``timeout`` seconds are counted as unfinished. ``watch`` is called on each
    look at the results (the stack raises from it when a service crashed).
    """
    dead_before = app.dead_letters.count()
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    signatures = [make_chain(i) for i in range(items)]
    chains = [chain_steps(sig.apply_async()) for sig in signatures]
    names: list[str] = []
    position = dict.fromkeys(range(items), 0)  # chain -> index of its first unfinished step
    failed: set[int] = set()
    gpu_samples: list[int] = []
    last_gpu_sample = 0.0
    deadline = t0 + timeout
    n_steps = len(chains[0]) if chains else 0
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.1f} items/s"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        labels = step_labels(signatures[0], n_steps) if signatures else []
        bars = [progress.add_task(label, total=items, rate=0.0) for label in labels]
        counts = [0] * n_steps
        while position and time.monotonic() < deadline:
            if watch is not None:
                watch()
            for i, k in list(position.items()):
                steps = chains[i]
                while k < len(steps):
                    state = steps[k].state
                    if state == SUCCESS:
                        counts[k] += 1
                        k += 1
                    elif state in READY_STATES:  # failed for good (a dead letter) or revoked
                        failed.add(i)
                        break
                    else:
                        break
                if k == len(steps) or i in failed:
                    del position[i]
                else:
                    position[i] = k
            elapsed = time.monotonic() - t0
            for k, bar in enumerate(bars):
                progress.update(bar, completed=counts[k], rate=counts[k] / elapsed if elapsed else 0.0)
            if gpu_slots and time.monotonic() - last_gpu_sample >= 0.5:
                gpu_samples.append(gpu_slots_held(app))
                last_gpu_sample = time.monotonic()
            if position:
                time.sleep(POLL_INTERVAL)
        for k, bar in enumerate(bars):
            name = _step_name(chains, k)
            names.append(name)
            progress.update(bar, description=name.rsplit(".", 1)[-1])
    elapsed = time.monotonic() - t0
    steps_report = [StepReport(name) for name in names]
    for steps in chains:
        for k, res in enumerate(steps):
            state = res.state
            if state not in READY_STATES:
                break
            report = steps_report[k]
            # result_extended's fields; the meta is cached once the result is ready.
            report.retries += int(res.retries or 0)
            if res.worker:
                report.workers.add(str(res.worker))
            if state != SUCCESS:
                report.failed += 1
                break
            report.done += 1
            done_at = res.date_done
            if done_at is not None:
                if done_at.tzinfo is None:
                    done_at = done_at.replace(tzinfo=dt.UTC)
                report.last_done = max(report.last_done, (done_at - started_at).total_seconds())
    completed = sum(1 for steps in chains if steps and steps[-1].state == SUCCESS)
    gpu_use = None
    if gpu_slots and gpu_samples:
        gpu_use = sum(gpu_samples) / (len(gpu_samples) * gpu_slots)
    stats = app.control.inspect(timeout=1.0).stats() or {}
    return DemoReport(
        items=items,
        elapsed=elapsed,
        completed=completed,
        failed=len(failed),
        unfinished=len(position),
        steps=steps_report,
        dead_letters=max(0, app.dead_letters.count() - dead_before),
        gpu_slots=gpu_slots,
        gpu_utilisation=gpu_use,
        workers=stats,
    )


def step_labels(signature: Any, n_steps: int) -> list[str]:
    """Progress bar labels, known before anything ran: the chain's task names, short."""
    declared = [str(sig.task) for sig in getattr(signature, "tasks", ())]
    if len(declared) != n_steps:
        return [f"step {k + 1}" for k in range(n_steps)]
    return [name.rsplit(".", 1)[-1] for name in declared]


def _step_name(chains: list[list[AsyncResult]], k: int) -> str:
    for steps in chains:
        if steps[k].state in READY_STATES:
            name = steps[k].name
            if name:
                return str(name)
    return f"step {k + 1}"


def summary_tables(report: DemoReport) -> list[Table]:
    """The run in tables: per step, the run's totals, and per worker."""
    steps = Table(
        "step", "done", "failed", "retries", "last result at", "throughput", "workers", title="steps"
    )
    for s in report.steps:
        steps.add_row(
            s.task,
            str(s.done),
            str(s.failed),
            str(s.retries),
            f"{s.last_done:.2f} s",
            f"{s.throughput:.1f} items/s",
            ", ".join(sorted(s.workers)),
        )
    gpu = (
        "no task needs GPU slots"
        if not report.gpu_slots
        else f"{report.gpu_utilisation:.0%} of {report.gpu_slots} slot(s)"
        if report.gpu_utilisation is not None
        else f"not sampled ({report.gpu_slots} slot(s))"
    )
    totals = Table(
        "items", "completed", "failed", "unfinished", "elapsed", "retries", "dead letters", "GPU slot use"
    )
    totals.title = "run"
    totals.add_row(
        str(report.items),
        str(report.completed),
        str(report.failed),
        str(report.unfinished),
        f"{report.elapsed:.2f} s",
        str(sum(s.retries for s in report.steps)),
        str(report.dead_letters),
        gpu,
    )
    workers = Table(
        "worker",
        "pool",
        "concurrency",
        "min-max",
        "autoscaler moves",
        "last move",
        "admitted/waited",
        "batched inputs/calls",
    )
    workers.title = "workers"
    for node, stats in sorted(report.workers.items()):
        tp = stats.get("taskpool") or {}
        scaler = stats.get("autoscaler") or {}
        decisions = scaler.get("decisions") or []
        last = scaler.get("last_decision")
        gate = stats.get("taskpool_admission") or {}
        batches = stats.get("taskpool_batches") or {}
        workers.add_row(
            node,
            str(tp.get("pool") or "?"),
            str(tp.get("concurrency", "?")),
            f"{scaler.get('min', '?')}-{scaler.get('max', '?')}" if scaler else "fixed",
            str(len(decisions)) + ("+" if len(decisions) >= 20 else ""),
            f"{last['from']} -> {last['to']}: {last['reason']}" if last else "",
            f"{gate.get('admitted', 0)}/{gate.get('waited', 0)}" if gate else "",
            "; ".join(f"{b['inputs']}/{b['batches']}" for b in batches.values() if b.get("inputs")),
        )
    return [steps, totals, workers]
