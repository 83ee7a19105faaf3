"""Process helpers the benches share: taskpool's own launcher (``taskpool.ops.launcher``)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from taskpool.ops.launcher import Child, launch

ROOT = Path(__file__).resolve().parent.parent


def start(argv: Sequence[str], *, env: Mapping[str, str], log: Path, broker_url: str | None = None) -> Child:
    """``argv`` in its own session, from the repository's root, output appended to ``log``;
    ``broker_url`` defaults to ``env``'s ``TASKPOOL_BROKER_URL``."""
    url = broker_url if broker_url is not None else env["TASKPOOL_BROKER_URL"]
    return launch(argv, broker_url=url, env=env, cwd=ROOT, output=log)


def stop(proc: Child | subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM (a worker's warm shutdown), SIGKILL of its process group after ``timeout``; then
    SIGKILL what is left of the group (a worker's pool children)."""
    (proc if isinstance(proc, Child) else Child(proc)).stop(timeout)


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block; restore (or remove) them after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_results(path: Path, script: str, **fields: Any) -> None:
    """Write a bench's results to ``path`` as JSON: the command that ran it (``python bench/<script>``
    and this run's arguments), the machine (CPUs, Python), then ``fields``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = f"python bench/{script} " + " ".join(sys.argv[1:])
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    path.write_text(json.dumps({"command": command, "machine": machine, **fields}, indent=2) + "\n")
