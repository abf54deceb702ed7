"""The fixed cost of nativeguard's machinery per request, with nothing native in it.

What a guarded request pays on top of its SDK work when the release is made of
quick steps (onnxruntime, gRPC, objects without an adapter): the Scope's
bookkeeping, the proxy, the judgement. Measured on a plain Python object, so
the figure is ours alone; in a real request it grows several-fold, because the
SDK's native work leaves the CPU caches cold (the per-SDK benchmarks print
the calling thread's CPU per request: grpc_release.py, onnxruntime_release.py).

Variants, interleaved in shuffled order per round (median of each round's
timeit, then the median and spread of the rounds):

* ``baseline``: make the object, drop it (what a hand-written release does
  besides its SDK calls);
* ``scope-empty``: ``Scope(release="inline")`` and ``close()``, nothing in it;
* ``scope-inline`` / ``scope-background``: a Scope that registers and adopts
  one object released by a quick step, and closes;
* ``background-plain``: the same in background mode with an object no adapter
  knows, which the reaper drops (nothing says its ``__del__`` is cheap);
* ``managed``: ``with nativeguard.managed(obj)`` of a quick-step object, default
  mode (the proxy, its cut, the block);
* ``guarded``: a ``@nativeguard.guarded`` function that returns nothing.

Run: python benchmarks/scope_overhead.py [--rounds 7] [--number 5000]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import timeit
from collections.abc import Callable

import nativeguard
from nativeguard import Scope


class Thing:
    """Stands in for an SDK object whose integration releases it with quick steps."""


class Plain:
    """An object no adapter knows (background mode drops it on the reaper)."""


@nativeguard.quick_step
def _release_thing(obj: object, timeout_s: float) -> None:
    """A release step that is bounded by itself, as onnxruntime's and gRPC's are."""


nativeguard.register_adapter(Thing, [_release_thing], name="benchmark thing")


def baseline() -> None:
    thing = Thing()
    del thing


def scope_empty() -> None:
    Scope(release="inline").close()


def _scope(mode: str) -> None:
    scope = Scope(release=mode)  # type: ignore[arg-type]
    thing = scope.register(Thing())
    scope.adopt(thing)
    del thing
    scope.close()


def scope_inline() -> None:
    _scope("inline")


def scope_background() -> None:
    _scope("background")


def scope_background_plain() -> None:
    scope = Scope(release="background")
    thing = scope.register(Plain())
    scope.adopt(thing)
    del thing
    scope.close()


def managed() -> None:
    with nativeguard.managed(Thing()):
        pass


@nativeguard.guarded
def guarded() -> None:
    return None


VARIANTS: dict[str, Callable[[], None]] = {
    "baseline": baseline,
    "scope-empty": scope_empty,
    "scope-inline": scope_inline,
    "scope-background": scope_background,
    "background-plain": scope_background_plain,
    "managed": managed,
    "guarded": guarded,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=5000)
    args = parser.parse_args()
    for run in VARIANTS.values():  # warm: first registrations, caches
        for _ in range(500):
            run()
    rounds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        order = list(VARIANTS)
        random.shuffle(order)
        for name in order:
            seconds = timeit.timeit(VARIANTS[name], number=args.number)
            rounds[name].append(seconds / args.number * 1e6)
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.2f}; {args.rounds} interleaved rounds x {args.number} calls; "
        "per call: median of rounds [lowest-highest], minus baseline"
    )
    base = statistics.median(rounds["baseline"])
    for name, values in rounds.items():
        median = statistics.median(values)
        print(
            f"  {name:<17} {median:7.2f} us  [{min(values):.2f}-{max(values):.2f}]  "
            f"+{median - base:.2f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
