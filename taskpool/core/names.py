"""Every name taskpool gives to something in Redis: built here, parsed here, nowhere else.

Semaphore names (one hash tag each, so no braces) say what a slot limits:

- ``node:<node>:task:<task>``: ``max_in_flight``, a cap per worker node;
- ``task:<task>``: ``cluster_max_in_flight``, a cap over every worker;
- ``limit:<name>``: a named limit (``limits={"license:matlab": 1}``), sized by ``taskpool limits set``;
- ``gpu:<machine>``: the GPU slots of one machine.
A keyed name (``tenant:{tenant_id}``) is formatted from the task's arguments first: one
semaphore per key, whose keys expire with their last lease.

Redis keys, under the settings' ``keyspace`` (default ``taskpool``):

- ``<keyspace>:limits``: hash, limit name -> size;
- ``{<keyspace>:dead}`` and ``{<keyspace>:dead}:by_time``: dead-letter records and their index;
- ``<keyspace>:sem:{<semaphore>}:<part>``: a semaphore's state (parts: :data:`SEMAPHORE_PARTS`);
- ``<keyspace>:rate:{<rate>}``: a rate's GCRA state (its own hash tag: a request's rates may span
  Redis Cluster slots, see :mod:`taskpool.stores.rates`);
- ``<keyspace>:deliveries:owners``: hash, kombu delivery tag -> the worker holding it;
- ``{<keyspace>:peers}`` and ``{<keyspace>:peers}:<owner>``: the set of workers with an admission
  gate and each one's short-lived record (queues, room per task), see :func:`peer_keys`.

Redis Cluster: the keys one script call, transaction or multi-key command touches share a hash
tag (one semaphore, the dead letters, the peers, the fleet), except the delivery leases (kombu's
``unacked`` keys: the broker, never a Cluster) and the rates of one request (taken per slot).

Queues are kombu's: a queue is one Redis list per priority step (``<queue>`` for step 0,
``<queue>\\x06\\x16<step>`` for the others), each behind the transport's ``global_keyprefix``.

Also the keys taskpool adds to a Celery request (:data:`LEASES_KEY`, :data:`GPUS_KEY`).

Pure: the standard library only.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

# -- semaphore names --------------------------------------------------------------------------------
#: Kinds of semaphore, as :func:`kind_of` names them (and :class:`~taskpool.core.limits.Need`).
MAX_IN_FLIGHT = "max_in_flight"
CLUSTER_MAX_IN_FLIGHT = "cluster_max_in_flight"
LIMIT = "limit"
GPU = "gpu"
KINDS = (MAX_IN_FLIGHT, CLUSTER_MAX_IN_FLIGHT, LIMIT, GPU)

#: First segment of a semaphore name -> its kind.
_KIND_OF_PREFIX = {"node": MAX_IN_FLIGHT, "task": CLUSTER_MAX_IN_FLIGHT, "limit": LIMIT, "gpu": GPU}
_PREFIX_OF_KIND = {kind: prefix for prefix, kind in _KIND_OF_PREFIX.items()}
#: Between the node and the task in a ``max_in_flight`` semaphore's name.
_NODE_TASK_SEP = ":task:"


def machine_name() -> str:
    """This machine's name, as GPU semaphores and ``{hostname}`` in limit names use it."""
    return socket.gethostname()


def expand_limit_name(name: str) -> str:
    """``{hostname}`` in a limit's name stands for this machine (per-machine limits)."""
    return name.replace("{hostname}", machine_name())


def node_semaphore(node: str, task: str) -> str:
    """The semaphore of ``max_in_flight``: ``task``'s slots on worker ``node``."""
    return f"node:{node}{_NODE_TASK_SEP}{task}"


def task_semaphore(task: str, key: str | None = None) -> str:
    """The semaphore of ``cluster_max_in_flight``: ``task``'s slots over every worker (with a keyed
    ``cluster_max_in_flight={"{tenant_id}": 5}``, the slots of one key: ``task:<task>:<key>``)."""
    return f"task:{task}" if key is None else f"task:{task}:{key}"


def limit_semaphore(name: str) -> str:
    """The semaphore of the named limit ``name`` (already expanded, see :func:`expand_limit_name`)."""
    return f"limit:{name}"


def gpu_semaphore(machine: str | None = None) -> str:
    """The semaphore of ``machine``'s GPU slots (default: this machine)."""
    return f"gpu:{machine if machine is not None else machine_name()}"


def kind_of(name: str) -> tuple[str | None, str]:
    """``(kind, rest)`` of a semaphore name: kind is one of :data:`KINDS`, rest what follows
    its prefix (the limit's name, the machine, the task, or ``<node>:task:<task>``, see
    :func:`node_and_task`). A name taskpool did not build (a user's own semaphore) is
    ``(None, name)``."""
    prefix, sep, rest = name.partition(":")
    kind = _KIND_OF_PREFIX.get(prefix) if sep and rest else None
    if kind == MAX_IN_FLIGHT and _NODE_TASK_SEP not in rest:
        kind = None
    return (kind, rest) if kind is not None else (None, name)


def node_and_task(rest: str) -> tuple[str, str]:
    """``(node, task)`` of a ``max_in_flight`` semaphore, from the ``rest`` :func:`kind_of` gave."""
    node, _, task = rest.partition(_NODE_TASK_SEP)
    return node, task


def kind_glob(kind: str) -> str:
    """A glob matching the names of every semaphore of ``kind`` (for :func:`semaphore_key_glob`)."""
    return f"{_PREFIX_OF_KIND[kind]}:*"


