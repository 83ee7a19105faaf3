"""End-to-end throughput of no-op tasks: plain Celery against taskpool, per pool.

    .venv/bin/python bench/throughput.py [--tasks N] [--pools prefork,threads,gevent] [--rounds R]

Starts its own redis-server (never the machine's), then for every round and pool runs one real
`celery worker` at a time -- plain Celery on Redis db 1, taskpool on db 2 -- with the same pool type,
concurrency and throughput-relevant settings, and times N ``.delay()`` calls from the first submit to
the last ``.get()``. The order alternates between rounds (plain first, then taskpool first); the
median of each side is reported. See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "throughput.json"
POOLS = ("prefork", "threads", "gevent")
#: The design brief's anchors: plain Celery 5.7 measured at these concurrencies.
CONCURRENCY = {"prefork": 2, "threads": 8, "gevent": 100}
TARGET = 0.95
#: kombu's Redis transport allows 10 connections per worker by default; with task_acks_late every
#: gevent greenlet acks on its own connection, so -P gevent -c 100 fails acks ("Couldn't ack ...
#: MaxConnectionsError") and stalls. Both apps get the same, larger pool.
TRANSPORT_OPTIONS = {"max_connections": 200}
KINDS = {"plain": ("bench.apps.plain_app", 1), "taskpool": ("bench.apps.taskpool_app", 2)}  # module, Redis db


class Worker:
    """One `celery worker` subprocess in its own session; stop() ends it and anything it forked."""

    def __init__(self, kind: str, pool: str, env: dict[str, str], log_path: Path) -> None:
        self.hostname = f"{kind}-{pool}@bench"
        self.log_path = log_path
        self.argv = [
            sys.executable, "-m", "celery", "-A", KINDS[kind][0], "worker",
            "-P", pool, "-c", str(CONCURRENCY[pool]), "-n", self.hostname,
            "--without-mingle", "--without-gossip", "-l", "WARNING",
        ]  # fmt: skip
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, app: Any, timeout: float = 60.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only the bench; it stops the worker itself
            )
        deadline = time.monotonic() + timeout
        while not app.control.ping(destination=[self.hostname], timeout=0.5):
            if self.process.poll() is not None:
                problem = f"exited with {self.process.returncode}"
            elif time.monotonic() > deadline:
                problem = f"did not answer ping in {timeout} s"
            else:
                continue
            raise RuntimeError(f"worker {self.hostname} {problem}:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def errors(self) -> list[str]:
        """ERROR and CRITICAL lines of its log (lost acks, connection errors): the run is suspect."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if "ERROR/" in line or "CRITICAL/" in line]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (warm shutdown), SIGKILL after ``timeout``; then SIGKILL any leftover of its group."""
        from bench.procs import stop  # main() put the repository on sys.path

        proc, self.process = self.process, None
        if proc is not None:
            stop(proc, timeout)  # the group is the worker's own session: its pool children


def run_tasks(task: Any, n: int, timeout: float) -> float:
    """Seconds from the first ``.delay()`` to the last result, collected with ``.get()`` in order."""
    start = time.perf_counter()
    results = [task.delay() for _ in range(n)]
    deadline = time.monotonic() + timeout
    for result in results:
        result.get(timeout=max(0.1, deadline - time.monotonic()))
    return time.perf_counter() - start


