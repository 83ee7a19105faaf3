"""`taskpool up` for an app with GPU tasks: a GPU worker with its own queue and slots; and a
service that crashes is reported and stops the stack, without restarts."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import uuid
from pathlib import Path

from taskpool.ops.embedded import RedisServer
from taskpool.ops.launcher import launch
from tests.conftest import wait_for

from .test_stack import processes_with, run_client

ROOT = Path(__file__).resolve().parents[2]


def test_plan_adds_a_gpu_worker_that_alone_takes_gpu_tasks() -> None:
    # In a fresh interpreter: finalizing an app here would register other tests' tasks too.
    planned = run_client(
        "import dataclasses, json\n"
        "from tests.apps.stack_gpu_app import app\n"
        "from taskpool.stack import plan_workers\n"
        "specs = plan_workers(app, gpus=2, metrics_port=9900)\n"
        "argv = lambda s: s.argv('tests.apps.stack_gpu_app')\n"
        "print(json.dumps([dict(dataclasses.asdict(s), argv=argv(s)) for s in specs]))",
        "redis://127.0.0.1:1/0",
    )
    assert isinstance(planned, list)
    specs = {s["service"]: s for s in planned}
    # prefork has GPU tasks only: no plain prefork worker, just the GPU one.
    assert set(specs) == {"worker-threads", "worker-gpu"}
    gpu = specs["worker-gpu"]
    assert (gpu["pool"], gpu["queues"], gpu["env"]["TASKPOOL_GPUS"]) == (
        "prefork",
        ["taskpool.prefork.gpu"],
        "2",
    )
    assert "-Q" in gpu["argv"] and gpu["hostname"] == "gpu@%h"
    assert specs["worker-threads"]["env"]["TASKPOOL_GPUS"] == "0"  # never consumes a .gpu queue
    ports = sorted(int(s["env"]["TASKPOOL_METRICS_PORT"]) for s in specs.values())
    assert ports == [9900, 9901]


def test_up_runs_gpu_tasks_on_the_gpu_worker_and_reports_a_crash(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        marker = uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "FLOWER_"))}
        env.update(TASKPOOL_TEST_STACK=marker, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-m", "taskpool", "up", "-A", "tests.apps.stack_gpu_app", "--no-flower"]
        cmd += ["--metrics-port", "0", "--gpus", "2"]
        proc = launch(cmd, broker_url=server.url, env=env, cwd=tmp_path, output="pipe", text=True)
        lines: list[str] = []
        assert proc.stdout is not None
        pump = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
        pump.start()
        try:
            wait_for(lambda: "stack up;" in "".join(lines) or proc.poll() is not None, 90, what="the stack")
            out = "".join(lines)
            assert "stack up;" in out, out
            assert re.search(r"worker-gpu \(pid \d+\): gpu@\S+, 2 GPU slot\(s\)", out), out
            replies = run_client(
                "import json\n"
                "from tests.apps.stack_gpu_app import on_gpu\n"
                "runs = [on_gpu.delay() for _ in range(4)]  # routed to taskpool.prefork.gpu\n"
                "print(json.dumps([r.get(timeout=30) for r in runs]))",
                server.url,
            )
            assert isinstance(replies, list) and len(replies) == 4
            for reply in replies:
                assert reply["worker"].startswith("gpu@") and reply["gpus"] in ([0], [1]), reply
            # A worker that dies is reported, and the stack stops instead of restarting it.
            pid = int(re.search(r"worker-threads \(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)
            assert proc.wait(60) == 1, "".join(lines)
            pump.join(10)
            out = "".join(lines)
            assert "worker-threads exited with -9" in out and "worker-threads crashed" in out, out
            wait_for(lambda: not processes_with(marker), 15, what="every process of the stack to exit")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pid in processes_with(marker):
                os.kill(pid, signal.SIGKILL)
            proc.stdout.close()
