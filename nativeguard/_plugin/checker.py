"""The session state and the :class:`LeakChecker` each checked test is judged by."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..verify._check import Allow, check, type_names
from ..verify._leakcheck import LeakCheck, leak_check
from ..verify._report import LeakReport
from ..verify._snapshot import Snapshot, snapshot
from .frames import clear_finished_frames
from .marks import Settings

__all__ = ["MB", "LeakChecker", "Session"]

MB = 1 << 20


# -- session state ------------------------------------------------------------------


@dataclass
class Session:
    """Command-line options and what the session did."""

    check_all: bool
    repeat: tuple[int, int] | None
    settle_s: float
    warmup_s: float | None = None
    tracked: tuple[str, ...] = ()
    checked: int = 0
    repeated: int = 0
    leaked: list[str] = field(default_factory=list)

    def warm_up(self) -> None:
        """Once, before the first baseline: registry on, extra types tracked, SDK imported."""
        if self.warmup_s is not None:
            return
        from .._core._integration import activate_installed  # noqa: PLC0415
        from ..verify import _registry  # noqa: PLC0415 - the SDK is imported only when checking

        started = time.monotonic()
        for failure in activate_installed():
            warnings.warn(
                f"nativeguard: an installed SDK failed to import at warm-up: {failure}",
                pytest.PytestWarning,
                stacklevel=2,
            )
        _registry.enable()
        extra = _extra_types()
        for cls in extra:
            try:
                _registry.track_types(cls)
            except TypeError:
                continue  # not weak-referenceable in this version: not countable
        self.tracked = tuple(cls.__qualname__ for cls in extra)
        snapshot()  # first reading: loads the SDK core and its handle table
        self.warmup_s = time.monotonic() - started


def _extra_types() -> list[type]:
    """The classes every integration asks leak checks to count (executors, credentials)."""
    from .._core._integration import counted_types  # noqa: PLC0415 - loads entry points when checking

    return counted_types()


# -- the checker the fixture yields -------------------------------------------------


class LeakChecker:
    """What the ``nativeguard`` fixture yields: the test's baseline and allowlist.

    The verdict is given at teardown; :meth:`check` asks for one now without
    failing anything.
    """

    def __init__(
        self, settings: Settings, settle_s: float, *, test_files: frozenset[str] = frozenset()
    ) -> None:
        self._settings = settings
        self._settle_s = settle_s
        self.test_files = test_files
        self._allow: list[Allow] = list(settings.allow)
        self._names = type_names(settings.types)
        self._before = self._baseline()
        self.leak_check_result: LeakCheck | None = None
        """Set in repeat mode: the judged runs."""

    def _baseline(self) -> Snapshot:
        if self._settings.rss_growth_mb is not None:
            from ..verify._memory import trim  # noqa: PLC0415

            trim()
        return snapshot()

    @property
    def before(self) -> Snapshot:
        """The baseline the test is compared with."""
        return self._before

    @property
    def allowed(self) -> tuple[Allow, ...]:
        return tuple(self._allow)

    def allow(self, what: str, reason: str) -> None:
        """Excuse growth of ``what`` (see :class:`Allow`) for this test; ``reason`` is required."""
        self._allow.append(Allow(what, reason))

    def reset(self) -> Snapshot:
        """Take a new baseline, e.g. after the test's own warm-up; returns it."""
        self._before = self._baseline()
        return self._before

    def check(self) -> LeakReport | None:
        """What leaked since the baseline, settled; None if nothing did. Never fails the test."""
        return check(
            self._before,
            allow=self._allow,
            types=self._names,
            native_handles=self._settings.native_handles,
            threads=self._settings.threads,
            fds=self._settings.fds,
            settle_s=self._settle_s,
        )

    def rss_growth_bytes(self) -> int:
        """RSS now (after ``malloc_trim``) minus the baseline's."""
        from ..verify._memory import trim  # noqa: PLC0415

        trim()
        return snapshot().rss_bytes - self._before.rss_bytes

    def leak_check(self, fn: Callable[[], object], **kwargs: Any) -> LeakCheck:
        """:func:`~nativeguard.verify.leak_check` with this test's switches and allowlist."""
        options: dict[str, Any] = {
            "allow": self._allow,
            "types": self._names,
            "native_handles": self._settings.native_handles,
            "threads": self._settings.threads,
            "fds": self._settings.fds,
            "rss_growth_mb": self._settings.rss_growth_mb,
            "settle_s": self._settle_s,
        }
        options.update(kwargs)
        return leak_check(fn, **options)

    def _verdict(self) -> str | None:
        """The failure text at teardown, or None.

        On a suspected leak, the test's own finished frames are cleared (see
        :func:`clear_finished_frames`) and the check runs again.
        """
        report = self.check()
        if report is not None:
            # Checked again even when no frame was cleared: the heap walk that
            # looks for them allocates, and the automatic collection it can
            # trigger may just have freed the suspects (the verdict would be stale).
            clear_finished_frames(self.test_files)
            report = self.check()
        lines = [] if report is None else [str(report)]
        limit = self._settings.rss_growth_mb
        if limit is not None:
            grown = self.rss_growth_bytes()
            if grown > limit * MB:
                lines.append(
                    f"RSS grew by {grown / MB:.1f} MB (after malloc_trim), more than the "
                    f"{limit:g} MB no_leaks(rss_growth_mb=...) allows"
                )
        return "\n".join(lines) if lines else None
