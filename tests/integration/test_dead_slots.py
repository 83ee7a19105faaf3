"""Slots of a dead worker (its lease expired unrenewed) show as such in `taskpool slots` and
`taskpool status`, and the reader frees them: they do not wait for the next acquire."""

from __future__ import annotations

import os
from typing import Any

import redis

from taskpool.stores.semaphores import Semaphore, holders_of
from tests.conftest import taskpool_cli, wait_for


def dead_holder(client: redis.Redis, name: str) -> Semaphore:
    sem = Semaphore(client, name, 2, ttl=0.2)
    sem.acquire("deadhost:999", task_id="task-of-the-dead")  # nobody renews it
    wait_for(lambda: all(h.expired for h in sem.holders()), 10, what="the lease to expire")
    return sem


def test_slots_and_status_show_and_free_a_dead_workers_slot(tp_app: Any, redis_client: redis.Redis) -> None:
    name = f"limit:dead-{os.urandom(3).hex()}"
    sem = dead_holder(redis_client, name)
    shown = taskpool_cli("tests.apps.app", "slots")
    assert shown.returncode == 0, shown.stderr
    [line] = [x for x in shown.stdout.splitlines() if name in x]
    assert "deadhost:999" in line and "task-of-the-dead" in line
    assert "held by a worker whose lease expired at" in line and "freed now" in line
    assert holders_of(redis_client, name) == []  # freed by the reader
    assert name not in taskpool_cli("tests.apps.app", "slots").stdout  # shown once

    dead_holder(redis_client, name)
    status = taskpool_cli("tests.apps.app", "status", "--timeout", "0.2")
    assert status.returncode == 0, status.stderr
    assert f"{name}: slot 0 held by a worker whose lease expired at" in status.stdout
    assert holders_of(redis_client, name) == []
    assert sem.try_acquire("alive:1", 2) is not None  # both slots free


def test_slots_shows_who_waits_in_line_in_order(tp_app: Any, redis_client: redis.Redis) -> None:
    name = f"limit:line-{os.urandom(3).hex()}"
    sem = Semaphore(redis_client, name, 2)
    held = sem.acquire("host-a:1", 2, task_id="big-one")
    sem.join("host-b:7|task-1#1", 2)
    sem.join("host-a:1|task-2#4", 1)
    shown = taskpool_cli("tests.apps.app", "slots")
    assert shown.returncode == 0, shown.stderr
    assert "in line" in shown.stdout
    rows = [x.split() for x in shown.stdout.splitlines() if name in x and "|" in x.replace("│", "")]
    # semaphore, place, waiter, wants: first come (and wanting both slots), first in line
    first, second = [name, "1", "host-b:7|task-1#1", "2"], [name, "2", "host-a:1|task-2#4", "1"]
    assert [r[1:8:2] for r in rows] == [first, second]
    sem.leave(["host-b:7|task-1#1", "host-a:1|task-2#4"])
    sem.release(held)
