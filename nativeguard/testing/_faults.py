"""Fault injection for the local speech service."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Union

from ._script import _STATUSES, RecognitionStatus

__all__ = ["FaultPlan", "Faults", "resolve_faults"]


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong on a connection. The default is nothing.

    - ``refuse``: answer the websocket upgrade with HTTP ``refuse_status``.
    - ``close_after``: drop the TCP connection once this many service messages
      were sent (0 drops it as soon as the client speaks).
    - ``stall``: accept everything, never answer, so the SDK times out.
    - ``malformed``: answer with a frame that breaks the protocol.
    - ``delay_ms``: wait this long before every service message.
    - ``status``: report this ``RecognitionStatus`` instead of each phrase's own.
    """

    refuse: bool = False
    refuse_status: int = 503
    close_after: int | None = None
    stall: bool = False
    malformed: bool = False
    delay_ms: int = 0
    status: RecognitionStatus | None = None

    def __post_init__(self) -> None:
        for name in ("refuse", "stall", "malformed"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"{name} must be True or False, got {type(getattr(self, name)).__name__}"
                )
        for name in ("refuse_status", "close_after", "delay_ms"):
            value = getattr(self, name)
            if (value is not None or name != "close_after") and (
                isinstance(value, bool) or not isinstance(value, int)
            ):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not 400 <= self.refuse_status <= 599:
            raise ValueError(
                f"refuse_status must be an HTTP error status, got {self.refuse_status}"
            )
        if self.close_after is not None and self.close_after < 0:
            raise ValueError(f"close_after must be >= 0, got {self.close_after}")
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {self.delay_ms}")
        if self.status is not None and self.status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {self.status!r}")


NO_FAULTS = Faults()

FaultPlan = Union[Faults, Mapping[int, Faults], Callable[[int, str], Union[Faults, None]], None]
"""Faults for the whole service, per connection index, or chosen by a callable
given the connection index (0-based) and the request path."""


def resolve_faults(plan: FaultPlan, connection_index: int, path: str) -> Faults:
    if plan is None:
        return NO_FAULTS
    if isinstance(plan, Faults):
        return plan
    if isinstance(plan, Mapping):
        return plan.get(connection_index, NO_FAULTS)
    chosen = plan(connection_index, path)
    if chosen is None:
        return NO_FAULTS
    if not isinstance(chosen, Faults):
        raise TypeError(
            f"a fault plan callable must return Faults or None, got {type(chosen).__name__}"
        )
    return chosen


def check_plan(plan: object) -> FaultPlan:
    """Validate a fault plan early, so a typo fails at construction, not mid-test."""
    if plan is None or isinstance(plan, Faults) or callable(plan):
        return plan
    if isinstance(plan, Mapping):
        for key, value in plan.items():
            if not isinstance(key, int) or not isinstance(value, Faults):
                raise TypeError("faults: a fault mapping maps connection indexes (int) to Faults")
        return plan
    raise TypeError(
        f"faults must be Faults, a mapping of connection index to Faults, or a callable; "
        f"got {type(plan).__name__}"
    )
