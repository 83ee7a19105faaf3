"""``taskpool status``: workers by pool, queue depths, slots and limits in use, dead letters."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from taskpool.core import keys, names
from taskpool.core.settings import POOLS, env_app_path
from taskpool.ops.cli.common import app_option, console, id_column, load_app, safe, show
from taskpool.ops.cli.limits import dead_holder
from taskpool.stores.limits import LimitStore
from taskpool.stores.queues import queue_depth
from taskpool.stores.semaphores import HolderInfo, holders_of, reap_expired, semaphore_names
from taskpool.worker.stats import READABLE_KEY


@click.command()
@app_option
@click.option("--timeout", default=1.0, show_default=True, help="Seconds to wait for workers' replies.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document for programs instead of tables.")
@click.pass_context
def status(ctx: click.Context, app_path: str, timeout: float, as_json: bool) -> None:
    """Workers by pool (concurrency, in flight), queue depths, slots and limits in use, dead letters."""
    app = load_app(app_path)
    if as_json:
        app.broker_redis.ping()
        app.redis.ping()
        click.echo(json.dumps(status_document(app, timeout), indent=2, sort_keys=True))
        return
    source = ctx.get_parameter_source("app_path")
    chosen = "-A" if source == click.core.ParameterSource.COMMANDLINE else (
        "TASKPOOL_APP" if env_app_path() else "the default; -A or TASKPOOL_APP picks another"
    )  # fmt: skip
    client = app.redis  # the state: semaphores, limits, dead letters
    broker = app.broker_redis  # kombu's queues
    broker.ping()  # fail fast, before Celery's broadcast retries an unreachable broker
    client.ping()
    where = f"Redis at {safe(app.settings.broker_url)}"
    if app.settings.state_is_apart:
        where = f"broker at {safe(app.settings.broker_url)}, state at {safe(app.settings.redis_url)}"
    console.print(f"app [bold]{app_path}[/] ({chosen}), {where}", soft_wrap=True)
    stats = app.control.inspect(timeout=timeout).stats() or {}
    workers = Table(
        id_column("pool"),
        id_column("worker"),
        "concurrency",
        "min-max",
        "target",
        "in flight",
        "reserved",
        "slots held",
        "holding",
        "handed back",
    )
    workers.title = f"{len(stats)} worker(s)"
    rows = []
    consumed: set[str] = set()
    for node, st in stats.items():
        tp = st.get("taskpool") or {}
        pool = tp.get("pool") or node.partition("@")[0]
        rows.append((pool, node, tp, st))
        consumed.update(tp.get("queues") or ())
    for pool, node, tp, st in sorted(rows, key=lambda r: (r[0], r[1])):
        concurrency = tp.get("concurrency", (st.get("pool") or {}).get("max-concurrency"))
        workers.add_row(
            pool,
            node,
            str(concurrency),
            f"{tp.get('min')}-{tp.get('max')}" if tp.get("max") is not None else "",
            str(tp.get("target") if tp.get("target") is not None else ""),
            _counts(tp.get("in_flight")),
            _counts(tp.get("reserved")),
            _counts(tp.get("slots_held")),
            _holding(tp),
            str((tp.get("admission") or {}).get("handed_back", "")),
        )
    show(workers)
    for _pool, node, _tp, st in sorted(rows, key=lambda r: (r[0], r[1])):
        last = (st.get(READABLE_KEY) or {}).get("last decision")
        if last and last != "none yet":
            console.print(f"{node}: autoscaler {last}", soft_wrap=True, markup=False, highlight=False)
    queues = Table(id_column("queue"), "depth", "consumed by")
    queues.title = "queues"
    orphans = []
    keyprefix = names.queue_keyprefix(app.conf.broker_transport_options)
    for pool in POOLS:
        for gpu in (False, True):
            name = app.settings.queue_for(pool, gpu=gpu)
            depth = queue_depth(broker, name, keyprefix=keyprefix)
            nodes = sorted(n for _, n, tp, _ in rows if name in (tp.get("queues") or ()))
            if depth and name not in consumed:
                orphans.append((name, depth, pool, gpu))
            by = ", ".join(nodes) if nodes else ("[red]no worker[/]" if depth else "-")
            queues.add_row(name, str(depth), by)
    show(queues)
    _show_waiting(rows, orphans)
    for name, depth, pool, gpu in orphans:
        need = f"a {pool} worker with GPU slots (TASKPOOL_GPUS >= 1)" if gpu else f"a {pool} worker"
        console.print(
            f"[yellow]warning[/]: queue {name} holds {depth} message(s) and no live worker consumes it: "
            f"they wait until {need} starts (`taskpool worker -A {app_path} --pool {pool}`)",
            soft_wrap=True,
        )
    store = LimitStore(client, app.settings.keyspace)
    sizes = store.all()
    sems = Table(id_column("semaphore"), "size", "in use", "holders")
    sems.title = "slots and limits"
    in_redis = semaphore_names(client, app.settings.keyspace)
    freed: list[tuple[str, HolderInfo]] = []
    for name in in_redis:
        freed += [(name, h) for h in reap_expired(client, name, app.settings.keyspace)]
        held = holders_of(client, name, app.settings.keyspace)
        kind, rest = names.kind_of(name)
        size = sizes.get(rest) if kind == names.LIMIT else None
        if kind == names.LIMIT and size is None:
            size = _declared_size(app, rest)  # a keyed limit's key, sized by its declaration
        sems.add_row(name, str(size or ""), str(len(held)), ", ".join(sorted({h.owner for h in held})))
    for limit, size in sorted(sizes.items()):
        if names.limit_semaphore(limit) not in in_redis:
            sems.add_row(names.limit_semaphore(limit), str(size), "0", "")
    show(sems)
    for name, h in freed:
        console.print(f"{name}: slot {h.slot} {dead_holder(h)}", soft_wrap=True)
    console.print(f"dead letters: {app.dead_letters.count()}  (taskpool dead ls)")
    from taskpool.ops.cli.fleet import show_fleet

    show_fleet(app)


def status_document(app: Any, timeout: float) -> dict[str, Any]:
    """What `taskpool status` shows, as one JSON-able dict (``taskpool status --json``).

    Keys: ``workers`` (node -> ``taskpool``: the machine-readable snapshot of ``inspect stats``,
    ``readable``: the same for people, ``autoscaler``: the autoscaler's info with its decisions,
    epoch seconds), ``queues`` (name -> ``depth``, ``consumed_by``), ``semaphores`` (name ->
    ``size``, ``in_use``, ``holders``), ``dead_letters`` (count). It only reads: expired slots
    are not freed here (plain `taskpool status` does that).
    """
    client = app.redis  # the state
    broker = app.broker_redis  # kombu's queues
    stats = app.control.inspect(timeout=timeout).stats() or {}
    workers: dict[str, dict[str, Any]] = {
        node: {
            "taskpool": st.get("taskpool") or {},
            "readable": st.get(READABLE_KEY) or {},
            "autoscaler": st.get("autoscaler") or None,
        }
        for node, st in sorted(stats.items())
    }
    keyprefix = names.queue_keyprefix(app.conf.broker_transport_options)
    queues = {}
    for pool in POOLS:
        for gpu in (False, True):
            name = app.settings.queue_for(pool, gpu=gpu)
            queues[name] = {
                "depth": queue_depth(broker, name, keyprefix=keyprefix),
                "consumed_by": [n for n, w in workers.items() if name in (w["taskpool"].get("queues") or ())],
            }
    sizes = LimitStore(client, app.settings.keyspace).all()
    semaphores: dict[str, Any] = {}
    for name in semaphore_names(client, app.settings.keyspace):
        held = holders_of(client, name, app.settings.keyspace)
        kind, rest = names.kind_of(name)
        semaphores[name] = {
            "size": sizes.get(rest) if kind == names.LIMIT else None,
            "in_use": len(held),
            "holders": [
                {"slot": h.slot, "owner": h.owner, "task_id": h.task_id, "since": h.since} for h in held
            ],
        }
    for limit, size in sizes.items():
        semaphores.setdefault(names.limit_semaphore(limit), {"size": size, "in_use": 0, "holders": []})
    return {
        "workers": workers,
        "queues": queues,
        "semaphores": semaphores,
        "dead_letters": app.dead_letters.count(),
    }


def _show_waiting(rows: list[tuple[str, str, dict[str, Any], dict[str, Any]]], orphans: list[Any]) -> None:
    """Requests the workers' admission gates hold, per task and reason (``taskpool.waits``), and
    the messages of queues no live worker consumes."""
    waiting = Table(id_column("task"), "waiting for", "count", "oldest wait", id_column("worker"))
    waiting.title = "waiting"
    entries = [(w, node) for _, node, tp, _ in rows for w in tp.get("waits") or ()]
    for w, node in sorted(entries, key=lambda e: (-float(e[0].get("oldest_wait", 0)), e[1])):
        waiting.add_row(
            str(w.get("task", "")),
            str(w.get("reason", "")),
            str(w.get("count", "")),
            f"{float(w.get('oldest_wait', 0)):.1f} s",
            node,
        )
    for name, depth, _pool, _gpu in orphans:
        waiting.add_row("*", f"no worker consumes {name}", str(depth), "", "-")
    if entries or orphans:
        show(waiting)
    else:
        console.print("waiting: none")


def _declared_size(app: Any, limit: str) -> int | None:
    """The size a keyed limit name (``tenant:{tenant_id}``) of a task declares for ``limit``."""
    for task in list(app.tasks.values()):
        options = getattr(task, "taskpool", None)
        for template, size in (getattr(options, "limits", None) or {}).items():
            if keys.is_keyed(template) and keys.matches(template, limit, names.machine_name()):
                return int(size)
    return None


def _holding(tp: dict[str, Any]) -> str:
    """Requests a worker holds per semaphore, e.g. ``gpu:host1 3 (1 next in line)``: the rest are
    surplus that no other worker with room took (``slots_waiting`` of an older worker)."""
    holding = tp.get("holding")
    if holding is None:
        return _counts(tp.get("slots_waiting"))
    parts = []
    for name, h in holding.items():
        waiting, following = int(h.get("waiting", 0)), int(h.get("next", 0))
        extra = f" ({following} next in line)" if following < waiting else ""
        parts.append(f"{name} {waiting}{extra}")
    return ", ".join(parts) or "-"


def _counts(mapping: dict[str, int] | None) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in (mapping or {}).items()) or "-"
