"""Nothing secret is open or printed: Flower's credentials and /metrics, Redis AUTH in compose
and through TASKPOOL_REDIS_PASSWORD, masked URLs, JSON only on the final configuration."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from taskpool.ops.embedded import RedisServer, free_port
from taskpool.ops.launcher import Child, launch
from tests.conftest import ROOT, Worker, wait_for
from tests.integration.test_compose import compose, project, resolved  # noqa: F401 (fixture)

PASSWORD = "Pw-S3cr3t-xyz-7731"


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env}
    return subprocess.run(args, cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)


# -- Flower ---------------------------------------------------------------------------------
def start_flower(broker: str, auth: str, tmp_path: Path) -> tuple[Child, int, Path]:
    port = free_port()
    log = tmp_path / f"flower-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.apps.app",
        "flower",
        f"--conf={ROOT / 'config' / 'flower.py'}",
    ]
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        FLOWER_BASIC_AUTH=auth,
        FLOWER_PORT=str(port),
        FLOWER_ADDRESS="127.0.0.1",
    )
    return launch(cmd, broker_url=broker, env=env, cwd=ROOT, output=log), port, log


def get(url: str, auth: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_flower_metrics_need_credentials_and_healthcheck_does_not(redis_url: str, tmp_path: Path) -> None:
    auth = f"admin:{PASSWORD}"
    proc, port, log = start_flower(redis_url, auth, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return get(f"{base}/healthcheck")[0] == 200
            except OSError:
                return False

        wait_for(up, 30, what="flower")
        assert get(f"{base}/healthcheck") == (200, "OK")  # documented: open, says only OK
        assert get(f"{base}/metrics")[0] == 401
        assert get(f"{base}/metrics", "admin:wrong-password-123")[0] == 401
        status, body = get(f"{base}/metrics", auth)
        assert status == 200 and "# HELP" in body, status
    finally:
        proc.stop(20)
    assert PASSWORD not in log.read_text()


@pytest.mark.parametrize(
    "auth, why",
    [
        ("admin:", "empty or short password"),
        (":", "with a user name"),
        ("admin:tiny9", "empty or short password"),
        ("admin:change-me-to-a-long-random-password", "placeholder"),
        ("", "is empty"),
    ],
)
def test_flower_refuses_weak_credentials(redis_url: str, tmp_path: Path, auth: str, why: str) -> None:
    proc, _, log = start_flower(redis_url, auth, tmp_path)
    assert proc.wait(60) != 0
    text = log.read_text()
    assert why in text, text
    assert "Traceback" not in text
    if auth.partition(":")[2]:
        assert auth.partition(":")[2] not in text  # the message names the user, not the password


def test_taskpool_up_refuses_weak_flower_credentials_before_starting_anything(tmp_path: Path) -> None:
    done = run(
        [sys.executable, "-m", "taskpool", "up", "-A", "tests.apps.app", "--flower-port", "0"],
        {"FLOWER_BASIC_AUTH": "admin:", "TASKPOOL_BROKER_URL": ""},
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "empty or short password" in lines[0], done.stderr


# -- compose ------------------------------------------------------------------------------------
def test_compose_redis_needs_the_password_file(project: Path) -> None:  # noqa: F811
    services = resolved(project)
    for name in (
        "redis",
        "worker-gevent",
        "worker-threads",
        "worker-prefork",
        "worker-gpu",
        "flower",
        "demo",
    ):
        assert services[name]["environment"]["TASKPOOL_REDIS_PASSWORD"] == "Compose-Test-Pw-4821", name
    redis = services["redis"]
    assert "--requirepass" in " ".join(redis["command"])
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    text = (ROOT / "compose.yaml").read_text()
    assert "protected-mode" not in text and "Compose-Test-Pw" not in text
    assert "config/redis.env" in (ROOT / ".gitignore").read_text()
    assert "config/redis.env" in (ROOT / ".dockerignore").read_text()

    (project / "config" / "redis.env").unlink()
    done = compose(project, "config", "-q")
    assert done.returncode != 0 and "redis.env" in done.stderr, done.stderr


@pytest.mark.parametrize("password", ["", None, "Shell-Pw-1"])
def test_compose_redis_command_refuses_an_empty_password(project: Path, password: str | None) -> None:  # noqa: F811
    """The redis service's own shell command, run here with `echo` standing in for redis-server."""
    [script] = resolved(project)["redis"]["command"]
    script = script.replace("$$", "$").replace("exec redis-server", "exec echo")
    env = {"PATH": "/usr/bin:/bin"}
    if password is not None:
        env["TASKPOOL_REDIS_PASSWORD"] = password
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    if password:
        assert done.returncode == 0 and f"--requirepass {password}" in done.stdout
    else:
        assert done.returncode != 0 and "set TASKPOOL_REDIS_PASSWORD in config/redis.env" in done.stderr


