"""The fleet in the CLI: ``taskpool up --fleet`` (the controller over local worker processes),
``taskpool fleet controller`` (decide and export only: Kubernetes with KEDA), ``taskpool fleet
drain`` (a worker's ``preStop``), ``taskpool scale --fleet`` (:func:`scale_fleet`) and the fleet's
tables in ``taskpool status`` (:func:`show_fleet`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from taskpool.core.errors import ConfigurationError, TaskpoolError
from taskpool.core.fleet import FLEET_OPTIONS, FleetPolicy
from taskpool.core.settings import BROKER_URL_ENV, POOLS, fleet_port, fleet_settings
from taskpool.ops.cli.common import app_option, console, id_column, load_app, safe, show
from taskpool.ops.launcher import alive

#: The policy of each pool under ``taskpool up --fleet`` when neither Redis nor the environment
#: gives one.
LOCAL_DEFAULT = {"min_workers": 1, "max_workers": 4, "buffer_workers": 0, "scaledown_window": 60.0}


def default_policy(pool: str, environ: dict[str, str] | None = None) -> FleetPolicy:
    """``pool``'s policy from ``TASKPOOL_FLEET_<POOL>`` and friends over :data:`LOCAL_DEFAULT`."""
    return FleetPolicy.from_dict(pool, {**LOCAL_DEFAULT, **fleet_settings(pool, environ)})


def _ago(at: Any) -> str:
    try:
        return f"{max(0.0, time.time() - float(at)):.0f} s ago"
    except (TypeError, ValueError):
        return ""


# -- taskpool scale --fleet -------------------------------------------------------------------------
def scale_fleet(
    app: Any,
    pool: str,
    *,
    min_workers: int | None,
    max_workers: int | None,
    buffer_workers: int | None,
    scaledown_window: float | None,
) -> None:
    """Change ``pool``'s fleet policy in Redis; every controller applies it at its next look."""
    from taskpool.stores.fleet import FleetStore

    store = FleetStore(app.redis, app.settings.keyspace)
    try:
        policy = store.update_policy(
            pool,
            default_policy(pool),
            min_workers=min_workers,
            max_workers=max_workers,
            buffer_workers=buffer_workers,
            scaledown_window=scaledown_window,
        )
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(
        f"fleet {pool}: min_workers={policy.min_workers} max_workers={policy.max_workers} "
        f"buffer_workers={policy.buffer_workers} scaledown_window={policy.scaledown_window:g}"
    )


# -- taskpool status ------------------------------------------------------------------------------
def show_fleet(app: Any, decisions: int = 5) -> None:
    """The fleet's tables: desired vs live workers per pool, then the last decisions and why."""
    from taskpool.stores.fleet import FleetStore

    store = FleetStore(app.redis, app.settings.keyspace)
    policies = store.policies()
    desired = store.desired()
    if not policies and not desired:
        return
    headers = ("min-max", "buffer", "window", "desired", "live", "work", "capacity", "decided")
    table = Table(id_column("pool"), *headers)
    table.title = "fleet (workers per pool)"
    for pool in sorted(set(policies) | set(desired)):
        p = policies.get(pool)
        d = desired.get(pool) or {}
        s = d.get("signal") or {}
        work = (
            f"{s.get('work', 0)} ({s.get('queued', 0)} queued, {s.get('reserved', 0)} reserved, "
            f"{s.get('held', 0)} held, {s.get('running', 0)} running)"
            if s
            else "-"
        )
        table.add_row(
            pool,
            f"{p.min_workers}-{p.max_workers}" if p else "",
            str(p.buffer_workers) if p else "",
            f"{p.scaledown_window:g} s" if p else "",
            str(d.get("desired", "")),
            str(d.get("live", "")),
            work,
            str(s.get("capacity", "")),
            _ago(d.get("at")),
        )
    show(table)
    for entry in store.decisions(decisions):
        what = entry.get("action") or (
            f"desired {entry.get('desired')} (live {entry.get('live')}): {entry.get('reason')}"
        )
        console.print(f"  {_ago(entry.get('at'))} {entry.get('pool')}: {what}", soft_wrap=True, markup=False)


