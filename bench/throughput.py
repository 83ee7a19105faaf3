"""Real work, plain Celery (its own defaults) against taskpool (its own defaults), same run.

    .venv/bin/python bench/throughput.py [--rounds R] [--only NAME,...] [--scale F] [--events]

Starts its own redis-server (never the machine's). For every round it runs, one worker group at a
time so two groups never share the 2 cores, the same workloads on both sides: no-op tasks on each
pool, I/O tasks (0.1 s sleeps) on gevent and threads, CPU tasks (50 ms busy loops) on prefork, the
same with ``max_in_flight`` equal to the pool size, and a three-pool pipeline (async I/O on gevent ->
CPU on prefork -> blocking I/O on threads, one canvas chain per event). The order of the sides
alternates between rounds; each workload reports the median seconds of each side and the ratio
plain / taskpool (> 1: taskpool is faster). See bench/README.md.

``--events``: both sides with task events on, as `taskpool up` and compose run by default (what
Flower shows): workers send task events (``-E``) and every sender a ``task-sent`` event
(``task_send_sent_event``, the workers' chains included). The base is then plain Celery with
events; results go to ``bench/results/throughput_events.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskpool.ops.launcher import Child

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "throughput.json"
EVENTS_RESULTS = ROOT / "bench" / "results" / "throughput_events.json"
TARGET = 0.95  # throughput ratio taskpool / plain Celery
PIPELINE_TARGET = 0.90  # share of the ideal makespan
KINDS = {"plain": ("bench.apps.real_plain", 1), "taskpool": ("bench.apps.real_taskpool", 2)}  # module, db
PIPELINE_EVENTS = 100
#: download 0.1 s + model 100 x 50 ms on 2 processes + save 0.1 s
PIPELINE_IDEAL = 0.1 + PIPELINE_EVENTS * 0.05 / 2 + 0.1


@dataclass
class Workload:
    """N calls of one task on each side; ``ideal`` seconds at perfect concurrency."""

    name: str
    plain: str  # task name in the plain app
    taskpool: str  # task name in the taskpool app
    n: int
    ideal: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "taskpool": []})


@dataclass
class Group:
    """Workloads that run on one worker per side: a pool at one concurrency (or the pipeline)."""

    name: str
    workers: list[tuple[str, int]]  # (pool, concurrency); the pipeline has three
    workloads: list[Workload]


def groups(scale: float) -> list[Group]:
    def n(count: int) -> int:
        return max(1, round(count * scale))

    return [
        Group("prefork -c 2", [("prefork", 2)], [
            Workload("no-op, prefork -c 2", "noop", "noop_prefork", n(1000)),
            Workload("CPU 50 ms, prefork -c 2", "cpu", "cpu_prefork", n(60), n(60) * 0.05 / 2),
            Workload("CPU 50 ms, prefork -c 2, max_in_flight=2", "cpu", "cpu_prefork_gated", n(60),
                     n(60) * 0.05 / 2),
        ]),
        Group("threads -c 8", [("threads", 8)], [
            Workload("no-op, threads -c 8", "noop", "noop_threads", n(1000)),
            Workload("I/O 0.1 s, threads -c 8", "io", "io_threads", n(160), n(160) * 0.1 / 8),
            Workload("I/O 0.1 s, threads -c 8, max_in_flight=8", "io", "io_threads_gated", n(160),
                     n(160) * 0.1 / 8),
        ]),
        Group("gevent -c 20", [("gevent", 20)], [
            Workload("I/O 0.1 s, gevent -c 20", "io", "io_gevent", n(200), n(200) * 0.1 / 20),
            Workload("I/O 0.1 s async def, gevent -c 20", "io", "aio_gevent", n(200), n(200) * 0.1 / 20),
            Workload("I/O 0.1 s, gevent -c 20, max_in_flight=20", "io", "io_gevent_gated", n(200),
                     n(200) * 0.1 / 20),
            Workload("I/O 0.1 s async def, gevent -c 20, max_in_flight=20", "io", "aio_gevent_gated",
                     n(200), n(200) * 0.1 / 20),
        ]),
        Group("gevent -c 100", [("gevent", 100)], [
            Workload("no-op, gevent -c 100", "noop", "noop_gevent", n(1000)),
            Workload("I/O 0.1 s, gevent -c 100", "io", "io_gevent", n(1000), n(1000) * 0.1 / 100),
            Workload("I/O 0.1 s async def, gevent -c 100", "io", "aio_gevent", n(1000), n(1000) * 0.1 / 100),
        ]),
        Group("pipeline", [("gevent", 8), ("prefork", 2), ("threads", 8)], [
            Workload("pipeline, 100 events", "pipeline", "pipeline", PIPELINE_EVENTS, PIPELINE_IDEAL),
            Workload("pipeline, 100 events, max_in_flight on each step", "pipeline", "pipeline_gated",
                     PIPELINE_EVENTS, PIPELINE_IDEAL),
        ]),
    ]  # fmt: skip


class Worker:
    """One `celery worker` subprocess in its own session."""

    def __init__(
        self, kind: str, pool: str, concurrency: int, env: dict[str, str], log: Path, queue: str, events: bool
    ):
        self.hostname = f"{kind}-{pool}-{concurrency}@bench"
        self.log = log
        self.argv = [
            sys.executable, "-m", "celery", "-A", KINDS[kind][0], "worker", "-P", pool,
            "-c", str(concurrency), "-n", self.hostname, "--without-mingle", "--without-gossip",
            "-l", "WARNING",
        ]  # fmt: skip
        if queue:
            self.argv += ["-Q", queue]
        if events:
            self.argv.append("-E")  # worker_send_task_events, on both sides
        self.env = env
        self.process: Child | None = None

    def start(self) -> None:
        from bench.procs import start

        self.process = start(self.argv, env=self.env, log=self.log)

    def wait_ready(self, app: Any, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not app.control.ping(destination=[self.hostname], timeout=0.5):
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.hostname} did not start:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def errors(self) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "ERROR/" in line or "CRITICAL/" in line]

    def stop(self) -> None:
        from bench.procs import stop

        proc, self.process = self.process, None
        if proc is not None:
            stop(proc, 30.0)


def run_calls(mod: Any, task_name: str, n: int, timeout: float) -> float:
    """Seconds from the first send to the last result."""
    from celery.exceptions import TimeoutError as ResultTimeout

    start = time.perf_counter()
    if task_name.startswith("pipeline"):
        suffix = "_gated" if task_name.endswith("_gated") else ""
        steps = [getattr(mod, name + suffix) for name in ("download", "model", "save")]
        results = [(steps[0].s(i) | steps[1].s() | steps[2].s()).delay() for i in range(n)]
    else:
        task = getattr(mod, task_name)
        results = [task.delay() for _ in range(n)]
    deadline = time.monotonic() + timeout
    for result in results:
        try:
            result.get(timeout=max(0.1, deadline - time.monotonic()))
        except ResultTimeout as exc:
            raise TimeoutError(f"{task_name}: {exc}\n{unfinished(mod.app, results)}") from exc
    return time.perf_counter() - start


def unfinished(app: Any, results: list[Any]) -> str:
    """Where each unfinished call stands, as its result backend stored it (a chain: each step),
    to tell a task that never ran from a result its caller never heard of."""
    lines = []
    for result in results:
        steps = []
        node = result
        while node is not None:
            steps.append(node)
            node = node.parent
        states = [app.backend.get_task_meta(step.id).get("status") for step in reversed(steps)]
        heard = result._cache is not None  # the caller's result consumer got it
        if states[-1] not in ("SUCCESS", "FAILURE") or not heard:
            lines.append(f"  {result.id}: stored {' -> '.join(states)}; heard by the caller: {heard}")
    return f"{len(lines)} of {len(results)} calls unfinished:\n" + "\n".join(lines[:20])


def run_group(
    group: Group, kind: str, mod: Any, env: dict[str, str], log_dir: Path, tag: str, events: bool = False
) -> list[str]:
    """Start the group's workers for one side, warm up, time each workload; returns worker errors."""
    workers = []
    for pool, concurrency in group.workers:
        queue = ""
        if group.name == "pipeline" and kind == "plain":
            queue = f"real.{pool}"  # plain Celery: routed by hand, one queue per pool
        log = log_dir / f"{tag}-{kind}-{pool}{concurrency}.log"
        workers.append(Worker(kind, pool, concurrency, env, log, queue, events))
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(mod.app)
        for wl in group.workloads:
            task = getattr(wl, kind)
            run_calls(mod, task, max(10, wl.n // 10), timeout=120)  # warm-up: imports, connections
            seconds = run_calls(mod, task, wl.n, timeout=300)
            wl.samples[kind].append(seconds)
            print(f"    {kind:9} {wl.name:55} {seconds:7.2f} s", flush=True)
    except Exception as exc:
        logs = "\n".join(f"--- {w.hostname} ---\n{w.tail()}" for w in workers)
        raise RuntimeError(f"{group.name} ({kind}) failed: {exc!r}\n{logs}") from exc
    finally:
        for w in workers:
            w.stop()
    return [f"{w.hostname} {tag}: {line}" for w in workers for line in w.errors()]


def run_bench(args: argparse.Namespace, chosen: list[Group]) -> list[str]:
    import redis

    from taskpool.ops.embedded import RedisServer, free_port

    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="taskpool-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis", port=free_port(), appendonly=False)
        try:
            server.start()
            base = server.url.rsplit("/", 1)[0]
            urls = {kind: f"{base}/{db}" for kind, (_, db) in KINDS.items()}
            for key in [k for k in os.environ if k.startswith(("TASKPOOL_", "BENCH_"))]:
                del os.environ[key]  # inherited settings would change one side
            os.environ.update(
                BENCH_BROKER_URL=urls["plain"],
                TASKPOOL_BROKER_URL=urls["taskpool"],
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            )
            if args.events:  # task-sent events from every sender: this process and the workers
                os.environ.update(BENCH_TASK_SEND_SENT_EVENT="1", TASKPOOL_TASK_SEND_SENT_EVENT="true")
            env = dict(os.environ)
            mods = {kind: importlib.import_module(mod) for kind, (mod, _) in KINDS.items()}
            print(f"redis-server {server.url} (temp dir, appendonly off); plain on db 1, taskpool on db 2")
            log_dir = Path(tmp) / "logs"
            log_dir.mkdir()
            for rnd in range(args.rounds):
                order = ("plain", "taskpool") if rnd % 2 == 0 else ("taskpool", "plain")
                print(f"round {rnd + 1}/{args.rounds}", flush=True)
                for group in chosen:
                    print(f"  {group.name}", flush=True)
                    for kind in order:
                        redis.Redis.from_url(urls[kind]).flushdb()
                        errors += run_group(group, kind, mods[kind], env, log_dir, f"r{rnd + 1}", args.events)
        finally:
            server.stop()
    return errors


def report(args: argparse.Namespace, chosen: list[Group], errors: list[str], wall: float) -> None:
    import celery

    rows = []
    for group in chosen:
        for wl in group.workloads:
            plain = statistics.median(wl.samples["plain"])
            tp = statistics.median(wl.samples["taskpool"])
            row: dict[str, Any] = {
                "workload": wl.name,
                "n": wl.n,
                "plain_s": round(plain, 3),
                "taskpool_s": round(tp, 3),
                "ratio": round(plain / tp, 3),
                "round_ratios": [
                    round(p / t, 3) for p, t in zip(wl.samples["plain"], wl.samples["taskpool"], strict=True)
                ],
                "samples": {k: [round(v, 3) for v in vs] for k, vs in wl.samples.items()},
            }
            if wl.ideal:
                row["ideal_s"] = round(wl.ideal, 3)
                row["plain_of_ideal"] = round(wl.ideal / plain, 3)
                row["taskpool_of_ideal"] = round(wl.ideal / tp, 3)
            if wl.plain == "pipeline":
                row["pass"] = row["taskpool_of_ideal"] >= PIPELINE_TARGET and tp <= plain
            else:
                row["pass"] = row["ratio"] >= TARGET
            rows.append(row)
    header = (
        f"{'workload':55} | {'plain s':>7} | {'taskpool s':>10} | {'ratio':>5} | "
        f"{'of ideal (plain / taskpool)':>27}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for row in rows:
        ideal = f"{row['plain_of_ideal']:.0%} / {row['taskpool_of_ideal']:.0%}" if "ideal_s" in row else ""
        flag = "" if row["pass"] else "  MISSED"
        print(
            f"{row['workload']:55} | {row['plain_s']:7.2f} | {row['taskpool_s']:10.2f} | "
            f"{row['ratio']:5.2f} | {ideal:>27}{flag}"
        )
    print(
        f"\nratio = plain Celery seconds / taskpool seconds, medians of {args.rounds} round(s); "
        f"targets: ratio >= {TARGET}, pipeline >= {PIPELINE_TARGET:.0%} of ideal and not slower than "
        f"plain; wall time {wall:.0f} s"
    )
    for row in rows:
        ratios = ", ".join(f"{r:.2f}" for r in row["round_ratios"])
        print(f"  {row['workload']:55} per-round ratios {ratios}")
    if errors:
        print(f"NOTE: workers logged {len(errors)} ERROR/CRITICAL line(s):")
        for line in errors[:20]:
            print(f"  {line}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rounds": args.rounds,
        "scale": args.scale,
        "statistic": "median",
        "base": "plain Celery with its own defaults (only broker and result backend set)"
        + (", task events on (-E, task_send_sent_event) on both sides" if args.events else ""),
        "events": args.events,
        "targets": {"ratio": TARGET, "pipeline_of_ideal": PIPELINE_TARGET},
        "worker_errors": errors,
        "celery": celery.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "wall_time_s": round(wall, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": rows,
    }
    if not args.only:
        path = EVENTS_RESULTS if args.events else RESULTS
        path.write_text(json.dumps(data, indent=2, default=repr) + "\n")
        print(f"results written to {path.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, order alternating (default 3)")
    parser.add_argument(
        "--only", default="", help="comma-separated groups: prefork, threads, gevent20, gevent100, pipeline"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the task counts (default 1)")
    parser.add_argument(
        "--events", action="store_true", help="task events on, both sides (taskpool up's default)"
    )
    args = parser.parse_args(argv)
    keys = {"prefork": 0, "threads": 1, "gevent20": 2, "gevent100": 3, "pipeline": 4}
    every = groups(args.scale)
    wanted = [k.strip() for k in args.only.split(",") if k.strip()]
    if any(k not in keys for k in wanted) or args.rounds < 1 or args.scale <= 0:
        parser.error(f"--only takes {', '.join(keys)}; --rounds >= 1; --scale > 0")
    chosen = [every[keys[k]] for k in wanted] if wanted else every
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    began = time.monotonic()
    errors = run_bench(args, chosen)
    report(args, chosen, errors, time.monotonic() - began)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every worker and the bench's redis-server were stopped", file=sys.stderr)
        sys.exit(130)
