"""TaskPool: a Celery app whose tasks declare their pool, retries, limits and batching.

A client imports this module to send tasks, so it names the worker's pieces (bootsteps, the
task strategy, the autoscaler) by dotted path, as Celery's own configuration does; they are
imported in the worker only.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, signals
from celery.utils.imports import symbol_by_name
from redis import Redis

from taskpool.client.routing import Router, pool_of_worker, queues
from taskpool.client.task import TaskpoolTask, make_run
from taskpool.core.backoff import Backoff
from taskpool.core.errors import ConfigurationError
from taskpool.core.keys import signature_of
from taskpool.core.limits import check_parameters, gpu_count, is_keyed
from taskpool.core.options import TaskOptions
from taskpool.core.sentinel import is_sentinel_url
from taskpool.core.settings import (
    DEFAULTS,
    TASKPOOL_SETTINGS,
    Settings,
    celery_env_overrides,
    check_json_only,
    load_config_module,
)
from taskpool.stores.dead_letters import DeadLetterStore
from taskpool.stores.redis_client import redis_client

logger = logging.getLogger("taskpool")

#: The task strategy of tasks with limits, GPU slots or batch (Celery's task attribute ``Strategy``).
STRATEGY = "taskpool.worker.strategy:strategy"
#: Bootsteps of the worker's consumer, and of the worker, by dotted path (Celery's blueprint
#: resolves them with ``symbol_by_name`` when a worker builds it).
CONSUMER_STEPS = (
    "taskpool.worker.admission:AdmissionStep",  # creates and owns the admission gate
    "taskpool.worker.batching:BatchingStep",  # owns the batchers
    "taskpool.worker.delivery:DeliveryStep",  # delivery leases: live workers' messages stay theirs
    "taskpool.worker.malformed:MessageGuard",  # a malformed message is a dead letter, not a crash
    "taskpool.worker.tuning:GreenCreditStep",  # gevent: a full prefetch window never stalls
    "taskpool.worker.stats:StatsStep",  # `taskpool` in inspect stats (Flower's worker page)
    "taskpool.worker.fleet:FleetStep",  # the fleet's report of this worker, and its drain
)
WORKER_STEPS = ("taskpool.worker.metrics:MetricsStep",)  # /metrics when TASKPOOL_METRICS_PORT is set


class TaskPool(Celery):
    """A ``celery.Celery`` configured by taskpool.

    Args:
        main: the app's name, as for Celery.
        config: dotted path of a config module, ``False`` for none; default
            ``TASKPOOL_CONFIG`` or ``config.celery`` when importable.
        settings: taskpool settings; default read from ``TASKPOOL_*`` variables.
        environ: the environment to read (default ``os.environ``), for tests.
        **kwargs: passed to ``celery.Celery``.
    """

    task_cls = TaskpoolTask
    #: Celery's message building and sending, with taskpool's checks before each publish.
    amqp_cls = "taskpool.client.publish:AMQP"

    def __init__(
        self,
        main: str | None = None,
        *,
        config: str | bool | None = None,
        settings: Settings | None = None,
        environ: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(main, **kwargs)
        env = dict(os.environ if environ is None else environ)
        module = None
        if config is not False:
            path = config if isinstance(config, str) else env.get("TASKPOOL_CONFIG", "config.celery")
            module = load_config_module(path, required=isinstance(config, str) or "TASKPOOL_CONFIG" in env)
        from_module = {
            key: value
            for key, value in (vars(module) if module is not None else {}).items()
            if key.islower() and not key.startswith("_") and not isinstance(value, types.ModuleType)
        }
        self.settings = settings or Settings.from_env(env, base=from_module)
        conf: dict[str, Any] = dict(DEFAULTS)
        conf.update({k: v for k, v in from_module.items() if k not in TASKPOOL_SETTINGS})
        conf.update(celery_env_overrides(env))
        conf.setdefault("worker_autoscaler", "taskpool.worker.autoscale:CallbackAutoscaler")
        s = self.settings
        transport = dict(conf.get("broker_transport_options") or {})
        transport["visibility_timeout"] = s.visibility_timeout
        backend_transport = {
            **(conf.get("result_backend_transport_options") or {}),
            "visibility_timeout": s.visibility_timeout,
        }
        # sentinel:// URLs: kombu and Celery read the master's name from the transport options.
        if is_sentinel_url(s.broker_url):
            transport.setdefault("master_name", s.sentinel_master)
        if is_sentinel_url(s.result_backend or s.broker_url):
            backend_transport.setdefault("master_name", s.sentinel_master)
        conf.update(
            broker_url=s.broker_url,
            result_backend=s.result_backend or s.broker_url,
            broker_transport_options=transport,
            result_backend_transport_options=backend_transport,
            task_queues=queues(s),
            task_default_queue=s.queue_for(s.default_pool),
            task_routes=(Router(self, s),),
        )
        check_json_only(conf)
        self.conf.update(conf)
        #: The taskpool pool this process serves as a worker (None outside workers).
        self.worker_pool: str | None = None
        self._redis: tuple[int, dict[str, redis.Redis]] | None = None
        self.steps["consumer"].update(CONSUMER_STEPS)
        self.steps["worker"].update(WORKER_STEPS)
        signals.celeryd_init.connect(self._on_celeryd_init, weak=False)
        signals.worker_init.connect(self._on_worker_init, weak=False)

    # -- tasks -------------------------------------------------------------------------
    def task(self, *args: Any, **opts: Any) -> Any:
        """``@app.task`` with taskpool's options (see :mod:`taskpool.options`).

        Raises:
            ConfigurationError: at declaration, for an unknown option or a bad value.
        """
        if len(args) == 1 and callable(args[0]) and not opts:
            return self.task()(args[0])
        if args:
            raise ConfigurationError(f"app.task takes keyword options only, got positional {args!r}")

        if str(opts.get("name", "")).startswith("celery."):
            return super().task(**opts)  # Celery's built-in tasks (chain, chord, ...) stay as they are

        def decorate(fun: Callable[..., Any]) -> Any:
            name = opts.get("name") or self.gen_task_name(fun.__name__, fun.__module__)
            record, celery_opts = TaskOptions.from_decorator(
                name,
                opts,
                default_pool=self.settings.default_pool,
                visibility_timeout=self.settings.visibility_timeout,
            )
            bind = bool(celery_opts.pop("bind", False))
            celery_opts.pop("name", None)
            if celery_opts.get("shared"):
                raise ConfigurationError(
                    f"task {name!r}: shared=True would add it to every Celery app in the process, "
                    "where taskpool's pools, limits and retries do not apply; a taskpool task belongs "
                    "to its TaskPool app (send it from another app with send_task)"
                )
            # Not shared: Celery would otherwise add the task to every app of the process (a plain
            # celery.Celery app too, whose worker cannot run taskpool's strategies).
            celery_opts["shared"] = False
            celery_opts.setdefault("base", self.Task)
            if not issubclass(celery_opts["base"], TaskpoolTask):
                raise ConfigurationError(
                    f"task {name!r}: base={celery_opts['base']!r} must subclass taskpool.task.TaskpoolTask"
                )
            if record.batch is not None:
                from taskpool.runtime.batch import check_function

                check_function(name, fun, bind)
                if celery_opts.get("rate_limit"):
                    raise ConfigurationError(
                        f"task {name!r}: rate_limit={celery_opts['rate_limit']!r} "
                        "cannot be combined with batch"
                    )
                if is_keyed(record):
                    raise ConfigurationError(
                        f"task {name!r}: batch cannot be combined with keyed limit or rate names "
                        "(a batch's inputs may have different keys)"
                    )
            check_parameters(record, signature_of(fun, bind))
            if record.batch is not None or record.has_limits:
                # In the worker's main process, requests of this task are collected into batches
                # and/or pass the admission gate (a batch passes it once) before the pool.
                celery_opts["Strategy"] = STRATEGY
            return super(TaskPool, self).task(
                bind=True,
                name=name,
                max_retries=record.retries,
                taskpool=record,
                taskpool_function=staticmethod(fun),  # the user's function (batches call it directly)
                taskpool_signature=signature_of(fun, bind),  # keyed limit names bind to it
                backoff_policy=Backoff(record.backoff, record.backoff_max, record.jitter),
                # Celery checks .delay() arguments against this; keep the user's signature.
                __header__=self.type_checker(fun, bound=bind),
                **celery_opts,
            )(make_run(fun, record, bind))

        return decorate

    def _get_backend(self) -> Any:
        # Celery's own two lines, with a backend that keeps large args out of results.
        from celery.app import backends

        from taskpool.client.results import bounded

        backend, url = backends.by_url(self.backend_cls or self.conf.result_backend, self.loader)
        return bounded(backend)(app=self, url=url)

    # -- taskpool's own Redis ----------------------------------------------------------
    @property
    def redis(self) -> redis.Redis:
        """A client of taskpool's state (``TASKPOOL_STATE_URL``, else the broker's Redis): the
        semaphores with their lines and wake lists, rates, limit sizes, dead letters, peer
        records and fleet reports. One per process (a forked child makes its own). On a
        ``redis+cluster://`` state URL it is a ``redis.cluster.RedisCluster``."""
        return self._client(self.settings.redis_url, state=True)

    @property
    def broker_redis(self) -> Redis:
        """A client of the broker's Redis, for what lives among kombu's keys: queue depths,
        delivery leases (with kombu's ``unacked`` keys). The same client as :attr:`redis` unless
        the state has a Redis of its own."""
        return self._client(self.settings.broker_url, state=False)

    def _client(self, url: str, *, state: bool) -> Redis:
        pid = os.getpid()
        if self._redis is None or self._redis[0] != pid:
            self._redis = (pid, {})
        clients = self._redis[1]
        client = clients.get(url)
        if client is None:
            options = dict(self.conf.broker_transport_options or {})  # master_name of a sentinel:// URL
            if state and self.settings.state_is_apart:  # the state's sentinels: the configured name
                options["master_name"] = self.settings.sentinel_master
            client = clients[url] = redis_client(url, options)
        return client

    @property
    def dead_letters(self) -> DeadLetterStore:
        return DeadLetterStore(self.redis, self.settings.keyspace)

    # -- worker ------------------------------------------------------------------------
    def _on_celeryd_init(
        self, sender: Any = None, instance: Any = None, options: Any = None, **_: Any
    ) -> None:
        # The command line's -Q is only visible here; worker_init comes after the queues are set.
        if getattr(instance, "app", None) is self:
            instance.taskpool_cli_queues = (options or {}).get("queues")
            instance.taskpool_cli_prefetch = (options or {}).get("prefetch_multiplier")

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self:
            return
        try:  # the final configuration: app.conf may have changed since the app was built
            check_json_only(self.conf)
        except ConfigurationError as exc:
            # Celery logs and swallows a signal handler's exceptions; SystemExit stops the worker.
            raise SystemExit(f"taskpool: the worker does not start: {exc}") from None
        pool = pool_of_worker(sender.pool_cls)
        self.worker_pool = pool
        selected = self.amqp.queues
        if not getattr(sender, "taskpool_cli_queues", None):  # no -Q: serve this pool's queue only
            wanted = [self.settings.queue_for(pool)]
            if self._serves_gpu_tasks(pool):
                wanted.append(self.settings.queue_for(pool, gpu=True))
            selected.select(wanted)
        signals.worker_ready.connect(self._on_worker_ready, weak=False)
        symbol_by_name("taskpool.worker.autoscale:configure_worker")(self, sender)
        # prefetch, result backend, broker connections per pool
        symbol_by_name("taskpool.worker.tuning:tune_worker")(self, sender, pool)

    def _serves_gpu_tasks(self, pool: str) -> bool:
        """Whether this worker takes ``pool``'s GPU tasks: only where the host has GPU slots."""
        wants_gpu = any(
            getattr(t, "taskpool", None) is not None and t.taskpool.pool == pool and t.taskpool.gpu_slots
            for t in self.tasks.values()
        )
        return wants_gpu and gpu_count() > 0

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self:
            return
        pool = self.worker_pool
        names = sorted(
            n for n, t in self.tasks.items() if getattr(t, "taskpool", None) and t.taskpool.pool == pool
        )
        logger.info(
            "taskpool: %s worker consuming %s; tasks: %s",
            pool,
            ", ".join(sorted(self.amqp.queues.consume_from or ())),
            ", ".join(names) or "(none declared for this pool)",
        )

    # -- autoscaling --
    @property
    def concurrency_modifiers(self) -> dict[str, Callable[..., Any]]:
        """pool -> the concurrency modifier registered with :meth:`concurrency_modifier`."""
        return self.__dict__.setdefault("_taskpool_concurrency_modifiers", {})

    def concurrency_modifier(self, fun: Callable[..., Any] | None = None, *, pool: str | None = None) -> Any:
        """Register ``fun(current) -> int`` (RunPod's signature) or ``fun(current, stats) -> int``
        as the concurrency modifier of ``pool``'s workers (default: the default pool).

        See :mod:`taskpool.autoscale`. Raises ``ConfigurationError`` for an unknown pool or a
        second modifier of the same pool.
        """
        register_modifier = symbol_by_name("taskpool.worker.autoscale:register_modifier")
        return register_modifier(self.concurrency_modifiers, fun, pool=pool or self.settings.default_pool)
