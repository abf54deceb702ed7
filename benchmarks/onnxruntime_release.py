"""onnxruntime: what nativeguard's release costs per request, and what it gives back.

1. Per request, interleaved rounds: ``nativeguard.integrations.onnxruntime.infer``
   (managed session, release step, trim when worth it) against a hand-written
   correct release of the same request (build the session, run, copy the output,
   ``del`` the session, ``malloc_trim`` when the free heap grew by the same
   threshold). Medians per round, their spread, and the ratio (target <= 1.05).
   Two model sizes: 16 MiB (a realistic initializer) and a tiny one, where the
   fixed cost of the machinery shows most. Then the same two requests paired,
   back to back in alternating order, many times (``_paired.py``): the median
   of the per-pair ratios, steadier than round medians on a shared machine.
   With ``--anatomy``, the tiny model's request is also paired with two
   reduced versions of ``infer`` built from the integration's private pieces
   (measurement only, not API): the same argument checks, build, run and
   release step without the Scope around them, and that without the
   metadata copies (``NodeArg`` -> plain data) too; what each part costs.
   It also pairs the hand-written request with itself plus an empty
   ``Scope``: what the Scope's fixed cost becomes right after native work
   (compare ``scope_overhead.py``'s ``scope-empty`` row, measured hot).
2. RSS after 20 sessions of a 16 MiB model each kept in a reference cycle:
   naive, naive + gc.collect(), guarded; each in a fresh interpreter.

Run: ``python benchmarks/onnxruntime_release.py [--rounds 7] [--per-round 10]``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _paired import paired  # benchmarks/_paired.py (this script's directory is on sys.path)

import nativeguard
from nativeguard.integrations import onnxruntime as ngo
from nativeguard.integrations.onnxruntime._demo import make_model
from nativeguard.verify import heap_stats, trim

MB = 1 << 20


def hand_written(path: str, feeds: dict[str, Any]) -> np.ndarray[Any, Any]:
    """The correct release without nativeguard: drop the session, trim like the integration.

    Same rule as the release step, written as a careful user would: with a
    threshold set, read glibc's free heap (``mallinfo2``, through the public
    ``verify.heap_stats``) before and after dropping the session and trim
    when it grew by the threshold; with none (``ngo.trim_threshold()`` is
    None), just drop the session.
    """
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    output = np.array(session.run(None, feeds)[0], copy=True)
    threshold = ngo.trim_threshold()
    if threshold is None:
        del session
        return output
    free_before = heap_stats().free_bytes
    del session
    free_after = heap_stats().free_bytes
    if free_before is not None and free_after is not None and free_after - free_before >= threshold:
        trim()
    return output


def guarded(path: str, feeds: dict[str, Any]) -> np.ndarray[Any, Any]:
    return ngo.infer(path, feeds, providers=["CPUExecutionProvider"])["y"]


def _without_scope(path: str, feeds: dict[str, Any], copies: bool) -> np.ndarray[Any, Any]:
    """``infer``'s own work with no Scope around it: checks, build, run, release step.

    ``copies=False`` also builds the session bare (onnxruntime's ``NodeArg``
    metadata instead of plain copies), counted like ``_build`` counts it.
    """
    from nativeguard.integrations.onnxruntime import _api, _release, _table  # noqa: PLC0415

    model, size = _api._checked_model(path)
    checked = _api._checked_feeds(feeds)
    if copies:
        session = _api._build(model, size, None, ["CPUExecutionProvider"], {})
    else:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        _table.remember_wrapper(session, size)
    try:
        return _api._run(session, checked, None)["y"]
    finally:
        _release.release_session(session, 1.0)
        del session


def _with_empty_scope(request: Callable[[], object]) -> object:
    """An empty ``Scope`` opened and closed, then ``request``: what the Scope costs in place."""
    with nativeguard.Scope():
        pass
    return request()


def anatomy(path: str, pairs: int) -> dict[str, Any]:
    """The tiny request paired with hand-written: infer, and infer without parts of it."""
    feeds = {"x": np.ones((1, 1024), np.float32)}
    variants: dict[str, Callable[[], object]] = {
        "infer": functools.partial(guarded, path, feeds),
        "without the Scope": functools.partial(_without_scope, path, feeds, True),
        "without the Scope and the metadata copies": functools.partial(
            _without_scope, path, feeds, False
        ),
    }
    hand: Callable[[], object] = functools.partial(hand_written, path, feeds)
    variants["hand-written plus an empty Scope (the Scope's cost in place)"] = functools.partial(
        _with_empty_scope, hand
    )
    for fn in (hand, *variants.values()):
        fn()  # warm
    return {name: paired(hand, fn, pairs) for name, fn in variants.items()}


def _round(fn: Callable[[], object], count: int) -> tuple[float, float]:
    """(median wall seconds, median main-thread CPU seconds) per request over ``count``."""
    times = []
    cpu = []
    for _ in range(count):
        began, began_cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - began_cpu)
        times.append(time.perf_counter() - began)
    return statistics.median(times), statistics.median(cpu)


def overhead(path: str, rows: int, rounds: int, per_round: int, pairs: int) -> dict[str, Any]:
    """Interleaved rounds of hand-written and guarded requests: wall and main-thread CPU.

    The CPU column (``time.thread_time`` of the requesting thread) is what
    nativeguard adds on the request's own thread; it moves far less with the
    machine's load than the wall-time ratio does.
    """
    feeds = {"x": np.ones((1, rows), np.float32)}
    for fn in (hand_written, guarded):
        fn(path, feeds)  # warm
    medians: dict[str, list[float]] = {"hand": [], "guarded": []}
    cpu: dict[str, list[float]] = {"hand": [], "guarded": []}
    for index in range(rounds):
        order = [("hand", hand_written), ("guarded", guarded)]
        if index % 2:
            order.reverse()  # interleaved: neither always runs second
        for name, fn in order:
            gc.collect()
            wall, used = _round(functools.partial(fn, path, feeds), per_round)
            medians[name].append(wall)
            cpu[name].append(used)
    ratios = [g / h for g, h in zip(medians["guarded"], medians["hand"], strict=True)]
    gc.collect()
    pair = paired(
        functools.partial(hand_written, path, feeds), functools.partial(guarded, path, feeds), pairs
    )
    return {
        "paired": pair,
        "hand_ms": statistics.median(medians["hand"]) * 1000,
        "hand_spread_ms": (max(medians["hand"]) - min(medians["hand"])) * 1000,
        "guarded_ms": statistics.median(medians["guarded"]) * 1000,
        "guarded_spread_ms": (max(medians["guarded"]) - min(medians["guarded"])) * 1000,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "hand_cpu_us": statistics.median(cpu["hand"]) * 1e6,
        "guarded_cpu_us": statistics.median(cpu["guarded"]) * 1e6,
    }


TWENTY = """
import gc, json, sys
import numpy as np, onnxruntime as ort
from nativeguard import verify
from nativeguard.integrations import onnxruntime as ngo
path, mode = sys.argv[1], sys.argv[2]
x = {"x": np.ones((1, 1024), np.float32)}
class Holder:
    def __init__(self, s):
        self.s = s
        self.cb = lambda: self
