"""``taskpool dead ls/retry/purge``: dead letters, tasks that failed after their last attempt."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
from rich.table import Column, Table

from taskpool.core.errors import TaskpoolError
from taskpool.ops.cli.common import app_option, console, id_column, load_app, show


@click.group()
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
        id_column("id"),
        id_column("task"),
        id_column("task id"),
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
