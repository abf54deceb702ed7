"""WorkerPool's options: their checks (by name, before anything starts) and their defaults."""

from __future__ import annotations

import importlib.util
import math
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

from .._core._integration import preload_modules
from ._plain import check_picklable, check_plain

__all__ = [
    "DEFAULT_PRELOAD",
    "StartMethod",
    "check_limit",
    "check_pool_options",
    "function_name",
]

_WORKER_MODULE = "nativeguard.isolate._worker"


class _DefaultPreload(Sequence[str]):
    """Every registered integration's ``preload``, then the worker module; read when used.

    A sequence rather than a tuple fixed at import, so an integration
    registered later (an entry point, a user's) is preloaded too.
    """

    def _names(self) -> tuple[str, ...]:
        return (*(name for name in preload_modules() if name != _WORKER_MODULE), _WORKER_MODULE)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


DEFAULT_PRELOAD: Sequence[str] = _DefaultPreload()
"""Imported once in the fork server so each worker starts with them loaded.

Each integration says what is safe to preload (for the Azure Speech SDK 1.53:
importing it starts no native thread, so the fork server stays
single-threaded and forking it is sound). ``WorkerPool`` checks the fork
server's thread count and warns if a preloaded module ever breaks that.
"""
StartMethod = Literal["forkserver", "spawn", "fork"]


def check_limit(name: str, value: float | None, *, integer: bool = False) -> None:
    if value is None:
        return
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind} or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def function_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def check_pool_options(options: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[type, ...]]:
    """Refuse a bad WorkerPool option by name, before any thread or process starts.

    ``options`` maps every ``WorkerPool`` parameter to its value (``@isolated``
    checks its options at decoration with it). Returns ``preload`` and
    ``plain_types`` as tuples: they may be one-shot iterables.
    """
    workers = options["workers"]
    max_tasks = options["max_tasks"]
    max_rss_mb = options["max_rss_mb"]
    max_growth_mb = options["max_growth_mb"]
    growth_slope_mb_per_task = options["growth_slope_mb_per_task"]
    slope_window = options["slope_window"]
    task_timeout_s = options["task_timeout_s"]
    kill_grace_s = options["kill_grace_s"]
    retries = options["retries"]
    start_method = options["start_method"]
    preload = options["preload"]
    warm_spare = options["warm_spare"]
    jitter = options["jitter"]
    plain_types = options["plain_types"]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    check_limit("max_tasks", max_tasks, integer=True)
    check_limit("max_rss_mb", max_rss_mb)
    check_limit("max_growth_mb", max_growth_mb)
    check_limit("growth_slope_mb_per_task", growth_slope_mb_per_task)
    check_limit("task_timeout_s", task_timeout_s)
    if kill_grace_s is None:
        raise TypeError("kill_grace_s must be a number > 0, got None")
    check_limit("kill_grace_s", kill_grace_s)
    if not isinstance(warm_spare, bool):
        raise TypeError(f"warm_spare must be True or False, got {warm_spare!r}")
    if isinstance(slope_window, bool) or not isinstance(slope_window, int) or slope_window < 3:
        raise ValueError(f"slope_window must be an int >= 3, got {slope_window!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
        raise ValueError(f"jitter must be a number in [0, 1), got {jitter!r}")
    if start_method not in ("forkserver", "spawn", "fork"):
        raise ValueError(
            f"start_method must be 'forkserver', 'spawn' or 'fork', got {start_method!r}"
        )
    if isinstance(preload, str):
        raise TypeError("preload must be an iterable of module names, not one str")
    if not isinstance(preload, Iterable):
        raise TypeError(
            f"preload must be an iterable of module names, got {type(preload).__name__}"
        )
    preload = tuple(preload)
    if not all(isinstance(name, str) and name for name in preload):
        raise TypeError(f"preload must hold module names, got {preload!r}")
    for name in preload:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ValueError(f"preload module {name!r} cannot be found (misspelt?)")
    if isinstance(plain_types, type):
        raise TypeError(
            f"plain_types must be an iterable of types: plain_types=[{plain_types.__name__}]"
        )
    if not isinstance(plain_types, Iterable):
        raise TypeError(
            f"plain_types must be an iterable of types, got {type(plain_types).__name__}"
        )
    plain = tuple(plain_types)
    if not all(isinstance(kind, type) for kind in plain):
        raise TypeError(f"plain_types must hold types, got {plain!r}")
    try:
        pickle.dumps(plain)
    except Exception as error:  # workers get them by pickle, i.e. by import
        raise TypeError(
            f"plain_types must be importable classes (module level): {error}"
        ) from error

    _check_initializer(options.get("initializer"), options.get("initargs", ()), plain)
    return preload, plain


def _check_initializer(initializer: object, initargs: object, plain: tuple[type, ...]) -> None:
    """``initializer`` runs in each worker at start: importable by name, its args plain data."""
    if initializer is not None:
        if not callable(initializer):
            raise TypeError(f"initializer must be callable or None, got {initializer!r}")
        try:
            pickle.dumps(initializer)
        except Exception as error:  # workers get it by pickle, i.e. by import
            raise TypeError(
                f"initializer must be importable by the workers (a module-level function), "
                f"got {initializer!r}: {error}"
            ) from error
    if not isinstance(initargs, tuple):
        raise TypeError(f"initargs must be a tuple, got {type(initargs).__name__}")
    if initargs and initializer is None:
        raise ValueError("initargs given without an initializer")
    check_plain(initargs, "initargs", plain)
    check_picklable(initargs, "initargs")
