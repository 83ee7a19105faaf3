"""The autoscaler under bursts: reaction time, and throughput against a fixed pool of the same max.

    .venv/bin/python bench/autoscale_bench.py [--pool threads] [--max 8] [--bursts 5] [--burst 32]
                                              [--seconds 0.2] [--gap 2.5] [--cooldown 1]

Starts its own redis-server (never the machine's) and, one after the other, two real
`celery -A bench.autoscale_bench worker -P <pool>` processes on Redis db 3:

* ``policy``: taskpool's built-in policy, bounds ``max,1``, the given cooldown;
* ``fixed``: the same worker with ``min = max`` (a fixed pool of the same maximum).

Each runs ``--bursts`` bursts of ``--burst`` sleeping tasks, with an idle ``--gap`` between bursts.
Reported: reaction time (first ``.delay()`` of a burst -> the autoscaler's decision that reached
max, from its ``inspect stats`` history), each side's throughput over the bursts (tasks / seconds
from a burst's first submit to its last result), their ratio (target >= 0.9), and the share of
in-gap samples at which the policy pool sat at its minimum. Results go to
``bench/results/autoscale.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "autoscale.json"
TARGET = 0.9

if __name__ != "__main__":  # imported by the workers (and by the bench below, as the app)
    from taskpool import TaskPool
    from taskpool.core.settings import Settings

    app = TaskPool(
        "autoscale_bench",
        config=False,
        settings=Settings.from_env(queue_prefix="asbench.", keyspace="asbench"),
    )

    @app.task(pool="threads")
    def nap_threads(seconds: float) -> float:
        time.sleep(seconds)
        return time.time()

    @app.task(pool="gevent")
    def nap_gevent(seconds: float) -> float:
        time.sleep(seconds)
        return time.time()

    @app.task(pool="prefork")
    def nap_prefork(seconds: float) -> float:
        time.sleep(seconds)
        return time.time()

    NAP = {"threads": nap_threads, "gevent": nap_gevent, "prefork": nap_prefork}


def autoscaler(app: Any, hostname: str) -> dict[str, Any]:
    replies = app.control.inspect(destination=[hostname], timeout=1.0).stats() or {}
    return dict(replies.get(hostname, {}).get("autoscaler") or {})


def run_side(side: str, args: argparse.Namespace, bench: Any, broker: str, logs: Path) -> dict[str, Any]:
    hostname = f"{side}-{args.pool}@bench"
    low = 1 if side == "policy" else args.max
    env = dict(
        os.environ,
        TASKPOOL_BROKER_URL=broker,
        PYTHONPATH=str(ROOT),
        TASKPOOL_AUTOSCALE_COOLDOWN=str(args.cooldown),
        **{f"TASKPOOL_AUTOSCALE_{args.pool.upper()}": f"{args.max},{low}"},
    )
    argv = [sys.executable, "-m", "celery", "-A", "bench.autoscale_bench", "worker", "-P", args.pool]
    argv += [
        "-n",
        hostname,
        "--without-mingle",
        "--without-gossip",
        "-l",
        "INFO",
        "-f",
        str(logs / f"{side}.log"),
    ]
    with (logs / f"{side}.out").open("ab") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while not bench.app.control.ping(destination=[hostname], timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {hostname} did not start; see {logs / (side + '.log')}")
        task = bench.NAP[args.pool]
        task.delay(0.0).get(timeout=30)  # warm-up
        time.sleep(args.gap)
        durations, reactions, at_min, back = [], [], [], []
        for _ in range(args.bursts):
            t0 = time.time()
            results = [task.delay(args.seconds) for _ in range(args.burst)]
            for res in results:
                res.get(timeout=120)
            durations.append(time.time() - t0)
            info = autoscaler(bench.app, hostname)
            reached = [d["at"] for d in info.get("decisions", []) if d["at"] >= t0 and d["to"] == args.max]
            if side == "policy" and reached:
                reactions.append(min(reached) - t0)
            idle_from = time.time()
            gap_end = time.monotonic() + args.gap
            while time.monotonic() < gap_end:  # sample the idle pool's size in the second half of the gap
                time.sleep(args.gap / 8)
                if gap_end - time.monotonic() < args.gap / 2:
                    at_min.append(autoscaler(bench.app, hostname).get("current") == low)
            if side == "policy":
                info = autoscaler(bench.app, hostname)
                shrunk = [
                    d["at"] for d in info.get("decisions", []) if d["at"] >= idle_from and d["to"] == low
                ]
                if shrunk:
                    back.append(min(shrunk) - idle_from)
        total = args.bursts * args.burst
        return {
            "throughput": total / sum(durations),
            "burst_seconds": [round(d, 3) for d in durations],
            "reaction_seconds": [round(r, 3) for r in reactions],
            "idle_at_min_share": (sum(at_min) / len(at_min)) if at_min else None,
            "back_to_min_seconds": [round(b, 3) for b in back],
            "faults": autoscaler(bench.app, hostname).get("faults"),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pool", default="threads", choices=("threads", "gevent", "prefork"))
    parser.add_argument("--max", type=int, default=8, help="max slots (the fixed pool's size)")
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--burst", type=int, default=32, help="tasks per burst")
    parser.add_argument("--seconds", type=float, default=0.2, help="each task sleeps this long")
    parser.add_argument("--gap", type=float, default=2.5, help="idle seconds between bursts")
    parser.add_argument("--cooldown", type=float, default=1.0, help="the policy's cooldown")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from taskpool.ops.embedded import RedisServer

    with (
        tempfile.TemporaryDirectory(prefix="autoscale-bench-") as tmp,
        RedisServer(Path(tmp) / "redis") as server,
    ):
        broker = server.url.rsplit("/", 1)[0] + "/3"
        os.environ["TASKPOOL_BROKER_URL"] = broker
        import importlib

        bench = importlib.import_module("bench.autoscale_bench")
        logs = Path(tmp)
        sides = {side: run_side(side, args, bench, broker, logs) for side in ("policy", "fixed")}

    ratio = sides["policy"]["throughput"] / sides["fixed"]["throughput"]
    reactions = sides["policy"]["reaction_seconds"]
    print(
        f"pool {args.pool}, max {args.max}: {args.bursts} bursts of {args.burst} x {args.seconds} s, "
        f"gap {args.gap} s"
    )
    for side, data in sides.items():
        print(f"  {side:7s} {data['throughput']:7.1f} tasks/s  bursts {data['burst_seconds']}")
    print(
        f"  reaction (burst -> pool at max): median {statistics.median(reactions):.3f} s, "
        f"max {max(reactions):.3f} s"
        if reactions
        else "  reaction: the policy pool never reached max"
    )
    back = sides["policy"]["back_to_min_seconds"]
    print(
        f"  policy back at min {statistics.median(back) if back else float('nan'):.2f} s after a burst "
        f"(cooldown {args.cooldown:g} s); at min in {sides['policy']['idle_at_min_share']:.0%} of samples "
        "taken in the second half of each gap"
    )
    print(
        f"  throughput ratio policy/fixed: {ratio:.3f} (target >= {TARGET}) "
        f"{'PASS' if ratio >= TARGET else 'FAIL'}"
    )
    from bench.procs import write_results

    write_results(
        RESULTS, "autoscale_bench.py", args=vars(args), sides=sides, ratio=ratio, target_ratio=TARGET
    )
    print(f"results written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
