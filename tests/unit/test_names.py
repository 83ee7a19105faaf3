"""taskpool.core.names: every builder's name or key comes back through its parser."""

from __future__ import annotations

import fnmatch

import pytest

from taskpool.core import names

NODES = ["prefork@host-1", "gpu@build.example.com", "eager@host"]
TASKS = ["workers.pipeline.run_model", "tests.app:odd", "t"]
LIMITS = ["license:matlab", "gpu:{hostname}", "api.example.com:5", "x"]


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("task", TASKS)
def test_node_semaphore_round_trips(node: str, task: str) -> None:
    name = names.node_semaphore(node, task)
    kind, rest = names.kind_of(name)
    assert kind == names.MAX_IN_FLIGHT
    assert names.node_and_task(rest) == (node, task)
    assert fnmatch.fnmatchcase(name, names.kind_glob(kind))


@pytest.mark.parametrize("task", TASKS)
def test_task_semaphore_round_trips(task: str) -> None:
    name = names.task_semaphore(task)
    assert names.kind_of(name) == (names.CLUSTER_MAX_IN_FLIGHT, task)
    assert fnmatch.fnmatchcase(name, names.kind_glob(names.CLUSTER_MAX_IN_FLIGHT))


@pytest.mark.parametrize("limit", LIMITS)
def test_limit_semaphore_round_trips(limit: str) -> None:
    expanded = names.expand_limit_name(limit)
    assert "{hostname}" not in expanded
    assert names.kind_of(names.limit_semaphore(expanded)) == (names.LIMIT, expanded)
    # a limit named like another kind is still a limit
    assert fnmatch.fnmatchcase(names.limit_semaphore(expanded), names.kind_glob(names.LIMIT))


def test_gpu_semaphore_round_trips() -> None:
    assert names.kind_of(names.gpu_semaphore("host-7")) == (names.GPU, "host-7")
    assert names.kind_of(names.gpu_semaphore()) == (names.GPU, names.machine_name())
    assert names.expand_limit_name("gpu:{hostname}") == names.gpu_semaphore()
    assert fnmatch.fnmatchcase(names.gpu_semaphore(), names.kind_glob(names.GPU))


@pytest.mark.parametrize("name", ["license:matlab", "bench", "gpu", "gpu:", "node:host", ":x"])
def test_names_taskpool_did_not_build_have_no_kind(name: str) -> None:
    assert names.kind_of(name) == (None, name)


def test_every_kind_has_a_glob_and_a_builder() -> None:
    built = {
        names.MAX_IN_FLIGHT: names.node_semaphore("n@h", "t"),
        names.CLUSTER_MAX_IN_FLIGHT: names.task_semaphore("t"),
        names.LIMIT: names.limit_semaphore("l"),
        names.GPU: names.gpu_semaphore("h"),
    }
    assert set(built) == set(names.KINDS)
    for kind, name in built.items():
        assert names.kind_of(name)[0] == kind
        others = [k for k in names.KINDS if k != kind]
        assert not any(fnmatch.fnmatchcase(name, names.kind_glob(k)) for k in others)


@pytest.mark.parametrize("keyspace", ["taskpool", "lim", "a:b"])
@pytest.mark.parametrize("name", ["limit:license:matlab", "gpu:host", "node:p@h:task:t.x"])
def test_semaphore_keys_round_trip(keyspace: str, name: str) -> None:
    keys = [names.semaphore_key(name, part, keyspace) for part in names.SEMAPHORE_PARTS]
    assert len(set(keys)) == len(names.SEMAPHORE_PARTS)
    tags = {key[key.index("{") + 1 : key.index("}")] for key in keys}
    assert tags == {name}  # one hash tag per semaphore: Redis Cluster-safe
    holders = names.semaphore_key(name, "holders", keyspace)
    assert fnmatch.fnmatchcase(holders, names.semaphore_key_glob(keyspace))
    assert fnmatch.fnmatchcase(holders, names.semaphore_key_glob(keyspace, name.split(":")[0] + ":*"))
    assert names.semaphore_of_key(holders, keyspace) == name
    for other in keys[1:]:
        assert names.semaphore_of_key(other, keyspace) is None
    assert names.semaphore_of_key(holders, keyspace + "x") is None


def test_taskpool_keys_are_in_their_keyspace() -> None:
    assert names.limits_key("ks") == "ks:limits"
    records, index = names.dead_letter_keys("ks")
    assert (records, index) == ("{ks:dead}", "{ks:dead}:by_time")


@pytest.mark.parametrize("keyprefix", ["", "app1:"])
@pytest.mark.parametrize("queue", ["taskpool.prefork", "taskpool.prefork.gpu", "q"])
def test_queue_keys_round_trip(queue: str, keyprefix: str) -> None:
    keys = names.queue_keys(queue, keyprefix)
    assert len(keys) == len(names.PRIORITY_STEPS)
    assert keys[0] == keyprefix + queue  # kombu's step 0 is the queue's own name
    assert all(key.startswith(keyprefix + queue) for key in keys)
    assert {names.queue_of_key(key, keyprefix) for key in keys} == {queue}
    # kombu strips the prefix from the keys BRPOP returns
    assert {names.queue_of_key(key[len(keyprefix) :]) for key in keys} == {queue}


def test_queue_keyprefix_reads_the_transport_options() -> None:
    assert names.queue_keyprefix(None) == ""
    assert names.queue_keyprefix({}) == ""
    assert names.queue_keyprefix({"global_keyprefix": "app1:", "visibility_timeout": 3}) == "app1:"
