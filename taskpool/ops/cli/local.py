"""The local stack: ``taskpool up`` (Redis, the app's workers, Flower), ``taskpool demo`` (the
example pipeline on such a stack, or on running workers) and ``taskpool worker`` (one worker)."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from taskpool.core.errors import TaskpoolError
from taskpool.core.settings import (
    BROKER_URL_ENV,
    GPUS_ENV,
    METRICS_PORT_ENV,
    POOLS,
    env_broker_url,
    metrics_port,
)
from taskpool.ops.cli.common import app_option, console, load_app, safe, show
from taskpool.ops.stack import redis_reachable, worker_argv


@click.command(context_settings={"ignore_unknown_options": True})
@app_option
@click.option("--pool", "-P", type=click.Choice(POOLS), required=True, help="Which tasks this worker runs.")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    help="Default per pool: prefork=cores, threads=8, gevent=100.",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--hostname", "-n", help="Node name; default POOL@HOST.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    app_path: str,
    pool: str,
    concurrency: int | None,
    loglevel: str,
    hostname: str | None,
    celery_args: tuple[str, ...],
) -> None:
    """Run a worker for one pool: `celery worker -P POOL` with taskpool's defaults.

    Extra arguments go to `celery worker` unchanged.
    """
    argv = worker_argv(app_path, pool, concurrency, loglevel, hostname) + list(celery_args)
    os.execv(sys.executable, argv)  # same process: signals reach Celery directly


def _stack_env_broker() -> str | None:
    broker = env_broker_url()
    if broker and not redis_reachable(broker):
        raise click.ClickException(
            f"taskpool up: cannot reach Redis at TASKPOOL_BROKER_URL={safe(broker)}. Check that Redis runs "
            "there, or unset TASKPOOL_BROKER_URL and `taskpool up` starts an embedded one"
        )
    return broker or None


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_stack(
    app_path: str,
    *,
    demo_items: int = 0,
    stay: bool = True,
    flower: bool = True,
    flower_port: int = 5555,
    metrics_port: int = 0,
    gpus: int | None = None,
    echo: bool = True,
    timeout: float = 300.0,
    concurrency: dict[str, int] | None = None,
    autoscale: dict[str, str] | None = None,
    events: bool = True,
    monitoring: dict[str, float] | None = None,
) -> None:
    """`taskpool up`: Redis, the app's workers and Flower; the demo pipeline if asked; then wait.

    Ctrl-C (or SIGTERM) stops everything gracefully; a service that exits on its own is
    reported and the stack stopped (exit 1), never restarted in a loop.
    """
    from taskpool.core.limits import gpu_count
    from taskpool.ops.demo import run_pipeline, summary_tables
    from taskpool.ops.embedded import free_port
    from taskpool.ops.stack import (
        Stack,
        events_env,
        flower_credentials,
        plan_workers,
        port_free,
        stack_redis,
    )

    broker = _stack_env_broker()
    try:
        flower_auth = flower_credentials(dict(os.environ)) if flower else ("", False)
    except TaskpoolError as exc:
        raise click.ClickException(str(exc)) from None
    if flower and flower_port and not port_free(flower_port):
        raise click.ClickException(f"port {flower_port} is in use: give --flower-port (0 picks a free one)")
    flower_port = flower_port or free_port()
    if monitoring is not None:
        if not metrics_port:
            raise click.ClickException("--monitoring needs the workers' metrics: set --metrics-port, not 0")
        monitoring = dict(monitoring)
        for key in ("prometheus_port", "grafana_port"):
            option, wanted = "--" + key.replace("_", "-"), int(monitoring[key])
            if wanted and not port_free(wanted):
                raise click.ClickException(f"port {wanted} is in use: give {option} (0 picks a free one)")
            monitoring[key] = monitoring[key] or free_port()
    project = Path.cwd()
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    started = time.monotonic()
    try:
        with stack_redis(project, broker) as (url, embedded):
            os.environ[BROKER_URL_ENV] = url
            os.environ.update(events_env(events))  # before the app loads: the demo sends too
            app = load_app(app_path)
            slots = gpus if gpus is not None else gpu_count()
            specs = plan_workers(
                app, gpus=slots or 1, concurrency=concurrency, autoscale=autoscale, metrics_port=metrics_port
            )
            if not specs:
                raise click.ClickException(f"app {app_path!r} declares no taskpool task: no worker to start")
            stack = Stack(app_path, project, dict(os.environ), echo=echo)
            where = f"embedded Redis at {safe(url)} (data in .taskpool/redis)" if embedded else safe(url)
            console.print(f"[bold]taskpool up[/]: {where}", soft_wrap=True)
            console.print(f"  task events {'on' if events else 'off (--no-events)'}")
            try:
                stack.start_workers(specs)
                flower_url = None
                if flower:
                    auth, generated = flower_auth
                    svc = stack.start_flower(flower_port, auth)
                    flower_url = f"http://127.0.0.1:{flower_port}"
                    user, _, password = auth.partition(":")
                    login = f"user {user}, password {password} (generated; shown once)" if generated else ""
                    console.print(f"  flower (pid {svc.pid}): {flower_url}  {login or 'FLOWER_BASIC_AUTH'}")
                for spec, svc in zip(stack.specs, stack.workers, strict=True):
                    port = spec.env.get(METRICS_PORT_ENV)
                    extra = f", metrics http://127.0.0.1:{port}/metrics" if port else ""
                    gpu = spec.env.get(GPUS_ENV)
                    extra += f", {gpu} GPU slot(s)" if spec.queues and gpu else ""
                    console.print(f"  {spec.service} (pid {svc.pid}): {spec.node()}{extra}")
                if any(s.queues for s in specs) and not slots:
                    console.print(
                        "  [yellow]no GPU on this host[/]: the GPU worker has 1 virtual slot (torch_device() "
                        "is cpu); set --gpus or TASKPOOL_GPUS"
                    )
                stack.wait_ready(app.control, 120.0, flower_url)
                if monitoring is not None:
                    flower_at = flower_port if flower else None
                    start_monitoring(stack, project, monitoring, flower_at, flower_auth[0])
                console.print(f"stack ready in {time.monotonic() - started:.1f} s")

                def watch() -> None:
                    crashed = stack.crashed()
                    if crashed:
                        raise ServiceCrashed(crashed)

                if demo_items:
                    pipeline = importlib.import_module(app_path.partition(":")[0]).pipeline
                    gpu_slots = slots or 1 if any(s.queues for s in specs) else 0
                    report = run_pipeline(
                        app, pipeline, demo_items, console=console, timeout=timeout,
                        gpu_slots=gpu_slots, watch=watch,
                    )  # fmt: skip
                    for table in summary_tables(report):
                        show(table)
                    pools = sorted({s.pool for s in specs})
                    console.print(
                        f"{report.completed} items through {len(pools)} pools in {report.elapsed:.2f} s"
                    )
                    if report.completed != demo_items:
                        console.print(
                            f"[red]{demo_items - report.completed} item(s) did not complete[/] "
                            f"({report.failed} failed, {report.unfinished} unfinished)"
                        )
                if stay:
                    console.print("stack up; Ctrl-C stops it (running tasks finish first)")
                    while True:
                        watch()
                        time.sleep(0.5)
            except ServiceCrashed as exc:
                for svc in exc.services:
                    console.print(f"[red]{svc.name} exited with {svc.process.returncode}[/]; last lines:")
                    console.print(svc.tail(1500), markup=False, highlight=False)
                console.print("stopping the stack")
                raise click.ClickException(", ".join(s.name for s in exc.services) + " crashed") from None
            except KeyboardInterrupt:
                console.print("stopping: warm shutdown, running tasks finish (Ctrl-C again kills)")
            finally:
                codes = stack.stop(out=sys.stdout)
                console.print("exit codes: " + ", ".join(f"{k} {v}" for k, v in codes.items()))
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.print("stopped cleanly")


def start_monitoring(
    stack: Any, project: Path, options: dict[str, float], flower_port: int | None, flower_auth: str
) -> None:
    """Prometheus (scraping every worker's metrics port and Flower) and Grafana (the taskpool
    dashboard), when their binaries are installed; otherwise says how to get them."""
    import secrets

    from taskpool.ops import monitoring as mon

    workdir = project / ".taskpool" / "monitoring"
    prometheus = mon.prometheus_binary()
    if prometheus is None:
        console.print(f"  [yellow]no prometheus[/]: {mon.PROMETHEUS_HOWTO}", soft_wrap=True)
        return
    ports = {s.service: s.env.get(METRICS_PORT_ENV) for s in stack.specs}
    targets = {service: f"127.0.0.1:{port}" for service, port in ports.items() if port}
    program = mon.prometheus_program(
        prometheus,
        workdir,
        port=int(options["prometheus_port"]),
        workers=targets,
        flower=f"127.0.0.1:{flower_port}" if flower_port else None,
        flower_auth=flower_auth,
        interval=options["scrape_interval"],
    )
    svc = stack.start_program(program.name, program.argv, program.env)
    console.print(f"  prometheus (pid {svc.pid}): {program.url}  (config {workdir / 'prometheus.yml'})")
    grafana = mon.grafana_binary()
    if grafana is None:
        console.print(f"  [yellow]no grafana[/]: {mon.GRAFANA_HOWTO}", soft_wrap=True)
        return
    # Grafana sets the admin password when it creates its database only: keep the first one.
    saved = workdir / "grafana.password"
    password = saved.read_text().strip() if saved.exists() else ""
    login = f"password in {saved}"
    if not password:
        password = secrets.token_urlsafe(12)
        fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password)
        login = f"password {password} (generated; kept in {saved})"
    program = mon.grafana_program(
        grafana, workdir, project, port=int(options["grafana_port"]), prometheus_url=program.url,
        admin_password=password,
    )  # fmt: skip
    svc = stack.start_program(program.name, program.argv, program.env)
    console.print(f"  grafana (pid {svc.pid}): {program.url}  user admin, {login}", soft_wrap=True)


class ServiceCrashed(Exception):
    """A service of the stack exited on its own."""

    def __init__(self, services: list[Any]) -> None:
        super().__init__(services)
        self.services = services


def _default_int(variable: str, fallback: int) -> Any:
    return lambda: int(os.environ.get(variable) or fallback)


@click.command()
@app_option
@click.option("--demo", "demo_", is_flag=True, help="Run the example pipeline once the stack is up.")
@click.option("--items", "-n", default=300, show_default=True, type=click.IntRange(min=1), help="Demo items.")
@click.option("--exit", "exit_", is_flag=True, help="Stop the stack after the demo instead of waiting.")
@click.option("--flower/--no-flower", default=True, show_default=True, help="Start Flower.")
@click.option(
    "--flower-port",
    type=click.IntRange(min=0, max=65535),
    default=_default_int("FLOWER_PORT", 5555),
    show_default="FLOWER_PORT or 5555",
    help="0 picks a free port.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=lambda: metrics_port(default=9808),
    show_default="TASKPOOL_METRICS_PORT or 9808",
    help="Worker i serves Prometheus metrics on this port + i; 0: off.",
)
@click.option("--gpus", type=click.IntRange(min=0), help="GPU slots of the GPU worker (default: detected).")
@click.option(
    "--events/--no-events",
    default=lambda: _events_default(),
    show_default="TASKPOOL_EVENTS or on",
    help="Task events (Flower's task list and counters); they cost throughput, see the README.",
)
@click.option(
    "--monitoring/--no-monitoring",
    default=False,
    show_default=True,
    help="Start Prometheus and Grafana (the taskpool dashboard) when installed; else say how to get them.",
)
@click.option("--prometheus-port", type=click.IntRange(min=0, max=65535), default=9090, show_default=True)
@click.option("--grafana-port", type=click.IntRange(min=0, max=65535), default=3000, show_default=True)
@click.option(
    "--scrape-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between Prometheus's scrapes.",
)
@click.option("--logs/--no-logs", default=None, help="Echo services' logs [default: on, off with --demo].")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds the demo may take.")
@click.option(
    "--fleet",
    "fleet_",
    is_flag=True,
    help="Scale the number of workers per pool (the fleet controller over local worker processes).",
)
def up(
    app_path: str,
    demo_: bool,
    items: int,
    exit_: bool,
    flower: bool,
    flower_port: int,
    metrics_port: int,
    gpus: int | None,
    events: bool,
    monitoring: bool,
    prometheus_port: int,
    grafana_port: int,
    scrape_interval: float,
    logs: bool | None,
    timeout: float,
    fleet_: bool,
) -> None:
    """The whole local stack, no Docker: Redis, one worker per pool the app declares, a GPU
    worker where tasks need GPU slots, and Flower, until Ctrl-C.

    Uses TASKPOOL_BROKER_URL when set, else an embedded Redis with its data under .taskpool/.
    Flower needs FLOWER_BASIC_AUTH=user:password; without it a password is generated and
    printed once. Logs are prefixed by service and kept in .taskpool/logs/.

    With --fleet: Redis and the fleet controller, which runs one worker process per replica of
    each pool, between its min_workers and max_workers (`taskpool scale --fleet`), no Flower.
    """
    if fleet_:
        from taskpool.core.settings import fleet_port
        from taskpool.ops.cli.fleet import run_local_fleet

        run_local_fleet(app_path, broker=_stack_env_broker(), port=fleet_port())
        return
    cores = os.cpu_count() or 2
    run_stack(
        app_path,
        demo_items=items if demo_ else 0,
        stay=not exit_,
        flower=flower,
        flower_port=flower_port,
        metrics_port=metrics_port,
        gpus=gpus,
        echo=logs if logs is not None else not demo_,
        timeout=timeout,
        autoscale={"prefork": f"{max(2, cores)},1", "threads": "8,2", "gevent": "100,10"},
        events=events,
        monitoring={
            "prometheus_port": prometheus_port,
            "grafana_port": grafana_port,
            "scrape_interval": scrape_interval,
        }
        if monitoring
        else None,
    )


def _events_default() -> bool:
    from taskpool.ops.stack import events_enabled

    try:
        return events_enabled()
    except TaskpoolError as exc:
        raise click.BadParameter(str(exc), param_hint="TASKPOOL_EVENTS") from None


@click.command()
@app_option
@click.option(
    "--items", "-n", default=8, show_default=True, type=click.IntRange(min=1), help="Images to process."
)
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for the results.")
@click.option("--verbose", "-v", is_flag=True, help="Echo worker logs, prefixed by service.")
@click.option(
    "--attach",
    is_flag=True,
    help="Start nothing: use the workers serving TASKPOOL_BROKER_URL (compose's demo profile).",
)
def demo(app_path: str, items: int, timeout: float, verbose: bool, attach: bool) -> None:
    """Run the example pipeline (download -> run_model -> save) on a local stack, then stop it.

    `taskpool up --demo --exit --no-flower` with fewer items and small fixed pools.
    Uses TASKPOOL_BROKER_URL when set, else starts an embedded Redis under .taskpool/.
    """
    if attach:
        run_attached(app_path, items, timeout)
        return
    run_stack(
        app_path,
        demo_items=items,
        stay=False,
        flower=False,
        metrics_port=0,
        echo=verbose,
        timeout=timeout,
        concurrency={"prefork": 2, "threads": 4, "gevent": 20},
        events=_events_default(),
    )


def run_attached(app_path: str, items: int, timeout: float) -> None:
    """The demo pipeline through workers that are already running; waits for one per pool."""
    from taskpool.ops.demo import run_pipeline, summary_tables
    from taskpool.ops.stack import declared_pools

    if not _stack_env_broker():
        raise click.ClickException("--attach needs TASKPOOL_BROKER_URL: the Redis the workers use")
    app = load_app(app_path)
    plain, gpu = declared_pools(app)
    wanted = set(plain) | set(gpu)
    deadline = time.monotonic() + 120
    while True:
        stats = app.control.inspect(timeout=1.0).stats() or {}
        serving = {(st.get("taskpool") or {}).get("pool") for st in stats.values()}
        if wanted <= serving:
            break
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(wanted - serving))
            raise click.ClickException(f"no worker answered for pool(s) {missing} in 120 s")
    where = safe(app.conf.broker_url)
    console.print(f"[bold]taskpool demo[/]: {len(stats)} worker(s) at {where}; {items} items")
    pipeline = importlib.import_module(app_path.partition(":")[0]).pipeline
    report = run_pipeline(app, pipeline, items, console=console, timeout=timeout)
    for table in summary_tables(report):
        show(table)
    if report.completed != items:
        raise click.ClickException(f"{items - report.completed} of {items} item(s) did not complete")
