"""``taskpool scale``: update the autoscaler of running workers of one pool, or with ``--fleet``
the number of workers of a pool (:func:`taskpool.ops.cli.fleet.scale_fleet`)."""

from __future__ import annotations

import click

from taskpool.core.settings import POOLS
from taskpool.ops.cli.common import app_option, console, load_app


@click.command()
@app_option
@click.option("--pool", "-P", type=click.Choice(POOLS), help="Whose workers to update.")
@click.option(
    "--fleet", type=click.Choice(POOLS), help="Scale the number of workers of this pool instead (in Redis)."
)
@click.option(
    "--min", "min_", type=click.IntRange(min=0), help="Fewest slots (with --fleet: workers, 0 allowed)."
)
@click.option("--max", "max_", type=click.IntRange(min=1), help="Most slots (with --fleet: workers).")
@click.option("--buffer", type=click.IntRange(min=0), help="Spare slots (workers) kept while there is work.")
@click.option("--cooldown", type=click.FloatRange(min=0), help="Seconds unneeded before slots go back.")
@click.option("--scaledown-window", type=float, help="With --fleet: seconds unneeded before a worker goes.")
@click.option("--timeout", default=1.0, show_default=True, help="Seconds to wait for replies.")
def scale(
    app_path: str,
    pool: str | None,
    fleet: str | None,
    min_: int | None,
    max_: int | None,
    buffer: int | None,
    cooldown: float | None,
    scaledown_window: float | None,
    timeout: float,
) -> None:
    """Update the autoscaler of running POOL workers (until they restart).

    --max is bounded by the pool's ceiling: prefork 256, threads 512, gevent 10,000 per worker.
    With --fleet POOL: --min/--max/--buffer/--scaledown-window set the pool's min_workers,
    max_workers, buffer_workers and scaledown_window, stored in Redis for every fleet controller.
    """
    import math

    if fleet is not None:
        from taskpool.ops.cli.fleet import scale_fleet

        if pool is not None or cooldown is not None:
            raise click.ClickException("--fleet takes --min, --max, --buffer and --scaledown-window only")
        scale_fleet(
            load_app(app_path),
            fleet,
            min_workers=min_,
            max_workers=max_,
            buffer_workers=buffer,
            scaledown_window=scaledown_window,
        )
        return
    if pool is None:
        raise click.UsageError(
            "give --pool POOL (slots of its workers) or --fleet POOL (its number of workers)"
        )
    if scaledown_window is not None:
        raise click.ClickException(
            "--scaledown-window is for --fleet; the slots' autoscaler takes --cooldown"
        )
    if min_ is not None and min_ < 1:
        raise click.ClickException(
            f"--min {min_}: a worker keeps at least 1 slot (--fleet POOL --min 0 scales workers)"
        )

    from taskpool.worker.autoscale import MAX_CONCURRENCY, scale_workers

    if max_ is not None and max_ > MAX_CONCURRENCY[pool]:
        raise click.ClickException(
            f"--max {max_}: above the {pool} pool's ceiling of {MAX_CONCURRENCY[pool]:,} slots per worker; "
            "run more workers instead"
        )
    if cooldown is not None and not math.isfinite(cooldown):
        raise click.ClickException(f"--cooldown {cooldown}: must be a finite number of seconds >= 0")

    replies = scale_workers(
        load_app(app_path), pool, min=min_, max=max_, buffer=buffer, cooldown=cooldown, timeout=timeout
    )
    if not replies:
        raise click.ClickException(f"no {pool} worker answered within {timeout} s")
    failed = False
    for worker, answer in sorted(replies.items()):
        failed |= "error" in answer
        console.print(f"{worker}: {answer.get('ok') or 'error: ' + str(answer.get('error'))}")
    if failed:
        raise SystemExit(1)
