"""Session fixtures: a real redis-server on a free port, and real `celery worker` processes.

Every fixture here is lazy: a session starts redis-server only when a test asks for it, so
`pytest tests/unit` starts none (tests/unit/conftest.py refuses the Redis fixtures there).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from taskpool.ops.launcher import Child, Output, launch

if TYPE_CHECKING:
    from taskpool.ops.embedded import ClusterGroup, RedisServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test session's own (never the machine's shared one)."""
    from taskpool.ops.embedded import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True)
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterGroup]:
    """A Redis Cluster of three masters of the test session's own (started on first use)."""
    from taskpool.ops.embedded import ClusterGroup

    with ClusterGroup(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


def wait_for(
    predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> object:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def taskpool_cli(
    app_module: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `taskpool` command against ``app_module`` (``env`` overrides variables)."""
    env = {**os.environ, "TASKPOOL_APP": app_module, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})}
    cmd = [sys.executable, "-m", "taskpool", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


class Worker:
    """A real `celery worker` subprocess of the test app."""

    def __init__(
        self,
        app_module: str,
        pool: str,
        broker_url: str,
        log_dir: Path,
        concurrency: int | None = None,
        name: str | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.pool = pool
        self.hostname = f"{name or pool}@test"
        self.log_path = log_dir / f"{name or pool}.log"
        cmd = [sys.executable, "-m", "celery", "-A", app_module, "worker", "-P", pool, "-n", self.hostname]
        cmd += ["-l", "INFO", "--without-mingle", "--without-gossip", "-f", str(self.log_path)]
        if concurrency:
            cmd += ["-c", str(concurrency)]
        cmd += list(extra_args)
        full_env = dict(os.environ)
        full_env.update(
            TASKPOOL_BROKER_URL=broker_url,
            PYTHONPATH=str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", ""),
        )
        full_env.update(env or {})
        self.cmd = cmd
        self.env = full_env
        self.process: Child | None = None

    def launch(self, output: Output = "inherit") -> Worker:
        """Start the process, without waiting for it to be ready."""
        self.process = launch(
            self.cmd, broker_url=self.env["TASKPOOL_BROKER_URL"], env=self.env, cwd=ROOT, output=output
        )
        return self

    def start(self, app: object, timeout: float = 30.0) -> Worker:
        """Start the process and wait until it answers ``ping``."""
        self.launch()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker {self.hostname} exited: {self.log()}")
            replies = app.control.ping(destination=[self.hostname], timeout=0.5)  # type: ignore[attr-defined]
            return bool(replies)

        wait_for(ready, timeout, what=f"worker {self.hostname} to answer ping")
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill_all(self) -> None:
        """SIGKILL the worker and its pool children at once, as a crashed machine would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (running tasks finish); SIGKILL of its process group after ``timeout``."""
        proc, self.process = self.process, None
        if proc is not None:
            proc.stop(timeout)


@pytest.fixture(scope="session")
def tp_app(redis_url: str) -> object:
    """The test app module (tests/apps/app.py), configured for the session's Redis."""
    os.environ["TASKPOOL_BROKER_URL"] = redis_url
    import importlib

    return importlib.import_module("tests.apps.app")


@pytest.fixture(scope="session")
def pool_workers(
    tp_app: object, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Worker]]:
    """One real worker per pool for the whole session: prefork -c 2, threads -c 4, gevent -c 20."""
    logs = tmp_path_factory.mktemp("worker-logs")
    app = tp_app.app  # type: ignore[attr-defined]
    workers = {
        "prefork": Worker("tests.apps.app", "prefork", redis_url, logs, concurrency=2),
        "threads": Worker("tests.apps.app", "threads", redis_url, logs, concurrency=4),
        "gevent": Worker("tests.apps.app", "gevent", redis_url, logs, concurrency=20),
    }
    try:
        for w in workers.values():
            w.start(app)
        yield workers
    finally:
        for w in workers.values():
            w.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: nothing may pass by not running."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and exitstatus == 0:
        session.exitstatus = 1
        if reporter:
            reporter.write_line(f"CI: {skipped} test(s) skipped; skips are failures in CI", red=True)
