"""CallbackAutoscaler: a worker's concurrency follows the user's callback or a ScalingPolicy.

Celery's autoscaler exists only with ``--autoscale``, reacts every ``keepalive`` (30 s) on
event-loop pools, dies with any exception and cannot scale the threads pool. taskpool's:

* is set by :class:`~taskpool.client.app.TaskPool` itself (``worker_autoscaler``) and enabled for
  every prefork, threads and gevent worker by :func:`configure_worker` (``worker_init``); bounds
  come from ``--autoscale=max,min``, else ``TASKPOOL_AUTOSCALE_<POOL>``, else ``-c`` (fixed size);
* ticks once a second: on the event-loop pools (prefork, threads) through Celery's own hub timer
  (``keepalive`` is the tick), on gevent in Celery's autoscaler thread (a greenlet); without a
  callback it also looks at each task message (a burst grows the pool before the next tick);
* asks the pool's concurrency modifier (``@app.concurrency_modifier``) on its own thread, so a
  callback that raises, hangs or returns nonsense never stops the worker, or else the built-in
  :class:`ScalingPolicy` (min, max, buffer, cooldown; or a CPU target on prefork);
* grows at once and shrinks only idle capacity: no running task is ever interrupted;
* reports current, target, bounds, the last decision and why, and fault counts in
  ``inspect stats`` (``stats()['autoscaler']``), which Flower shows.

Modules: :mod:`.config` (AutoscaleConfig, ceilings), :mod:`.registry` (the modifiers users
register), :mod:`.callback` (asking a modifier on its own thread), :mod:`.probes` (queue depth,
CPU), :mod:`.autoscaler` (CallbackAutoscaler, Celery's entry points), :mod:`.setup`
(``worker_init``), :mod:`.control` (``taskpool scale``). The pure policy is
:mod:`taskpool.core.policy`.
"""

from __future__ import annotations

from taskpool.core.policy import (
    DEFAULT_BUFFER,
    DEFAULT_COOLDOWN,
    Decision,
    PoolStats,
    ScalingPolicy,
    parse_bounds,
)
from taskpool.worker.autoscale.autoscaler import HISTORY, RATE_WINDOW, TICK, CallbackAutoscaler
from taskpool.worker.autoscale.callback import INLINE_WAIT
from taskpool.worker.autoscale.config import (
    DEFAULT_CALLBACK_TIMEOUT,
    MAX_CONCURRENCY,
    AutoscaleConfig,
    WorkerSetup,
)
from taskpool.worker.autoscale.control import scale_workers, taskpool_scale
from taskpool.worker.autoscale.registry import register_modifier, wants_stats
from taskpool.worker.autoscale.setup import (
    CELERY_PREFORK_POOL,
    CELERY_SOLO_POOL,
    CELERY_THREADS_POOL,
    PREFORK_POOL,
    THREADS_POOL,
    configure_worker,
)

__all__ = [
    "CELERY_PREFORK_POOL",
    "CELERY_SOLO_POOL",
    "CELERY_THREADS_POOL",
    "DEFAULT_BUFFER",
    "DEFAULT_CALLBACK_TIMEOUT",
    "DEFAULT_COOLDOWN",
    "HISTORY",
    "INLINE_WAIT",
    "MAX_CONCURRENCY",
    "PREFORK_POOL",
    "RATE_WINDOW",
    "THREADS_POOL",
    "TICK",
    "AutoscaleConfig",
    "CallbackAutoscaler",
    "Decision",
    "PoolStats",
    "ScalingPolicy",
    "WorkerSetup",
    "configure_worker",
    "parse_bounds",
    "register_modifier",
    "scale_workers",
    "taskpool_scale",
    "wants_stats",
]
