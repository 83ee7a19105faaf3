"""Prometheus configurations checked offline with Debian's promtool: compose's (with Flower's
user put in as its entrypoint does) and the one `taskpool up --monitoring` writes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from taskpool.ops.monitoring import (
    DASHBOARD,
    DATASOURCE_UID,
    FLOWER_USER_PLACEHOLDER,
    PROMETHEUS_CONFIG,
    grafana_program,
    local_prometheus_config,
    prometheus_program,
    render_compose_config,
)

ROOT = Path(__file__).resolve().parents[2]


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool missing: apt-get install prometheus (scripts/setup.sh --tests does)"
    return found


def check(path: Path) -> subprocess.CompletedProcess[str]:
    argv = [promtool(), "check", "config", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_compose_config_is_valid_with_flower_user(tmp_path: Path) -> None:
    text = (ROOT / PROMETHEUS_CONFIG).read_text()
    assert FLOWER_USER_PLACEHOLDER in text and "password_file: /prometheus/flower.password" in text
    assert "password:" not in text.replace("password_file:", "")  # no credential in the file
    for part in ("job_name: taskpool", "job_name: flower", "worker-gevent", "worker-prefork"):
        assert part in text
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(render_compose_config(text, "ops"))
    done = check(rendered)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "username: ops" in rendered.read_text()


def test_local_config_is_valid(tmp_path: Path) -> None:
    program = prometheus_program(
        "/usr/bin/prometheus", tmp_path, port=9090,
        workers={"worker-gevent": "127.0.0.1:9808", "worker-threads": "127.0.0.1:9809"},
        flower="127.0.0.1:5555", interval=0.5,
        flower_auth="admin:a-long-password-123,other:another-password-4",
    )  # fmt: skip
    config = tmp_path / "prometheus.yml"
    assert f"--config.file={config}" in program.argv
    assert "--web.listen-address=127.0.0.1:9090" in program.argv
    done = check(config)
    assert done.returncode == 0, done.stdout + done.stderr
    parsed = json.loads(config.read_text())
    assert parsed["global"]["scrape_interval"] == "500ms"
    flower = next(job for job in parsed["scrape_configs"] if job["job_name"] == "flower")
    assert flower["basic_auth"]["username"] == "admin"
    password = Path(flower["basic_auth"]["password_file"])
    assert password.read_text() == "a-long-password-123"
    assert password.stat().st_mode & 0o777 == 0o600
    assert "a-long-password-123" not in config.read_text()


@pytest.mark.parametrize("bad", [{"scrape_interval": "soon"}, {"scrape_interval": "1s", "job": "x"}])
def test_promtool_refuses_a_bad_config(tmp_path: Path, bad: dict[str, str]) -> None:
    config = json.loads(local_prometheus_config({"w": "127.0.0.1:1"}))
    config["global"].update(bad)
    path = tmp_path / "bad.yml"
    path.write_text(json.dumps(config))
    assert check(path).returncode != 0


def test_grafana_provisioning_for_a_local_stack(tmp_path: Path) -> None:
    """The files `taskpool up --monitoring` gives Grafana (its start is not tested: no binary here)."""
    program = grafana_program(
        "/opt/grafana/bin/grafana", tmp_path, ROOT, port=3001, prometheus_url="http://127.0.0.1:9091",
        admin_password="pw-123456789012",
    )  # fmt: skip
    assert program.argv[:2] == ["/opt/grafana/bin/grafana", "server"]
    assert program.env["GF_SERVER_HTTP_PORT"] == "3001" and program.env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    provisioning = Path(program.env["GF_PATHS_PROVISIONING"])
    datasource = json.loads((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://127.0.0.1:9091" and datasource["uid"] == DATASOURCE_UID
    provider = json.loads((provisioning / "dashboards" / "taskpool.yml").read_text())["providers"][0]
    assert (Path(provider["options"]["path"]) / "taskpool.json") == (ROOT / DASHBOARD).resolve()
