"""A batched model task against the same model called per item, through real workers.

    .venv/bin/python bench/batching_bench.py [--items N] [--rounds R]

Starts its own redis-server, then per round runs one prefork worker (-c 2) at a time:
plain Celery with one image per task (Redis db 1), then taskpool with the same per-item task
and with the batched task (``Batch(max_size=32, wait_ms=10)``; db 2). Each side sends N
inputs with ``.delay()`` and collects every result. The model is an MLP over 3x32x32 images
(``--model cnn``: the example pipeline's tiny CNN; see bench/apps/batch_apps.py). Also times
the model alone in one process, per item against batches of 32, which bounds what batching
can gain.

Reports the median items/s of each and the ratios batched/plain and batched/per-item; writes
``bench/results/batching.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.procs import start, stop  # noqa: E402
from taskpool.ops.launcher import Child  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "batching.json"
CONCURRENCY = 2
BATCH = 32


def images(n: int) -> list[int]:
    """The inputs: image ids (each task makes its image from the id)."""
    return list(range(n))


def load_app(kind: str, broker: str) -> Any:
    """Import bench.apps.batch_apps as ``kind`` in this process (a fresh module per kind)."""
    import importlib

    os.environ.update(BENCH_KIND=kind, BENCH_BROKER_URL=broker, TASKPOOL_BROKER_URL=broker)
    sys.modules.pop("bench.apps.batch_apps", None)
    module = importlib.import_module("bench.apps.batch_apps")
    return module


def start_worker(kind: str, broker: str, log: Path) -> Child:
    env = dict(os.environ, BENCH_KIND=kind, BENCH_BROKER_URL=broker, TASKPOOL_BROKER_URL=broker)
    env["PYTHONPATH"] = str(ROOT)
    argv = [
        sys.executable, "-m", "celery", "-A", "bench.apps.batch_apps", "worker", "-P", "prefork",
        "-c", str(CONCURRENCY), "-n", f"{kind}-batch@bench", "--without-mingle", "--without-gossip",
        "-l", "WARNING",
    ]  # fmt: skip
    if kind == "plain":
        argv += ["-Q", "bench.batch.plain"]
    return start(argv, env=env, log=log, broker_url=broker)


def run_items(task: Any, data: list[int], timeout: float) -> float:
    """Seconds from the first ``.delay()`` to the last result."""
    start = time.perf_counter()
    results = [task.delay(image) for image in data]
    deadline = time.monotonic() + timeout
    for r in results:
        r.get(timeout=max(0.1, deadline - time.monotonic()))
    return time.perf_counter() - start


def model_alone(data: list[int]) -> dict[str, float]:
    """The model in this process: items/s called per item and in batches of 32."""
    from bench.apps.batch_apps import classify_many

    classify_many(data[:BATCH])  # warm up
    start = time.perf_counter()
    for image in data:
        classify_many([image])
    per_item = len(data) / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, len(data), BATCH):
        classify_many(data[i : i + BATCH])
    batched = len(data) / (time.perf_counter() - start)
    return {
        "per_item": round(per_item, 1),
        "batched": round(batched, 1),
        "ratio": round(batched / per_item, 2),
    }


def measure(kind: str, broker: str, tasks: list[str], data: list[int], log: Path) -> dict[str, float]:
    module = load_app(kind, broker)
    app = module.app
    proc = start_worker(kind, broker, log)
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[f"{kind}-batch@bench"], timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} worker did not start:\n{log.read_text()[-3000:]}")
        out = {}
        for name in tasks:
            task = getattr(module, name)
            run_items(task, data[:64], timeout=60)  # warm up
            out[name] = len(data) / run_items(task, data, timeout=120 + len(data) / 10)
        return out
    finally:
        stop(proc)


def run(base_url: str, items: int, rounds: int, model: str, tmp: Path) -> dict[str, Any]:
    """The measurements on the Redis server at ``base_url`` (plain Celery on db 1, taskpool on
    db 2); one worker at a time, the order alternating between rounds."""
    os.environ["BENCH_MODEL"] = model
    data = images(items)
    runs: dict[str, list[float]] = {"plain per item": [], "taskpool per item": [], "taskpool batched": []}
    log = tmp / "batching-workers.log"
    for r in range(rounds):
        order = ["plain", "taskpool"] if r % 2 == 0 else ["taskpool", "plain"]
        for kind in order:
            db = 1 if kind == "plain" else 2
            tasks = ["classify"] if kind == "plain" else ["classify", "classify_batched"]
            got = measure(kind, f"{base_url}/{db}", tasks, data, log)
            if kind == "plain":
                runs["plain per item"].append(got["classify"])
            else:
                runs["taskpool per item"].append(got["classify"])
                runs["taskpool batched"].append(got["classify_batched"])
        print(
            f"batching round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in runs.items()), flush=True
        )
    alone = model_alone(data[: min(len(data), 512)])
    medians = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    return {
        "items": items,
        "rounds": rounds,
        "model": model,
        "batch": {"max_size": BATCH, "wait_ms": 10},
        "worker": f"prefork -c {CONCURRENCY}",
        "items_per_second": medians,
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "ratio_batched_vs_plain": round(medians["taskpool batched"] / medians["plain per item"], 2),
        "ratio_batched_vs_taskpool_per_item": round(
            medians["taskpool batched"] / medians["taskpool per item"], 2
        ),
        "model_alone_items_per_second": alone,
    }


def print_result(result: dict[str, Any]) -> None:
    ips = result["items_per_second"]
    print(
        f"batched model task, {result['items']} inputs, model {result['model']}, {result['worker']} (median)"
    )
    for name, value in ips.items():
        print(f"  {name:<20} {value:>8.1f} items/s")
    print(f"  batched / plain Celery per item: {result['ratio_batched_vs_plain']:.2f}")
    print(f"  batched / taskpool per item:     {result['ratio_batched_vs_taskpool_per_item']:.2f}")
    alone = result["model_alone_items_per_second"]
    print(f"  the model alone, one process: {alone['per_item']}/s per item, {alone['batched']}/s in 32s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="see bench/apps/batch_apps.py")
    args = parser.parse_args(argv)

    from taskpool.ops.embedded import RedisServer, free_port

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", port=free_port(), appendonly=False)
        with server:
            result = run(server.url.rsplit("/", 1)[0], args.items, args.rounds, args.model, Path(tmp))
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    result["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
