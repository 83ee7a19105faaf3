"""Fan-out: the cost of publishing N inputs, taskpool's pipelined publish against ``.delay()`` loops.

    .venv/bin/python bench/fanout_bench.py [--inputs N] [--rounds R] [--batch-items M] [--batch-rounds B]

Two sections in one run: the publish cost of fan-out (below), then batching
(``bench/batching_bench.py``: a batched model task against the same model per item, through
real prefork workers, plain Celery and taskpool; ``--batch-items 0`` skips it).

Starts its own redis-server (never the machine's); plain Celery uses Redis db 1, taskpool db 2.
No worker runs: this times the publish phase only. Each round, in alternating order:

* ``plain .delay()``: plain Celery, ``noop.delay()`` N times;
* ``taskpool .delay()``: the same loop on the taskpool app (the app alone, no fan-out);
* ``taskpool publish``: :func:`taskpool.fanout.publish` of N calls, the function ``task.map``
  sends its chunks with (Celery's ``apply_async`` into a kombu ``producer.batch()`` pipeline,
  one SUBSCRIBE per chunk).

Each run starts from an empty db and keeps every ``AsyncResult`` until it is timed, so all three
include Celery's result subscription. Around each run the bench reads Redis's ``INFO``: commands
by name, and ``total_reads_processed`` / ``total_writes_processed`` (the server's socket reads and
writes; a client that waits for each reply costs one write per command, a pipeline one per
flush), so the round trips are counted, not assumed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fanout.json"
#: Publishing N inputs through fan-out must be at least this many times faster than the loop.
TARGET = 10.0
KINDS = {"plain": ("bench.apps.plain_app", 1), "taskpool": ("bench.apps.taskpool_app", 2)}  # module, db
SIDES = ("plain .delay()", "taskpool .delay()", "taskpool publish")


# -- Redis counters -------------------------------------------------------------------------------
def redis_counters(client: Any) -> dict[str, int]:
    """Commands by name, and the server's socket reads and writes so far."""
    counters = {
        name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in client.info("commandstats").items()
    }
    stats = client.info("stats")
    counters["socket reads"] = int(stats["total_reads_processed"])
    counters["socket writes"] = int(stats["total_writes_processed"])
    return counters


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What a run added; the bench's own two INFO calls are taken out."""
    delta = {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}
    if "info" in delta:
        delta["info"] -= 1  # the INFO commandstats that read "before" counted after its read
        delta["socket writes"] = delta.get("socket writes", 0) - 2
        delta["socket reads"] = delta.get("socket reads", 0) - 2
        if delta["info"] <= 0:
            del delta["info"]
    return delta


@contextlib.contextmanager
def client_round_trips() -> Iterator[dict[str, int]]:
    """Counts, in this process, what redis-py sends while the block runs: commands that wait for
    their reply (one round trip each), pipeline executions (one round trip each, whatever their
    size) and pub/sub commands (SUBSCRIBE/UNSUBSCRIBE: sent, not waited for); and the seconds
    spent inside the round trips (packing, sending, waiting, parsing the replies).

    It wraps three redis-py methods for the block's duration; only the untimed counting runs use it.
    """
    import redis.client

    counts: dict[str, Any] = {"commands": 0, "pipelines": 0, "pipelined commands": 0, "pubsub commands": 0}
    waited = [0.0]
    command, execute, pubsub = (
        redis.client.Redis.execute_command,
        redis.client.Pipeline.execute,
        redis.client.PubSub.execute_command,
    )

    def counted_command(self: Any, *args: Any, **options: Any) -> Any:
        counts["commands"] += 1
        start = time.perf_counter()
        try:
            return command(self, *args, **options)
        finally:
            waited[0] += time.perf_counter() - start

    def counted_execute(self: Any, *args: Any, **options: Any) -> Any:
        counts["pipelines"] += 1
        counts["pipelined commands"] += len(self.command_stack)
        start = time.perf_counter()
        try:
            return execute(self, *args, **options)
        finally:
            waited[0] += time.perf_counter() - start

    def counted_pubsub(self: Any, *args: Any) -> Any:
        counts["pubsub commands"] += 1
        return pubsub(self, *args)

    redis.client.Redis.execute_command = counted_command  # type: ignore[method-assign]
    redis.client.Pipeline.execute = counted_execute  # type: ignore[method-assign]
    redis.client.PubSub.execute_command = counted_pubsub  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        redis.client.Redis.execute_command = command  # type: ignore[method-assign]
        redis.client.Pipeline.execute = execute  # type: ignore[method-assign]
        redis.client.PubSub.execute_command = pubsub  # type: ignore[method-assign]
    counts["round trips"] = counts["commands"] + counts["pipelines"]
    counts["seconds in round trips"] = round(waited[0], 4)


