"""taskpool's ``inspect stats`` data shaped for people: ``taskpool (readable)`` beside ``taskpool``.

Flower shows a worker's stats as they come (``str()`` of each value), and ``taskpool status``
prints them: so this module turns the machine-readable snapshot (:mod:`taskpool.worker.stats`)
and the autoscaler's decisions into strings. Times are ISO-8601 with the worker's UTC offset,
plus how long ago; each autoscaler decision is one line,
``21:08:43  69 -> 10  no work; 59 slots unneeded for 30 s``; slots and waiters are short
tables (lists of aligned lines). Programs read ``taskpool`` (``taskpool status --json``).
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

#: Waiting requests listed in the ``waiters`` table; the rest are counted on one line.
MAX_WAITERS = 10

_PLURAL = re.compile(r"(\d+) (\w+)\(s\)")


def iso(at: float) -> str:
    """``at`` (epoch seconds) as ISO-8601 in the local time zone, to the second."""
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def ago(seconds: float) -> str:
    """``seconds`` before now in words: ``just now``, ``12 s ago``, ``3 min ago``, ``2 h ago``."""
    if seconds < 1:
        return "just now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def plural(text: str) -> str:
    """``59 slot(s)`` -> ``59 slots``, ``1 slot(s)`` -> ``1 slot``."""
    return _PLURAL.sub(lambda m: f"{m[1]} {m[2]}" + ("" if m[1] == "1" else "s"), text)


def decision_line(decision: dict[str, Any]) -> str:
    """One autoscaler decision: ``21:08:43  69 -> 10  no work; 59 slots unneeded for 30 s``.

    The time is the worker's local time; ``(now N)`` follows when the pool could not reach the
    target yet (busy processes are not stopped).
    """
    at = datetime.fromtimestamp(float(decision["at"])).strftime("%H:%M:%S")
    line = f"{at}  {decision['from']} -> {decision['to']}  {plural(str(decision.get('reason') or ''))}"
    now = decision.get("now")
    if now is not None and now != decision["to"]:
        line += f" (now {now})"
    return line.rstrip()


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    """Aligned lines: columns of numbers right-aligned, the others left-aligned."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [bool(rows) and all(r[i].isdigit() for r in cells[1:]) for i in range(len(header))]
    return [
        "  ".join(
            (c.rjust(w) if numeric[i] else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in cells
    ]


def _counts(mapping: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in mapping.items()) or "none"


def readable(
    snapshot: dict[str, Any],
    scaler: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The value of ``taskpool (readable)``: ``snapshot`` (:func:`~taskpool.worker.stats.
    worker_snapshot`), ``scaler`` (the autoscaler's ``info()``) and ``gate`` (the gate's
    ``info()``) as strings and lists of lines.

    Keys: ``at`` (ISO-8601), ``pool`` (size, autoscaler target and bounds), ``queues``,
    ``in flight``, ``reserved``, ``last decision`` (a line and how long ago), ``history`` (the
    autoscaler's recent decisions, one line each, oldest first), ``slots`` (semaphore, held,
    waiting, next in line), ``waiters`` (the requests waiting for slots), ``admission``.
    """
    now = time.time() if now is None else now
    size = snapshot.get("concurrency")
    pool = f"{snapshot.get('pool') or '?'}, {size if size is not None else '?'} running"
    if snapshot.get("max") is not None:
        bounds = f"{snapshot.get('min')}-{snapshot['max']}"
        pool += f" (autoscaler target {snapshot.get('target')}, bounds {bounds})"
    out: dict[str, Any] = {
        "at": iso(now),
        "pool": pool,
        "queues": ", ".join(snapshot.get("queues") or ()) or "none",
        "in flight": _counts(snapshot.get("in_flight") or {}),
        "reserved": _counts(snapshot.get("reserved") or {}),
    }
    decisions = list((scaler or {}).get("decisions") or ())
    if scaler is not None:
        if decisions:
            last = decisions[-1]
            out["last decision"] = f"{decision_line(last)}  ({ago(now - float(last['at']))})"
        else:
            out["last decision"] = "none yet"
        out["history"] = [decision_line(d) for d in decisions]
    held = snapshot.get("slots_held") or {}
    waiting = snapshot.get("slots_waiting") or {}
    holding = snapshot.get("holding") or {}
    names = sorted(set(held) | set(waiting))
    out["slots"] = (
        table(
            ("semaphore", "held", "waiting", "next in line"),
            [
                (n, held.get(n, 0), waiting.get(n, 0), (holding.get(n) or {}).get("next", waiting.get(n, 0)))
                for n in names
            ],
        )
        if names
        else "none held or waited for"
    )
    waiters = list((gate or {}).get("waiting") or ())
    if waiters:
        rows = [(task, str(rid)[:8], ", ".join(needs)) for rid, task, needs in waiters[:MAX_WAITERS]]
        lines = table(("task", "request", "waits for"), rows)
        if len(waiters) > MAX_WAITERS:
            lines.append(f"... and {len(waiters) - MAX_WAITERS} more")
        out["waiters"] = lines
    else:
        out["waiters"] = "none"
    admission = snapshot.get("admission") or {}
    if admission:
        out["admission"] = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in admission.items())
    return out
