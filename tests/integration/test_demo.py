"""The README's demo: an embedded Redis, one worker per pool, the example pipeline, a clean stop."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from taskpool.ops.stack import redis_reachable


def test_demo_runs_pipeline_on_embedded_redis_and_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPOOL_")}  # nothing configured
    env.update(TASKPOOL_OUTPUT_DIR=str(tmp_path / "out"), COLUMNS="200")
    done = subprocess.run(
        [sys.executable, "-m", "taskpool", "demo", "--items", "5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "5 items through 3 pools" in out and "stopped cleanly" in out, out
    url = re.search(r"embedded Redis at (redis://\S+)", out)
    assert url, out
    assert (tmp_path / ".taskpool" / "redis" / "appendonlydir").is_dir()  # its data under the project folder
    assert not redis_reachable(url.group(1))  # the embedded Redis is gone
    for i in range(5):
        saved = json.loads((tmp_path / "out" / f"{i}.json").read_text())
        assert saved["image_id"] == i and 0 <= saved["label"] < 10 and 0 < saved["score"] <= 1
    logs = {p.name: p.read_text() for p in (tmp_path / ".taskpool" / "logs").iterdir()}
    assert set(logs) == {"worker-prefork.log", "worker-threads.log", "worker-gevent.log"}
    for name, text in logs.items():
        assert "Warm shutdown" in text or "warm shutdown" in text.lower(), name
    assert "workers.pipeline.download" in logs["worker-gevent.log"]
    assert "workers.pipeline.run_model" in logs["worker-prefork.log"]
    assert "workers.pipeline.save" in logs["worker-threads.log"]


def test_progress_bars_are_named_before_any_step_finished() -> None:
    from celery import chain, signature

    from taskpool.ops.demo import step_labels

    steps = chain(*(signature(f"workers.pipeline.{n}") for n in ("download", "run_model", "save")))
    assert step_labels(steps, 3) == ["download", "run_model", "save"]
    assert step_labels(signature("x.one"), 3) == ["step 1", "step 2", "step 3"]