# -- the fan-out publish section ------------------------------------------------------------------
def _run_side(side: str, tasks: dict[str, Any], n: int) -> tuple[float, list[Any]]:
    """Seconds to publish ``n`` messages one way; the results are returned, kept until timed."""
    from taskpool.client import fanout

    start = time.perf_counter()
    if side == "plain .delay()":
        kept = [tasks["plain"].delay() for _ in range(n)]
    elif side == "taskpool .delay()":
        kept = [tasks["taskpool"].delay() for _ in range(n)]
    else:
        kept = fanout.publish(tasks["taskpool"], [((), {})] * n)
    return time.perf_counter() - start, kept


def bench_fanout_publish(
    args: argparse.Namespace, clients: dict[str, Any], tasks: dict[str, Any]
) -> dict[str, Any]:
    """Every round, each side once (order rotating); medians, ratios and Redis counters."""
    from taskpool.client import fanout

    n = args.inputs
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    counters: dict[str, list[dict[str, int]]] = {side: [] for side in SIDES}
    for warm in SIDES:  # connections, pub/sub, queue declarations: not part of the timing
        _run_side(warm, tasks, 10)
    for rnd in range(args.rounds):
        order = SIDES[rnd % len(SIDES) :] + SIDES[: rnd % len(SIDES)]
        for side in order:
            client = clients["plain" if side.startswith("plain") else "taskpool"]
            client.flushdb()
            before = redis_counters(client)
            seconds, kept = _run_side(side, tasks, n)
            after = redis_counters(client)
            queued = int(client.llen(_queue_of(tasks, side)))
            if queued != n:
                raise RuntimeError(f"{side}: {queued} messages in the queue after publishing {n}")
            del kept  # Celery unsubscribes each result as it goes
            samples[side].append(seconds)
            counters[side].append(counters_delta(before, after))
            print(f"  round {rnd + 1}/{args.rounds} {side:18} {seconds:7.3f} s  {n / seconds:8.0f} msg/s")
    trips: dict[str, dict[str, int]] = {}
    for side in SIDES:  # once more, untimed, counting the round trips on the client's side
        clients["plain" if side.startswith("plain") else "taskpool"].flushdb()
        with client_round_trips() as counted:
            _, kept = _run_side(side, tasks, n)
        del kept
        trips[side] = counted
        print(f"  counted {side:18} {counted}")
    medians = {side: statistics.median(values) for side, values in samples.items()}
    ratio = medians["plain .delay()"] / medians["taskpool publish"]
    rows = {
        side: {
            "median_s": round(medians[side], 4),
            "msgs_per_s": round(n / medians[side], 1),
            "us_per_msg": round(1e6 * medians[side] / n, 1),
            "samples_s": [round(v, 4) for v in samples[side]],
            "client_round_trips": trips[side],
            "redis_server_per_round": counters[side],
        }
        for side in SIDES
    }
    return {
        "inputs": n,
        "rounds": args.rounds,
        "statistic": "median",
        "publish_chunk": fanout.PUBLISH_CHUNK,
        "sides": rows,
        "ratio_plain_delay_over_publish": round(ratio, 2),
        "ratio_taskpool_delay_over_publish": round(
            medians["taskpool .delay()"] / medians["taskpool publish"], 2
        ),
        "per_round_ratios": [
            round(p / f, 2)
            for p, f in zip(samples["plain .delay()"], samples["taskpool publish"], strict=True)
        ],
        "target_ratio": TARGET,
        "pass": ratio >= TARGET,
    }


def _queue_of(tasks: dict[str, Any], side: str) -> str:
    if side.startswith("plain"):
        return str(tasks["plain"].app.conf.task_default_queue)
    return str(tasks["taskpool"].app.settings.queue_for("threads"))