# -- Redis AUTH through TASKPOOL_REDIS_PASSWORD, and no password in any output --------------------
@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import redis

    with RedisServer(tmp_path_factory.mktemp("auth-redis"), appendonly=False) as server:
        redis.Redis(port=server.port).config_set("requirepass", PASSWORD)
        yield server


def test_worker_and_cli_use_the_password_and_never_print_it(auth_redis: Any, tmp_path: Path) -> None:
    env = {
        "TASKPOOL_BROKER_URL": auth_redis.url,  # no password in the URL
        "TASKPOOL_REDIS_PASSWORD": PASSWORD,
        "TASKPOOL_QUEUE_PREFIX": "auth.",
    }
    code = (
        "import tests.apps.app as t; "
        "r = t.where_threads.apply_async(queue='auth.threads'); "
        "print(r.get(timeout=30)['worker_pool']); print(t.app.settings); "
        "print(t.app.conf.humanize(with_defaults=False))"
    )
    worker = Worker(
        "tests.apps.app", "threads", auth_redis.url, tmp_path, concurrency=2, name="auth", env=env
    )
    outputs: list[str] = []
    banner = tmp_path / "auth-worker.out"
    worker.launch(output=banner)  # the worker's own stdout and stderr (its banner), besides its log
    try:
        done = run([sys.executable, "-c", code], env, timeout=90)
        outputs += [done.stdout, done.stderr]
        assert done.returncode == 0 and done.stdout.startswith("threads"), done.stderr
        for args in (["status"], ["dead", "ls"], ["limits", "ls"], ["slots"]):
            cli = run([sys.executable, "-m", "taskpool", *args, "-A", "tests.apps.app"], env)
            outputs += [cli.stdout, cli.stderr]
            assert cli.returncode == 0, cli.stderr
    finally:
        worker.stop()
        assert worker.log_path.exists()
    outputs += [worker.log(), banner.read_text()]
    assert "auth@test ready" in outputs[-2] and "redis://:**@127.0.0.1" in outputs[-1]
    for text in outputs:
        assert PASSWORD not in text


def test_unreachable_broker_is_reported_with_its_password_masked() -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    done = run([sys.executable, "-m", "taskpool", "up", "-A", "tests.apps.app", "--no-flower"], {
        "TASKPOOL_BROKER_URL": url
    })  # fmt: skip
    assert done.returncode == 1
    assert PASSWORD not in done.stdout + done.stderr
    assert "redis://:**@127.0.0.1" in done.stderr and "cannot reach Redis" in done.stderr


# -- JSON only, on the final configuration ---------------------------------------------------------
PICKLE_APP = """
from taskpool import TaskPool
app = TaskPool("pk", config=False)
{update}

@app.task(pool="threads")
def add(x, y):
    return x + y
"""


def test_pickle_in_the_environment_is_refused(redis_url: str) -> None:
    code = "import tests.apps.app"
    done = run(
        [sys.executable, "-c", code],
        {"TASKPOOL_BROKER_URL": redis_url, "TASKPOOL_EVENT_SERIALIZER": "pickle"},
    )
    assert done.returncode != 0
    assert "setting event_serializer='pickle': taskpool accepts JSON only" in done.stderr


def test_pickle_set_after_the_app_was_built_stops_worker_and_client(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "pkapp.py").write_text(
        PICKLE_APP.format(update='app.conf.update(accept_content=["pickle", "json"])')
    )
    env = {
        "TASKPOOL_BROKER_URL": redis_url,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "C_FORCE_ROOT": "1",
    }
    worker = run([sys.executable, "-m", "celery", "-A", "pkapp", "worker", "-P", "threads"], env)
    assert worker.returncode != 0
    assert "the worker does not start: setting accept_content=['pickle', 'json']" in worker.stderr
    client = run([sys.executable, "-c", "import pkapp; pkapp.add.delay(1, 2)"], env)
    assert client.returncode != 0 and "taskpool accepts JSON only, never pickle" in client.stderr
    serializer = run(
        [sys.executable, "-c", "import tests.apps.app as t; t.double.apply_async((1,), serializer='pickle')"],
        env,
    )
    assert serializer.returncode != 0 and "task_serializer='pickle'" in serializer.stderr
