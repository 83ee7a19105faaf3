"""Fan-out: one task over many inputs (``task.map``/``starmap``), or one call now (``task.spawn``).

    for square in square_task.map(range(10_000)):        # results as they come, input order
        ...
    call = crunch.spawn(page)                             # a Call: a celery AsyncResult
    call.status, call.get(timeout=10), call.cancel()

How it uses Celery (public APIs unless said otherwise):

* **Pipelined submit.** Inputs go out in chunks of up to :data:`PUBLISH_CHUNK`, each through
  ``task.apply_async(..., producer=producer)`` inside ``producer.batch()`` (kombu 5.7): the
  Redis transport buffers each message's LPUSH in one non-transactional pipeline and executes
  it once when the chunk ends, so a chunk is one round trip, and an error while a chunk is
  being built (a bad argument, :class:`~taskpool.errors.QueueFull`) publishes nothing of it.
  Celery's task messages use the anonymous exchange for direct queues, so there is no per
  message exchange lookup (SMEMBERS); the chunk's queues are declared once per chunk
  (``producer.maybe_declare``) and each message is sent with ``declare=[]``.
* **One SUBSCRIBE per chunk.** Celery's Redis result backend subscribes to each task's result
  channel as the task is sent (``backend.on_task_call``): one SUBSCRIBE command per message.
  :func:`publish` gives the chunk task ids of its own and subscribes the result consumer to
  all of them with one command first, so Celery's per-message subscribe finds them
  subscribed and sends nothing. This reaches into ``ResultConsumer`` (``_locked``,
  ``_pubsub``, ``subscribed_to``: :func:`taskpool.compat.celery.subscribe_results`); any other
  backend, or a consumer without those, keeps Celery's own per-message subscribe.
* **Results through Celery's result machinery.** Each sent call is watched with
  ``AsyncResult.then`` and the map waits with the backend's drainer
  (``result_consumer.drainer.drain_events_until``: :func:`taskpool.compat.celery.drain_results_until`),
  as ``AsyncResult.get`` does; backends without the async API are polled (``backend.get_many``,
  one MGET per poll, when the backend has it).
* **Backpressure.** At most ``app.settings.map_max_outstanding`` inputs are submitted and not
  yet yielded to the caller; the map tops up (in one chunk) when a tenth of that has been
  yielded, or when nothing it sent is unfinished, and reads the caller's inputs only as it
  submits them.
* **Failure, early close, timeout.** The inputs not finished yet are revoked with one
  ``app.control.revoke(ids)``; a worker drops a revoked message when it takes it (a task
  already running goes on).
* **Queue limit.** With ``app.settings.max_queue_length`` > 0, each chunk (and each spawn)
  first reads the length of its queues (every priority list, one pipeline) and raises
  :class:`~taskpool.errors.QueueFull` when one holds that many messages or more.
* **Eager mode** (``task_always_eager``): ``apply_async`` runs the task in-process and returns
  an ``EagerResult``; map runs one input at a time as the caller asks for it, and spawn
  returns an :class:`EagerCall`.

The parts: :mod:`~taskpool.client.fanout.calls` (``spawn``, :class:`Call`),
:mod:`~taskpool.client.fanout.checks` (options and inputs),
:mod:`~taskpool.client.fanout.sending` (chunks, the queue limit, revoking),
:mod:`~taskpool.client.fanout.maps` (``map``/``starmap``: :class:`~taskpool.client.fanout.maps.MapRun`)
and :mod:`~taskpool.client.fanout.waiting` (which results finished).
"""

from __future__ import annotations

from taskpool.client.fanout.calls import Call, EagerCall, spawn
from taskpool.client.fanout.checks import CallArgs
from taskpool.client.fanout.maps import map_calls, map_items, starmap_items
from taskpool.client.fanout.sending import (
    CONSUMER_CHECK_TIMEOUT,
    PUBLISH_CHUNK,
    no_consumer_hint,
    publish,
    publish_chunk,
)
from taskpool.client.fanout.waiting import POLL_INTERVAL

__all__ = [
    "CONSUMER_CHECK_TIMEOUT",
    "POLL_INTERVAL",
    "PUBLISH_CHUNK",
    "Call",
    "CallArgs",
    "EagerCall",
    "map_calls",
    "map_items",
    "no_consumer_hint",
    "publish",
    "publish_chunk",
    "spawn",
    "starmap_items",
]
