"""taskpool's stats for people: ISO times, one line per autoscaler decision, short tables."""

from __future__ import annotations

import json
from datetime import datetime

from taskpool.worker.readable import ago, decision_line, iso, plural, readable, table

AT = datetime(2026, 12, 5, 21, 8, 43).timestamp()  # local time, as the worker writes it


def snapshot(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "pool": "threads",
        "concurrency": 10,
        "min": 2,
        "max": 80,
        "target": 10,
        "queues": ["taskpool.threads"],
        "in_flight": {"app.fetch": 3},
        "reserved": {},
        "slots_held": {"gpu:host1": 1, "limit:api": 2},
        "slots_waiting": {"gpu:host1": 3},
        "holding": {"gpu:host1": {"waiting": 3, "next": 1}},
        "admission": {"admitted": 12, "handed_back": 2},
    }
    base.update(extra)
    return base


def test_decision_is_one_line() -> None:
    decision = {"at": AT, "from": 69, "to": 10, "now": 10, "reason": "no work; 59 slot(s) unneeded for 30 s"}
    assert decision_line(decision) == "21:08:43  69 -> 10  no work; 59 slots unneeded for 30 s"
    busy = {**decision, "now": 40}
    assert decision_line(busy).endswith("(now 40)")


def test_plural_and_ago() -> None:
    assert plural("1 slot(s), 2 request(s)") == "1 slot, 2 requests"
    assert ago(0.2) == "just now"
    assert ago(12) == "12 s ago"
    assert ago(180) == "3 min ago"
    assert ago(7200) == "2 h ago"


def test_iso_has_the_offset() -> None:
    text = iso(AT)
    assert text.startswith("2026-12-05T21:08:43")
    assert datetime.fromisoformat(text).timestamp() == AT


def test_table_aligns() -> None:
    lines = table(("semaphore", "held"), [("gpu:h", 1), ("limit:api", 12)])
    assert lines == ["semaphore  held", "gpu:h         1", "limit:api    12"]


def test_readable_snapshot() -> None:
    decisions = [
        {"at": AT - 60, "from": 2, "to": 69, "now": 69, "reason": "demand 69"},
        {"at": AT, "from": 69, "to": 10, "now": 10, "reason": "no work; 59 slot(s) unneeded for 30 s"},
    ]
    gate = {"waiting": [("abcdef0123456789", "app.infer", ["gpu:host1"])] * 12}
    out = readable(snapshot(), {"decisions": decisions}, gate, now=AT + 120)
    assert out["at"].startswith("2026-12-05T21:10:43")
    assert out["pool"] == "threads, 10 running (autoscaler target 10, bounds 2-80)"
    assert out["last decision"] == "21:08:43  69 -> 10  no work; 59 slots unneeded for 30 s  (2 min ago)"
    assert out["history"] == [
        "21:07:43  2 -> 69  demand 69",
        "21:08:43  69 -> 10  no work; 59 slots unneeded for 30 s",
    ]
    assert out["in flight"] == "app.fetch 3"
    assert out["slots"] == [
        "semaphore  held  waiting  next in line",
        "gpu:host1     1        3             1",
        "limit:api     2        0             0",
    ]
    assert out["waiters"][0] == "task       request   waits for"
    assert out["waiters"][1] == "app.infer  abcdef01  gpu:host1"
    assert out["waiters"][-1] == "... and 2 more"
    assert out["admission"] == "admitted 12, handed back 2"
    json.dumps(out)  # inspect stats replies are JSON


def test_without_autoscaler_or_gate() -> None:
    out = readable(snapshot(max=None, slots_held={}, slots_waiting={}, holding={}, admission={}), None, None)
    assert out["pool"] == "threads, 10 running"
    assert "last decision" not in out and "history" not in out
    assert out["slots"] == "none held or waited for"
    assert out["waiters"] == "none"
    assert readable(snapshot(), {"decisions": []})["last decision"] == "none yet"
