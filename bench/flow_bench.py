"""Flow control benchmark: three stacked limits, admission overhead and rate accuracy.

    .venv/bin/python bench/flow_bench.py [--rounds 3] [--requests 250]

(a) Overhead: one taskpool threads worker (``-c 8``). Each round sends REQUESTS calls of a no-op
    task, paced at half the rate (25/s, 4 tenants in turn, so the rate seldom has to hold one),
    once to ``plain`` (no limits) and once to ``stacked`` (keyed limit + keyed
    cluster_max_in_flight + a 50/s rate); the side that goes first alternates. Latency per
    request: the task's start minus the time just before its ``.delay()``. Overhead = p50 (p99)
    of ``stacked`` minus p50 (p99) of ``plain``; target p99 < 5 ms.
(b) Accuracy: two workers, REQUESTS calls of ``stacked`` sent at once (the rate holds them).
    From the times the gate took each rate token (Redis clock): the rate used (requests - 1 over
    first-to-last, against 50/s) and the most tokens in any 1 s window (the limit: 50).

Starts its own redis-server in a temporary directory (never the machine's Redis). Prints a table
and writes bench/results/flow.json. The exit code is 0 even when a target is missed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procs import environ, start, stop  # noqa: E402
from taskpool.ops.embedded import RedisServer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "flow.json"
TENANTS = 4
PACE = 0.5  # of the rate, for the overhead


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def worker(name: str, url: str, log_dir: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "BENCH_"))}
    env.update(TASKPOOL_BROKER_URL=url, PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    argv = [
        sys.executable, "-m", "celery", "-A", "bench.apps.flow_app", "worker", "-P", "threads", "-c", "8",
        "-n", f"{name}@bench", "--without-mingle", "--without-gossip", "-l", "WARNING",
    ]  # fmt: skip
    return start(argv, env=env, log=log_dir / f"{name}.log")


def wait_ready(app: Any, names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(app.control.ping(destination=[f"{n}@bench" for n in names], timeout=0.5) or []) < len(names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers {names} did not answer ping")


def collect(app: Any, key: str, n: int, timeout: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while app.redis.llen(key) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {app.redis.llen(key)} of {n} records under {key}")
        time.sleep(0.05)
    out = [json.loads(x) for x in app.redis.lrange(key, 0, -1)]
    app.redis.delete(key)
    return out


def paced(app: Any, task: Any, n: int, per_second: float) -> list[float]:
    """Latencies (ms) of ``n`` calls sent at ``per_second``."""
    key = f"bench:flow:{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    for i in range(n):
        delay = began + i / per_second - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        task.delay(f"t{i % TENANTS}", key, time.time())
    return [(r["start"] - r["sent"]) * 1000 for r in collect(app, key, n)]


def accuracy(app: Any, task: Any, n: int, rate: int) -> dict[str, Any]:
    key = f"bench:flow:{uuid.uuid4().hex[:8]}"
    for i in range(n):
        task.delay(f"t{i % TENANTS}", key, time.time())
    granted = sorted(r["rate_at"] for r in collect(app, key, n))
    span = granted[-1] - granted[0]
    most = max(sum(1 for u in granted if t <= u < t + 1.0) for t in granted)
    return {"requests": n, "span_s": span, "rate_used": (n - 1) / span / rate, "most_in_1s": most}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=250)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis", appendonly=False) as server:
        url = server.url
        with environ(TASKPOOL_BROKER_URL=url):
            mod = importlib.import_module("bench.apps.flow_app")
        app, rate = mod.app, mod.RATE
        logs = Path(tmp)
        w1 = worker("f1", url, logs)
        try:
            wait_ready(app, ["f1"])
            paced(app, mod.plain, 20, PACE * rate)  # warm up: imports, connections
            paced(app, mod.stacked, 20, PACE * rate)
            lat: dict[str, list[float]] = {"plain": [], "stacked": []}
            for r in range(args.rounds):
                order = ["plain", "stacked"] if r % 2 == 0 else ["stacked", "plain"]
                for side in order:
                    lat[side] += paced(app, getattr(mod, side), args.requests, PACE * rate)
            w2 = worker("f2", url, logs)
            try:
                wait_ready(app, ["f2"])
                acc = accuracy(app, mod.stacked, args.requests, rate)
            finally:
                stop(w2)
        finally:
            stop(w1)
    p = {side: {q: percentile(v, q) for q in (50, 99)} for side, v in lat.items()}
    overhead = {q: p["stacked"][q] - p["plain"][q] for q in (50, 99)}
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rounds": args.rounds,
        "requests": args.requests,
        "rate_per_s": rate,
        "paced_per_s": PACE * rate,
        "latency_ms": {side: {f"p{q}": round(v, 3) for q, v in p[side].items()} for side in p},
        "latency_mean_ms": {side: round(statistics.fmean(v), 3) for side, v in lat.items()},
        "overhead_ms": {f"p{q}": round(v, 3) for q, v in overhead.items()},
        "accuracy": {k: round(v, 4) if isinstance(v, float) else v for k, v in acc.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8}")
    for side in ("plain", "stacked"):
        print(f"{'latency, ' + side:28} {p[side][50]:8.3f} {p[side][99]:8.3f}")
    print(f"{'overhead (target p99 < 5)':28} {overhead[50]:8.3f} {overhead[99]:8.3f}")
    print(
        f"rate {rate}/s across 2 workers: {acc['rate_used'] * 100:.1f} % used, "
        f"at most {acc['most_in_1s']} in any 1 s (limit {rate})"
    )


if __name__ == "__main__":
    main()
