"""The `taskpool` command: the ``main`` group, ``--debug``, and the one-line error for a broker
that cannot be reached. The commands live in modules of their own, by group:

* :mod:`~taskpool.ops.cli.local`: ``up``, ``demo``, ``worker`` (the local stack);
* :mod:`~taskpool.ops.cli.status`: ``status``;
* :mod:`~taskpool.ops.cli.dead`: ``dead ls/retry/purge`` (dead letters);
* :mod:`~taskpool.ops.cli.limits`: ``limits ls/set/rm`` and ``slots``;
* :mod:`~taskpool.ops.cli.scale`: ``scale``;
* :mod:`~taskpool.ops.cli.fleet`: ``fleet controller/drain``, ``up --fleet``, ``scale --fleet``;

and what they share (``-A/--app``, :func:`load_app`, the console) in :mod:`~taskpool.ops.cli.common`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import click
import kombu.exceptions
import redis

from taskpool.core.settings import env_broker_url
from taskpool.ops.cli import dead, fleet, limits, local, scale, status
from taskpool.ops.cli.common import APP_KEY, COMMAND_KEY, DEFAULT_APP, app_option, console, load_app, safe

__all__ = [
    "DEFAULT_APP",
    "UNREACHABLE",
    "Main",
    "app_option",
    "console",
    "load_app",
    "main",
    "unreachable_message",
]

#: What an unreachable or refusing broker raises: redis-py directly, kombu (Celery's control); a
#: Redis Cluster state none of whose seed nodes answers: redis-py's RedisClusterException.
UNREACHABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    kombu.exceptions.OperationalError,
    ConnectionError,
    redis.exceptions.RedisClusterException,
)
DEBUG_KEY = "taskpool.debug"


def unreachable_message(
    command: str, url: str | None, exc: BaseException, state_url: str | None = None
) -> str:
    """One line: what failed, where (passwords masked), what to check. ``state_url``: the state's
    Redis when it is not the broker's (``TASKPOOL_STATE_URL``)."""
    where = f"Redis at {safe(url)}" if url else "the broker"
    check = "TASKPOOL_BROKER_URL (else the app's broker_url) names it"
    if state_url and state_url != url:
        where = f"the broker at {safe(url)} or the state's Redis at {safe(state_url)}" if url else where
        check = "TASKPOOL_BROKER_URL and TASKPOOL_STATE_URL name them"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    for each in (url, state_url):
        password = _password(each) if each else None
        if password:
            detail = detail.replace(password, "**")
    return (
        f"{command}: cannot reach {where} ({detail}). Check that Redis runs there and that "
        f"{check}; `taskpool up` starts one. `taskpool --debug ...` shows the traceback."
    )


def _password(url: str) -> str | None:
    try:
        return urlsplit(url.split(";")[0].split(",")[0]).password
    except ValueError:
        return None


class Main(click.Group):
    """The `taskpool` group: a broker that cannot be reached is one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UNREACHABLE as exc:
            if ctx.meta.get(DEBUG_KEY):
                raise
            app = ctx.meta.get(APP_KEY)
            url = app.settings.broker_url if app is not None else env_broker_url()
            state = app.settings.redis_url if app is not None else None
            command = ctx.meta.get(COMMAND_KEY, ctx.command_path)
            raise click.ClickException(unreachable_message(command, url, exc, state)) from None


@click.group(cls=Main)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """taskpool: Celery workers per pool type, with retries, dead letters and more."""
    ctx.meta[DEBUG_KEY] = debug


for _command in (
    local.worker,
    local.up,
    local.demo,
    status.status,
    dead.dead,
    limits.limits,
    limits.slots,
    scale.scale,
    fleet.fleet,
):
    main.add_command(_command)
