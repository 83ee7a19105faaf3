"""Chaos bench: N tasks through real workers while processes and Redis are killed at random moments.

    python -m bench.chaos [--broker redis|sentinel] [--seed 1] [--tasks 400] [--window 100]

Two prefork workers (``-c 2``) run the N tasks, sent at a steady pace over the window; a threads
worker runs a task longer than the visibility timeout and a countdown task (neither of its
processes is ever killed). Every run writes idempotent markers to a separate Redis. At seeded
random moments within the window: SIGKILL of a prefork child (twice), SIGKILL of a whole worker
(a new one is started), a Redis restart (SIGKILL, AOF on, 5 s down; ``--broker redis``) or a
Sentinel failover (SIGKILL of the master; ``--broker sentinel``), SIGTERM of a worker's whole
process group (what systemd's default KillMode sends; a new worker is started).

Prints sent, completed, lost, duplicated (and whether each duplicate was running at the moment of
a fault that hit it), the recovery per fault; writes ``bench/results/chaos.json`` (one entry per
broker). Default taskpool settings (lease ttl 30 s), except a visibility timeout of 45 s with
kombu's restore check every second, so that plain Celery would hand the 60 s task out again.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from bench.procs import ROOT, environ, start, stop
from taskpool.ops.embedded import RedisServer, SentinelGroup
from taskpool.ops.launcher import Child, alive

RESULTS = ROOT / "bench" / "results" / "chaos.json"
APP = "bench.apps.chaos_app"
LEASE_TTL = 30.0  # taskpool's default
VISIBILITY_TIMEOUT = 45.0
LONG_TASK = 60.0  # > VISIBILITY_TIMEOUT
COUNTDOWN = 50.0  # > VISIBILITY_TIMEOUT
REDIS_DOWN = 5.0


class Bench:
    def __init__(self, broker: str, seed: int, tasks: int, window: float, workdir: Path) -> None:
        self.broker_kind = broker
        self.rng = random.Random(seed)
        self.seed = seed
        self.n = tasks
        self.window = window
        self.workdir = workdir
        self.run = f"chaos-{os.urandom(3).hex()}"
        self.markers_server = RedisServer(workdir / "markers", appendonly=False).start()
        self.markers = redis.Redis(port=self.markers_server.port, decode_responses=True)
        self.redis: RedisServer | None = None
        self.group: SentinelGroup | None = None
        if broker == "sentinel":
            self.group = SentinelGroup(workdir / "sentinel").start()
            self.url = self.group.url
        else:
            self.redis = RedisServer(workdir / "broker", appendonly=True).start()
            self.url = self.redis.url
        self.env = {
            **os.environ,
            "TASKPOOL_BROKER_URL": self.url,
            "CHAOS_MARKERS_URL": f"redis://127.0.0.1:{self.markers_server.port}/0",
            "TASKPOOL_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "TASKPOOL_BROKER_TRANSPORT_OPTIONS": json.dumps(
                {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
            ),
            "PYTHONPATH": str(ROOT),
        }
        self.workers: dict[str, Child] = {}
        self.count = 0
        self.faults: list[dict[str, Any]] = []
        self.sent: list[str] = []
        self.exits: dict[str, dict[str, Any]] = {}

    # -- processes ---------------------------------------------------------------------------
    def start_worker(self, pool: str, concurrency: int) -> str:
        self.count += 1
        name = f"{pool}{self.count}@chaos"
        argv = [sys.executable, "-m", "celery", "-A", APP, "worker", "-P", pool, "-c", str(concurrency),
                "-n", name, "-l", "INFO", "--without-mingle", "--without-gossip"]  # fmt: skip
        self.workers[name] = start(argv, env=self.env, log=self.workdir / f"{name}.log")
        return name

    def wait_ready(self, app: Any, names: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = app.control.ping(destination=names, timeout=1.0)
            if len(replies) >= len(names):
                return
        raise SystemExit(f"workers {names} not ready in {timeout} s; logs in {self.workdir}")

    def prefork_workers(self) -> list[str]:
        return [n for n, p in self.workers.items() if n.startswith("prefork") and p.poll() is None]

    # -- markers -----------------------------------------------------------------------------
    def starts(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.markers.lrange(f"{self.run}:starts", 0, -1)]

    def ends(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.markers.lrange(f"{self.run}:ends", 0, -1)]

    def running(self) -> list[dict[str, Any]]:
        """Runs started and not ended, in a process that is still alive."""
        ended = {(e["label"], e["pid"], e["at"]) for e in self.ends()}
        return [s for s in self.starts() if (s["label"], s["pid"], s["at"]) not in ended and alive(s["pid"])]

    # -- faults ------------------------------------------------------------------------------
    def child_kill(self) -> dict[str, Any]:
        for _ in range(100):
            candidates = [
                s
                for s in self.running()
                if s["worker"] in self.prefork_workers() and s["pid"] != self.workers[s["worker"]].pid
            ]
            if candidates:
                victim = self.rng.choice(sorted(candidates, key=lambda s: s["at"]))
                at = time.time()
                os.kill(victim["pid"], signal.SIGKILL)
                return {"pid": victim["pid"], "worker": victim["worker"], "at": at,
                        "running": [victim["label"]]}  # fmt: skip
            time.sleep(0.1)
        return {"at": time.time(), "running": [], "skipped": "no task running in a prefork child"}

    def busy_worker(self) -> tuple[str, list[str]]:
        """A prefork worker and the tasks it runs: one that runs some, when one does within 10 s."""
        for _ in range(100):
            running = self.running()
            busy = sorted({s["worker"] for s in running} & set(self.prefork_workers()))
            if busy:
                name = self.rng.choice(busy)
                return name, [s["label"] for s in running if s["worker"] == name]
            time.sleep(0.1)
        return self.rng.choice(self.prefork_workers()), []

    def worker_kill(self, app: Any) -> dict[str, Any]:
        name, running = self.busy_worker()
        at = time.time()
        os.killpg(self.workers[name].pid, signal.SIGKILL)
        self.workers[name].wait()
        new = self.start_worker("prefork", 2)
        return {"worker": name, "at": at, "running": running, "replacement": new}

    def group_term(self, app: Any) -> dict[str, Any]:
        name, running = self.busy_worker()
        proc = self.workers[name]
        at = time.time()
        os.killpg(proc.pid, signal.SIGTERM)

        def wait() -> None:
            code = proc.wait()
            self.exits[name] = {"exit_code": code, "after": round(time.time() - at, 2)}

        threading.Thread(target=wait, daemon=True).start()
        new = self.start_worker("prefork", 2)
        return {"worker": name, "at": at, "running": running, "replacement": new}

    def redis_restart(self) -> dict[str, Any]:
        assert self.redis is not None
        running = [s["label"] for s in self.running()]
        at = time.time()
        self.redis.kill()
        time.sleep(REDIS_DOWN)
        self.redis.start()
        return {"at": at, "back_at": time.time(), "running": running}

    def failover(self) -> dict[str, Any]:
        assert self.group is not None
        running = [s["label"] for s in self.running()]
        old = self.group.master_port()
        at = time.time()
        server = self.group.kill_master()
        new = self.group.wait_for_failover(old, timeout=60)
        back = time.time()

        def rejoin() -> None:  # the old master comes back as a replica, for the next failover
            time.sleep(3)
            self.group.restart(server)  # type: ignore[union-attr]

        threading.Thread(target=rejoin, daemon=True).start()
        return {"at": at, "back_at": back, "promoted_after": round(back - at, 2), "old": old, "new": new,
                "running": running}  # fmt: skip

    # -- the run -----------------------------------------------------------------------------
    def send(self, task: Any, label: str, seconds: float, **options: Any) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                task.apply_async((self.run, label, seconds), **options)
                self.sent.append(label)
                return
            except Exception as exc:  # Redis down: try again, it is not sent yet
                if time.monotonic() > deadline:
                    print(f"could not send {label}: {exc}", file=sys.stderr)
                    return
                time.sleep(0.5)

    def sender(self, app_module: Any) -> None:
        self.send(app_module.steady, "long", LONG_TASK)
        self.send(app_module.steady, "countdown", 0.1, countdown=COUNTDOWN)
        self.send(app_module.work, "countdown-prefork", 0.1, countdown=20)
        pace = (self.window - 10) / self.n
        t0 = time.monotonic()
        for i in range(self.n):
            self.send(app_module.work, f"t{i}", round(self.rng.uniform(0.1, 0.5), 3))
            time.sleep(max(0.0, t0 + (i + 1) * pace - time.monotonic()))

    def execute(self) -> dict[str, Any]:
        with environ(TASKPOOL_BROKER_URL=self.url, CHAOS_MARKERS_URL=self.env["CHAOS_MARKERS_URL"]):
            import importlib

            module = importlib.import_module(APP)
        app = module.app
        names = [self.start_worker("prefork", 2) for _ in range(2)] + [self.start_worker("threads", 4)]
        self.wait_ready(app, names)
        kinds = ["child_kill", "child_kill", "worker_kill", "group_term"]
        kinds.append("failover" if self.group is not None else "redis_restart")
        self.rng.shuffle(kinds)
        slot = (self.window - 10) / len(kinds)
        moments = [5 + i * slot + self.rng.uniform(0.1, 0.7) * slot for i in range(len(kinds))]
        t0 = time.time()
        sender = threading.Thread(target=self.sender, args=(module,), daemon=True)
        sender.start()
        for kind, moment in zip(kinds, moments, strict=True):
            time.sleep(max(0.0, t0 + moment - time.time()))
            if kind == "child_kill":
                fault = self.child_kill()
            elif kind == "worker_kill":
                fault = self.worker_kill(app)
            elif kind == "group_term":
                fault = self.group_term(app)
            elif kind == "redis_restart":
                fault = self.redis_restart()
            else:
                fault = self.failover()
            fault["kind"] = kind
            print(f"{time.time() - t0:6.1f} s  {kind}: {fault.get('worker', fault.get('pid', ''))} "
                  f"running {fault['running']}", flush=True)  # fmt: skip
            self.faults.append(fault)
        sender.join()
        expected = set(self.sent)
        deadline = time.time() + max(LONG_TASK, COUNTDOWN) + LEASE_TTL + 120
        while time.time() < deadline:
            done = self.markers.smembers(f"{self.run}:done")
            if expected <= done:
                break
            time.sleep(0.5)
        time.sleep(3)  # a late duplicate has time to show
        return self.report(t0)

    def report(self, t0: float) -> dict[str, Any]:
        done = self.markers.smembers(f"{self.run}:done")
        runs = {k: int(v) for k, v in self.markers.hgetall(f"{self.run}:runs").items()}
        starts = self.starts()
        ends = self.ends()
        lost = sorted(set(self.sent) - done)
        dups = []
        for label, n in sorted(runs.items()):
            if n < 2:
                continue
            first = min((s for s in starts if s["label"] == label), key=lambda s: s["at"])
            first_end = next((e["end"] for e in ends if e["label"] == label and e["at"] == first["at"]), None)
            hit = [
                f["kind"]
                for f in self.faults
                if label in f["running"] and first["at"] <= f["at"] and (first_end or f["at"] + 1) > f["at"]
            ]
            dups.append({"label": label, "runs": n, "running_at_fault": hit})
        recoveries = []
        for f in self.faults:
            entry: dict[str, Any] = {"kind": f["kind"], "at_s": round(f["at"] - t0, 1)}
            later = [s for s in starts if s["at"] > f["at"]]
            reruns = {}
            for label in f["running"]:
                again = [s["at"] for s in later if s["label"] == label]
                if again:
                    reruns[label] = round(min(again) - f["at"], 2)
            if f["kind"] in ("child_kill", "worker_kill"):
                entry["running"] = len(f["running"])
                entry["rerun_after_s"] = max(reruns.values()) if reruns else None
                entry["not_rerun"] = sorted(set(f["running"]) - set(reruns))
            if f["kind"] == "worker_kill":
                entry["within_ttl_plus_5"] = (
                    all(v <= LEASE_TTL + 5 for v in reruns.values()) and not entry["not_rerun"]
                )
            if f["kind"] in ("redis_restart", "failover"):
                first_after = min((s["at"] for s in starts if s["at"] > f["back_at"]), default=None)
                entry["first_task_after_back_s"] = (
                    round(first_after - f["back_at"], 2) if first_after else None
                )
                entry["running"] = len(f["running"])
                entry["rerun"] = sorted(reruns)
                if "promoted_after" in f:
                    entry["promoted_after_s"] = f["promoted_after"]
            if f["kind"] == "group_term":
                entry["running"] = len(f["running"])
                entry["rerun"] = sorted(reruns)
                entry.update(self.exits.get(f["worker"], {"exit_code": None}))
            if "skipped" in f:
                entry["skipped"] = f["skipped"]
            recoveries.append(entry)
        return {
            "broker": self.broker_kind,
            "seed": self.seed,
            "lease_ttl_s": LEASE_TTL,
            "visibility_timeout_s": VISIBILITY_TIMEOUT,
            "sent": len(self.sent),
            "completed": len(done & set(self.sent)),
            "lost": lost,
            "duplicated": dups,
            "duplicates_not_running_at_a_fault": [d["label"] for d in dups if not d["running_at_fault"]],
            "long_task_runs": runs.get("long", 0),
            "countdown_runs": runs.get("countdown", 0),
            "countdown_prefork_runs": runs.get("countdown-prefork", 0),
            "faults": recoveries,
        }

    def close(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                stop(proc, timeout=10)
        if self.group is not None:
            self.group.stop()
        if self.redis is not None:
            self.redis.stop()
        self.markers_server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("redis", "sentinel"), default="redis")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--window", type=float, default=100.0, help="seconds of sending and faults")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/results/chaos.json")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="taskpool-chaos-"))
    bench = Bench(args.broker, args.seed, args.tasks, args.window, workdir)
    try:
        result = bench.execute()
    finally:
        bench.close()
    print(json.dumps(result, indent=2))
    print(
        f"\n{args.broker}: sent {result['sent']}, completed {result['completed']}, "
        f"lost {len(result['lost'])}, duplicated {len(result['duplicated'])} (not running at a fault: "
        f"{len(result['duplicates_not_running_at_a_fault'])}); long task ran {result['long_task_runs']}x, "
        f"countdown {result['countdown_runs']}x; logs in {workdir}"
    )
    if not args.no_write:
        existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        existing[args.broker] = result
        RESULTS.write_text(json.dumps(existing, indent=2) + "\n")
    ok = not result["lost"] and not result["duplicates_not_running_at_a_fault"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
