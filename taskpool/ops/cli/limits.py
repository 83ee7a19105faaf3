"""``taskpool limits ls/set/rm`` (named limits' sizes) and ``taskpool slots`` (who holds which slot)."""

from __future__ import annotations

import datetime as dt

import click
from rich.table import Column, Table

from taskpool.core import names
from taskpool.core.errors import TaskpoolError
from taskpool.ops.cli.common import app_option, console, id_column, load_app, show
from taskpool.stores.limits import LimitStore
from taskpool.stores.semaphores import HolderInfo, holders_of, reap_expired, semaphore_names, waiters_of


@click.group()
def limits() -> None:
    """Named limits (``limits={"license:matlab": 1}``): their sizes, shared by every worker."""


@limits.command("ls")
@app_option
def limits_ls(app_path: str) -> None:
    """Sizes of named limits, with the slots in use now."""
    app = load_app(app_path)
    store = LimitStore(app.redis, app.settings.keyspace)
    table = Table(id_column("limit"), "size", "in use", Column("holders", overflow="fold"))
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


@click.command()
@app_option
def slots(app_path: str) -> None:
    """Who holds which slot (GPU slots, named limits, in-flight caps), and who waits in line."""
    app = load_app(app_path)
    table = Table(
        id_column("semaphore"),
        "slot",
        id_column("owner (worker:pid)"),
        id_column("task id"),
        "since",
        "lease expires",
        "fence",
    )
    line = Table(
        id_column("semaphore"),
        "place",
        id_column("waiter (worker:pid|delivery)"),
        "wants",
        "waiting since",
        title="in line (served in this order, on every worker)",
    )
    for name in semaphore_names(app.redis, app.settings.keyspace):
        # Leases of dead workers are freed here, by the reader, and shown once as such.
        reaped = reap_expired(app.redis, name, app.settings.keyspace)
        for place, (waiter, wants, since) in enumerate(waiters_of(app.redis, name, app.settings.keyspace), 1):
            line.add_row(name, str(place), waiter, str(wants), _clock(since))
        for h in sorted(reaped + holders_of(app.redis, name, app.settings.keyspace), key=lambda h: h.slot):
            table.add_row(
                name,
                str(h.slot),
                h.owner,
                h.task_id or "",
                _clock(h.since),
                dead_holder(h) if h.expired else _clock(h.expires_at),
                str(h.fence),
            )
    show(table)
    if line.row_count:
        show(line)


def dead_holder(h: HolderInfo) -> str:
    """How a slot freed from a dead worker's expired lease is shown (``slots``, ``status``)."""
    return f"held by a worker whose lease expired at {_clock(h.expires_at)}: freed now"


def _clock(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%H:%M:%S.%f")[:-3]
