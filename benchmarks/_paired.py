"""Paired requests: a hand-written request and ours back to back, many times; the ratio per pair.

Why: the per-request difference we measure (tens of microseconds on a
0.5-2 ms request) is smaller than the drift of a shared 2-core machine
between rounds, so round medians of each side can move 10-20 % from one run
to the next. Here each pair runs the two requests next to each other, in
alternating order (neither always runs second, on caches the other left),
and the figure is the median of the per-pair wall-time ratios, with its
quartiles; the calling thread's CPU (``time.thread_time``) is compared the
same way. Used by ``grpc_release.py`` and ``onnxruntime_release.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    pairs: int
    ratio: float
    """Median over pairs of (ours wall time / hand-written wall time)."""
    ratio_q1: float
    ratio_q3: float
    cpu_us: float
    """Median over pairs of (ours - hand-written) calling-thread CPU, microseconds."""
    cpu_q1_us: float
    cpu_q3_us: float

    def describe(self) -> str:
        return (
            f"paired x{self.pairs}: {self.ratio:.3f}x [quartiles {self.ratio_q1:.3f}-"
            f"{self.ratio_q3:.3f}], CPU {self.cpu_us:+.0f} us [{self.cpu_q1_us:+.0f} to "
            f"{self.cpu_q3_us:+.0f}]"
        )


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return q1, median, q3


def paired(hand: Callable[[], object], ours: Callable[[], object], pairs: int) -> Paired:
    """Run ``pairs`` pairs of (hand, ours), alternating which goes first."""
    if pairs < 4:
        raise ValueError(f"pairs must be >= 4 for quartiles, got {pairs}")
    wall = time.perf_counter
    cpu = time.thread_time
    ratios: list[float] = []
    extra_cpu: list[float] = []
    for index in range(pairs):
        order = (hand, ours) if index % 2 else (ours, hand)
        spent: dict[int, tuple[float, float]] = {}
        for fn in order:
            began_wall, began_cpu = wall(), cpu()
            fn()
            spent[id(fn)] = (wall() - began_wall, cpu() - began_cpu)
        hand_wall, hand_cpu = spent[id(hand)]
        ours_wall, ours_cpu = spent[id(ours)]
        ratios.append(ours_wall / hand_wall)
        extra_cpu.append((ours_cpu - hand_cpu) * 1e6)
    r1, r2, r3 = _quartiles(ratios)
    c1, c2, c3 = _quartiles(extra_cpu)
    return Paired(pairs, r2, r1, r3, c2, c1, c3)
