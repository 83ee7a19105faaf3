"""The `taskpool` command: worker, demo, dead-letter management."""

from __future__ import annotations

import datetime as dt
import importlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import kombu.exceptions
import redis
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table

from taskpool.core import names
from taskpool.core.errors import TaskpoolError
from taskpool.core.settings import (
    BROKER_URL_ENV,
    GPUS_ENV,
    METRICS_PORT_ENV,
    POOLS,
    env_app_path,
    env_broker_url,
    metrics_port,
)
from taskpool.ops.stack import redis_reachable, worker_argv
from taskpool.stores.limits import LimitStore
from taskpool.stores.queues import queue_depth
from taskpool.stores.semaphores import HolderInfo, holders_of, reap_expired, semaphore_names

console = Console()
DEFAULT_APP = "workers"


def load_app(path: str) -> Any:
    """Import ``module`` or ``module:attribute`` and return the TaskPool app in it."""
    sys.path.insert(0, os.getcwd())  # like `celery -A`: the project folder is importable
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attr or "app", None)
    if app is None:
        raise click.BadParameter(f"{path!r} has no attribute {attr or 'app'!r}", param_hint="--app")
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        root = ctx.find_root()  # for the one-line error when its Redis is unreachable
        root.meta[_APP_KEY], root.meta["taskpool.command"] = app, ctx.command_path
    return app


_APP_KEY = "taskpool.app"
#: What an unreachable or refusing broker raises: redis-py directly, kombu (Celery's control).
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError, ConnectionError)


def unreachable_message(command: str, url: str | None, exc: BaseException) -> str:
    """One line: what failed, where (password masked), what to check."""
    where = f"Redis at {_safe(url)}" if url else "the broker"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    password = urlsplit(url).password if url else None
    if password:
        detail = detail.replace(password, "**")
    return (
        f"{command}: cannot reach {where} ({detail}). Check that Redis runs there and that "
        "TASKPOOL_BROKER_URL (else the app's broker_url) names it; `taskpool up` starts one. "
        "`taskpool --debug ...` shows the traceback."
    )


