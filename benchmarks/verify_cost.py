"""What verification costs, side by side with its peers, in one run.

Part 1, "what grew since the baseline?" on a big heap (``--objects``, default
200k unrelated live objects plus a few SDK objects), each tool doing the
after-step of a before/after comparison (its baseline taken beforehand):

- nativeguard: ``snapshot()`` + ``diff`` + ``leaked()`` (registry counts, the
  SDK's handle table, threads by id, fds, RSS);
- objgraph: ``typestats()`` (a full heap walk) and the per-type difference;
- pympler: ``SummaryTracker.diff()`` (walks and sizes every object);
- tracemalloc: ``take_snapshot()`` + ``compare_to(before, "lineno")``
  (tracing was started before the heap was built, as it must be).

Part 2, a refleak-style check of a leaking Speech SDK function (a
recognition whose result is kept, against the bundled ``SpeechService``)
and of a clean one: ``leak_check(fn, warmup=3, runs=5)`` against
pytest-memray's ``@pytest.mark.limit_leaks`` on a test running ``fn`` the
same 8 times (under ``PYTHONMALLOC=malloc``, as memray's docs ask for leak
checks). Both run as tests in fresh pytest processes with the same conftest;
the time is the test's whole protocol (setup, call, memray's analysis of its
capture file, teardown), SDK and service start-up excluded (a warm-up test
runs first). The verdict is the test's outcome (failed = leak found).

Rounds are interleaved (the order of the tools alternates per round); each
row shows the median, the spread (min-max) and the ratio to nativeguard's
median. Needs the ``bench`` extra (objgraph, pympler, pytest-memray).

Run: python benchmarks/verify_cost.py [--objects N] [--rounds N] [--skip-heap] [--skip-leak-check]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import azure.cognitiveservices.speech as speechsdk


class Unrelated:
    """A gc-tracked application object, like the rows of a cache."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


def row(name: str, samples: list[float], reference: float, unit: str = "ms") -> str:
    scale = 1000.0 if unit == "ms" else 1.0
    med = statistics.median(samples)
    return (
        f"| {name} | {med * scale:,.2f} {unit} | {min(samples) * scale:,.2f}-"
        f"{max(samples) * scale:,.2f} | {med / reference:,.1f}x |"
    )


# -- part 1: one comparison on a big heap ---------------------------------------------


def heap_part(objects: int, rounds: int) -> list[str]:
    import objgraph  # noqa: PLC0415 - bench extra
    from pympler import tracker  # noqa: PLC0415 - bench extra

    from nativeguard.verify import _registry  # noqa: PLC0415
    from nativeguard.verify._snapshot import snapshot  # noqa: PLC0415

    tracemalloc.start()
    heap = [Unrelated(i) for i in range(objects)]
    sdk = [speechsdk.SpeechConfig(subscription="key", region="westus") for _ in range(3)]
    gc.collect()
    tracked = len(gc.get_objects())
    started = time.perf_counter()
    _registry.enable()
    enable_s = time.perf_counter() - started

    ng_before = snapshot()
    og_before = objgraph.typestats()
    tm_before = tracemalloc.take_snapshot()
    pympler_tracker = tracker.SummaryTracker()

    def nativeguard_step() -> object:
        return ng_before.diff(snapshot()).leaked()

    def objgraph_step() -> object:
        after = objgraph.typestats()
        return {k: v - og_before.get(k, 0) for k, v in after.items() if v > og_before.get(k, 0)}

    def pympler_step() -> object:
        return pympler_tracker.diff()

    def tracemalloc_step() -> object:
        return tracemalloc.take_snapshot().compare_to(tm_before, "lineno")[:10]

    tools: list[tuple[str, Callable[[], object]]] = [
        ("nativeguard snapshot + diff", nativeguard_step),
        ("objgraph typestats + diff", objgraph_step),
        ("pympler SummaryTracker.diff", pympler_step),
        ("tracemalloc take_snapshot + compare_to", tracemalloc_step),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _ in tools}
    for number in range(rounds):
        order = tools if number % 2 == 0 else list(reversed(tools))
        for name, step in order:
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
    tracemalloc.stop()
    reference = statistics.median(samples[tools[0][0]])
    lines = [
        f"Heap: {tracked:,} gc-tracked objects ({objects:,} unrelated, {len(sdk)} SDK configs), "
        f"tracemalloc tracing; {rounds} interleaved rounds. Registry enable (once, one heap "
        f"walk): {enable_s * 1000:.0f} ms.",
        "",
        "| after-step of a before/after comparison | median | spread | ratio |",
        "|---|---|---|---|",
    ]
    lines += [row(name, samples[name], reference) for name, _ in tools]
    del heap, sdk
    return lines


# -- part 2: leak_check vs pytest-memray -------------------------------------------------