rss = lambda: verify.memory_breakdown().rss_bytes
verify.snapshot(); ngo.infer(path, x); verify.trim(); gc.collect(); gc.disable()
start = rss()
for _ in range(20):
    if mode == "guarded":
        with ngo.managed_session(path, release="inline") as s:
            Holder(s); ngo.run(s, x)
    else:
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        Holder(s); s.run(None, x); del s
end = rss()
t = __import__("time").perf_counter(); gc.collect(); gc_s = __import__("time").perf_counter() - t
after_gc = rss(); verify.trim(); after_trim = rss()
print(json.dumps({"start": start, "end": end, "after_gc": after_gc, "after_trim": after_trim,
                  "gc_s": gc_s}))
"""


def twenty(path: str) -> dict[str, dict[str, float]]:
    found = {}
    for mode in ("naive", "guarded"):
        done = subprocess.run(
            [sys.executable, "-c", TWENTY, path, mode],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        found[mode] = json.loads(done.stdout.splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument(
        "--anatomy", action="store_true", help="also pair the tiny request with reduced infers"
    )
    args = parser.parse_args()
    print(
        f"onnxruntime {ort.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as directory:
        cases = [
            ("16 MiB model, trim", 16, ngo.DEFAULT_TRIM_THRESHOLD_BYTES),
            ("16 MiB model, no trim", 16, None),
            ("tiny model (16 KiB)", 0, ngo.DEFAULT_TRIM_THRESHOLD_BYTES),
        ]
        for label, megabytes, threshold in cases:
            path = str(Path(directory) / f"m{megabytes}.onnx")
            if megabytes:
                make_model(path, megabytes)
            else:
                _tiny(path)
            ngo.set_trim_threshold(threshold)
            # A tiny request is ~1 ms: more of them per round for a stable median.
            count = args.per_round if megabytes else args.per_round * 20
            pairs = args.per_round * 6 if megabytes else args.per_round * 150
            result = overhead(path, 1024, args.rounds, count, pairs)
            ngo.set_trim_threshold(ngo.DEFAULT_TRIM_THRESHOLD_BYTES)
            print(
                f"{label}: hand-written {result['hand_ms']:.2f} ms "
                f"(spread {result['hand_spread_ms']:.2f}), guarded {result['guarded_ms']:.2f} ms "
                f"(spread {result['guarded_spread_ms']:.2f}); guarded/hand ratio median "
                f"{result['ratio_median']:.3f} (min {result['ratio_min']:.3f}, "
                f"max {result['ratio_max']:.3f}); main-thread CPU per request "
                f"{result['hand_cpu_us']:.0f} -> {result['guarded_cpu_us']:.0f} us "
                f"(+{result['guarded_cpu_us'] - result['hand_cpu_us']:.0f} us); "
                f"{result['paired'].describe()}"
            )
        if args.anatomy:
            tiny = str(Path(directory) / "m0.onnx")
            ngo.set_trim_threshold(ngo.DEFAULT_TRIM_THRESHOLD_BYTES)
            for name, result in anatomy(tiny, args.per_round * 150).items():
                print(f"tiny model, {name}: {result.describe()}")
        path = str(Path(directory) / "m16.onnx")
        for mode, reading in twenty(path).items():
            print(
                f"20 cycled sessions, {mode}: RSS {reading['start'] / MB:.0f} -> "
                f"{reading['end'] / MB:.0f} MB; after gc.collect() "
                f"({reading['gc_s'] * 1000:.0f} ms) "
                f"{reading['after_gc'] / MB:.0f} MB; after malloc_trim "
                f"{reading['after_trim'] / MB:.0f} MB"
            )


def _tiny(path: str) -> None:
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415 - only this case

    weights = np.ones((1024, 4), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    Path(path).write_bytes(model.SerializeToString())


if __name__ == "__main__":
    main()
