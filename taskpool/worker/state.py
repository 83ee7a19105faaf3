"""Every attribute taskpool puts on Celery's objects: declared here, read and written through here.

Celery's consumer, worker and requests are where taskpool's per-worker state has to live (a
strategy or a pool callback gets nothing else). Each attribute has one owner, the step or
object that sets it; everyone else reads it through the accessors below.

====================================  ===========================  ==================================
attribute                             set by                       holds
====================================  ===========================  ==================================
``consumer.taskpool_gate``            ``AdmissionStep.create``     the :class:`~taskpool.worker.gate.Gate`
                                                                   (``None``: no task has limits)
``consumer.taskpool_batchers``        ``BatchingStep.create``      task name -> its ``Batcher``
``consumer.taskpool_deliveries``      ``DeliveryStep.start``       the delivery leases' ``DeliveryKeeper``
``consumer.taskpool_fleet``           ``FleetStep.start``          the fleet's ``FleetReporter`` (drain)
``worker.taskpool_autoscale``         ``autoscale.configure_worker``  the autoscaler's ``WorkerSetup``
``worker.taskpool_cli_queues``,       ``TaskPool`` (celeryd_init)  the command line's ``-Q`` and
``worker.taskpool_cli_prefetch``                                   ``--prefetch-multiplier``
``request.taskpool_key``              the gate                     admission key of one delivery
``request.taskpool_lent_prefetch``    the gate                     holds a prefetch slot the gate lent
``request.taskpool_batch_lent``       its ``Batcher``              holds a prefetch slot the batcher lent
``request_dict[LEASES_KEY]``          the gate                     leases the pool process frees
``request_dict[GPUS_KEY]``            the gate                     the leased GPU slots
====================================  ===========================  ==================================

The two ``request_dict`` keys travel to the pool process, which must not import the worker
side: they are named in :mod:`taskpool.core.names`.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from taskpool.core.names import GPUS_KEY, LEASES_KEY

if TYPE_CHECKING:
    from taskpool.worker.batcher import Batcher
    from taskpool.worker.delivery import DeliveryKeeper
    from taskpool.worker.fleet import FleetReporter
    from taskpool.worker.gate import Gate

# -- on the consumer ---------------------------------------------------------------------------
GATE = "taskpool_gate"
BATCHERS = "taskpool_batchers"
DELIVERIES = "taskpool_deliveries"
FLEET = "taskpool_fleet"
# -- on the worker (WorkController) ------------------------------------------------------------
AUTOSCALE = "taskpool_autoscale"
CLI_QUEUES = "taskpool_cli_queues"
CLI_PREFETCH = "taskpool_cli_prefetch"
# -- on a request (celery.worker.request.Request) -----------------------------------------------
ADMISSION_KEY = "taskpool_key"
LENT_PREFETCH = "taskpool_lent_prefetch"
BATCH_LENT = "taskpool_batch_lent"

__all__ = [
    "ADMISSION_KEY",
    "AUTOSCALE",
    "BATCHERS",
    "BATCH_LENT",
    "CLI_PREFETCH",
    "CLI_QUEUES",
    "DELIVERIES",
    "FLEET",
    "GATE",
    "GPUS_KEY",
    "LEASES_KEY",
    "LENT_PREFETCH",
    "admission_key",
    "autoscale_setup_of",
    "batch_lent",
    "batchers_of",
    "deliveries_of",
    "fleet_of",
    "gate_of",
    "granted_of",
    "held_key",
    "prefetch_lent",
    "register_batcher",
    "set_batch_lent",
    "set_batchers",
    "set_deliveries",
    "set_fleet",
    "set_gate",
    "set_granted",
    "set_prefetch_lent",
    "task_id_of_key",
]


# -- consumer ----------------------------------------------------------------------------------
def gate_of(consumer: Any) -> Gate | None:
    """The admission gate of ``consumer`` (``None`` when no task of the app has limits)."""
    return getattr(consumer, GATE, None)


def set_gate(consumer: Any, gate: Gate | None) -> None:
    setattr(consumer, GATE, gate)


def fleet_of(consumer: Any) -> FleetReporter | None:
    """The fleet reporter of ``consumer`` (``None`` before its step started)."""
    return getattr(consumer, FLEET, None)


def set_fleet(consumer: Any, reporter: FleetReporter | None) -> None:
    setattr(consumer, FLEET, reporter)


def batchers_of(consumer: Any) -> dict[str, Batcher]:
    """Task name -> the batcher collecting its requests on ``consumer`` (``{}`` without any)."""
    batchers: dict[str, Batcher] | None = getattr(consumer, BATCHERS, None)
    return batchers if batchers is not None else {}


def set_batchers(consumer: Any, batchers: dict[str, Batcher]) -> None:
    setattr(consumer, BATCHERS, batchers)


def register_batcher(consumer: Any, batcher: Batcher) -> None:
    """Make ``batcher`` the one of its task on ``consumer`` (replacing the one of a previous connection)."""
    batchers: dict[str, Batcher] | None = getattr(consumer, BATCHERS, None)
    if batchers is None:
        raise RuntimeError(
            f"task {batcher.task.name!r} is batched but the worker's consumer has no batchers: "
            "taskpool's BatchingStep is missing from the consumer's steps"
        )
    batchers[batcher.task.name] = batcher


def deliveries_of(consumer: Any) -> DeliveryKeeper | None:
    """The delivery leases' keeper of ``consumer`` (``None`` before its first connection)."""
    return getattr(consumer, DELIVERIES, None)


