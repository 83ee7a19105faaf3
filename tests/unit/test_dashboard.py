"""The Grafana dashboard queries only metrics the workers export, and shows what it promises."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from taskpool.ops.monitoring import DASHBOARD, DATASOURCE_UID, dashboard_exprs
from taskpool.worker import metrics
from taskpool.worker.metrics import METRICS, series_names

ROOT = Path(__file__).resolve().parents[2]
METRIC_NAME = re.compile(r"\btaskpool_[a-z0-9_]+\b")


def dashboard() -> dict[str, Any]:
    return dict(json.loads((ROOT / DASHBOARD).read_text()))


def unknown_metrics(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel, metric) for every metric a query names that no worker exports."""
    exported = series_names()
    return [
        (title, name)
        for title, expr in dashboard_exprs(board)
        for name in METRIC_NAME.findall(expr)
        if name not in exported
    ]


def test_every_query_names_exported_metrics() -> None:
    board = dashboard()
    exprs = dashboard_exprs(board)
    assert exprs
    for title, expr in exprs:
        assert METRIC_NAME.search(expr), f"panel {title!r}: {expr!r} names no taskpool metric"
    assert unknown_metrics(board) == []


def test_a_misspelt_metric_is_caught() -> None:
    board = dashboard()
    board["panels"][0]["targets"][0]["expr"] = "sum(taskpool_pool_size)"
    assert unknown_metrics(board) == [(board["panels"][0]["title"], "taskpool_pool_size")]


@pytest.mark.parametrize(
    ("words", "metric"),
    [
        ("pool size", "taskpool_autoscaler_target"),
        ("pool size", "taskpool_pool_min_processes"),
        ("pool size", "taskpool_pool_max_processes"),
        ("queue depth", "taskpool_queue_depth"),
        ("started", "taskpool_tasks_started_total"),
        ("failed", 'state!="SUCCESS"'),
        ("retries", "taskpool_task_retries_total"),
        ("dead letters", "taskpool_dead_letters_total"),
        ("percentiles", "taskpool_task_duration_seconds_bucket"),
        ("slots held and waiting", "taskpool_slot_waiters"),
        ("gpu", 'semaphore=~"gpu:.*"'),
    ],
)
def test_the_promised_panels_are_there(words: str, metric: str) -> None:
    panels = [(title, expr) for title, expr in dashboard_exprs(dashboard()) if words in title.lower()]
    assert panels, f"no panel titled with {words!r}"
    assert any(metric in expr for _, expr in panels), f"panels {words!r} do not query {metric}"


def test_panels_use_the_provisioned_datasource() -> None:
    provisioning = ROOT / "config" / "grafana" / "provisioning"
    provisioned = (provisioning / "datasources" / "prometheus.yml").read_text()
    assert f"uid: {DATASOURCE_UID}" in provisioned
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert all(t["datasource"]["uid"] == DATASOURCE_UID for t in panel["targets"]), panel["title"]
    assert len({p["id"] for p in dashboard()["panels"]}) == len(dashboard()["panels"])


def test_metrics_list_matches_the_code() -> None:
    """Every metric name written in worker/metrics.py is in METRICS, and the other way round."""
    source = Path(metrics.__file__).read_text()
    written = set(re.findall(r'"(taskpool_[a-z0-9_]+)"', source))
    assert written - set(METRICS) == set()
    dynamic = {name for name in METRICS if name.startswith("taskpool_admission_")}
    assert set(METRICS) - dynamic == written
    assert 'f"taskpool_admission_{key}"' in source
    assert "taskpool_tasks_started_total" in series_names()
    assert "taskpool_task_duration_seconds_bucket" in series_names()