# -- taskpool up --fleet ------------------------------------------------------------------------
def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_local_fleet(
    app_path: str, *, broker: str | None, port: int, concurrency: dict[str, int] | None = None
) -> None:
    """Redis (``broker``, else an embedded one), then the fleet controller over worker processes
    of this machine, one per replica, until Ctrl-C; then every worker's warm shutdown."""
    from taskpool.ops.fleet import FleetController, LocalWorkers
    from taskpool.ops.stack import declared_pools, stack_redis

    project = Path.cwd()
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with stack_redis(project, broker) as (url, embedded):
            os.environ[BROKER_URL_ENV] = url
            app = load_app(app_path)
            pools, _gpu = declared_pools(app)
            if not pools:
                raise click.ClickException(f"app {app_path!r} declares no taskpool task without GPU slots")
            try:
                defaults = {p: default_policy(p) for p in pools}
            except TaskpoolError as exc:
                raise click.ClickException(str(exc)) from None
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project), env.get("PYTHONPATH")]))
            workers = LocalWorkers(
                app_path, url, project / ".taskpool" / "logs", concurrency=concurrency or {}, env=env
            )
            controller = FleetController(app, pools, defaults=defaults, workers=workers)
            where = f"embedded Redis at {safe(url)}" if embedded else safe(url)
            console.print(f"[bold]taskpool up --fleet[/]: {where}", soft_wrap=True)
            for pool in pools:
                policy = controller.store.policy(pool) or defaults[pool]
                console.print(
                    f"  {pool}: min_workers={policy.min_workers} max_workers={policy.max_workers} "
                    f"buffer_workers={policy.buffer_workers} scaledown_window={policy.scaledown_window:g} s"
                )
            server = controller.serve(port, "127.0.0.1") if port else None
            if server is not None:
                console.print(f"  desired workers: http://127.0.0.1:{port}/metrics and /keda")
            console.print("fleet up; workers' logs in .taskpool/logs; Ctrl-C stops it (running tasks finish)")
            stop = threading.Event()
            try:
                controller.run(stop)
            except KeyboardInterrupt:
                console.print("stopping: warm shutdown of every worker (running tasks finish)")
            finally:
                stop.set()
                if server is not None:
                    server.shutdown()
                    server.server_close()
                codes = workers.stop_all()
                console.print("exit codes: " + ", ".join(f"{k} {v}" for k, v in codes.items()))
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- taskpool fleet ... ----------------------------------------------------------------------------
@click.group()
def fleet() -> None:
    """The fleet: how many workers each pool runs (see `taskpool up --fleet`, `taskpool scale --fleet`)."""


@fleet.command()
@app_option
@click.option(
    "--pool", "-P", "pools", multiple=True, type=click.Choice(POOLS), help="Default: every declared pool."
)
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=lambda: fleet_port(),
    show_default="TASKPOOL_FLEET_PORT or 9809",
    help="/metrics and /keda; 0: off.",
)
@click.option("--address", default="0.0.0.0", show_default=True)
def controller(app_path: str, pools: tuple[str, ...], port: int, address: str) -> None:
    """Decide and export the desired workers per pool (for KEDA); start and drain nothing."""
    from taskpool.ops.fleet import FleetController
    from taskpool.ops.stack import declared_pools

    app = load_app(app_path)
    app.broker_redis.ping()  # queue depths
    app.redis.ping()  # reports, policies, decisions
    chosen = list(pools) or declared_pools(app)[0]
    try:
        defaults = {p: default_policy(p) for p in chosen}
    except TaskpoolError as exc:
        raise click.ClickException(str(exc)) from None
    ctl = FleetController(app, chosen, defaults=defaults)
    if port:
        ctl.serve(port, address)
        console.print(f"fleet controller for {', '.join(chosen)}: http://{address}:{port}/metrics and /keda")
    with contextlib.suppress(KeyboardInterrupt):
        ctl.run(threading.Event())


@fleet.command()
@app_option
@click.option("--node", "-n", help="The worker's node name; default every worker of this host.")
@click.option("--wait", "wait_", default=300.0, show_default=True, help="Seconds to wait for it to finish.")
def drain(app_path: str, node: str | None, wait_: float) -> None:
    """Tell a worker to stop consuming, finish what it holds and exit; wait until it did.

    A Kubernetes preStop hook: the pod's worker drains before the SIGTERM.
    """
    from taskpool.stores.fleet import FleetStore

    app = load_app(app_path)
    store = FleetStore(app.redis, app.settings.keyspace)
    host = socket.gethostname()
    reports = store.reports()
    nodes = [node] if node else sorted(n for n, r in reports.items() if r.get("host") == host)
    if not nodes:
        console.print(f"no worker of host {host} reports: nothing to drain")
        return
    # Local workers' pids: wait for the processes too, so a SIGTERM after the preStop hook finds
    # them gone (one during Celery's warm shutdown would kill the process).
    pids = [
        int(reports[n]["pid"])
        for n in nodes
        if reports.get(n, {}).get("host") == host and reports[n].get("pid")
    ]
    app.control.broadcast("taskpool_drain", destination=nodes, reply=False)
    console.print(f"draining {', '.join(nodes)}")
    deadline = time.monotonic() + wait_
    while time.monotonic() < deadline:
        left = [n for n in nodes if n in store.reports()] + [f"pid {p}" for p in pids if alive(p)]
        if not left:
            console.print("drained")
            return
        time.sleep(0.5)
    raise click.ClickException(f"{', '.join(left)} still held work after {wait_:g} s")


__all__ = ["FLEET_OPTIONS", "default_policy", "fleet", "run_local_fleet", "scale_fleet", "show_fleet"]
