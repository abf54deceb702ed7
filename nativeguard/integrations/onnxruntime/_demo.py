"""``nativeguard demo --sdk onnxruntime``: one request naive, guarded and isolated, side by side.

The naive request is the field's pattern: a session per request, kept in a
reference cycle (an object holding the session and a callback back to
itself), outputs used, nothing released. With automatic gc off during that
phase (so no collection at an arbitrary moment decides the outcome) every
session stays; one ``gc.collect()`` afterwards frees them, and RSS stays up
because glibc keeps the freed arena. The guarded request is the same code
inside ``managed_session``; the isolated one is the naive code, unchanged, in
a recycled ``nativeguard.isolate.WorkerPool`` worker. The model is generated
here (a MatMul with one float32 initializer, 16 MiB by default), so the demo
needs the ``onnx`` package besides onnxruntime.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from nativeguard import NativeGuardError
from nativeguard.isolate import WorkerPool
from nativeguard.verify import memory_breakdown, snapshot, trim

from . import _sdk, _table
from ._api import managed_session, run

__all__ = ["PhaseReport", "make_model", "naive_request", "run_demo"]

_MB = 1 << 20
_FLAT_RSS_BYTES = 10 * _MB


def make_model(path: str, megabytes: int = 16) -> None:
    """Write ``y = x @ w`` with a ``megabytes`` MiB float32 initializer to ``path``."""
    import numpy as np  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    cols = max(1, megabytes * _MB // (1024 * 4))
    weights = np.random.default_rng(0).standard_normal((1024, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "demo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with open(path, "wb") as file:
        file.write(model.SerializeToString())


class _Holder:
    """The field's cycle: an object holding the session and a callback back to itself."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.on_done: Callable[[], _Holder] = lambda: self


def _feeds() -> dict[str, Any]:
    import numpy as np  # noqa: PLC0415

    return {"x": np.ones((1, 1024), np.float32)}


def naive_request(model_path: str) -> float:
    """One request as written in the field (module level: a worker imports it)."""
    session = _sdk.sdk().InferenceSession(model_path, providers=["CPUExecutionProvider"])
    _Holder(session)
    return float(session.run(None, _feeds())[0].sum())


def _guarded_request(model_path: str) -> float:
    with managed_session(model_path, providers=["CPUExecutionProvider"], release="inline") as s:
        _Holder(s)
        return float(run(s, _feeds())["y"].sum())


@dataclass
class PhaseReport:
    """One phase: growth from its start, read after it (and its release) finished."""

    name: str
    requests: int
    rss_growth: int
    heap_in_use_growth: int | None
    heap_free_growth: int | None
    sessions: int
    median_ms: float

    @property
    def flat(self) -> bool:
        return self.sessions == 0 and self.rss_growth <= _FLAT_RSS_BYTES

    @property
    def leaking(self) -> bool:
        return self.sessions > 0


@dataclass
class CollectReport:
    """What one gc.collect() after the naive phase gave back, then what a trim did."""

    seconds: float
    sessions_freed: int
    heap_in_use_change: int | None
    rss_change: int
    trim_rss_released: int


def _diff(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


def _phase(name: str, requests: int, request: Callable[[], object]) -> PhaseReport:
    start = memory_breakdown()
    sessions = _table.session_count()[0]
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        request()
        times.append(time.perf_counter() - began)
    end = memory_breakdown()
    return PhaseReport(
        name=name,
        requests=requests,
        rss_growth=end.rss_bytes - start.rss_bytes,
        heap_in_use_growth=_diff(start.native_in_use_bytes, end.native_in_use_bytes),
        heap_free_growth=_diff(start.native_free_bytes, end.native_free_bytes),
        sessions=_table.session_count()[0] - sessions,
        median_ms=statistics.median(times) * 1000 if times else 0.0,
    )


def _collect() -> CollectReport:
    before = memory_breakdown()
    sessions = _table.session_count()[0]
    began = time.perf_counter()
    gc.collect()
    seconds = time.perf_counter() - began
    after = memory_breakdown()
    trimmed = trim()
    return CollectReport(
        seconds=seconds,
        sessions_freed=sessions - _table.session_count()[0],
        heap_in_use_change=_diff(before.native_in_use_bytes, after.native_in_use_bytes),
        rss_change=after.rss_bytes - before.rss_bytes,
        trim_rss_released=trimmed.rss_released_bytes,
    )


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / _MB:+.1f} MB"


