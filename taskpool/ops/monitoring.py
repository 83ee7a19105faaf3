"""Prometheus and Grafana for the stack: the configuration files, and `taskpool up --monitoring`.

compose's ``monitoring`` profile runs the official images with the files under ``config/``:
``config/prometheus/prometheus.yml`` (every worker's metrics port and Flower, with Flower's
credentials put in at start) and ``config/grafana/`` (the Prometheus datasource and the
taskpool dashboard, provisioned). `taskpool up --monitoring` starts the same two programs
locally when their binaries are installed (Debian: ``apt-get install prometheus``; Grafana from
grafana.com's packages), with a configuration written under ``.taskpool/monitoring/`` that
scrapes the local workers and Flower; without a binary it says how to get one and goes on.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where compose's Prometheus config has the Flower user; the entrypoint replaces it.
FLOWER_USER_PLACEHOLDER = "__FLOWER_USER__"
#: Grafana's datasource uid, which every panel of the dashboard names.
DATASOURCE_UID = "taskpool-prometheus"
#: The dashboard, relative to the project.
DASHBOARD = Path("config") / "grafana" / "dashboards" / "taskpool.json"
PROMETHEUS_CONFIG = Path("config") / "prometheus" / "prometheus.yml"

PROMETHEUS_HOWTO = (
    "Prometheus is not installed: `sudo apt-get install prometheus` (Debian, Ubuntu) or a release "
    "from https://prometheus.io/download/ on PATH; or `docker compose --profile monitoring up`"
)
GRAFANA_HOWTO = (
    "Grafana is not installed (it is not in Debian): its APT repository or a release from "
    "https://grafana.com/grafana/download puts `grafana` on PATH; or `docker compose --profile "
    "monitoring up`. The dashboard is config/grafana/dashboards/taskpool.json"
)


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def grafana_binary() -> str | None:
    return shutil.which("grafana") or shutil.which("grafana-server")


def render_compose_config(text: str, flower_user: str) -> str:
    """compose's Prometheus config with the Flower user in place (the entrypoint's ``sed``)."""
    return text.replace(FLOWER_USER_PLACEHOLDER, flower_user)


def split_basic_auth(value: str) -> tuple[str, str]:
    """The first ``user:password`` of ``FLOWER_BASIC_AUTH`` (Flower accepts a comma-separated list)."""
    user, _, password = value.split(",", 1)[0].partition(":")
    return user, password


def local_prometheus_config(
    workers: dict[str, str],
    *,
    flower: str | None = None,
    flower_user: str = "",
    password_file: Path | None = None,
    interval: float = 15.0,
) -> str:
    """Prometheus's config for a local stack: job ``taskpool`` scrapes ``workers`` (service name
    -> ``host:port``), job ``flower`` scrapes ``flower`` (``host:port``) with Flower's user and
    the password in ``password_file``. JSON, which Prometheus reads as YAML."""
    every = f"{max(1, round(interval * 1000))}ms"
    jobs: list[dict[str, object]] = [
        {
            "job_name": "taskpool",
            "static_configs": [
                {"targets": [target], "labels": {"service": name}} for name, target in workers.items()
            ],
        }
    ]
    if flower is not None:
        job: dict[str, object] = {
            "job_name": "flower",
            "static_configs": [{"targets": [flower], "labels": {"service": "flower"}}],
        }
        if password_file is not None:
            job["basic_auth"] = {"username": flower_user, "password_file": str(password_file)}
        jobs.append(job)
    config = {"global": {"scrape_interval": every, "evaluation_interval": every}, "scrape_configs": jobs}
    return json.dumps(config, indent=2) + "\n"


@dataclass(frozen=True)
class Program:
    """A monitoring program to start: its command line and environment (added to the stack's)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    url: str


def prometheus_program(
    binary: str,
    workdir: Path,
    *,
    port: int,
    workers: dict[str, str],
    flower: str | None,
    flower_auth: str,
    interval: float,
) -> Program:
    """Writes ``workdir/prometheus.yml`` (and Flower's password, mode 600) for ``binary``."""
    workdir.mkdir(parents=True, exist_ok=True)
    password_file = None
    user = ""
    if flower is not None and flower_auth:
        user, password = split_basic_auth(flower_auth)
        password_file = workdir / "flower.password"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password)
    config = workdir / "prometheus.yml"
    config.write_text(
        local_prometheus_config(
            workers, flower=flower, flower_user=user, password_file=password_file, interval=interval
        )
    )
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return Program("prometheus", argv, {}, f"http://127.0.0.1:{port}")


def grafana_program(
    binary: str, workdir: Path, project: Path, *, port: int, prometheus_url: str, admin_password: str
) -> Program:
    """Writes Grafana's provisioning under ``workdir/grafana`` (the datasource at
    ``prometheus_url``, the project's dashboard) for ``binary``; Grafana's settings go through
    its ``GF_*`` variables."""
    root = workdir / "grafana"
    datasources = root / "provisioning" / "datasources"
    dashboards = root / "provisioning" / "dashboards"
    for folder in ("datasources", "dashboards", "plugins", "alerting"):
        (root / "provisioning" / folder).mkdir(parents=True, exist_ok=True)
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {"name": "Prometheus", "uid": DATASOURCE_UID, "type": "prometheus", "access": "proxy",
             "url": prometheus_url, "isDefault": True, "editable": False}
        ],
    }  # fmt: skip
    (datasources / "prometheus.yml").write_text(json.dumps(datasource, indent=2))
    provider = {
        "apiVersion": 1,
        "providers": [
            {"name": "taskpool", "type": "file", "disableDeletion": True,
             "options": {"path": str((project / DASHBOARD).parent.resolve())}}
        ],
    }  # fmt: skip
    (dashboards / "taskpool.yml").write_text(json.dumps(provider, indent=2))
    home = Path(os.path.realpath(binary)).parent.parent
    if not (home / "conf" / "defaults.ini").exists():
        home = Path("/usr/share/grafana")
    command = ["server"] if Path(binary).name == "grafana" else []
    argv = [binary, *command, f"--homepath={home}"]
    env = {
        "GF_PATHS_PROVISIONING": str(root / "provisioning"),
        "GF_PATHS_DATA": str(root / "data"),
        "GF_PATHS_LOGS": str(root / "logs"),
        "GF_SERVER_HTTP_ADDR": "127.0.0.1",
        "GF_SERVER_HTTP_PORT": str(port),
        "GF_SECURITY_ADMIN_USER": "admin",
        "GF_SECURITY_ADMIN_PASSWORD": admin_password,
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
    }
    return Program("grafana", argv, env, f"http://127.0.0.1:{port}/d/taskpool")


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every target of every panel."""
    out = []
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            out.append((str(panel.get("title")), str(target.get("expr", ""))))
    return out
