"""What every `taskpool` command shares: the ``-A/--app`` option, loading the app, the console,
printing tables whole."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table

from taskpool.core.settings import env_app_path, mask_url

console = Console()
DEFAULT_APP = "workers"
#: Where :func:`load_app` leaves the app in the root context's ``meta``, for the one-line error.
APP_KEY = "taskpool.app"
#: Where :func:`load_app` leaves the command's path (``taskpool dead ls``).
COMMAND_KEY = "taskpool.command"


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
        root.meta[APP_KEY], root.meta[COMMAND_KEY] = app, ctx.command_path
    return app


app_option = click.option(
    "-A",
    "--app",
    "app_path",
    default=lambda: env_app_path() or DEFAULT_APP,
    show_default="TASKPOOL_APP or workers",
    help="The app: a module (its `app` attribute) or module:attribute.",
)


def safe(url: str) -> str:
    """A URL fit to print: its password masked."""
    return mask_url(url)


def id_column(header: str) -> Column:
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