def _render(phases: list[PhaseReport], collect: CollectReport, version: str) -> str:
    rows = [("", *(phase.name for phase in phases))]
    rows.append(("live sessions, change", *(f"{phase.sessions:+d}" for phase in phases)))
    rows.append(("RSS growth", *(_mb(phase.rss_growth) for phase in phases)))
    rows.append(("glibc heap in use, growth", *(_mb(p.heap_in_use_growth) for p in phases)))
    rows.append(("glibc heap free (kept), growth", *(_mb(p.heap_free_growth) for p in phases)))
    rows.append(("time per request, median", *(f"{p.median_ms:.0f} ms" for p in phases)))
    width = max(len(row[0]) for row in rows) + 2
    lines = [(f"{r[0]:<{width}}" + "".join(f"{c:>12}" for c in r[1:])).rstrip() for r in rows]
    lines += [
        "",
        f"gc.collect() alone after the naive phase ({collect.seconds * 1000:.0f} ms) freed "
        f"{collect.sessions_freed} sessions and {_mb(collect.heap_in_use_change)} of heap in "
        f"use; RSS changed by {_mb(collect.rss_change)} (glibc keeps the freed arena). "
        f"malloc_trim then gave back {collect.trim_rss_released / _MB:.1f} MB.",
        "Guarded: the same code in managed_session; each release freed the session and "
        "trimmed the heap before the block ended. Isolated: the naive code in a recycled "
        "WorkerPool worker; this process stays flat.",
    ]
    for phase in phases:
        verdict = "leaking" if phase.leaking else ("flat" if phase.flat else "not flat")
        lines.append(f"{phase.name}: {verdict}")
    lines.append(f"(onnxruntime {version})")
    return "\n".join(lines) + "\n"


def run_demo(out: TextIO, *, requests: int, as_json: bool, model_mb: int = 16) -> int:
    """Run the three phases and print them; 0 when naive leaked and the other two stayed flat."""
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise ValueError(f"requests must be an int >= 1, got {requests!r}")
    try:
        ort = _sdk.sdk()
    except ImportError as error:
        sys.stderr.write(f"nativeguard demo --sdk onnxruntime needs onnxruntime: {error}\n")
        return 1
    with tempfile.TemporaryDirectory(prefix="nativeguard-ort-demo-") as directory:
        path = os.path.join(directory, "model.onnx")
        try:
            make_model(path, model_mb)
            snapshot()  # sessions are counted as they are built from now on
            _guarded_request(path)  # warm: onnxruntime's first-use state, our reaper
            trim()
            automatic = gc.isenabled()
            gc.collect()
            gc.disable()
            try:
                naive = _phase("naive", requests, lambda: naive_request(path))
                collect = _collect()
            finally:
                if automatic:
                    gc.enable()
            guarded = _phase("guarded", requests, lambda: _guarded_request(path))
            with WorkerPool(1, max_tasks=max(1, requests // 2), preload=()) as pool:
                isolated = _phase(
                    "isolated", requests, lambda: pool.submit(naive_request, path).result(120)
                )
        except (ImportError, NativeGuardError, RuntimeError, OSError) as error:
            sys.stderr.write(f"nativeguard demo failed: {type(error).__name__}: {error}\n")
            return 1
    phases = [naive, guarded, isolated]
    if as_json:
        document = {
            "onnxruntime": ort.__version__,
            "phases": [{**asdict(p), "flat": p.flat, "leaking": p.leaking} for p in phases],
            "collect": asdict(collect),
        }
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write(_render(phases, collect, ort.__version__))
    out.flush()
    return 0 if naive.leaking and guarded.flat and isolated.flat else 1
