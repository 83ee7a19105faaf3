"""Admission benchmark, in one run: the semaphore alone, then the same shape through real workers.

    .venv/bin/python bench/admission_bench.py [--rounds 3] [--jobs 40] [--job-seconds 0.05]

(a) The semaphore (measured by ``bench/semaphore_bench.py``'s own functions): uncontended
    acquire+release latency (target p50 < 1 ms), and JOBS jobs of JOB_SECONDS on 2 slots taken by
    8 contender threads (target >= 95 % of the ideal JOBS * JOB_SECONDS / 2).
(b) Through Celery: a taskpool prefork worker of concurrency 8 (the 8 contenders) with
    ``TASKPOOL_GPUS=2`` runs JOBS ``gpu_slots=1`` tasks sleeping JOB_SECONDS, submitted with
    ``.delay()``. Makespan from the tasks' own records (first start to last end; target within
    10 % of the ideal) and end to end (first ``.delay()`` to the last result).
(c) The same tasks on a plain Celery prefork worker of concurrency 2 (no limits: the natural way
    to run two at a time), and the ratio taskpool / plain.

Starts its own redis-server in a temporary directory (never the machine's Redis); plain Celery
uses db 1, taskpool db 2. One worker runs at a time. Prints a table and writes
bench/results/admission.json. The exit code is 0 even when a target is missed: read the table.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procs import environ  # noqa: E402
from bench.semaphore_bench import contended, handoff_gaps, percentile, uncontended  # noqa: E402
from taskpool.ops.embedded import RedisServer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "admission.json"
SLOTS = 2
CONTENDERS = 8
LATENCY_TARGET_MS = 1.0
EFFICIENCY_TARGET = 0.95
MAKESPAN_TARGET = 1.10  # makespan / ideal


class Worker:
    """One ``celery worker`` subprocess in its own session; :meth:`stop` ends it and its children."""

    def __init__(self, module: str, hostname: str, concurrency: int, env: dict[str, str], log: Path) -> None:
        self.hostname = hostname
        self.log = log
        self.cmd = [
            sys.executable, "-m", "celery", "-A", module, "worker", "-P", "prefork", "-c", str(concurrency),
            "-n", hostname, "--without-mingle", "--without-gossip", "-l", "WARNING", "-f", str(log),
        ]  # fmt: skip
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, app: Any, timeout: float = 60.0) -> None:
        self.process = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not app.control.ping(destination=[self.hostname], timeout=0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker {self.hostname} did not start; log:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text()[-chars:] if self.log.exists() else ""

    def errors(self) -> list[str]:
        text = self.log.read_text() if self.log.exists() else ""
        return [line for line in text.splitlines() if "ERROR/" in line or "CRITICAL/" in line]

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "BENCH_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_round(
    task: Any, client: Any, jobs: int, job_seconds: float, timeout: float = 120.0
) -> dict[str, Any]:
    """Submit ``jobs`` tasks with ``.delay()``, wait for every result; times from the tasks' records."""
    key = f"bench:admission:{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    results = [task.delay(key, job_seconds) for _ in range(jobs)]
    for r in results:
        r.get(timeout=timeout)
    end_to_end = time.perf_counter() - began
    records = [json.loads(x) for x in client.lrange(key, 0, -1)]
    client.delete(key)
    makespan = max(r["end"] for r in records) - min(r["start"] for r in records)
    most = max(sum(1 for e in records if e["start"] <= t["start"] < e["end"]) for t in records)
    return {
        "makespan_s": makespan,
        "end_to_end_s": end_to_end,
        "most_at_once": most,
        "handoff_gaps_ms": [g * 1000 for g in slot_gaps(records)],
        "records": len(records),
    }


