"""``taskpool scale``: update the autoscaler of running workers of one pool."""

from __future__ import annotations

import click

from taskpool.core.settings import POOLS
from taskpool.ops.cli.common import app_option, console, load_app


@click.command()
@app_option
@click.option("--pool", "-P", type=click.Choice(POOLS), required=True, help="Whose workers to update.")
@click.option("--min", "min_", type=click.IntRange(min=1), help="Fewest slots.")
@click.option("--max", "max_", type=click.IntRange(min=1), help="Most slots.")
@click.option("--buffer", type=click.IntRange(min=0), help="Spare slots kept while there is work.")
@click.option("--cooldown", type=click.FloatRange(min=0), help="Seconds unneeded before slots go back.")
@click.option("--timeout", default=1.0, show_default=True, help="Seconds to wait for replies.")
def scale(
    app_path: str,
    pool: str,
    min_: int | None,
    max_: int | None,
    buffer: int | None,
    cooldown: float | None,
    timeout: float,
) -> None:
    """Update the autoscaler of running POOL workers (until they restart).

    --max is bounded by the pool's ceiling: prefork 256, threads 512, gevent 10,000 per worker.
    """
    import math

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