def fairness(plain: Any, tp: Any, defaults: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The settings both apps share, and every difference found (empty when the comparison is fair)."""
    problems = [
        f"{key}: plain={plain.conf[key]!r} taskpool={tp.conf[key]!r}"
        for key in defaults
        if plain.conf[key] != tp.conf[key]
    ]
    if plain.conf.broker_transport_options != tp.conf.broker_transport_options:
        problems.append(
            f"broker_transport_options: plain={plain.conf.broker_transport_options} "
            f"taskpool={tp.conf.broker_transport_options}"
        )
    for key in ("broker_url", "result_backend"):
        a, b = urlsplit(str(plain.conf[key])), urlsplit(str(tp.conf[key]))
        if (a.scheme, a.netloc) != (b.scheme, b.netloc):
            problems.append(f"{key}: plain={plain.conf[key]} taskpool={tp.conf[key]} (not the same server)")
    shared = {key: tp.conf[key] for key in defaults}
    shared["broker_transport_options"] = dict(tp.conf.broker_transport_options)
    scheme = urlsplit(str(tp.conf.result_backend)).scheme
    shared["result_backend"] = f"{scheme}:// (the broker's Redis server, each app its own db)"
    return shared, problems


def measure(worker: Worker, app: Any, task: Any, n: int, warmup: int) -> float:
    """Start ``worker``, warm up, time ``n`` tasks, stop it; tasks per second."""
    try:
        worker.start(app)
        run_tasks(task, warmup, timeout=60)
        seconds = run_tasks(task, n, timeout=120 + n / 20)
    except Exception as exc:
        raise RuntimeError(f"{worker.hostname} failed: {exc}\n--- worker log ---\n{worker.tail()}") from exc
    finally:
        worker.stop()
    return n / seconds


def run_bench(
    args: argparse.Namespace, pools: list[str]
) -> tuple[dict[str, Any], list[str], dict, list[str]]:
    """Every round and pool, both apps; returns (shared settings, differences, samples, worker errors)."""
    import redis

    from taskpool.embedded import RedisServer, free_port
    from taskpool.settings import DEFAULTS

    with tempfile.TemporaryDirectory(prefix="taskpool-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis", port=free_port(), appendonly=False)
        try:
            server.start()
            base = server.url.rsplit("/", 1)[0]
            urls = {kind: f"{base}/{db}" for kind, (_, db) in KINDS.items()}
            # Inherited TASKPOOL_*/BENCH_* variables would change one side's settings: drop them.
            for key in [k for k in os.environ if k.startswith(("TASKPOOL_", "BENCH_"))]:
                del os.environ[key]
            os.environ.update(
                BENCH_BROKER_URL=urls["plain"],
                TASKPOOL_BROKER_URL=urls["taskpool"],
                BENCH_BROKER_TRANSPORT_OPTIONS=json.dumps(TRANSPORT_OPTIONS),
                TASKPOOL_BROKER_TRANSPORT_OPTIONS=json.dumps(TRANSPORT_OPTIONS),
                BENCH_CELERY_CONF=json.dumps(DEFAULTS),  # the plain app takes taskpool's defaults too
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            )
            env = dict(os.environ)  # the apps read their broker at import: here as in the workers
            mods = {kind: importlib.import_module(mod) for kind, (mod, _) in KINDS.items()}
            apps = {kind: mod.app for kind, mod in mods.items()}
            tasks = {"plain": dict.fromkeys(pools, mods["plain"].noop), "taskpool": mods["taskpool"].NOOP}
            shared, problems = fairness(apps["plain"], apps["taskpool"], DEFAULTS)
            print(f"redis-server {server.url} (temp dir, appendonly off); plain on db 1, taskpool on db 2")
            print("shared settings: " + ", ".join(f"{k}={v!r}" for k, v in shared.items()))
            for problem in problems:
                print(f"WARNING: settings differ, the comparison is not fair: {problem}")
            print(
                f"{args.tasks} tasks per run (+{args.warmup} warm-up), {args.rounds} round(s), concurrency "
                + ", ".join(f"{p} -c {CONCURRENCY[p]}" for p in pools)
            )
            flush = {kind: redis.Redis.from_url(url).flushdb for kind, url in urls.items()}
            samples: dict[str, dict[str, list[float]]] = {p: {"plain": [], "taskpool": []} for p in pools}
            log_dir = Path(tmp) / "logs"
            log_dir.mkdir()
            errors: list[str] = []
            for rnd in range(args.rounds):
                order = ("plain", "taskpool") if rnd % 2 == 0 else ("taskpool", "plain")
                for pool in pools:
                    for kind in order:
                        flush[kind]()  # an empty db: no leftovers from the previous run
                        worker = Worker(kind, pool, env, log_dir / f"{kind}-{pool}-{rnd + 1}.log")
                        rate = measure(worker, apps[kind], tasks[kind][pool], args.tasks, args.warmup)
                        samples[pool][kind].append(rate)
                        print(f"  round {rnd + 1}/{args.rounds} {pool:8} {kind:9} {rate:6.0f} tasks/s")
                        for line in worker.errors():
                            errors.append(f"{worker.hostname} round {rnd + 1}: {line}")
                            print(f"  WARNING: worker logged an error, this run is suspect: {line}")
        finally:
            server.stop()
    return shared, problems, samples, errors


def report(
    args: argparse.Namespace,
    pools: list[str],
    shared: dict,
    problems: list[str],
    samples: dict,
    errors: list[str],
    wall: float,
) -> None:
    """Print the table and write bench/results/throughput.json."""
    import celery

    rows = []
    for pool in pools:
        plain = statistics.median(samples[pool]["plain"])
        tp = statistics.median(samples[pool]["taskpool"])
        rows.append(
            {
                "pool": pool,
                "concurrency": CONCURRENCY[pool],
                "plain_tasks_per_s": round(plain, 1),
                "taskpool_tasks_per_s": round(tp, 1),
                "ratio": round(tp / plain, 3),
                "target": TARGET,
                "pass": tp / plain >= TARGET,
                "samples": {k: [round(v, 1) for v in vs] for k, vs in samples[pool].items()},
            }
        )
    header = (
        "pool     | plain Celery tasks/s | taskpool tasks/s | ratio (taskpool/plain) | target | pass/fail"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for row in rows:
        print(
            f"{row['pool']:8} | {row['plain_tasks_per_s']:20.0f} | {row['taskpool_tasks_per_s']:16.0f} | "
            f"{row['ratio']:22.3f} | {TARGET:6.2f} | {'PASS' if row['pass'] else 'FAIL (below target)'}"
        )
    for row in rows:  # the same round's two runs ran back to back: their ratio shows the noise
        paired = [t / p for p, t in zip(row["samples"]["plain"], row["samples"]["taskpool"], strict=True)]
        row["round_ratios"] = [round(r, 3) for r in paired]
        print(f"{row['pool']:8}   per-round ratios: " + ", ".join(f"{r:.3f}" for r in paired))
    print(f"\nmedians of {args.rounds} round(s), {args.tasks} tasks each; wall time {wall:.0f} s")
    missed = [row["pool"] for row in rows if not row["pass"]]
    if missed:
        print(f"TARGET MISSED on {', '.join(missed)}: taskpool below {TARGET:.2f} x plain Celery")
    if errors:
        print(f"NOTE: workers logged {len(errors)} ERROR/CRITICAL line(s) (see WARNINGs above)")
    if problems:
        print("NOTE: settings differed between the two apps (see WARNING above); ratios are not comparable")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "tasks": args.tasks,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "statistic": "median",
        "target_ratio": TARGET,
        "shared_settings": shared,
        "settings_differences": problems,
        "worker_errors": errors,
        "celery": celery.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "wall_time_s": round(wall, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": rows,
    }
    RESULTS.write_text(json.dumps(data, indent=2, default=repr) + "\n")
    print(f"results written to {RESULTS.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="timed no-op tasks per run (default 2000)")
    parser.add_argument("--pools", default=",".join(POOLS), help="comma-separated (default all three)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, order alternating (default 3)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed tasks before each run (default 100)")
    args = parser.parse_args(argv)
    pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    if not pools or any(p not in POOLS for p in pools):
        parser.error(f"--pools: expected a comma-separated subset of {','.join(POOLS)}")
    if args.tasks < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--tasks and --rounds must be >= 1, --warmup >= 0")
    # SIGTERM takes the same way out as Ctrl-C: through the finally blocks that stop every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run as a script: make `bench.apps` and `taskpool` importable
    began = time.monotonic()
    shared, problems, samples, errors = run_bench(args, pools)
    report(args, pools, shared, problems, samples, errors, time.monotonic() - began)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every worker and the bench's redis-server were stopped", file=sys.stderr)
        sys.exit(130)
