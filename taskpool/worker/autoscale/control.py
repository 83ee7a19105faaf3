"""Changing running workers' autoscalers: the ``taskpool_scale`` remote control command (worker
side) and :func:`scale_workers` (``taskpool scale``, caller side)."""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command, nok, ok

from taskpool.worker.autoscale.autoscaler import CallbackAutoscaler


@control_command(
    args=[("pool", str), ("min", int), ("max", int), ("buffer", int), ("cooldown", float)],
    signature="[pool] [min] [max] [buffer] [cooldown]",
)
def taskpool_scale(
    state: Any,
    pool: str | None = None,
    min: int | None = None,
    max: int | None = None,
    buffer: int | None = None,
    cooldown: float | None = None,
    **_: Any,
) -> Any:
    """Update a taskpool worker's autoscaler at runtime (``taskpool scale``)."""
    scaler = state.consumer.controller.autoscaler
    if not isinstance(scaler, CallbackAutoscaler):
        return nok("no taskpool autoscaler on this worker")
    if pool and pool != scaler.pool_name:
        return ok(f"skipped: a {scaler.pool_name} worker")
    try:
        high, low, buf, cool = scaler.reconfigure(max=max, min=min, buffer=buffer, cooldown=cooldown)
    except ValueError as exc:
        return nok(str(exc))
    return ok(f"{scaler.pool_name}: min={low} max={high} buffer={buf} cooldown={cool:g}")


def scale_workers(
    app: Any,
    pool: str,
    *,
    min: int | None = None,
    max: int | None = None,
    buffer: int | None = None,
    cooldown: float | None = None,
    destination: list[str] | None = None,
    timeout: float = 1.0,
) -> dict[str, dict[str, str]]:
    """Send ``taskpool_scale`` to running workers; returns {worker: {"ok"|"error": text}} of ``pool``'s."""
    arguments = {"pool": pool, "min": min, "max": max, "buffer": buffer, "cooldown": cooldown}
    replies = app.control.broadcast(
        "taskpool_scale",
        arguments={k: v for k, v in arguments.items() if v is not None},
        destination=destination,
        reply=True,
        timeout=timeout,
    )
    out: dict[str, dict[str, str]] = {}
    for reply in replies or []:
        for worker, answer in reply.items():
            if str(answer.get("ok", "")).startswith("skipped"):
                continue
            out[worker] = answer
    return out
