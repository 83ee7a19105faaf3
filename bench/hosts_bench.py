"""GPU makespan on 1, 2 and 3 simulated hosts, as % of the ideal.

    .venv/bin/python bench/hosts_bench.py [--hosts 1,2,3] [--tasks 12] [--seconds 0.5] [--rounds 3]
        [--sides taskpool,plain] [--before DIR]

Needs root: each simulated host is a worker in a UTS namespace of its own (``unshare --uts``),
with its own hostname, so its own GPU semaphore. All hosts share one redis-server that this
bench starts in a temporary directory (never the machine's Redis).

Sides:

- ``taskpool``: this checkout; per host ``-P prefork -c 3``, ``TASKPOOL_GPUS=1`` (one GPU, two
  more pool slots for other work, as in issue 17).
- ``before``: with ``--before DIR``, the same workers running the ``taskpool`` package found in
  ``DIR`` (``git archive <commit> taskpool | tar -x -C DIR``): the gate before issue 17.
- ``plain``: plain Celery with its own defaults (early acks, prefetch 4), one ``-c 1`` worker
  per host: the way to give each GPU one task at a time without taskpool.

Scenarios, each run ``--rounds`` times:

- ``ready``: every host is up (taskpool: and sees the others) before ``--tasks`` tasks are sent.
  Makespan from the tasks' own records (first start to last end); ideal: tasks x seconds /
  hosts; % of ideal = ideal / makespan.
- ``late`` (2 hosts or more): ``--late-tasks`` tasks are queued (16: what one worker of
  ``-c 3`` takes at once, with the prefetch the gate lends), ``host1`` starts alone and takes
  the backlog (the first worker to reach a queue), then the other hosts start. From the
  moment the last of them answers ``ping``: ideal = the work left (each task's recorded time
  after that moment) / hosts, against the time to the last end. A worker that keeps the whole
  backlog scores 1 / hosts.

Prints a table (medians over the rounds) and writes ``bench/results/hosts.json``.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procs import environ, stop  # noqa: E402
from taskpool.ops.embedded import RedisServer  # noqa: E402
from taskpool.ops.launcher import Child, launch  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "hosts.json"
MODULES = {
    "taskpool": "bench.apps.hosts_app",
    "before": "bench.apps.hosts_app",
    "plain": "bench.apps.hosts_plain_app",
}
CONCURRENCY = {"taskpool": 3, "before": 3, "plain": 1}


class Hosts:
    """``n`` workers of one side, each in its own UTS namespace (``host1``, ``host2``, ...)."""

    def __init__(self, side: str, n: int, url: str, log_dir: Path, before: Path | None) -> None:
        self.side = side
        self.names = [f"host{i + 1}" for i in range(n)]
        self.nodes = [f"{side}-{h}@bench" for h in self.names]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "BENCH_"))}
        path = [str(ROOT)] if side != "before" else [str(before), str(ROOT)]
        env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")])
        # `python -m celery` puts its working directory first on sys.path: the before side runs
        # from DIR, so DIR/taskpool wins over this checkout's.
        self.cwd = Path(path[0])
        env.update(TASKPOOL_BROKER_URL=url, BENCH_BROKER_URL=url, TASKPOOL_GPUS="1")
        self.env = env
        self.url = url
        self.log_dir = log_dir
        self.children: list[Child] = []

    def launch(self, which: slice = slice(None)) -> None:
        for host, node in list(zip(self.names, self.nodes, strict=True))[which]:
            argv = [
                "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host,
                sys.executable, "-m", "celery", "-A", MODULES[self.side], "worker", "-P", "prefork",
                "-c", str(CONCURRENCY[self.side]), "-n", node, "--without-mingle", "--without-gossip",
                "-l", "WARNING", "-f", str(self.log_dir / f"{node}.log"),
            ]  # fmt: skip
            log = self.log_dir / f"{node}.out"
            self.children.append(launch(argv, broker_url=self.url, env=self.env, cwd=self.cwd, output=log))

    def wait_ready(
        self, app: Any, which: slice = slice(None), see_each_other: bool = True, timeout: float = 120.0
    ) -> None:
        """Wait until the hosts ``which`` answer ``ping`` (and, with ``see_each_other``, every host's
        gate sees the others)."""
        nodes = self.nodes[which]
        deadline = time.monotonic() + timeout
        while True:
            replies = app.control.ping(destination=nodes, timeout=0.5) or []
            if len(replies) == len(nodes):
                break
            if time.monotonic() > deadline or any(c.poll() is not None for c in self.children):
                raise RuntimeError(f"{self.side} hosts did not start; see {self.log_dir}")
        if not see_each_other or self.side != "taskpool" or len(self.nodes) == 1:
            return
        while time.monotonic() < deadline:  # each gate sees the others (they publish at start)
            stats = app.control.inspect(self.nodes, timeout=2.0).stats() or {}
            peers = [(s.get("taskpool_admission") or {}).get("peers", 0) for s in stats.values()]
            if len(peers) == len(self.nodes) and min(peers) >= len(self.nodes) - 1:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.side} hosts did not see each other ({peers}); see {self.log_dir}")

    def stop(self) -> None:
        for child in self.children:
            stop(child)
        self.children = []


def measure(client: Any, key: str, tasks: int, seconds: float, hosts: int) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while client.llen(key) < tasks:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {client.llen(key)} of {tasks} records under {key}")
        time.sleep(0.05)
    records = [json.loads(x) for x in client.lrange(key, 0, -1)]
    client.delete(key)
    span = max(r["end"] for r in records) - min(r["start"] for r in records)
    ideal = tasks * seconds / hosts
    per_host = Counter(r["host"] for r in records)
    overlaps = 0
    for host in per_host:
        runs = sorted((r for r in records if r["host"] == host), key=lambda r: r["start"])
        overlaps += sum(1 for a, b in itertools.pairwise(runs) if b["start"] < a["end"])
    # Busy after start: each host's GPU from its own first task to the last end of all; a host
    # that starts late (worker start-up) is not counted against placement, one left idle is.
    last_end = max(r["end"] for r in records)
    window = sum(last_end - min(r["start"] for r in records if r["host"] == h) for h in per_host)
    busy = sum(r["end"] - r["start"] for r in records) / window
    return {
        "makespan_s": round(span, 3),
        "of_ideal": round(ideal / span, 3),
        "busy_after_start": round(busy, 3),
        "per_host": dict(sorted(per_host.items())),
        "ran_twice": len(records) - len({r["task"] for r in records}),
        "overlaps_on_a_host": overlaps,
    }


def measure_late(client: Any, key: str, tasks: int, hosts: int, joined: float) -> dict[str, Any]:
    """``late``: from ``joined`` (wall clock) on, the work left against the time it took."""
    deadline = time.monotonic() + 180
    while client.llen(key) < tasks:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {client.llen(key)} of {tasks} records under {key}")
        time.sleep(0.05)
    records = [json.loads(x) for x in client.lrange(key, 0, -1)]
    client.delete(key)
    left = sum(max(0.0, r["end"] - max(r["start"], joined)) for r in records)
    span = max(r["end"] for r in records) - joined
    per_host = Counter(r["host"] for r in records if r["end"] > joined)
    return {
        "work_left_s": round(left, 3),
        "after_join_s": round(span, 3),
        "of_ideal": round(left / hosts / span, 3) if span > 0 else 1.0,
        "per_host_after_join": dict(sorted(per_host.items())),
        "ran_twice": len(records) - len({r["task"] for r in records}),
    }


def run_side(
    side: str, hosts: int, url: str, args: argparse.Namespace, log_dir: Path, before: Path | None
) -> dict[str, Any]:
    import redis

    env = {"TASKPOOL_BROKER_URL": url, "BENCH_BROKER_URL": url}
    with environ(**env):
        mod = importlib.import_module(MODULES[side])
    app, task = mod.app, mod.gpu_job
    client = redis.Redis.from_url(url)
    client.flushdb()
    samples: dict[str, list[dict[str, Any]]] = {"ready": [], "late": []}
    group = Hosts(side, hosts, url, log_dir, before)
    try:
        group.launch()
        group.wait_ready(app)
        task.delay(f"warmup-{uuid.uuid4().hex}", 0.0).get(timeout=60)  # imports, connections
        for _ in range(args.rounds):
            key = f"bench:hosts:{uuid.uuid4().hex[:8]}"
            results = [task.delay(key, args.seconds) for _ in range(args.tasks)]
            for r in results:
                r.get(timeout=120)
            samples["ready"].append(measure(client, key, args.tasks, args.seconds, hosts))
        group.stop()
        for _ in range(args.rounds if hosts > 1 else 0):
            client.flushdb()
            key = f"bench:hosts:{uuid.uuid4().hex[:8]}"
            results = [task.delay(key, args.seconds) for _ in range(args.late_tasks)]
            group.launch(slice(0, 1))
            group.wait_ready(app, slice(0, 1), see_each_other=False)
            group.launch(slice(1, None))
            group.wait_ready(app, slice(1, None), see_each_other=False)
            joined = time.time()
            for r in results:
                r.get(timeout=180)
            samples["late"].append(measure_late(client, key, args.late_tasks, hosts, joined))
            group.stop()
    finally:
        group.stop()
        client.close()
    return {
        scenario: {
            "of_ideal_median": statistics.median(s["of_ideal"] for s in runs),
            "of_ideal_min": min(s["of_ideal"] for s in runs),
            "samples": runs,
        }
        for scenario, runs in samples.items()
        if runs
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", default="1,2,3", help="host counts to run, comma-separated")
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--late-tasks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sides", default="taskpool,plain", help="taskpool, before (needs --before), plain")
    parser.add_argument("--before", type=Path, help="a directory holding another version's taskpool/")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root: each simulated host is a worker in its own UTS namespace (unshare --uts)")
    sides = [s for s in args.sides.split(",") if s]
    if "before" in sides and (args.before is None or not (args.before / "taskpool").is_dir()):
        parser.error("--sides before needs --before DIR with DIR/taskpool")
    counts = [int(n) for n in args.hosts.split(",") if n]
    results: dict[str, Any] = {}
    began = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="taskpool-hosts-bench-") as tmp,
        RedisServer(Path(tmp) / "redis", appendonly=False) as server,
    ):
        for side in sides:
            db = {"plain": 1, "taskpool": 2, "before": 2}[side]
            for n in counts:
                logs = Path(tmp) / f"{side}-{n}"
                logs.mkdir()
                url = f"redis://127.0.0.1:{server.port}/{db}"
                results[f"{side}/{n}"] = run_side(side, n, url, args, logs, args.before)
                r = results[f"{side}/{n}"]
                late = r.get("late")
                print(
                    f"{side:9} {n} host(s): ready {r['ready']['of_ideal_median']:.0%} "
                    f"(min {r['ready']['of_ideal_min']:.0%})"
                    + (
                        f", late {late['of_ideal_median']:.0%} (min {late['of_ideal_min']:.0%})"
                        if late
                        else ""
                    ),
                    flush=True,
                )
    print()
    print(
        "| side | hosts | ready: of ideal (min) | ready: per host "
        "| late: of ideal (min) | late: per host after join |"
    )
    print("| --- | ---: | ---: | --- | ---: | --- |")
    for name, r in results.items():
        side, n = name.split("/")
        ready, late = r["ready"], r.get("late")
        print(
            f"| {side} | {n} | {ready['of_ideal_median']:.0%} ({ready['of_ideal_min']:.0%}) "
            f"| {ready['samples'][-1]['per_host']} "
            + (
                f"| {late['of_ideal_median']:.0%} ({late['of_ideal_min']:.0%}) "
                f"| {late['samples'][-1]['per_host_after_join']} |"
                if late
                else "| | |"
            )
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "settings": {**{k: str(v) for k, v in vars(args).items()}},
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "load": os.getloadavg(),
                },
                "seconds": round(time.monotonic() - began, 1),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {RESULTS.relative_to(ROOT)} ({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
