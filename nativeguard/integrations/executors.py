"""``concurrent.futures`` executors as a nativeguard integration.

An executor owns worker threads (a process pool: processes too) until it is
shut down: release is ``shutdown(wait=True, cancel_futures=True)`` with a
bounded wait, and leak checks count live ``ThreadPoolExecutor`` instances.
``@guarded`` does not track them (a function may return the executor it made).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable
from typing import Any

from nativeguard import Integration, run_bounded

__all__ = ["INTEGRATION"]


def _shutdown(obj: Any, timeout_s: float) -> None:
    run_bounded(
        lambda: obj.shutdown(wait=True, cancel_futures=True),
        timeout_s,
        f"{type(obj).__name__}.shutdown()",
    )


def _counted() -> Iterable[type]:
    return (concurrent.futures.ThreadPoolExecutor,)


INTEGRATION = Integration(
    name="executors",
    release=(("executor", concurrent.futures.Executor, (_shutdown,)),),
    counted=_counted,
)
