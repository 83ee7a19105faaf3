"""Flower's credentials and its /metrics, for `config/flower.py` and `taskpool up`.

Flower 2.2 asks for credentials on its pages and API, but not on ``/metrics`` (task names,
worker names, counts, runtimes) nor ``/healthcheck`` (answers "OK", nothing else).
:func:`protect_metrics` puts ``/metrics`` behind the same check: Flower has no option for it,
so this wraps its handler's ``get`` with Tornado's ``authenticated`` (the decorator Flower's
own pages use).
"""

from __future__ import annotations

#: The placeholder of config/flower.env.example: refused, so a copied example never serves.
PLACEHOLDER_PASSWORD = "change-me-to-a-long-random-password"
MIN_PASSWORD_LENGTH = 12


def check_basic_auth(value: str) -> list[str]:
    """``FLOWER_BASIC_AUTH`` ("user:password", comma-separated) as Flower's list, or
    ``ValueError`` with a message that names the user, never the password."""
    pairs = [pair for pair in value.split(",") if pair.strip()]
    if not pairs:
        raise ValueError("FLOWER_BASIC_AUTH is empty: set it to user:password")
    for pair in pairs:
        user, sep, password = pair.partition(":")
        if not sep or not user.strip():
            raise ValueError("FLOWER_BASIC_AUTH: each entry must be user:password, with a user name")
        if password == PLACEHOLDER_PASSWORD:
            raise ValueError(
                f"FLOWER_BASIC_AUTH: user {user!r} still has the example's placeholder password; choose one"
            )
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(
                f"FLOWER_BASIC_AUTH: user {user!r} has an empty or short password "
                f"(at least {MIN_PASSWORD_LENGTH} characters)"
            )
    return pairs


def protect_metrics() -> None:
    """Make Flower's ``/metrics`` ask for the same credentials as its pages."""
    import tornado.web
    from flower.views.monitor import Metrics

    if getattr(Metrics.get, "taskpool_protected", False):
        return
    get = tornado.web.authenticated(Metrics.get)
    get.taskpool_protected = True  # type: ignore[attr-defined]
    Metrics.get = get
