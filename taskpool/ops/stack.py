"""The local stack: Redis (configured or embedded), one `celery worker` per declared pool, a GPU
worker where tasks need GPU slots, and Flower, as child processes of `taskpool up`.

Each child runs in its own session, so a terminal's Ctrl-C reaches only `taskpool up`, which
then stops the children in order: Flower, the workers (SIGTERM: Celery's warm shutdown, running
tasks finish), Redis last, so that in-flight work can still acknowledge and store its result.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import redis

from taskpool.core.errors import ConfigurationError
from taskpool.core.settings import BROKER_URL_ENV, GPUS_ENV, METRICS_PORT_ENV, POOLS
from taskpool.ops.embedded import RedisServer
from taskpool.ops.launcher import Child, launch

#: ``TASKPOOL_EVENTS``: task events on (the default) or off, for `taskpool up`, compose and Flower.
EVENTS_ENV = "TASKPOOL_EVENTS"


def events_enabled(environ: dict[str, str] | None = None) -> bool:
    """``TASKPOOL_EVENTS`` as a bool (default on); a clear error on a value that is not one."""
    from celery.utils.serialization import strtobool

    raw = (os.environ if environ is None else environ).get(EVENTS_ENV, "") or "true"
    try:
        return bool(strtobool(raw))
    except (KeyError, ValueError, TypeError):
        raise ConfigurationError(f"{EVENTS_ENV}={raw!r}: expected true or false") from None


def events_env(on: bool) -> dict[str, str]:
    """The variables that turn task events on or off in every process of the stack: workers send
    task events (``worker_send_task_events``, what ``celery worker -E`` sets) and every sender,
    the workers' chains included, a ``task-sent`` event (``task_send_sent_event``), so Flower
    lists queued tasks too; ``TASKPOOL_EVENTS`` tells Flower's config whether to ask for them."""
    value = "true" if on else "false"
    return {
        EVENTS_ENV: value,
        "TASKPOOL_WORKER_SEND_TASK_EVENTS": value,
        "TASKPOOL_TASK_SEND_SENT_EVENT": value,
    }


#: Default concurrency of `taskpool worker` and the local stack, per pool.
DEFAULT_CONCURRENCY = {"prefork": max(2, os.cpu_count() or 2), "threads": 8, "gevent": 100}


def worker_argv(
    app: str, pool: str, concurrency: int | None, loglevel: str, hostname: str | None
) -> list[str]:
    """The `celery worker` command line that `taskpool worker --pool P` stands for."""
    if pool not in POOLS:
        from taskpool.core.errors import ConfigurationError

        raise ConfigurationError(f"--pool {pool!r}: expected one of {', '.join(POOLS)}")
    return [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-P", pool,
        "-c", str(concurrency or DEFAULT_CONCURRENCY[pool]),
        "-n", hostname or f"{pool}@%h",
        "-l", loglevel,
    ]  # fmt: skip