class Main(click.Group):
    """The `taskpool` group: a broker that cannot be reached is one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UNREACHABLE as exc:
            if ctx.meta.get("taskpool.debug"):
                raise
            app = ctx.meta.get(_APP_KEY)
            url = app.settings.redis_url if app is not None else env_broker_url()
            command = ctx.meta.get("taskpool.command", ctx.command_path)
            raise click.ClickException(unreachable_message(command, url, exc)) from None


app_option = click.option(
    "-A",
    "--app",
    "app_path",
    default=lambda: env_app_path() or DEFAULT_APP,
    show_default="TASKPOOL_APP or workers",
    help="The app: a module (its `app` attribute) or module:attribute.",
)


@click.group(cls=Main)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """taskpool: Celery workers per pool type, with retries, dead letters and more."""
    ctx.meta["taskpool.debug"] = debug


@main.command(context_settings={"ignore_unknown_options": True})
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
            f"taskpool up: cannot reach Redis at TASKPOOL_BROKER_URL={_safe(broker)}. Check that Redis runs "
            "there, or unset TASKPOOL_BROKER_URL and `taskpool up` starts an embedded one"
        )
    return broker or None


def _safe(url: str) -> str:
    """A URL fit to print: its password masked."""
    from taskpool.core.settings import mask_url

    return mask_url(url)


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
) -> None:
    """`taskpool up`: Redis, the app's workers and Flower; the demo pipeline if asked; then wait.

    Ctrl-C (or SIGTERM) stops everything gracefully; a service that exits on its own is
    reported and the stack stopped (exit 1), never restarted in a loop.
    """
    from taskpool.core.limits import gpu_count
    from taskpool.ops.demo import run_pipeline, summary_tables
    from taskpool.ops.embedded import free_port
    from taskpool.ops.stack import Stack, flower_credentials, plan_workers, port_free, stack_redis

    broker = _stack_env_broker()
    try:
        flower_auth = flower_credentials(dict(os.environ)) if flower else ("", False)
    except TaskpoolError as exc:
        raise click.ClickException(str(exc)) from None
    if flower and flower_port and not port_free(flower_port):
        raise click.ClickException(f"port {flower_port} is in use: give --flower-port (0 picks a free one)")
    flower_port = flower_port or free_port()
    project = Path.cwd()
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    started = time.monotonic()
    try:
        with stack_redis(project, broker) as (url, embedded):
            os.environ[BROKER_URL_ENV] = url
            app = load_app(app_path)
            slots = gpus if gpus is not None else gpu_count()
            specs = plan_workers(
                app, gpus=slots or 1, concurrency=concurrency, autoscale=autoscale, metrics_port=metrics_port
            )
            if not specs:
                raise click.ClickException(f"app {app_path!r} declares no taskpool task: no worker to start")
            stack = Stack(app_path, project, dict(os.environ), echo=echo)
            where = f"embedded Redis at {_safe(url)} (data in .taskpool/redis)" if embedded else _safe(url)
            console.print(f"[bold]taskpool up[/]: {where}", soft_wrap=True)
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


class ServiceCrashed(Exception):
    """A service of the stack exited on its own."""

    def __init__(self, services: list[Any]) -> None:
        super().__init__(services)
        self.services = services


def _default_int(variable: str, fallback: int) -> Any:
    return lambda: int(os.environ.get(variable) or fallback)


@main.command()
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
@click.option("--logs/--no-logs", default=None, help="Echo services' logs [default: on, off with --demo].")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds the demo may take.")
def up(
    app_path: str,
    demo_: bool,
    items: int,
    exit_: bool,
    flower: bool,
    flower_port: int,
    metrics_port: int,
    gpus: int | None,
    logs: bool | None,
    timeout: float,
) -> None:
    """The whole local stack, no Docker: Redis, one worker per pool the app declares, a GPU
    worker where tasks need GPU slots, and Flower, until Ctrl-C.

    Uses TASKPOOL_BROKER_URL when set, else an embedded Redis with its data under .taskpool/.
    Flower needs FLOWER_BASIC_AUTH=user:password; without it a password is generated and
    printed once. Logs are prefixed by service and kept in .taskpool/logs/.
    """
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
    )


@main.command()
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
    where = _safe(app.conf.broker_url)
    console.print(f"[bold]taskpool demo[/]: {len(stats)} worker(s) at {where}; {items} items")
    pipeline = importlib.import_module(app_path.partition(":")[0]).pipeline
    report = run_pipeline(app, pipeline, items, console=console, timeout=timeout)
    for table in summary_tables(report):
        show(table)
    if report.completed != items:
        raise click.ClickException(f"{items - report.completed} of {items} item(s) did not complete")


@main.command()
@app_option
@click.option("--timeout", default=1.0, show_default=True, help="Seconds to wait for workers' replies.")
@click.pass_context
def status(ctx: click.Context, app_path: str, timeout: float) -> None:
    """Workers by pool (concurrency, in flight), queue depths, slots and limits in use, dead letters."""
    app = load_app(app_path)
    source = ctx.get_parameter_source("app_path")
    chosen = "-A" if source == click.core.ParameterSource.COMMANDLINE else (
        "TASKPOOL_APP" if env_app_path() else "the default; -A or TASKPOOL_APP picks another"
    )  # fmt: skip
    client = app.redis
    client.ping()  # fail fast, before Celery's broadcast retries an unreachable broker
    console.print(
        f"app [bold]{app_path}[/] ({chosen}), Redis at {_safe(app.settings.redis_url)}", soft_wrap=True
    )
    stats = app.control.inspect(timeout=timeout).stats() or {}
    workers = Table(
        _id_column("pool"),
        _id_column("worker"),
        "concurrency",
        "min-max",
        "target",
        "in flight",
        "reserved",
        "slots held",
        "waiting",
    )
    workers.title = f"{len(stats)} worker(s)"
    rows = []
    consumed: set[str] = set()
    for node, st in stats.items():
        tp = st.get("taskpool") or {}
        pool = tp.get("pool") or node.partition("@")[0]
        rows.append((pool, node, tp, st))
        consumed.update(tp.get("queues") or ())
    for pool, node, tp, st in sorted(rows, key=lambda r: (r[0], r[1])):
        concurrency = tp.get("concurrency", (st.get("pool") or {}).get("max-concurrency"))
        workers.add_row(
            pool,
            node,
            str(concurrency),
            f"{tp.get('min')}-{tp.get('max')}" if tp.get("max") is not None else "",
            str(tp.get("target") if tp.get("target") is not None else ""),
            _counts(tp.get("in_flight")),
            _counts(tp.get("reserved")),
            _counts(tp.get("slots_held")),
            _counts(tp.get("slots_waiting")),
        )
    show(workers)
    queues = Table(_id_column("queue"), "depth", "consumed by")
    queues.title = "queues"
    orphans = []
    keyprefix = names.queue_keyprefix(app.conf.broker_transport_options)
    for pool in POOLS:
        for gpu in (False, True):
            name = app.settings.queue_for(pool, gpu=gpu)
            depth = queue_depth(client, name, keyprefix=keyprefix)
            nodes = sorted(n for _, n, tp, _ in rows if name in (tp.get("queues") or ()))
            if depth and name not in consumed:
                orphans.append((name, depth, pool, gpu))
            by = ", ".join(nodes) if nodes else ("[red]no worker[/]" if depth else "-")
            queues.add_row(name, str(depth), by)
    show(queues)
    for name, depth, pool, gpu in orphans:
        need = f"a {pool} worker with GPU slots (TASKPOOL_GPUS >= 1)" if gpu else f"a {pool} worker"
        console.print(
            f"[yellow]warning[/]: queue {name} holds {depth} message(s) and no live worker consumes it: "
            f"they wait until {need} starts (`taskpool worker -A {app_path} --pool {pool}`)",
            soft_wrap=True,
        )
    store = LimitStore(client, app.settings.keyspace)
    sizes = store.all()
    sems = Table(_id_column("semaphore"), "size", "in use", "holders")
    sems.title = "slots and limits"
    in_redis = semaphore_names(app.redis, app.settings.keyspace)
    freed: list[tuple[str, HolderInfo]] = []
    for name in in_redis:
        freed += [(name, h) for h in reap_expired(app.redis, name, app.settings.keyspace)]
        held = holders_of(app.redis, name, app.settings.keyspace)
        kind, rest = names.kind_of(name)
        size = sizes.get(rest) if kind == names.LIMIT else None
        sems.add_row(name, str(size or ""), str(len(held)), ", ".join(sorted({h.owner for h in held})))
    for limit, size in sorted(sizes.items()):
        if names.limit_semaphore(limit) not in in_redis:
            sems.add_row(names.limit_semaphore(limit), str(size), "0", "")
    show(sems)
    for name, h in freed:
        console.print(f"{name}: slot {h.slot} {_dead_holder(h)}", soft_wrap=True)
    console.print(f"dead letters: {app.dead_letters.count()}  (taskpool dead ls)")


def _id_column(header: str) -> Column:
    """A column whose values (ids, names) are never wrapped or cut."""
    return Column(header, no_wrap=True, overflow="ignore")


def show(table: Table) -> None:
    """Print a table whole: as wide as its content needs when the terminal (or the 80 columns rich
    assumes for a pipe) is narrower, so ids and names are never cut; the terminal wraps lines."""
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if natural <= console.width:
        console.print(table)
        return
    wide = Console(width=natural, file=console.file, force_terminal=console.is_terminal)
    wide.print(table)


def _counts(mapping: dict[str, int] | None) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in (mapping or {}).items()) or "-"


@main.group()
def dead() -> None:
    """Dead letters: tasks that failed after their last attempt."""


@dead.command("ls")
@app_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
def dead_ls(app_path: str, limit: int) -> None:
    """List dead letters, newest first."""
    store = load_app(app_path).dead_letters
    records = store.list(limit)
    table = Table(
        _id_column("id"),
        _id_column("task"),
        _id_column("task id"),
        "attempts",
        "failed at",
        Column("exception", overflow="fold", max_width=60),
        title=f"{store.count()} dead letter(s)",
    )
    for r in records:
        when = dt.datetime.fromtimestamp(r.failed_at).isoformat(timespec="seconds")
        table.add_row(r.id, r.task, r.task_id, str(r.attempts), when, r.exception)
    show(table)


@dead.command("retry")
@app_option
@click.argument("record_ids", nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead letter.")
def dead_retry(app_path: str, record_ids: tuple[str, ...], retry_all: bool) -> None:
    """Send dead letters' tasks again (same task, arguments and rest of chain).

    RECORD_IDS are ids from `taskpool dead ls`, or unique prefixes of them.
    """
    app = load_app(app_path)
    store = app.dead_letters
    if retry_all == bool(record_ids):
        raise click.UsageError("give dead-letter ids, or --all")
    try:  # ids or unique prefixes of ids, as git takes commits; all resolved before any is sent
        ids = [r.id for r in store.list()] if retry_all else [store.resolve(i) for i in record_ids]
    except TaskpoolError as exc:
        raise click.ClickException(str(exc)) from None
    refused = 0
    for record_id in ids:
        try:
            record = store.get(record_id)
        except TaskpoolError as exc:
            raise click.ClickException(str(exc)) from None
        if record.refused:
            refused += 1
            click.echo(
                f"error: dead letter {record_id} is a malformed message the worker refused "
                f"({record.refused}); it cannot be sent again (`taskpool dead purge` removes it)",
                err=True,
            )
            continue
        options: dict[str, Any] = {}
        if record.chain:
            options["chain"] = record.chain
        result = app.send_task(record.task, args=record.args, kwargs=record.kwargs, **options)
        store.remove(record_id)  # only after the new message is in the broker
        console.print(f"retried {record.task} ({record_id}) as task {result.id}", soft_wrap=True)
    if refused:
        raise SystemExit(1)


@dead.command("purge")
@app_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_purge(app_path: str, yes: bool) -> None:
    """Delete every dead letter."""
    store = load_app(app_path).dead_letters
    if not yes:
        click.confirm(f"delete {store.count()} dead letter(s)?", abort=True)
    console.print(f"purged {store.purge()} dead letter(s)")


@main.group()
def limits() -> None:
    """Named limits (``limits={"license:matlab": 1}``): their sizes, shared by every worker."""


@limits.command("ls")
@app_option
def limits_ls(app_path: str) -> None:
    """Sizes of named limits, with the slots in use now."""
    app = load_app(app_path)
    store = LimitStore(app.redis, app.settings.keyspace)
    table = Table(_id_column("limit"), "size", "in use", Column("holders", overflow="fold"))
    for name, size in sorted(store.all().items()):
        held = holders_of(app.redis, names.limit_semaphore(name), app.settings.keyspace)
        table.add_row(name, str(size), str(len(held)), ", ".join(sorted({h.owner for h in held})))
    show(table)


@limits.command("set")
@app_option
@click.argument("name")
@click.argument("size")
def limits_set(app_path: str, name: str, size: str) -> None:
    """Set limit NAME to SIZE slots, 1 to 100,000 (workers see it within seconds)."""
    from taskpool.core.limits import check_limit_name, check_limit_size

    try:
        check_limit_name(name)
        slots = check_limit_size(name, int(size) if size.strip().lstrip("+-").isdigit() else size)
    except TaskpoolError as exc:
        raise click.ClickException(str(exc)) from None
    app = load_app(app_path)
    LimitStore(app.redis, app.settings.keyspace).set(name, slots)
    console.print(f"limit {name} = {slots}")


@limits.command("rm")
@app_option
@click.argument("name")
def limits_rm(app_path: str, name: str) -> None:
    """Remove limit NAME: tasks that name it fail until it is set again (limits are strict)."""
    app = load_app(app_path)
    if not LimitStore(app.redis, app.settings.keyspace).remove(name):
        raise click.ClickException(f"no limit named {name!r}; see `taskpool limits ls`")
    console.print(f"limit {name} removed")


@main.command()
@app_option
def slots(app_path: str) -> None:
    """Who holds which slot: GPU slots, named limits and in-flight caps."""
    app = load_app(app_path)
    table = Table(
        _id_column("semaphore"),
        "slot",
        _id_column("owner (worker:pid)"),
        _id_column("task id"),
        "since",
        "lease expires",
        "fence",
    )
    for name in semaphore_names(app.redis, app.settings.keyspace):
        # Leases of dead workers are freed here, by the reader, and shown once as such.
        reaped = reap_expired(app.redis, name, app.settings.keyspace)
        for h in sorted(reaped + holders_of(app.redis, name, app.settings.keyspace), key=lambda h: h.slot):
            table.add_row(
                name,
                str(h.slot),
                h.owner,
                h.task_id or "",
                _clock(h.since),
                _dead_holder(h) if h.expired else _clock(h.expires_at),
                str(h.fence),
            )
    show(table)


def _dead_holder(h: HolderInfo) -> str:
    return f"held by a worker whose lease expired at {_clock(h.expires_at)}: freed now"


def _clock(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%H:%M:%S.%f")[:-3]


@main.command()
@app_option
@click.option("--pool", "-P", type=click.Choice(POOLS), required=True, help="Whose workers to update.")
@click.option("--min", "min_", type=click.IntRange(min=1), help="Fewest slots.")
@click.option("--max", "max_", type=click.IntRange(min=1), help="Most slots.")
@click.option("--buffer", type=click.IntRange(min=0), help="Spare slots kept while there is work.")
@click.option("--cooldown", type=click.FloatRange(min=0), help="Seconds unneeded before slots go back.")
@click.option("--timeout", default=1.0, show_default=True, help="Seconds to wait for replies.")
def scale(
    app_path: str,
    pool: str,
    min_: int | None,
    max_: int | None,
    buffer: int | None,
    cooldown: float | None,
    timeout: float,
) -> None:
    """Update the autoscaler of running POOL workers (until they restart).

    --max is bounded by the pool's ceiling: prefork 256, threads 512, gevent 10,000 per worker.
    """
    import math

    from taskpool.worker.autoscale import MAX_CONCURRENCY, scale_workers

    if max_ is not None and max_ > MAX_CONCURRENCY[pool]:
        raise click.ClickException(
            f"--max {max_}: above the {pool} pool's ceiling of {MAX_CONCURRENCY[pool]:,} slots per worker; "
            "run more workers instead"
        )
    if cooldown is not None and not math.isfinite(cooldown):
        raise click.ClickException(f"--cooldown {cooldown}: must be a finite number of seconds >= 0")

    replies = scale_workers(
        load_app(app_path), pool, min=min_, max=max_, buffer=buffer, cooldown=cooldown, timeout=timeout
    )
    if not replies:
        raise click.ClickException(f"no {pool} worker answered within {timeout} s")
    failed = False
    for worker, answer in sorted(replies.items()):
        failed |= "error" in answer
        console.print(f"{worker}: {answer.get('ok') or 'error: ' + str(answer.get('error'))}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="taskpool")
