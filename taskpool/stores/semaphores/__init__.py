"""Lease-based counting semaphores in Redis (Lua scripts); imports redis and the stdlib, never Celery."""

from taskpool.stores.semaphores.lease import LeaseKeeper
from taskpool.stores.semaphores.semaphore import (
    HolderInfo,
    Lease,
    LeaseLost,
    Semaphore,
    SemaphoreKeys,
    SlotTimeout,
    default_owner,
    holders_of,
    reap_expired,
    semaphore_names,
    waiters_of,
)

__all__ = [
    "HolderInfo",
    "Lease",
    "LeaseKeeper",
    "LeaseLost",
    "Semaphore",
    "SemaphoreKeys",
    "SlotTimeout",
    "default_owner",
    "holders_of",
    "reap_expired",
    "semaphore_names",
    "waiters_of",
]
