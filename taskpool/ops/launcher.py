"""Starting and stopping child processes: workers, Flower, `taskpool up` (for the stack, tests, benches).

Every child gets the broker's URL (``TASKPOOL_BROKER_URL``) and runs in a session of its own,
so a terminal's Ctrl-C reaches only its parent, which stops children in its own order, and a
worker's pool processes can be killed with it as one process group. Stopping is SIGTERM
(Celery's warm shutdown: running tasks finish), a bounded wait, then SIGKILL of the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from taskpool.core.settings import BROKER_URL_ENV

#: Where a child's stdout and stderr go: appended to a file, a pipe its parent reads
#: (:attr:`Child.stdout`), the parent's own, or nowhere.
Output = Path | Literal["pipe", "inherit", "discard"]


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited and not yet reaped, does not)."""
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Child:
    """A process started by :func:`launch` (or any ``Popen`` started with ``start_new_session``)."""

    def __init__(self, popen: subprocess.Popen[Any]) -> None:
        self.popen = popen

    def __repr__(self) -> str:
        return f"Child(pid={self.pid}, returncode={self.returncode})"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @property
    def stdout(self) -> IO[Any] | None:
        """Its output, with ``output="pipe"``."""
        return self.popen.stdout

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.popen.poll()

    def send_signal(self, signum: int) -> None:
        """``signum`` to the process alone (as ``Popen.send_signal``); nothing once it has exited."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM to the process alone (a Celery worker's warm shutdown stops its pool itself)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to its whole process group (a prefork worker's pool children too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; past ``timeout`` seconds SIGKILL the group. Returns the exit code."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, up to ``timeout`` seconds for the exit, then SIGKILL of the group; and SIGKILL
        of what is left of the group after a clean exit (children its main process left behind).
        Returns the exit code."""
        self.terminate()
        code = self.wait(timeout)
        self.kill()
        return code


def launch(
    argv: Sequence[str],
    *,
    broker_url: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    output: Output = "inherit",
    text: bool = False,
) -> Child:
    """Start ``argv`` in a session of its own, with ``env`` (default: this process's environment)
    and ``TASKPOOL_BROKER_URL=broker_url``; stdin is ``/dev/null``.

    Args:
        output: a file path (stdout and stderr appended to it), ``"pipe"`` (both to
            :attr:`Child.stdout`, as text with ``text=True``), ``"inherit"`` or ``"discard"``.
    """
    child_env = dict(os.environ if env is None else env)
    child_env[BROKER_URL_ENV] = broker_url
    options: dict[str, Any] = {
        "cwd": cwd,
        "env": child_env,
        "stdin": subprocess.DEVNULL,
        # Own session: a terminal's Ctrl-C goes to the parent alone, and killpg reaches the pool.
        "start_new_session": True,
        "text": text,
    }
    if isinstance(output, Path):
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("ab") as log:  # the child has its own descriptor of it
            return Child(subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, **options))
    if output == "pipe":
        options.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    elif output == "discard":
        options.update(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Child(subprocess.Popen(list(argv), **options))