def print_fanout_publish(section: dict[str, Any]) -> None:
    n = section["inputs"]
    header = "side               | median s | msg/s   | us/msg | round trips | pipelines | LPUSH  | SUBSCRIBE"
    print(f"\n{header}\n{'-' * len(header)}")
    for side, row in section["sides"].items():
        last, trips = row["redis_server_per_round"][-1], row["client_round_trips"]
        print(
            f"{side:18} | {row['median_s']:8.3f} | {row['msgs_per_s']:7.0f} | {row['us_per_msg']:6.1f} | "
            f"{trips['round trips']:11} | {trips['pipelines']:9} | {last.get('lpush', 0):6} | "
            f"{last.get('subscribe', 0):9}"
        )
    ratio = section["ratio_plain_delay_over_publish"]
    verdict = "PASS" if section["pass"] else "BELOW TARGET"
    publish = section["sides"]["taskpool publish"]
    in_redis = publish["client_round_trips"]["seconds in round trips"]
    print(
        f"\ntaskpool publish: {in_redis:.3f} s of its run in {publish['client_round_trips']['round trips']} "
        f"round trips; the rest is Celery's apply_async building each message in Python"
    )
    print(
        f"publishing {n} inputs: taskpool publish is {ratio:.2f}x faster than plain Celery's .delay() loop "
        f"(target {TARGET:.0f}x: {verdict}); per-round ratios {section['per_round_ratios']}"
    )


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="messages per run (default 10000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, order rotating (default 3)")
    parser.add_argument("--batch-items", type=int, default=1000, help="inputs per batching run (0: skip)")
    parser.add_argument("--batch-rounds", type=int, default=3, help="batching rounds (default 3)")
    parser.add_argument(
        "--batch-model", choices=("mlp", "cnn"), default="mlp", help="bench/apps/batch_apps.py"
    )
    args = parser.parse_args(argv)
    if args.inputs < 1 or args.rounds < 1:
        parser.error("--inputs and --rounds must be >= 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run as a script: make `bench.apps` and `taskpool` importable

    import celery
    import kombu
    import redis

    from bench.apps.plain_conf import TRANSPORT_OPTIONS, fairness
    from taskpool.core.settings import DEFAULTS
    from taskpool.ops.embedded import RedisServer, free_port

    began = time.monotonic()
    sections: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="taskpool-fanout-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis", port=free_port(), appendonly=False)
        try:
            server.start()
            base = server.url.rsplit("/", 1)[0]
            urls = {kind: f"{base}/{db}" for kind, (_, db) in KINDS.items()}
            for key in [k for k in os.environ if k.startswith(("TASKPOOL_", "BENCH_"))]:
                del os.environ[key]  # inherited settings would change one side only
            os.environ.update(
                BENCH_BROKER_URL=urls["plain"],
                TASKPOOL_BROKER_URL=urls["taskpool"],
                BENCH_BROKER_TRANSPORT_OPTIONS=json.dumps(TRANSPORT_OPTIONS),
                TASKPOOL_BROKER_TRANSPORT_OPTIONS=json.dumps(TRANSPORT_OPTIONS),
                BENCH_CELERY_CONF=json.dumps(DEFAULTS),
            )
            mods = {kind: importlib.import_module(mod) for kind, (mod, _) in KINDS.items()}
            shared, problems = fairness(mods["plain"].app, mods["taskpool"].app, DEFAULTS)
            for problem in problems:
                print(f"WARNING: settings differ, the comparison is not fair: {problem}")
            clients = {kind: redis.Redis.from_url(url) for kind, url in urls.items()}
            tasks = {"plain": mods["plain"].noop, "taskpool": mods["taskpool"].NOOP["threads"]}
            print(f"redis-server {server.url} (temp dir, appendonly off); plain on db 1, taskpool on db 2")
            print(f"publish phase only (no worker): {args.inputs} messages per run, {args.rounds} round(s)")

            sections["fanout_publish"] = bench_fanout_publish(args, clients, tasks)
            print_fanout_publish(sections["fanout_publish"])
            # -- further sections go here: each adds sections["<name>"] = <dict> and prints its table.
            if args.batch_items > 0:
                from bench import batching_bench

                for client in clients.values():
                    client.flushdb()
                sections["batching"] = batching_bench.run(
                    base, args.batch_items, args.batch_rounds, args.batch_model, Path(tmp)
                )
                batching_bench.print_result(sections["batching"])
        finally:
            gc.collect()  # results still referenced from cycles unsubscribe now, while Redis is up
            server.stop()

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "shared_settings": shared,
        "settings_differences": problems,
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "wall_time_s": round(time.monotonic() - began, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sections": sections,
    }
    RESULTS.write_text(json.dumps(data, indent=2, default=repr) + "\n")
    print(f"results written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the bench's redis-server was stopped", file=sys.stderr)
        sys.exit(130)
