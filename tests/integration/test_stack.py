"""`taskpool up` as a user runs it: a subprocess with the demo, Flower, metrics and `status`.

One stack for the module (starting it costs seconds): the demo runs through it, the tests
scrape its workers' metrics, ask `taskpool status`, log in to Flower with headless Chromium,
and the last test sends SIGINT and checks that every process is gone and no task was lost.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from taskpool.ops.embedded import RedisServer, free_port
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 40
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
STEPS = ("workers.pipeline.download", "workers.pipeline.run_model", "workers.pipeline.save")


@dataclass
class RunningStack:
    process: subprocess.Popen[str]
    redis: RedisServer
    project: Path
    marker: str
    flower_port: int
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_output(self, text: str, timeout: float = 90.0) -> None:
        def seen() -> bool:
            if text in self.output:
                return True
            if self.process.poll() is not None:
                raise AssertionError(f"taskpool up exited with {self.process.returncode}:\n{self.output}")
            return False

        wait_for(seen, timeout, interval=0.1, what=f"{text!r} from taskpool up")

    def metrics_url(self, service: str) -> str:
        found = re.search(rf"{service} \(pid \d+\): \S+, metrics (http://\S+/metrics)", self.output)
        assert found, self.output
        return found.group(1)

    def flower_auth(self) -> tuple[str, str]:
        found = re.search(r"user (\S+), password (\S+) \(generated; shown once\)", self.output)
        assert found, self.output
        return found.group(1), found.group(2)


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker`` (every child of the stack)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "\nState:\tZ" not in status:  # a zombie is gone, only not yet reaped
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    project = tmp_path_factory.mktemp("project")
    (project / "config").symlink_to(ROOT / "config")  # the project's Flower and Redis settings
    server = RedisServer(tmp_path_factory.mktemp("stack-redis"))
    server.start()
    marker = f"TASKPOOL_TEST_STACK={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "FLOWER_"))}
    env.update(
        TASKPOOL_BROKER_URL=server.url,
        TASKPOOL_OUTPUT_DIR=str(project / "out"),
        TASKPOOL_DEMO_FAILURE_RATE="0.2",  # some downloads fail and retry
        TASKPOOL_TEST_STACK=marker.split("=", 1)[1],
        PYTHONPATH=str(ROOT),
        COLUMNS="220",
    )
    flower_port = free_port()
    cmd = [sys.executable, "-m", "taskpool", "up", "--demo", "--items", str(ITEMS)]
    cmd += ["--flower-port", str(flower_port), "--metrics-port", str(free_port_block(3))]
    # Debian's prometheus is installed (scripts/setup.sh --tests); Grafana is not in Debian.
    cmd += ["--monitoring", "--prometheus-port", "0", "--grafana-port", "0", "--scrape-interval", "1"]
    proc = subprocess.Popen(
        cmd, cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    running = RunningStack(proc, server, project, marker, flower_port)
    assert proc.stdout is not None
    pump = threading.Thread(target=lambda: running.lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    pump.start()
    try:
        running.wait_output("stack up; Ctrl-C stops it", timeout=110)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
        pump.join(10)
        proc.stdout.close()
        server.stop()


def free_port_block(n: int) -> int:
    """A port p with p .. p+n-1 free now (the stack's workers serve metrics there)."""
    for _ in range(50):
        base = free_port()
        if base + n < 65535 and all(_free(base + i) for i in range(n)):
            return base
    raise AssertionError("no block of free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def summary_row(output: str, step: str) -> list[str]:
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1] == step:
            return cells[1:-1]
    raise AssertionError(f"no summary row for {step}:\n{output}")


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_up_runs_the_demo_and_prints_a_summary(stack: RunningStack) -> None:
    out = stack.output
    assert f"{ITEMS} items through 3 pools" in out, out
    for step in STEPS:
        done, failed = summary_row(out, step)[1:3]
        assert (int(done), int(failed)) == (ITEMS, 0), out
    assert int(summary_row(out, STEPS[0])[3]) > 0, out  # simulated outages were retried
    for i in range(ITEMS):
        saved = json.loads((stack.project / "out" / f"{i}.json").read_text())
        assert saved["image_id"] == i
    assert "autoscaler moves" in out and "dead letters" in out and "GPU slot use" in out
    # Each worker answers for its pool, and Flower's credentials were generated and shown once.
    assert out.count("(generated; shown once)") == 1
    for pool in ("gevent", "threads", "prefork"):
        assert re.search(rf"│ {pool}@\S+\s+│ {pool}\s+│", out), out


def test_metrics_count_what_ran(stack: RunningStack) -> None:
    retries = int(summary_row(stack.output, STEPS[0])[3])
    gevent = scrape(stack.metrics_url("worker-gevent"))
    task = 'task="workers.pipeline.download"'
    assert gevent[f'taskpool_tasks_finished_total{{state="SUCCESS",{task}}}'] == ITEMS
    assert gevent.get(f"taskpool_task_retries_total{{{task}}}", 0) == retries
    assert gevent[f"taskpool_tasks_started_total{{{task}}}"] == ITEMS + retries
    assert gevent.get(f"taskpool_dead_letters_total{{{task}}}", 0) == 0
    assert gevent['taskpool_pool_processes{pool="gevent"}'] >= 1
    # Prefork: counted in the pool's children, added up by the main process.
    prefork = scrape(stack.metrics_url("worker-prefork"))
    model = 'task="workers.pipeline.run_model"'
    assert prefork[f"taskpool_tasks_started_total{{{model}}}"] == ITEMS
    assert prefork[f"taskpool_task_duration_seconds_count{{{model}}}"] == ITEMS
    assert prefork['taskpool_pool_max_processes{pool="prefork"}'] >= 1
    threads = scrape(stack.metrics_url("worker-threads"))
    assert threads['taskpool_tasks_finished_total{state="SUCCESS",task="workers.pipeline.save"}'] == ITEMS


def test_status_shows_workers_queues_and_dead_letters(stack: RunningStack) -> None:
    env = dict(os.environ, TASKPOOL_BROKER_URL=stack.redis.url, PYTHONPATH=str(ROOT), COLUMNS="220")
    done = subprocess.run(
        [sys.executable, "-m", "taskpool", "status"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "3 worker(s)" in out, out
    for pool in ("gevent", "threads", "prefork"):
        assert re.search(rf"│ {pool}\s+│ {pool}@", out), out
        assert re.search(rf"│ taskpool\.{pool}\s+│ 0\s+│", out), out  # queues drained by the demo
    assert "dead letters: 0" in out
    # An autoscaler's last decision, one readable line (HH:MM:SS  from -> to  reason): the demo
    # made the gevent pool grow at least.
    assert re.search(r"gevent@\S+: autoscaler \d\d:\d\d:\d\d  \d+ -> \d+  \S", out), out
    done = subprocess.run(
        [sys.executable, "-m", "taskpool", "status", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert sorted(w["taskpool"]["pool"] for w in doc["workers"].values()) == ["gevent", "prefork", "threads"]
    for node, w in doc["workers"].items():
        assert w["readable"]["at"][:4].isdigit() and "T" in w["readable"]["at"], node
        assert all(isinstance(d["at"], float) for d in w["autoscaler"]["decisions"]), node  # epoch s
    for pool in ("gevent", "threads", "prefork"):
        assert doc["queues"][f"taskpool.{pool}"]["depth"] == 0
        assert doc["queues"][f"taskpool.{pool}"]["consumed_by"], pool
    assert doc["dead_letters"] == 0
    gevent = next(w for w in doc["workers"].values() if w["taskpool"]["pool"] == "gevent")
    assert gevent["autoscaler"]["decisions"] and gevent["readable"]["history"]


def test_up_monitoring_scrapes_every_worker_and_flower(stack: RunningStack) -> None:
    """`taskpool up --monitoring`: Prometheus scrapes the three workers and Flower (with Flower's
    credentials); Grafana, not installed here, is named with how to get it."""
    found = re.search(r"prometheus \(pid \d+\): (http://127\.0\.0\.1:\d+)", stack.output)
    assert found, stack.output
    base = found.group(1)
    assert "no grafana" in stack.output and "grafana.com" in stack.output

    def all_up() -> list[dict[str, object]] | None:
        try:
            with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=5) as reply:
                active = json.loads(reply.read())["data"]["activeTargets"]
        except (urllib.error.URLError, OSError):
            return None
        return active if len(active) == 4 and all(t["health"] == "up" for t in active) else None

    targets = wait_for(all_up, 60, interval=0.5, what="Prometheus scraping 3 workers and Flower")
    services = sorted(t["labels"]["service"] for t in targets)  # type: ignore[union-attr,index]
    assert services == ["flower", "worker-gevent", "worker-prefork", "worker-threads"]
    query = urllib.parse.urlencode({"query": 'flower_events_total{type="task-succeeded"}'})
    with urllib.request.urlopen(f"{base}/api/v1/query?{query}", timeout=5) as reply:
        assert json.loads(reply.read())["data"]["result"], "Flower's task events reached Prometheus"


def test_flower_shows_taskpool_data_behind_basic_auth(stack: RunningStack) -> None:
    from playwright.sync_api import sync_playwright  # the dev extra; the browser is Debian's

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)"

    base = f"http://127.0.0.1:{stack.flower_port}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/api/workers", timeout=5)
    assert refused.value.code == 401  # the API answers only with credentials
    user, password = stack.flower_auth()
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"{base}/api/workers?refresh=1", headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        workers = json.loads(reply.read())
    node = next(n for n in workers if n.startswith("prefork@"))
    expected = workers[node]["stats"]["taskpool"]
    gevent_node = next(n for n in workers if n.startswith("gevent@"))
    # Task events are on by default: Flower saw every task of the demo, each with its state.
    request = urllib.request.Request(f"{base}/api/tasks", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        tasks = json.loads(reply.read())
    for step in STEPS:
        states = [t["state"] for t in tasks.values() if t["name"] == step]
        assert states.count("SUCCESS") == ITEMS, (step, sorted(set(states)))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        )  # fmt: skip
        try:
            context = browser.new_context(http_credentials={"username": user, "password": password})
            page = context.new_page()
            page.goto(f"{base}/worker/{node}", timeout=30_000)
            page.click("#worker-tab-other")
            page.wait_for_selector("#tab-other.active.show", timeout=10_000)
            text = page.locator("#tab-other").inner_text()
            page.wait_for_timeout(400)  # only for the screenshot: let Bootstrap's fade-in end
            page.screenshot(path=str(ARTIFACTS / "flower-worker-prefork.png"), full_page=True)
            # The gevent worker's autoscaler grew the pool for the demo: its last decision, readable.
            page.goto(f"{base}/worker/{gevent_node}", timeout=30_000)
            panel = page.locator(".worker-autoscaler-panel").inner_text()  # the Pool tab, first shown
            page.click("#worker-tab-other")
            page.wait_for_selector("#tab-other.active.show", timeout=10_000)
            readable = page.locator("#tab-other").inner_text()
            page.wait_for_timeout(400)
            page.screenshot(path=str(ARTIFACTS / "flower-worker-gevent.png"), full_page=True)
            # The Tasks tab lists the demo's tasks with their states.
            page.goto(f"{base}/tasks", timeout=30_000)
            page.locator("#tasks-table tbody").get_by_text("SUCCESS").first.wait_for(timeout=30_000)
            listed = page.locator("#tasks-table").inner_text()
            page.screenshot(path=str(ARTIFACTS / "flower-tasks.png"), full_page=True)
        finally:
            browser.close()
    assert "taskpool" in text, text
    assert "'pool': 'prefork'" in text, text
    assert f"'concurrency': {expected['concurrency']}" in text, text
    assert "'tasks': ['workers.pipeline.run_model']" in text, text
    assert "taskpool (readable)" in readable, readable
    decision = r"'last decision': '\d\d:\d\d:\d\d\s+\d+ -> \d+\s+\S[^']*\((just now|\d+ \w+ ago)\)'"
    assert re.search(decision, readable), readable
    assert re.search(r"Last decision \(readable\)\s+\d\d:\d\d:\d\d\s+\d+ -> \d+\s+\S", panel), panel
    shown = readable.split("taskpool (readable)", 1)[1].split("\n", 1)[0]  # its row
    assert not re.search(r"\b1\d{9}\.\d+", shown), shown  # times as ISO-8601 and HH:MM:SS, no epoch
    assert "SUCCESS" in listed and any(step in listed for step in STEPS), listed


def run_client(code: str, broker_url: str, timeout: float = 60.0) -> object:
    """Run ``code`` in a fresh interpreter against ``broker_url``; return the JSON it prints.

    A client app built in the test process would register every task other tests declared
    (Celery shares tasks across apps at finalize) and trip over their duplicate names.
    """
    env = dict(os.environ, TASKPOOL_BROKER_URL=broker_url, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def result_state(client: redis.Redis, task_id: str) -> str | None:
    raw = client.get(f"celery-task-meta-{task_id}")
    return json.loads(raw)["status"] if raw else None


def test_sigint_stops_everything_gracefully_and_loses_no_task(stack: RunningStack) -> None:
    sent = run_client(
        "import json, workers\n"
        f"results = [workers.pipeline(i).apply_async() for i in range({ITEMS}, {ITEMS + 30})]\n"
        "print(json.dumps([[r.parent.parent.id, r.id] for r in results]))",
        stack.redis.url,
    )
    assert isinstance(sent, list) and len(sent) == 30
    r = redis.Redis.from_url(stack.redis.url)
    wait_for(lambda: any(result_state(r, first) for first, _ in sent), 30, what="the first new download")
    pids_before = processes_with(stack.marker)
    assert len(pids_before) >= 6  # up, 3 workers (+ prefork children), flower
    stack.process.send_signal(signal.SIGINT)
    try:
        code = stack.process.wait(90)
    except subprocess.TimeoutExpired:  # say what each service was doing (seen twice under load)
        tails = "\n".join(
            f"--- {log.name}:\n{log.read_text(errors='replace')[-1500:]}"
            for log in sorted((stack.project / ".taskpool" / "logs").glob("*.log"))
        )
        output = stack.output[-2000:]
        raise AssertionError(f"taskpool up still runs 90 s after SIGINT:\n{output}\n{tails}") from None
    assert code == 0, stack.output
    assert "stopped cleanly" in stack.output
    wait_for(lambda: not processes_with(stack.marker), 10, what="every process of the stack to exit")
    logs = stack.project / ".taskpool" / "logs"
    for pool in ("gevent", "threads", "prefork"):
        assert "warm shutdown" in (logs / f"worker-{pool}.log").read_text().lower(), pool
    # Nothing lost: each chain finished, or its next step is still a message in Redis.
    pending_roots = set()
    keys = [k for k in r.keys("taskpool.*") if r.type(k) == b"list"]
    messages = [m for k in keys for m in r.lrange(k, 0, -1)]
    messages += [json.dumps(json.loads(v)[0]).encode() for v in r.hvals("unacked")]
    for raw in messages:
        pending_roots.add(json.loads(raw)["headers"]["root_id"])
    finished = [first for first, last in sent if result_state(r, last) == "SUCCESS"]
    lost = [first for first, last in sent if first not in finished and first not in pending_roots]
    assert not lost, f"{len(lost)} chain(s) neither finished nor queued"
    assert finished, "no chain finished: the stack stopped before doing any work"
    r.close()
