"""Benchmark of taskpool.semaphores on a redis-server of its own.

(a) uncontended acquire and acquire+release latency (p50/p99), and
(b) contention: JOBS jobs of JOB_SECONDS each on SLOTS slots, run by CONTENDERS threads that
    each take a job, acquire a slot (blocking), sleep, release; the makespan is compared with
    the ideal JOBS * JOB_SECONDS / SLOTS (efficiency = ideal / makespan).

Run: .venv/bin/python bench/semaphore_bench.py [--iterations 5000] [--contenders 8]
"""

from __future__ import annotations

import argparse
import itertools
import queue
import statistics
import tempfile
import threading
import time

import redis

from taskpool.ops.embedded import RedisServer
from taskpool.stores.semaphores import Semaphore


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def uncontended(port: int, iterations: int) -> tuple[list[float], list[float]]:
    """Seconds per acquire, and per acquire+release, one client, nobody else."""
    client = redis.Redis(port=port)
    try:
        sem = Semaphore(client, "bench:uncontended", capacity=1)
        for _ in range(200):  # warm up: connection, script cache
            sem.release(sem.acquire("bench:0"))
        acquire_s, pair_s = [], []
        for _ in range(iterations):
            t0 = time.perf_counter()
            lease = sem.acquire("bench:0")
            t1 = time.perf_counter()
            sem.release(lease)
            t2 = time.perf_counter()
            acquire_s.append(t1 - t0)
            pair_s.append(t2 - t0)
        return acquire_s, pair_s
    finally:
        client.close()


def contended(
    port: int, jobs: int, job_seconds: float, slots: int, contenders: int
) -> tuple[float, list[tuple[tuple[int, ...], float, float]]]:
    """Makespan, and (slots, start, end) of every hold."""
    todo: queue.Queue[int] = queue.Queue()
    for job in range(jobs):
        todo.put(job)
    holds: list[tuple[tuple[int, ...], float, float]] = []
    lock = threading.Lock()
    ready = threading.Barrier(contenders + 1)

    def contender(index: int) -> None:
        client = redis.Redis(port=port)
        sem = Semaphore(client, "bench:contended", capacity=slots)
        try:
            ready.wait()
            while True:
                try:
                    todo.get_nowait()
                except queue.Empty:
                    return
                lease = sem.acquire(f"bench:{index}", timeout=60.0)
                start = time.perf_counter()
                time.sleep(job_seconds)
                end = time.perf_counter()
                sem.release(lease)
                with lock:
                    holds.append((lease.slots, start, end))
        finally:
            client.close()

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    ready.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, holds


def handoff_gaps(holds: list[tuple[tuple[int, ...], float, float]]) -> list[float]:
    """Idle time of a slot between one holder's end and the next holder's start."""
    by_slot: dict[int, list[tuple[float, float]]] = {}
    for slots, start, end in holds:
        for slot in slots:
            by_slot.setdefault(slot, []).append((start, end))
    gaps = []
    for intervals in by_slot.values():
        intervals.sort()
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(intervals)]
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--job-seconds", type=float, default=0.05)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--contenders", type=int, default=8)
    parser.add_argument("--appendonly", action="store_true", help="run redis with the AOF, as the stack does")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="taskpool-sem-bench-") as data_dir,
        RedisServer(data_dir, appendonly=args.appendonly) as server,
    ):
        acquire_s, pair_s = uncontended(server.port, args.iterations)
        makespan, holds = contended(server.port, args.jobs, args.job_seconds, args.slots, args.contenders)

    ms = 1000.0
    ideal = args.jobs * args.job_seconds / args.slots
    gaps = handoff_gaps(holds)
    rows = [
        (f"uncontended acquire, {args.iterations}x", "p50 / p99", f"{percentile(acquire_s, 50) * ms:.3f} / {percentile(acquire_s, 99) * ms:.3f} ms"),  # noqa: E501
        ("uncontended acquire+release", "p50 / p99", f"{percentile(pair_s, 50) * ms:.3f} / {percentile(pair_s, 99) * ms:.3f} ms"),  # noqa: E501
        (f"{args.jobs} jobs x {args.job_seconds * ms:g} ms, {args.slots} slots", "makespan / ideal", f"{makespan:.3f} / {ideal:.3f} s"),  # noqa: E501
        (f"{args.contenders} contender threads", "efficiency", f"{ideal / makespan * 100:.1f} %"),
        ("slot hand-off (release -> next start)", "p50 / max", f"{statistics.median(gaps) * ms:.3f} / {max(gaps) * ms:.3f} ms"),  # noqa: E501
    ]  # fmt: skip
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"redis-server {'with' if args.appendonly else 'without'} AOF; {len(holds)} holds")
    for row in rows:
        print("  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)))


if __name__ == "__main__":
    main()
