"""Task events: on by default in `taskpool up` and compose, off with --no-events or
TASKPOOL_EVENTS=false, in every process (workers send task events, senders task-sent events)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from taskpool import ConfigurationError, TaskPool
from taskpool.ops.cli.local import up
from taskpool.ops.stack import events_enabled, events_env


@pytest.mark.parametrize(
    ("raw", "on"), [("", True), ("true", True), ("1", True), ("false", False), ("0", False)]
)
def test_taskpool_events_variable(raw: str, on: bool) -> None:
    assert events_enabled({"TASKPOOL_EVENTS": raw}) is on
    assert events_enabled({}) is True


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"TASKPOOL_EVENTS='maybe': expected true or false"):
        events_enabled({"TASKPOOL_EVENTS": "maybe"})


@pytest.mark.parametrize("on", [True, False])
def test_events_env_reaches_celery_settings(on: bool) -> None:
    app = TaskPool("ev", config=False, environ=events_env(on))
    assert app.conf.worker_send_task_events is on
    assert app.conf.task_send_sent_event is on


def test_up_has_the_switch_on_by_default() -> None:
    text = CliRunner().invoke(up, ["--help"], env={"TASKPOOL_EVENTS": ""}).output
    assert "--events / --no-events" in text
    assert "TASKPOOL_EVENTS or on" in text