def slot_gaps(records: list[dict[str, Any]]) -> list[float]:
    """Idle time of each slot between one task's end and the next one's start on it.

    taskpool records carry the GPU slot; plain Celery ones do not, and its two pool processes
    stand for the two slots.
    """
    holds: list[tuple[tuple[int, ...], float, float]] = [
        ((int(r["gpus"][0] if r["gpus"] else r["pid"]),), float(r["start"]), float(r["end"])) for r in records
    ]
    return handoff_gaps(holds)


def through_workers(
    kind: str, url: str, jobs: int, job_seconds: float, rounds: int, warmup: int, log_dir: Path
) -> dict[str, Any]:
    if kind == "taskpool":
        module, hostname, concurrency = "bench.apps.admission_app", "gpu@bench", CONTENDERS
        env = clean_env(TASKPOOL_BROKER_URL=url, TASKPOOL_GPUS=str(SLOTS))
        with environ(TASKPOOL_BROKER_URL=url):
            mod = importlib.import_module(module)
        app, task = mod.app, mod.gpu_job
    else:
        module, hostname, concurrency = "bench.apps.admission_plain_app", "plain@bench", SLOTS
        env = clean_env(BENCH_BROKER_URL=url)
        with environ(BENCH_BROKER_URL=url):
            mod = importlib.import_module(module)
        app, task = mod.app, mod.plain_job
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    worker = Worker(module, hostname, concurrency, env, log_dir / f"{kind}.log")
    worker.start(app)
    try:
        run_round(task, client, warmup, job_seconds)  # untimed: children started, modules imported
        samples = [run_round(task, client, jobs, job_seconds) for _ in range(rounds)]
    finally:
        worker.stop()
        client.close()
    gaps = list(itertools.chain.from_iterable(s.pop("handoff_gaps_ms") for s in samples))
    return {
        "worker": " ".join(worker.cmd[2:]),
        "makespan_s": statistics.median(s["makespan_s"] for s in samples),
        "end_to_end_s": statistics.median(s["end_to_end_s"] for s in samples),
        "most_at_once": max(s["most_at_once"] for s in samples),
        "handoff_gap_p50_ms": statistics.median(gaps),
        "handoff_gap_max_ms": max(gaps),
        "samples": samples,
        "worker_errors": worker.errors(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=5000, help="uncontended acquire+release cycles")
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--job-seconds", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds through each worker (median)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed tasks before the rounds")
    args = parser.parse_args(argv)
    ideal = args.jobs * args.job_seconds / SLOTS

    with (
        tempfile.TemporaryDirectory(prefix="taskpool-admission-bench-") as tmp,
        RedisServer(Path(tmp) / "redis", appendonly=False) as server,
    ):
        base = f"redis://127.0.0.1:{server.port}"
        _, pair_s = uncontended(server.port, args.iterations)
        makespan, holds = contended(server.port, args.jobs, args.job_seconds, SLOTS, CONTENDERS)
        sem_gaps = handoff_gaps(holds)
        semaphore = {
            "acquire_release_p50_ms": percentile(pair_s, 50) * 1000,
            "acquire_release_p99_ms": percentile(pair_s, 99) * 1000,
            "contended_makespan_s": makespan,
            "contended_efficiency": ideal / makespan,
            "handoff_gap_p50_ms": statistics.median(sem_gaps) * 1000,
            "handoff_gap_max_ms": max(sem_gaps) * 1000,
        }
        taskpool = through_workers(
            "taskpool", f"{base}/2", args.jobs, args.job_seconds, args.rounds, args.warmup, Path(tmp)
        )
        plain = through_workers(
            "plain", f"{base}/1", args.jobs, args.job_seconds, args.rounds, args.warmup, Path(tmp)
        )

    checks = {
        "uncontended p50 < 1 ms": semaphore["acquire_release_p50_ms"] < LATENCY_TARGET_MS,
        "contended efficiency >= 95 %": semaphore["contended_efficiency"] >= EFFICIENCY_TARGET,
        "gpu_slots makespan within 10 % of ideal": taskpool["makespan_s"] <= MAKESPAN_TARGET * ideal,
        "never more than 2 at once": taskpool["most_at_once"] <= SLOTS,
    }
    result = {
        "settings": {**vars(args), "slots": SLOTS, "contenders": CONTENDERS, "ideal_s": ideal},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "semaphore": semaphore,
        "taskpool_gpu_slots": taskpool,
        "plain_celery_c2": plain,
        "ratio_makespan_taskpool_over_plain": taskpool["makespan_s"] / plain["makespan_s"],
        "ratio_end_to_end_taskpool_over_plain": taskpool["end_to_end_s"] / plain["end_to_end_s"],
        "targets_met": checks,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    report(result, ideal)
    return 0


def report(result: dict[str, Any], ideal: float) -> None:
    s, tp, pl = result["semaphore"], result["taskpool_gpu_slots"], result["plain_celery_c2"]
    cfg = result["settings"]
    shape = f"{cfg['jobs']} x {cfg['job_seconds'] * 1000:g} ms, {SLOTS} slots"
    rows = [
        ("semaphore: uncontended acquire+release", "p50 / p99", f"{s['acquire_release_p50_ms']:.3f} / {s['acquire_release_p99_ms']:.3f} ms", "p50 < 1 ms"),  # noqa: E501
        (f"semaphore: {shape}, {CONTENDERS} threads", "makespan / ideal", f"{s['contended_makespan_s']:.3f} / {ideal:.3f} s", ""),  # noqa: E501
        ("", "efficiency", f"{s['contended_efficiency'] * 100:.2f} %", ">= 95 %"),
        ("", "slot hand-off p50 / max", f"{s['handoff_gap_p50_ms']:.2f} / {s['handoff_gap_max_ms']:.2f} ms", ""),  # noqa: E501
        (f"taskpool gpu_slots=1, prefork -c {CONTENDERS}, TASKPOOL_GPUS={SLOTS}", "makespan (records)", f"{tp['makespan_s']:.3f} s = {tp['makespan_s'] / ideal * 100:.1f} % of ideal", "<= 110 %"),  # noqa: E501
        ("", "end to end (.delay -> last result)", f"{tp['end_to_end_s']:.3f} s", ""),
        ("", "slot hand-off p50 / max", f"{tp['handoff_gap_p50_ms']:.2f} / {tp['handoff_gap_max_ms']:.2f} ms", ""),  # noqa: E501
        ("", "most at once", str(tp["most_at_once"]), f"<= {SLOTS}"),
        (f"plain Celery prefork -c {SLOTS}, no limits", "makespan (records)", f"{pl['makespan_s']:.3f} s = {pl['makespan_s'] / ideal * 100:.1f} % of ideal", ""),  # noqa: E501
        ("", "end to end (.delay -> last result)", f"{pl['end_to_end_s']:.3f} s", ""),
        ("", "process hand-off p50 / max", f"{pl['handoff_gap_p50_ms']:.2f} / {pl['handoff_gap_max_ms']:.2f} ms", ""),  # noqa: E501
        ("taskpool / plain", "makespan; end to end", f"{result['ratio_makespan_taskpool_over_plain']:.3f}; {result['ratio_end_to_end_taskpool_over_plain']:.3f}", ""),  # noqa: E501
    ]  # fmt: skip
    header = ("case", "measure", "value", "target")
    width = [max(len(r[i]) for r in [*rows, header]) for i in range(4)]
    print(f"{cfg['rounds']} round(s) through each worker (median); ideal {ideal:.3f} s")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip())
    for name, ok in result["targets_met"].items():
        print(f"  {'met   ' if ok else 'MISSED'}  {name}")
    for kind, side in (("taskpool", tp), ("plain", pl)):
        if side["worker_errors"]:
            print(
                f"WARNING: the {kind} worker logged {len(side['worker_errors'])} error line(s); see the JSON"
            )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
