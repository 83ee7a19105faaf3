"""Every error taskpool raises, under one root.

Celery's JSON result backend rebuilds an exception as ``cls(*args)``, so each
constructor accepts exactly the arguments it passes to ``super().__init__``.
"""

from __future__ import annotations


class TaskpoolError(Exception):
    """Root of every taskpool error."""


class ConfigurationError(TaskpoolError, ValueError):
    """A task option, a setting or a command-line value is wrong; the message says which."""


class DeadLetterNotFound(TaskpoolError, KeyError):
    """No dead-letter record has that id (or, for a prefix, several have)."""

    def __str__(self) -> str:  # KeyError quotes its argument; a message reads better plain
        return str(self.args[0]) if self.args else ""


class EmbeddedRedisError(TaskpoolError, RuntimeError):
    """The embedded Redis could not be found or started."""


class SlotTimeout(TaskpoolError, TimeoutError):
    """No slots of a semaphore came free within the timeout; the message names both.

    One message argument only: ``TimeoutError`` is an ``OSError``, whose ``args`` keep just
    two of several arguments, so more would not rebuild through ``cls(*args)``.
    """


class ResultBackendUnreachable(TaskpoolError, RuntimeError):
    """The result backend's Redis could not be reached within Celery's retries (a client's
    ``.delay()`` or ``.get()``); the message names its URL, password masked. A ``RuntimeError``, as
    Celery's own "Retry limit exceeded" error it replaces."""


class LeaseLost(TaskpoolError, RuntimeError):
    """A lease expired or vanished before its holder renewed it; its slots may be someone else's."""


class QueueFull(TaskpoolError):
    """A queue holds ``max_queue_length`` messages or more; nothing was published, try again later.

    The message names the task, the queue, its length and the limit (like Modal's
    "Resource Exhausted").
    """


class BatchError(TaskpoolError):
    """A batched task's function broke the batch contract (e.g. returned the wrong number of
    results); every input of that call fails with it, without retries."""


class MalformedMessage(TaskpoolError, ValueError):
    """A message on a taskpool queue is not a task message the worker can run (not JSON, not an
    envelope, arguments of the wrong shape, ...); it was refused with a dead letter."""


class MessageTooLarge(TaskpoolError, ValueError):
    """A task message is larger than ``TASKPOOL_MAX_MESSAGE_SIZE``; nothing was sent."""


ALL_ERRORS: tuple[type[TaskpoolError], ...] = (
    TaskpoolError,
    ConfigurationError,
    DeadLetterNotFound,
    EmbeddedRedisError,
    SlotTimeout,
    ResultBackendUnreachable,
    LeaseLost,
    QueueFull,
    BatchError,
    MalformedMessage,
    MessageTooLarge,
)
