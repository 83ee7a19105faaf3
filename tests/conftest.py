"""Session fixtures: a real redis-server on a free port, and real `celery worker` processes.

Every fixture here is lazy: a session starts redis-server only when a test asks for it, so
`pytest tests/unit` starts none (tests/unit/conftest.py refuses the Redis fixtures there).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

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


#: Workers started and not stopped yet: a failed test's report shows the end of their logs.
RUNNING: list[Worker] = []
#: Lines of each running worker's log a failed test's report shows.
LOG_TAIL_LINES = 25


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
        RUNNING.append(self)
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
        if self in RUNNING:
            RUNNING.remove(self)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report ends with what its running workers logged last (in CI, the only
    trace of what a worker was doing when a test timed out)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for worker in RUNNING:
            report.sections.append((f"worker {worker.hostname}: last lines of its log", worker.log_tail()))


class WorkerSet:
    """The workers a test starts from one test app module (``app_module``, with its ``app``);
    :meth:`stop_all` stops them. ``env``: variables every one of them gets."""

    def __init__(
        self, app_module: Any, broker_url: str, log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.app_module = app_module
        self.broker_url = broker_url
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.started: list[Worker] = []

    def start(
        self,
        pool: str,
        name: str | None = None,
        concurrency: int | None = None,
        *,
        wait: bool = True,
        args: tuple[str, ...] = (),
        **env: str,
    ) -> Worker:
        """A worker of the app (``env``: its own variables); with ``wait``, once it answers ``ping``."""
        w = Worker(
            self.app_module.__name__,
            pool,
            self.broker_url,
            self.log_dir,
            concurrency=concurrency,
            name=name,
            extra_args=args,
            env={**self.env, **env},
        )
        self.started.append(w)  # stopped at the end even if it never answers
        return w.start(self.app_module.app) if wait else w.launch()

    def stop_all(self) -> None:
        for w in self.started:
            w.stop()


@contextlib.contextmanager
def worker_set(
    app_module: Any, broker_url: str, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[WorkerSet]:
    """:class:`WorkerSet` for a fixture's body; all stopped when the block ends."""
    workers = WorkerSet(app_module, broker_url, log_dir, env)
    try:
        yield workers
    finally:
        workers.stop_all()


def session_app(module: str) -> Any:
    """A module-scoped fixture (assign it to the fixture's name in a test module): the test app
    ``module`` on the session's Redis; ``TASKPOOL_BROKER_URL`` stays set in this process (the
    `taskpool` commands a test runs read it too)."""

    @pytest.fixture(scope="module")
    def app_module(redis_url: str) -> Any:
        os.environ["TASKPOOL_BROKER_URL"] = redis_url
        return importlib.import_module(module)

    return app_module


def app_on_db(module: str, db: int) -> tuple[Any, Any]:
    """Two module-scoped fixtures (assign them to the fixtures' names in a test module): the test
    app ``module`` on database ``db`` of the session's Redis, that test module's own, and that
    database's URL. ``TASKPOOL_BROKER_URL`` is set for the import only (the app reads it then)."""

    def url(redis_url: str) -> str:
        return redis_url.rsplit("/", 1)[0] + f"/{db}"

    @pytest.fixture(scope="module")
    def broker(redis_url: str) -> str:
        return url(redis_url)

    @pytest.fixture(scope="module")
    def app_module(redis_url: str) -> Any:
        broker_url = url(redis_url)
        with mock.patch.dict(os.environ, {"TASKPOOL_BROKER_URL": broker_url}):
            imported = importlib.import_module(module)
        assert imported.app.conf.broker_url == broker_url
        return imported

    return app_module, broker


def records(app_module: Any, key: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The JSON records the test app's tasks pushed under ``key``, once there are ``n`` of them."""
    wait_for(lambda: app_module.app.redis.llen(key) >= n, timeout, what=f"{n} records under {key}")
    return [json.loads(x) for x in app_module.app.redis.lrange(key, 0, -1)]


def most_at_once(entries: list[dict[str, Any]]) -> int:
    """The most runs (records with ``start`` and ``end``) that overlapped at one moment."""
    return max(sum(1 for e in entries if e["start"] <= t["start"] < e["end"]) for t in entries)


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