def set_deliveries(consumer: Any, keeper: DeliveryKeeper | None) -> None:
    setattr(consumer, DELIVERIES, keeper)


# -- worker ------------------------------------------------------------------------------------
def autoscale_setup_of(worker: Any) -> Any:
    """The autoscaler's ``WorkerSetup`` of ``worker`` (``None`` before ``worker_init``)."""
    return getattr(worker, AUTOSCALE, None)


# -- request -----------------------------------------------------------------------------------
_keys = itertools.count(1)


def admission_key(request: Any) -> str:
    """The admission key of one delivery of ``request``, given on first use.

    Leases are kept per delivery, not per task id: a message redelivered while its first
    delivery still runs (restored at a reconnect, or past the visibility timeout) carries the
    same task id, and each delivery must release only its own leases.
    """
    key: str | None = getattr(request, ADMISSION_KEY, None)
    if key is None:
        key = f"{request.id}#{next(_keys)}"
        setattr(request, ADMISSION_KEY, key)
    return key


def held_key(request: Any) -> str | None:
    """The admission key of ``request`` if it was given one (it was admitted), else ``None``."""
    return getattr(request, ADMISSION_KEY, None)


def task_id_of_key(key: str) -> str:
    return key.rpartition("#")[0]


def prefetch_lent(request: Any) -> bool:
    return bool(getattr(request, LENT_PREFETCH, False))


def set_prefetch_lent(request: Any, lent: bool) -> None:
    setattr(request, LENT_PREFETCH, lent)


def batch_lent(request: Any) -> bool:
    return bool(getattr(request, BATCH_LENT, False))


def set_batch_lent(request: Any, lent: bool) -> None:
    setattr(request, BATCH_LENT, lent)


def set_granted(request: Any, leases: list[list[Any]], gpus: list[int]) -> None:
    """Put what the gate granted into the request sent to the pool (see :mod:`taskpool.core.names`)."""
    if gpus:
        request.request_dict[GPUS_KEY] = gpus
    request.request_dict[LEASES_KEY] = leases


def granted_of(request: Any) -> tuple[list[int], list[list[Any]] | None]:
    """``(gpus, leases)`` the gate put into ``request`` (``([], None)`` before admission)."""
    return list(request.request_dict.get(GPUS_KEY) or []), request.request_dict.get(LEASES_KEY)
