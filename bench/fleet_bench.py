"""The fleet controller under a burst: time to the first new worker, makespan against a fixed fleet.

    .venv/bin/python bench/fleet_bench.py [--rounds 3] [--tasks 500] [--seconds 0.2] [--max 4]
                                          [--concurrency 4]

Starts its own redis-server (never the machine's) and runs, per round, two sides one after the
other (the order alternates between rounds), each through the real fleet controller
(:class:`taskpool.ops.fleet.FleetController`) over real `celery worker -P threads -c 4`
processes of ``bench/apps/fleet_app.py``:

* ``fixed``: ``min_workers = max_workers = 4``: a fixed fleet of max_workers, all started and
  reporting before the burst (what one provisions without a scaler);
* ``elastic``: ``min_workers=1, max_workers=4, buffer_workers=1, scaledown_window=5``: one worker
  before the burst; the controller starts the others when the burst arrives.

Each side sends ``--tasks`` sleeping tasks at once and times from the first ``.delay()`` to the
last result (the makespan); the ideal is tasks x seconds / (max x concurrency). For the elastic
side it also reports the time from the first ``.delay()`` to the first task started by a worker
that did not exist before the burst. Results go to ``bench/results/fleet.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fleet.json"
sys.path.insert(0, str(ROOT))


def run_side(name: str, url: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    from taskpool.core.fleet import FleetPolicy
    from taskpool.ops.fleet import FleetController, LocalWorkers, running

    os.environ["TASKPOOL_BROKER_URL"] = url
    import bench.apps.fleet_app as fa

    app = fa.app
    app.redis.flushdb()
    low = args.max if name == "fixed" else 1
    policy = FleetPolicy(
        "threads", min_workers=low, max_workers=args.max, buffer_workers=1, scaledown_window=5.0
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = LocalWorkers(
        "bench.apps.fleet_app",
        url,
        logs / name,
        concurrency={"threads": args.concurrency},
        env=env,
        cwd=str(ROOT),
    )
    controller = FleetController(app, ["threads"], defaults={"threads": policy}, workers=workers)
    try:
        with running(controller, 0.25):
            deadline = time.monotonic() + 120
            while True:
                reports = controller.store.reports()
                if len(reports) == low:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: {len(reports)} of {low} workers reported in 120 s")
                time.sleep(0.1)
            before = set(reports)
            t0_wall, t0 = time.time(), time.perf_counter()
            results = [fa.nap.delay(args.seconds) for _ in range(args.tasks)]
            for r in results:
                r.get(timeout=600)
            makespan = time.perf_counter() - t0
            peak = max((int(e.get("desired", 0)) for e in controller.store.decisions(50)), default=low)
    finally:
        workers.stop_all(60)
    started = [json.loads(x) for x in app.redis.lrange(fa.STARTED, 0, -1)]
    new = [s["at"] for s in started if s["node"] not in before]
    ideal = args.tasks * args.seconds / (args.max * args.concurrency)
    return {
        "side": name,
        "makespan_s": round(makespan, 3),
        "of_ideal": round(ideal / makespan, 3),
        "first_new_worker_s": round(min(new) - t0_wall, 3) if new else None,
        "workers_used": len({s["node"] for s in started}),
        "peak_desired": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--max", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    for key in [k for k in os.environ if k.startswith(("TASKPOOL_", "BENCH_"))]:
        del os.environ[key]
    from taskpool.ops.embedded import RedisServer

    ideal = args.tasks * args.seconds / (args.max * args.concurrency)
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        with server:
            url = server.url.rsplit("/", 1)[0] + "/4"
            for n in range(args.rounds):
                order = ("fixed", "elastic") if n % 2 == 0 else ("elastic", "fixed")
                for side in order:
                    sample = {"round": n + 1, **run_side(side, url, args, Path(tmp) / f"logs{n}")}
                    print(json.dumps(sample), flush=True)
                    samples.append(sample)

    def median(side: str, key: str) -> float:
        return statistics.median(s[key] for s in samples if s["side"] == side and s[key] is not None)

    fixed, elastic = median("fixed", "makespan_s"), median("elastic", "makespan_s")
    first_new = median("elastic", "first_new_worker_s")
    summary = {
        "ideal_s": round(ideal, 3),
        "fixed_makespan_s": fixed,
        "fixed_of_ideal": round(ideal / fixed, 3),
        "elastic_makespan_s": elastic,
        "elastic_of_ideal": round(ideal / elastic, 3),
        "elastic_over_fixed": round(fixed / elastic, 3),
        "first_new_worker_s": first_new,
    }
    print(
        f"\n{args.tasks} tasks of {args.seconds} s, threads -c {args.concurrency}, max_workers {args.max} "
        f"(ideal {ideal:.2f} s), medians of {args.rounds} round(s):\n"
        f"  fixed fleet of {args.max}: {fixed:.2f} s ({ideal / fixed:.0%} of ideal)\n"
        f"  elastic 1..{args.max}:     {elastic:.2f} s ({ideal / elastic:.0%} of ideal; "
        f"{fixed / elastic:.2f} x the fixed fleet's speed)\n"
        f"  first new worker consuming {first_new:.2f} s after the burst"
    )
    from bench.procs import write_results

    write_results(RESULTS, "fleet_bench.py", args=vars(args), summary=summary, samples=samples)


if __name__ == "__main__":
    main()