# -- taskpool's own keys ----------------------------------------------------------------------------
def limits_key(keyspace: str) -> str:
    """The hash of named limits' sizes (name -> slots)."""
    return f"{keyspace}:limits"


def rate_key(name: str, keyspace: str) -> str:
    """The key of rate ``name`` (its GCRA "theoretical arrival time"; expires when idle)."""
    return f"{keyspace}:rate:{{{name}}}"


def dead_letter_keys(keyspace: str) -> tuple[str, str]:
    """``(records, index)``: the hash of dead-letter records (id -> JSON) and the sorted set of
    ids by failure time; one hash tag, so both live on one Redis Cluster slot."""
    records = f"{{{keyspace}:dead}}"
    return records, f"{records}:by_time"


def peer_keys(keyspace: str, owner: str) -> tuple[str, str]:
    """``(index, record)``: the set of workers' owners (``host:pid``) that published a record, and
    ``owner``'s record (JSON, expires unless renewed); one hash tag, so one Redis Cluster slot."""
    index = f"{{{keyspace}:peers}}"
    return index, f"{index}:{owner}"


def fleet_keys(keyspace: str) -> dict[str, str]:
    """The fleet's keys (:mod:`taskpool.stores.fleet`), one hash tag: ``policies`` (hash pool ->
    policy JSON), ``workers`` (set of nodes that reported), ``decisions`` (list of the last
    decisions, newest first), ``desired`` (hash pool -> the last decision and signal, JSON)."""
    base = f"{{{keyspace}:fleet}}"
    return {
        "policies": f"{base}:policies",
        "workers": f"{base}:workers",
        "decisions": f"{base}:decisions",
        "desired": f"{base}:desired",
    }


def fleet_worker_key(keyspace: str, node: str) -> str:
    """One worker's fleet report (JSON, expires unless renewed)."""
    return f"{{{keyspace}:fleet}}:worker:{node}"


#: The keys of one semaphore, by the part of its state each holds.
SEMAPHORE_PARTS = ("holders", "leases", "info", "fence", "wake", "queue", "wants", "due")


def semaphore_key(name: str, part: str, keyspace: str) -> str:
    """The key of ``part`` (one of :data:`SEMAPHORE_PARTS`) of semaphore ``name``; every part
    of one semaphore shares the hash tag ``{name}`` (Redis Cluster-safe)."""
    return f"{_semaphore_prefix(keyspace)}{name}}}:{part}"


def semaphore_key_glob(keyspace: str, name_glob: str = "*") -> str:
    """A glob matching the ``holders`` key of every semaphore whose name matches ``name_glob``."""
    return semaphore_key(name_glob, "holders", keyspace)


def semaphore_of_key(key: str, keyspace: str) -> str | None:
    """The semaphore a key matched by :func:`semaphore_key_glob` belongs to; None for another key."""
    prefix, suffix = _semaphore_prefix(keyspace), "}:holders"
    if not key.startswith(prefix) or not key.endswith(suffix) or len(key) <= len(prefix) + len(suffix):
        return None
    return key[len(prefix) : -len(suffix)]


def _semaphore_prefix(keyspace: str) -> str:
    return f"{keyspace}:sem:{{"


def delivery_owners_key(keyspace: str) -> str:
    """The hash of delivery leases: kombu delivery tag -> the worker holding the message
    unacknowledged (:mod:`taskpool.stores.deliveries`); kombu's ``global_keyprefix`` goes before it,
    as before kombu's own ``unacked`` keys."""
    return f"{keyspace}:deliveries:owners"


# -- kombu's queue keys -----------------------------------------------------------------------------
#: kombu's Redis transport keeps a queue in one list per priority step (its ``priority_steps``).
PRIORITY_STEPS = (0, 3, 6, 9)
#: Between a queue's name and its priority step (kombu's ``Channel.sep``).
PRIORITY_SEP = "\x06\x16"


def queue_keys(queue: str, keyprefix: str = "") -> list[str]:
    """The Redis lists of ``queue``, one per priority step, behind the transport's
    ``global_keyprefix`` (see :func:`queue_keyprefix`)."""
    base = f"{keyprefix}{queue}"
    return [base if step == 0 else f"{base}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def queue_of_key(key: str, keyprefix: str = "") -> str:
    """The queue a list of :func:`queue_keys` belongs to (kombu strips ``global_keyprefix`` from
    the keys BRPOP returns; a key without it is taken as it is)."""
    if keyprefix and key.startswith(keyprefix):
        key = key[len(keyprefix) :]
    return key.rsplit(PRIORITY_SEP, 1)[0]


def queue_keyprefix(transport_options: Mapping[str, Any] | None) -> str:
    """The ``global_keyprefix`` kombu puts before every key, from ``broker_transport_options``."""
    return str((transport_options or {}).get("global_keyprefix") or "")


# -- request keys ------------------------------------------------------------------------------------
# Entries the admission gate adds to Celery's ``request_dict``. Celery sends the request dict to
# the pool with the job, and a task's ``self.request`` (Celery's ``Context``) shows every entry
# as an attribute: ``self.request.taskpool_gpus``.

#: ``[[semaphore, capacity, token], ...]``: the leases a pool process frees when the task
#: function returns (:func:`taskpool.runtime.leases.release_in_pool`).
LEASES_KEY = "taskpool_leases"
#: ``[slot, ...]``: the GPU slots leased for the task (:mod:`taskpool.runtime.gpu`).
GPUS_KEY = "taskpool_gpus"
#: When the gate took the request's rate tokens (seconds since the epoch, Redis clock).
RATE_AT_KEY = "taskpool_rate_at"