def redis_reachable(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()


@dataclass
class Service:
    """A child process of the stack whose output is copied with a ``[name]`` prefix."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_file: Path
    echo: bool = True
    process: Child | None = None
    _pump: threading.Thread | None = field(default=None, repr=False)
    #: Set by :meth:`stop`: an exit after it is not a crash.
    stopping: bool = False

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        # Own session: a terminal's Ctrl-C goes to `taskpool up` alone, which stops us in order.
        self.process = launch(self.argv, broker_url=self.env[BROKER_URL_ENV], env=self.env, output="pipe")
        self._pump = threading.Thread(target=self._copy, args=(self.process.stdout,), daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def crashed(self) -> bool:
        """Whether the process exited without being asked to."""
        return self.process is not None and not self.stopping and self.process.poll() is not None

    def tail(self, chars: int = 3000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else ""

    def _copy(self, stream: IO[bytes]) -> None:
        with self.log_file.open("ab") as log:
            for line in iter(stream.readline, b""):
                log.write(line)
                log.flush()
                if self.echo:
                    sys.stdout.write(f"[{self.name}] {line.decode(errors='replace')}")
                    sys.stdout.flush()

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM: Celery's warm shutdown, running tasks finish)."""
        self.stopping = True
        if self.process is not None:
            self.process.terminate()

    def kill(self) -> None:
        """SIGKILL the process and everything in its session (a prefork worker's children)."""
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def wait(self, timeout: float) -> int | None:
        """Wait for the exit; SIGKILL after ``timeout`` seconds. Returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        code = proc.wait(timeout)  # SIGKILL of its session past the timeout
        if self._pump is not None:
            self._pump.join(5)
        return code

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Celery's warm shutdown: running tasks finish), then SIGKILL after ``timeout``."""
        self.terminate()
        return self.wait(timeout)


@dataclass(frozen=True)
class WorkerSpec:
    """One worker service of the local stack.

    Attributes:
        service: its name in logs (``worker-gevent``, ``worker-gpu``).
        pool: the taskpool pool it runs.
        hostname: Celery node name (``%h`` is the host).
        queues: explicit ``-Q`` (the GPU worker's ``.gpu`` queue); empty: the pool's own queue.
        env: variables of this worker only (TASKPOOL_GPUS, TASKPOOL_METRICS_PORT, ...).
        concurrency: ``-c``; None: taskpool's default for the pool.
    """

    service: str
    pool: str
    hostname: str
    queues: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    concurrency: int | None = None

    def argv(self, app: str, loglevel: str = "INFO") -> list[str]:
        argv = worker_argv(app, self.pool, self.concurrency, loglevel, self.hostname)
        return argv + (["-Q", ",".join(self.queues)] if self.queues else [])

    def node(self, host: str | None = None) -> str:
        return self.hostname.replace("%h", host or socket.gethostname())


def declared_pools(app: Any) -> tuple[list[str], list[str]]:
    """(pools with tasks that need no GPU, pools with tasks that need GPU slots), in POOLS order."""
    plain: set[str] = set()
    gpu: set[str] = set()
    for task in app.tasks.values():
        options = getattr(task, "taskpool", None)
        if options is not None:
            (gpu if options.gpu_slots else plain).add(options.pool)
    return [p for p in POOLS if p in plain], [p for p in POOLS if p in gpu]


def plan_workers(
    app: Any,
    *,
    gpus: int,
    concurrency: dict[str, int] | None = None,
    autoscale: dict[str, str] | None = None,
    metrics_port: int = 0,
) -> list[WorkerSpec]:
    """The workers a local stack of ``app`` needs: one per pool it declares tasks for, and a GPU
    worker per pool with GPU tasks, consuming that pool's ``.gpu`` queue with ``gpus`` slots.

    With a GPU worker, the others run with ``TASKPOOL_GPUS=0`` so they leave its queue alone.
    ``autoscale`` (pool -> "max,min") sets ``TASKPOOL_AUTOSCALE_<POOL>`` where the environment
    does not; ``metrics_port`` > 0 gives worker i the port ``metrics_port + i``.
    """
    plain, gpu_pools = declared_pools(app)
    specs: list[WorkerSpec] = []
    for pool in plain:
        env = {GPUS_ENV: "0"} if gpu_pools else {}
        specs.append(WorkerSpec(f"worker-{pool}", pool, f"{pool}@%h", env=env))
    for pool in gpu_pools:
        name = "gpu" if len(gpu_pools) == 1 else f"gpu-{pool}"
        queue = app.settings.queue_for(pool, gpu=True)
        specs.append(WorkerSpec(f"worker-{name}", pool, f"{name}@%h", (queue,), env={GPUS_ENV: str(gpus)}))
    out = []
    for i, spec in enumerate(specs):
        env = dict(spec.env)
        key = f"TASKPOOL_AUTOSCALE_{spec.pool.upper()}"
        if autoscale and spec.pool in autoscale and key not in os.environ:
            env[key] = autoscale[spec.pool]
        if metrics_port:
            env[METRICS_PORT_ENV] = str(metrics_port + i)
        n = (concurrency or {}).get(spec.pool)
        out.append(WorkerSpec(spec.service, spec.pool, spec.hostname, spec.queues, env, n))
    return out


@contextlib.contextmanager
def stack_redis(project_dir: Path, broker_url: str | None) -> Iterator[tuple[str, RedisServer | None]]:
    """The configured Redis (``broker_url``), or an embedded one with its data under
    ``<project>/.taskpool/redis`` (started from ``config/redis.conf`` when the project has it)."""
    if broker_url is not None:
        yield broker_url, None
        return
    conf = project_dir / "config" / "redis.conf"
    server = RedisServer(project_dir / ".taskpool" / "redis", conf_file=conf if conf.exists() else None)
    with server:
        yield server.url, server


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def flower_credentials(environ: dict[str, str]) -> tuple[str, bool]:
    """``FLOWER_BASIC_AUTH`` from ``environ``, or a new random ``taskpool:<password>`` (True)."""
    given = environ.get("FLOWER_BASIC_AUTH", "")
    if given:
        from taskpool.ops.flower import check_basic_auth

        try:
            check_basic_auth(given)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        return given, False
    return f"taskpool:{secrets.token_urlsafe(12)}", True


class Stack:
    """The child processes of `taskpool up`: started in order, watched, stopped in order.

    Args:
        app: the app's import path (``-A``).
        project_dir: where ``config/`` is looked for and ``.taskpool/logs`` written.
        env: the environment every child gets (the broker's URL included).
        echo: copy each child's output to stdout, prefixed ``[service]``.
    """

    def __init__(self, app: str, project_dir: Path, env: dict[str, str], *, echo: bool) -> None:
        self.app = app
        self.project_dir = project_dir
        self.env = dict(env)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_dir), env.get("PYTHONPATH")]))
        self.echo = echo
        self.workers: list[Service] = []
        self.flower: Service | None = None
        self.specs: list[WorkerSpec] = []
        #: Prometheus and Grafana (`taskpool up --monitoring`): stopped first.
        self.programs: list[Service] = []

    def log_file(self, name: str) -> Path:
        return self.project_dir / ".taskpool" / "logs" / f"{name}.log"

    def start_workers(self, specs: list[WorkerSpec], loglevel: str = "INFO") -> None:
        for spec in specs:
            svc = Service(
                spec.service,
                spec.argv(self.app, loglevel),
                {**self.env, **spec.env},
                self.log_file(spec.service),
                echo=self.echo,
            )
            svc.start()
            self.workers.append(svc)
            self.specs.append(spec)

    def start_flower(self, port: int, basic_auth: str, address: str = "127.0.0.1") -> Service:
        conf = self.project_dir / "config" / "flower.py"
        argv = [sys.executable, "-m", "celery", "-A", self.app, "flower"]
        if conf.exists():
            argv.append(f"--conf={conf}")
        # Credentials through the environment, never argv (which `ps` shows to every user).
        env = {
            **self.env,
            "FLOWER_BASIC_AUTH": basic_auth,
            "FLOWER_PORT": str(port),
            "FLOWER_ADDRESS": address,
        }
        self.flower = Service("flower", argv, env, self.log_file("flower"), echo=self.echo)
        self.flower.start()
        return self.flower

    def start_program(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        """Another child of the stack (Prometheus, Grafana), logged to ``.taskpool/logs/NAME.log``."""
        svc = Service(name, argv, {**self.env, **env}, self.log_file(name), echo=self.echo)
        svc.start()
        self.programs.append(svc)
        return svc

    @property
    def services(self) -> list[Service]:
        return self.workers + ([self.flower] if self.flower else []) + self.programs

    def crashed(self) -> list[Service]:
        return [svc for svc in self.services if svc.crashed()]

    def wait_ready(self, control: Any, timeout: float, flower_url: str | None = None) -> None:
        """Until every worker answers ``ping`` and Flower answers HTTP; raises on a crash."""
        wait_for_workers(control, [s.node() for s in self.specs], self.workers, timeout)
        if flower_url is None or self.flower is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            if self.flower.crashed():
                raise RuntimeError(f"flower exited:\n{self.flower.tail()}")
            try:
                with urllib.request.urlopen(f"{flower_url}/healthcheck", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"flower did not answer on {flower_url} in {timeout} s")
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0, out: TextIO | None = None) -> dict[str, int | None]:
        """Flower, then every worker at once (warm shutdown), each killed after ``timeout`` s.

        A second Ctrl-C while waiting kills what is left (Celery's cold shutdown would too).
        Returns the exit codes by service.
        """
        codes: dict[str, int | None] = {}
        try:
            for svc in self.programs:
                codes[svc.name] = svc.stop(10)
            if self.flower is not None:
                codes["flower"] = self.flower.stop(10)
            for svc in self.workers:
                svc.terminate()
            for svc in self.workers:
                codes[svc.name] = svc.wait(timeout)
        except KeyboardInterrupt:
            if out is not None:
                print("second interrupt: killing the stack", file=out)
            for svc in self.services:
                svc.kill()
            for svc in self.services:
                codes[svc.name] = svc.wait(5)
        return codes


def wait_for_workers(control: Any, hostnames: list[str], services: list[Service], timeout: float) -> None:
    """Until every worker answers ``ping``; raises with the crashed service's log otherwise."""
    deadline = time.monotonic() + timeout
    pending = set(hostnames)
    while pending:
        for svc in services:
            if svc.process is not None and svc.process.poll() is not None:
                tail = svc.log_file.read_text(errors="replace")[-3000:] if svc.log_file.exists() else ""
                raise RuntimeError(f"{svc.name} exited with {svc.process.returncode}:\n{tail}")
        replies = control.ping(destination=sorted(pending), timeout=0.5) or []
        for reply in replies:
            pending -= set(reply)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"workers did not answer ping in {timeout} s: {', '.join(sorted(pending))}")