CONFTEST = textwrap.dedent(
    """
    import json
    import os
    import time

    import pytest

    from nativeguard.testing import SpeechService, write_wav

    TIMES = {}
    OUTCOMES = {}


    @pytest.fixture(scope="session")
    def service():
        with SpeechService() as svc:
            yield svc


    @pytest.fixture(scope="session")
    def wav(tmp_path_factory):
        return write_wav(tmp_path_factory.mktemp("audio") / "a.wav", 1.0)


    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        start = time.perf_counter()
        yield
        TIMES[item.name] = time.perf_counter() - start


    def pytest_runtest_logreport(report):
        if report.when == "call":
            OUTCOMES[report.nodeid.split("::")[-1]] = report.outcome


    def pytest_sessionfinish(session):
        with open(os.environ["VERIFY_BENCH_OUT"], "w") as out:
            json.dump({"times": TIMES, "outcomes": OUTCOMES}, out)
    """
)

TESTS = textwrap.dedent(
    """
    import azure.cognitiveservices.speech as speechsdk
    import pytest

    from nativeguard.verify import leak_check, snapshot

    KEPT = []
    WARMUP, RUNS = 3, 5


    def recognize(service, wav):
        r = speechsdk.SpeechRecognizer(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
        )
        return r.recognize_once_async().get()


    def leaky(service, wav):
        KEPT.append(recognize(service, wav))  # the result (and its native half) is kept


    def clean(service, wav):
        assert recognize(service, wav).text


    def test_0_warm_up(service, wav):
        clean(service, wav)
        snapshot()  # the registry's one heap walk, once per process as in the plugin


    @pytest.mark.limit_leaks("LIMIT", current_thread_only=True)
    def test_memray_leaky(service, wav):
        for _ in range(WARMUP + RUNS):
            leaky(service, wav)


    @pytest.mark.limit_leaks("LIMIT", current_thread_only=True)
    def test_memray_clean(service, wav):
        for _ in range(WARMUP + RUNS):
            clean(service, wav)


    def test_nativeguard_leaky(service, wav):
        result = leak_check(lambda: leaky(service, wav), warmup=WARMUP, runs=RUNS)
        assert not result.leaked, str(result)


    def test_nativeguard_clean(service, wav):
        result = leak_check(lambda: clean(service, wav), warmup=WARMUP, runs=RUNS)
        assert not result.leaked, str(result)
    """
)


def run_session(directory: Path, tool: str, limit: str) -> dict[str, dict[str, object]]:
    out = directory / f"out-{tool}.json"
    env = dict(os.environ, VERIFY_BENCH_OUT=str(out))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x" if False else ""]
    args = [a for a in args if a]
    if tool == "memray":
        env["PYTHONMALLOC"] = "malloc"
        args += ["--memray", "--hide-memray-summary", "-k", "warm_up or memray"]
    else:
        args += ["-k", "warm_up or nativeguard"]
    (directory / "test_verify_bench.py").write_text(TESTS.replace("LIMIT", limit))
    subprocess.run(args, cwd=directory, env=env, capture_output=True, timeout=600, check=False)
    data: dict[str, dict[str, object]] = json.loads(out.read_text())
    return data


def leak_check_part(rounds: int, limit: str) -> list[str]:
    samples: dict[str, list[float]] = {}
    verdicts: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "conftest.py").write_text(CONFTEST)
        for number in range(rounds):
            tools = ["nativeguard", "memray"] if number % 2 == 0 else ["memray", "nativeguard"]
            for tool in tools:
                data = run_session(directory, tool, limit)
                times, outcomes = data["times"], data["outcomes"]
                for kind in ("leaky", "clean"):
                    name = f"test_{tool}_{kind}"
                    if name in times:
                        samples.setdefault(name, []).append(float(str(times[name])))
                        verdict = "leak" if outcomes.get(name) == "failed" else "no leak"
                        verdicts.setdefault(name, set()).add(verdict)
    lines = [
        f"leak_check(fn, warmup=3, runs=5) vs pytest-memray limit_leaks({limit!r}) on a test "
        f"running fn 8 times; {rounds} interleaved rounds, a fresh pytest process per tool "
        "and round.",
        "",
        "| function | tool | verdict | median | spread | ratio to pytest-memray |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("leaky", "clean"):
        memray = samples.get(f"test_memray_{kind}", [float("nan")])
        reference = statistics.median(memray)
        for tool in ("nativeguard", "memray"):
            name = f"test_{tool}_{kind}"
            values = samples.get(name)
            if not values:
                lines.append(f"| {kind} | {tool} | did not run | | | |")
                continue
            label = "leak_check" if tool == "nativeguard" else "pytest-memray limit_leaks"
            verdict = "/".join(sorted(verdicts[name]))
            med = statistics.median(values)
            lines.append(
                f"| {kind} | {label} | {verdict} | {med:.2f} s | {min(values):.2f}-"
                f"{max(values):.2f} s | {med / reference:.2f}x |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memray-limit", default="20 KB")
    parser.add_argument("--skip-heap", action="store_true")
    parser.add_argument("--skip-leak-check", action="store_true")
    args = parser.parse_args()
    print(
        f"# verify_cost: Python {platform.python_version()}, Speech SDK "
        f"{speechsdk.__version__}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    if not args.skip_heap:
        print()
        print("\n".join(heap_part(args.objects, args.rounds)))
    if not args.skip_leak_check:
        print()
        print("\n".join(leak_check_part(args.rounds, args.memray_limit)))


if __name__ == "__main__":
    main()
