"""The key layout on Redis Cluster, as a model: every script call, transaction and multi-key
command taskpool sends for its state names keys of one hash slot (``redis.crc.key_slot``, the
slot Redis Cluster computes). tests/integration/test_redis_cluster.py runs them on a real Cluster.
"""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from taskpool.core import names
from taskpool.core.rates import RateNeed, interval_ms
from taskpool.stores.deliveries import DeliveryLeases
from taskpool.stores.rates import slot_groups
from taskpool.stores.semaphores import SemaphoreKeys
from taskpool.worker.holdings import wake_keys_for

KEYSPACES = ("taskpool", "app:prod", "{tp}")


def slots(keys: list[str]) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


def one_slot(keys: list[str]) -> bool:
    return len(slots(keys)) == 1


def decision_semaphores() -> list[str]:
    """The semaphores of one admission decision: a keyed limit, a keyed and a plain
    cluster_max_in_flight, a max_in_flight, a GPU machine's slots, a per-machine limit."""
    return [
        names.limit_semaphore("tenant:acme"),
        names.limit_semaphore("license:matlab"),
        names.task_semaphore("tasks.call_api", "acme"),
        names.task_semaphore("tasks.call_api"),
        names.node_semaphore("threads@host-a", "tasks.call_api"),
        names.gpu_semaphore("host-a"),
        names.limit_semaphore(names.expand_limit_name("scratch:{hostname}")),
    ]


@pytest.mark.parametrize("keyspace", KEYSPACES)
@pytest.mark.parametrize("name", decision_semaphores())
def test_each_semaphore_script_call_is_one_slot(keyspace: str, name: str) -> None:
    # acquire, renew, release, release_owner, reap and queue take KEYS = SemaphoreKeys.as_list()
    # and push to the wake lists of waiter groups (<wake>:<group>, not declared in KEYS: same tag);
    # a blocking acquire BLPOPs its own wake list; holders() reads holders, info, leases in a MULTI.
    keys = SemaphoreKeys.for_name(name, keyspace).as_list()
    assert len(keys) == len(names.SEMAPHORE_PARTS)
    assert one_slot(keys), keys
    wake_lists = [f"{SemaphoreKeys.for_name(name, keyspace).wake}:{group}" for group in ("host:1", "h/{x}")]
    assert one_slot([*keys, *wake_lists])
    assert one_slot([*keys, names.semaphore_key_glob(keyspace, name)])


def test_semaphores_of_one_decision_spread_over_slots() -> None:
    # One tag per semaphore, not one per decision: semaphores are shared by tasks in any mix, so
    # their scripts run one semaphore per call and the slots may (and do) differ.
    wakes = [SemaphoreKeys.for_name(n).wake for n in decision_semaphores()]
    assert len(slots(wakes)) > 1


def test_a_cluster_blpop_waits_on_one_slot_a_plain_one_on_every_list() -> None:
    wakes = [SemaphoreKeys.for_name(n).wake for n in decision_semaphores()]
    plain = redis.Redis(port=1)  # never connects: register_script and the helpers are local
    assert wake_keys_for(plain, wakes + wakes[:2]) == sorted(set(wakes))
    assert wake_keys_for(plain, []) == []


@pytest.mark.parametrize("keyspace", KEYSPACES)
def test_rate_groups_are_one_slot_each_and_cover_the_needs(keyspace: str) -> None:
    needs = [
        RateNeed(f"api:{name}", interval_ms("10/s"), "10/s") for name in ("openai", "acme", "b", "c", "d")
    ]
    needs.append(RateNeed("tenant:acme", interval_ms("600/m"), "600/m"))
    groups = slot_groups(needs, keyspace)
    assert sorted(n.name for g in groups for n in g) == sorted(n.name for n in needs)
    group_slots = [slots([names.rate_key(n.name, keyspace) for n in g]) for g in groups]
    assert all(len(s) == 1 for s in group_slots)
    firsts = [min(s) for s in group_slots]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(groups)  # slot order, every worker
    if keyspace == "taskpool":
        assert len(groups) > 1  # own tags: rates of one request do spread over slots


def test_rates_of_one_slot_are_one_group() -> None:
    needs = [RateNeed("api:openai", 100.0, "10/s"), RateNeed("api:openai", 100.0, "10/s")]
    assert slot_groups(needs, "taskpool") == [needs]
    assert slot_groups([], "taskpool") == []


@pytest.mark.parametrize("keyspace", KEYSPACES)
def test_dead_letters_peers_and_fleet_are_one_slot_each(keyspace: str) -> None:
    assert one_slot(list(names.dead_letter_keys(keyspace)))  # add/remove/purge: MULTI, DEL of both
    owners = ["host-a:1", "host-b:2", "host-c:3"]
    peers = [k for o in owners for k in names.peer_keys(keyspace, o)]  # publish, read (MGET), withdraw
    assert one_slot(peers)
    fleet = [*names.fleet_keys(keyspace).values(), *(names.fleet_worker_key(keyspace, n) for n in owners)]
    assert one_slot(fleet)  # reports (MGET of every worker's), record, note: pipelines
    assert one_slot([names.limits_key(keyspace)])  # HMGET of one hash


def delivery_calls(keyprefix: str) -> list[list[str]]:
    leases = DeliveryLeases(redis.Redis(port=1), keyspace="taskpool", owner="w1", keyprefix=keyprefix)
    unacked, index, owners = leases.unacked_key, leases.index_key, leases.owners_key
    # ack.lua, claim.lua: all three; refresh.lua: index, owners; forget.lua: unacked, owners.
    return [[unacked, index, owners], [unacked, index, owners], [index, owners], [unacked, owners]]


def test_delivery_scripts_are_one_slot_with_a_tagged_keyprefix() -> None:
    # The delivery scripts touch kombu's unacked keys, so they run on the broker's Redis, which
    # kombu requires standalone (or Sentinel). With a hash tag in kombu's global_keyprefix they
    # would be one slot all the same.
    assert all(one_slot(keys) for keys in delivery_calls("{tp}:"))
    assert not all(one_slot(keys) for keys in delivery_calls(""))
