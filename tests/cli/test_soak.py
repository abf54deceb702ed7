"""``nativeguard soak`` end to end: the real command in a subprocess, verdicts, exit codes, files.

The targets live in tests/soak_targets.py: a plain Python leak (1 MiB kept per
call), its clean twin, and the field's SDK pattern (results kept past their
callback) against the bundled SpeechService, next to the same request through
``nativeguard.recognize_once``.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from nativeguard._cli.soak_run import (
    LEAK,
    NO_LEAK,
    PLATEAU,
    Sample,
    SoakUsageError,
    judge_samples,
    load_run,
    resolve,
    run_soak,
    slope_band,
)
from nativeguard.testing import DEFAULT_KEY
from nativeguard.verify import snapshot

TESTS = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def soak(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    return subprocess.run(
        [sys.executable, "-m", "nativeguard", "soak", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=cwd,
    )


def verdicts(data: dict) -> dict[str, str]:
    return {v["metric"]: v["verdict"] for v in data["verdicts"]}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_plain_leak_is_a_leak_with_json_png_and_html(tmp_path: Path) -> None:
    out = tmp_path / "leak.json"
    png = tmp_path / "leak.png"
    page = tmp_path / "leak.html"
    done = soak(
        "soak_targets:plain_leak", "-n", "8", "--warmup", "2", "--json", str(out),
        "--plot", str(png), "--html", str(page),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "verdict: LEAK in rss_bytes, heap_in_use_bytes" in done.stdout
    # Progress lines on stderr (not a terminal: plain lines).
    assert "soak soak_targets:plain_leak: call 10/10 (measured)" in done.stderr

    data = json.loads(out.read_text())
    assert data["format"] == "nativeguard-soak/1"
    assert data["target"] == "soak_targets:plain_leak"
    assert (data["warmup"], data["iterations"], data["completed"]) == (2, 8, True)
    assert data["leaked"] is True
    assert data["leaks"] == ["rss_bytes", "heap_in_use_bytes"]
    assert data["error"] is None
    samples = data["samples"]
    assert [s["phase"] for s in samples] == ["baseline"] + ["warmup"] * 2 + ["measured"] * 8
    assert [s["index"] for s in samples] == list(range(11))
    assert samples[0]["call_s"] is None
    assert all(s["call_s"] > 0 for s in samples[1:])
    for key in (
        "rss_bytes", "heap_in_use_bytes", "heap_retained_bytes", "python_allocated_blocks",
        "native", "instances", "python_threads", "native_threads", "fds", "elapsed_s",
    ):  # fmt: skip
        assert key in samples[0], key
    # 1 MiB kept per call: the heap in use grew by 8 MiB (+-0.5) over the 8 measured calls.
    heap = [s["heap_in_use_bytes"] for s in samples]
    assert abs((heap[-1] - heap[2]) - 8 * MIB) < MIB // 2
    by_metric = {v["metric"]: v for v in data["verdicts"]}
    assert abs(by_metric["heap_in_use_bytes"]["slope"] - MIB) < 64 * 1024
    assert by_metric["heap_in_use_bytes"]["slope_low"] > 0
    assert by_metric["rss_bytes"]["limit"] == 4 * MIB
    assert verdicts(data)["fds"] == NO_LEAK
    assert data["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))

    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (1000, 850)

    parser = _Page()
    parser.feed(page.read_text())
    parser.close()
    assert {"html", "svg", "table", "title"} <= set(parser.tags)
    assert {"verdicts", "chart", "report"} <= parser.ids
    text = " ".join(parser.text)
    assert "LEAK in rss_bytes, heap_in_use_bytes" in text
    assert "heap_in_use_bytes" in text


def test_plain_clean_is_no_leak(tmp_path: Path) -> None:
    out = tmp_path / "clean.json"
    done = soak("soak_targets:plain_clean", "-n", "8", "--json", str(out), "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # -q: no progress
    data = json.loads(out.read_text())
    assert data["leaked"] is False
    assert data["leaks"] == []
    assert verdicts(data)["rss_bytes"] == NO_LEAK
    assert verdicts(data)["heap_in_use_bytes"] == NO_LEAK
    assert "verdict: no leak" in done.stdout


def test_sdk_leak_and_guarded_twin_against_the_local_service(tmp_path: Path) -> None:
    leak_json = tmp_path / "naive.json"
    done = soak(
        "soak_targets:sdk_leak", "--setup", "soak_targets:service", "-n", "4",
        "--warmup", "1", "--settle", "0.4", "--json", str(leak_json), "--label", "naive", "-q",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    naive = json.loads(leak_json.read_text())
    judged = verdicts(naive)
    # Every call keeps one SpeechRecognitionResult and its native handle: -R says leak.
    assert judged["instances:SpeechRecognitionResult"] == LEAK
    assert judged["native_handles:azure_speech:ISpxRecognitionResult"] == LEAK
    results = [
        s["native"]["azure_speech"].get("ISpxRecognitionResult", 0) for s in naive["samples"]
    ]
    assert [b - a for a, b in itertools.pairwise(results[1:])] == [1, 1, 1, 1]
    # The last call's report names the holder chain of what it kept.
    assert naive["report"] is not None
    assert "global kept in module soak_targets" in naive["report_text"]
    assert naive["report"]["native_handles"]["ISpxRecognitionResult"] == 1
    assert DEFAULT_KEY not in leak_json.read_text()  # the setup's config never reaches the output

    clean_json = tmp_path / "guarded.json"
    done = soak(
        "soak_targets:sdk_clean", "--setup", "soak_targets:service", "-n", "4",
        "--warmup", "1", "--json", str(clean_json), "--label", "guarded", "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    guarded = json.loads(clean_json.read_text())
    assert guarded["leaks"] == []
    assert guarded["report"] is None
    first, last = guarded["samples"][1], guarded["samples"][-1]
    assert first["native"] == last["native"]
    assert first["instances"] == last["instances"]

    # --compare: both runs side by side, one chart.
    chart = tmp_path / "compare.svg"
    done = soak("--compare", str(leak_json), str(clean_json), "--plot", str(chart))
    assert done.returncode == 0, done.stderr
    assert "naive" in done.stdout
    assert "guarded" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("verdict"))
    assert row.split()[1:] == ["LEAK", "no", "leak"]
    svg = chart.read_text()
    assert svg.lstrip().startswith("<?xml")
    assert "<svg" in svg


def test_isolated_leak_is_measured_in_the_worker_not_here(tmp_path: Path) -> None:
    out = tmp_path / "isolated.json"
    done = soak("soak_targets:plain_leak", "-n", "6", "--isolated", "--json", str(out), "-q")
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["isolated"] is True
    assert data["leaks"] == ["rss_bytes", "heap_in_use_bytes"]
    assert "in a worker process" in done.stdout


@pytest.mark.usefixtures("fork_server")
def test_isolated_in_process_api_leaves_this_process_alone() -> None:
    import soak_targets

    sys.path.insert(0, str(TESTS))
    before = len(soak_targets.kept)
    run = run_soak("soak_targets:plain_leak", iterations=5, warmup=1, isolated=True)
    assert run.leaks == ("rss_bytes", "heap_in_use_bytes")
    assert len(soak_targets.kept) == before  # the 6 MiB stayed in the worker


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give TARGET (module:function) or --compare"),
        (("nocolon",), "TARGET must be module:function"),
        (("no_such_module_xyz:f",), "cannot import 'no_such_module_xyz'"),
        (("soak_targets:missing",), "has no 'missing'"),
        (("soak_targets:NOT_CALLABLE",), "is a int, not callable"),
        (("soak_targets:plain_clean", "--plot", "x.jpg"), "--plot must end in .png or .svg"),
        (("soak_targets:plain_clean", "--json", "/no/such/dir/x.json"), "does not exist"),
        (("soak_targets:plain_clean", "--compare", "a.json", "b.json"), "not both"),
        (("--compare", "missing-a.json", "missing-b.json"), "cannot read 'missing-a.json'"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    done = soak(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [("-n", "2"), ("-n", "x"), ("--warmup", "-1"), ("--settle", "61"), ("--growth-limit", "0")],
)
def test_bad_numbers_exit_2(args: tuple[str, ...]) -> None:
    done = soak("soak_targets:plain_clean", *args)
    assert done.returncode == 2
    assert "error: argument" in done.stderr


def test_a_target_that_raises_exits_2_and_keeps_the_samples(tmp_path: Path) -> None:
    out = tmp_path / "raises.json"
    done = soak("soak_targets:raises", "--json", str(out), "-q")
    assert done.returncode == 2
    assert "RuntimeError('soak target failed on purpose')" in done.stderr
    assert "in call 1" in done.stderr
    data = json.loads(out.read_text())
    assert data["completed"] is False
    assert "failed on purpose" in data["error"]
    assert [s["phase"] for s in data["samples"]] == ["baseline"]


def test_compare_refuses_a_file_that_is_not_a_soak(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    done = soak("--compare", str(other), str(other))
    assert done.returncode == 2
    assert "not a nativeguard soak JSON file" in done.stderr
    with pytest.raises(SoakUsageError, match="not JSON"):
        (tmp_path / "bad.json").write_text("{")
        load_run(tmp_path / "bad.json")


def test_resolve_refuses_coroutines_and_names_the_argument() -> None:
    with pytest.raises(SoakUsageError, match="--setup 'asyncio:sleep' is a coroutine"):
        resolve("asyncio:sleep", "--setup")
    assert resolve("os.path:join") is os.path.join


def _samples(rss: list[float], handles: list[int]) -> list[Sample]:
    return [
        Sample(
            index=i,
            phase="baseline" if i == 0 else "measured",
            call_s=None if i == 0 else 0.001,
            elapsed_s=float(i),
            rss_bytes=int(value * MIB),
            heap_in_use_bytes=int(value * MIB),
            heap_retained_bytes=0,
            python_allocated_blocks=1000,
            native={"azure_speech": {"ISpxRecognizer": count}},
            instances={},
            python_threads=1,
            native_threads=0,
            fds=5,
        )
        for i, (value, count) in enumerate(zip(rss, handles, strict=True))
    ]


def test_verdict_rules_on_known_series() -> None:
    calls = 20
    steady = [100 + i for i in range(calls + 1)]  # +1 MB per call
    stops = [100 + min(i, 12) for i in range(calls + 1)]  # grows, then flat
    flat = [100.0 + (i % 2) * 0.5 for i in range(calls + 1)]
    every = list(range(calls + 1))  # +1 handle per call
    once = [0] + [1] * calls  # one handle kept once: lazy initialisation
    limit = 4 * MIB

    def by_metric(rss: list[float], handles: list[int]) -> dict[str, str]:
        found = judge_samples(_samples(rss, handles), growth_limit_bytes=limit)
        return {v.metric: v.verdict for v in found}

    assert by_metric(steady, every)["rss_bytes"] == LEAK
    assert by_metric(steady, every)["native_handles:azure_speech:ISpxRecognizer"] == LEAK
    assert by_metric(stops, once)["rss_bytes"] == PLATEAU
    assert by_metric(flat, once)["rss_bytes"] == NO_LEAK
    # A handle kept once (lazy initialisation) grew, then stopped: not a leak, a plateau.
    assert by_metric(flat, once)["native_handles:azure_speech:ISpxRecognizer"] == PLATEAU
    assert by_metric(flat, [1] * (calls + 1))["native_handles:azure_speech:ISpxRecognizer"] == (
        NO_LEAK
    )
    # Below the limit: 3 MB over 20 calls, however steady, is not a leak.
    slow = [100 + 0.15 * i for i in range(calls + 1)]
    assert by_metric(slow, once)["rss_bytes"] == NO_LEAK


def test_slope_band_contains_the_slope_and_narrows_with_more_points() -> None:
    noisy = [2.0 * i + (3 if i % 3 == 0 else -1) for i in range(30)]
    slope, low, high = slope_band(noisy)
    assert low <= slope <= high
    assert abs(slope - 2.0) < 0.3
    wide = slope_band(noisy[:8])
    assert (wide[2] - wide[1]) > (high - low)
    assert slope_band([5.0]) == (0.0, 0.0, 0.0)
    thinned = slope_band([float(i) for i in range(1000)])
    assert thinned == pytest.approx((1.0, 1.0, 1.0))


def test_a_failing_teardown_is_a_warning_and_the_run_stands(tmp_path: Path) -> None:
    out = tmp_path / "teardown.json"
    done = soak(
        "soak_targets:plain_clean", "--setup", "soak_targets:bad_teardown", "-n", "3",
        "--json", str(out), "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning: --setup teardown raised OSError('teardown failed on purpose')" in done.stderr
    data = json.loads(out.read_text())
    assert data["teardown_error"] == "--setup teardown raised OSError('teardown failed on purpose')"
    assert data["completed"] is True


def test_sigint_stops_the_soak_judges_what_ran_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "interrupted.json"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    process = subprocess.Popen(
        [sys.executable, "-m", "nativeguard", "soak", "soak_targets:slow", "-n", "300",
         "--settle", "0", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        assert process.stderr is not None
        while "(measured)" not in process.stderr.readline():
            assert time.monotonic() < deadline, "no measured call within 60 s"
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "interrupted after" in stderr
    assert "Traceback" not in stderr
    data = json.loads(out.read_text())
    assert data["completed"] is False
    measured = [s for s in data["samples"] if s["phase"] == "measured"]
    assert len(measured) >= 3
    assert "verdict: no leak" in stdout


def test_html_escapes_what_it_is_given(tmp_path: Path) -> None:
    page = tmp_path / "escaped.html"
    done = soak("soak_targets:plain_clean", "-n", "3", "--label", "<b>bold</b>", "--html",
                str(page), "-q")  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert "<b>bold</b>" not in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "<script" not in text


def test_run_soak_refuses_wrong_types() -> None:
    with pytest.raises(SoakUsageError, match="TARGET must be module:function, got 123"):
        run_soak(123, iterations=3)  # type: ignore[arg-type]
    with pytest.raises(SoakUsageError, match="iterations must be an int >= 3"):
        run_soak("soak_targets:plain_clean", iterations=True)  # type: ignore[arg-type]
    with pytest.raises(SoakUsageError, match="setup must be a module:function string"):
        run_soak("soak_targets:plain_clean", iterations=3, setup=len)  # type: ignore[arg-type]
    with pytest.raises(SoakUsageError, match="settle_s must be between 0 and 60"):
        run_soak("soak_targets:plain_clean", iterations=3, settle_s=-1)


@pytest.mark.usefixtures("fork_server")
def test_isolated_sdk_leak_is_judged_in_the_worker_and_this_process_stays_flat() -> None:
    sys.path.insert(0, str(TESTS))
    before = snapshot()
    run = run_soak(
        "soak_targets:sdk_leak", setup="soak_targets:service", warmup=1, iterations=3,
        settle_s=0.4, isolated=True,
    )  # fmt: skip
    assert "native_handles:azure_speech:ISpxRecognitionResult" in run.leaks
    assert "instances:SpeechRecognitionResult" in run.leaks
    assert run.report_text is not None
    assert "global kept in module soak_targets" in run.report_text
    assert run.teardown_error is None
    after = snapshot()
    # The recognizers, results and the service lived in the worker, not here.
    assert dict(before.diff(after).native_handles) == {}
    assert dict(before.diff(after).instances) == {}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_rich_bar_and_elsewhere_plain_lines() -> None:
    from nativeguard._cli.soak import _PlainProgress, _progress_printer, _RichProgress

    terminal = _Terminal()
    progress = _progress_printer(terminal, "soak_targets:plain_clean")
    assert isinstance(progress, _RichProgress)
    with progress:
        run = run_soak("soak_targets:plain_clean", warmup=1, iterations=4, progress=progress)
    assert "soak_targets:plain_clean" in terminal.getvalue()
    assert "RSS" in terminal.getvalue()
    assert len(run.samples) == 6

    pipe = io.StringIO()
    plain = _progress_printer(pipe, "soak_targets:plain_clean")
    assert isinstance(plain, _PlainProgress)
    run_soak("soak_targets:plain_clean", warmup=0, iterations=10, progress=plain)
    lines = pipe.getvalue().splitlines()
    assert lines[0].startswith("soak soak_targets:plain_clean: call 0/10 (baseline)")
    assert lines[-1].startswith("soak soak_targets:plain_clean: call 10/10 (measured)")
    assert lines[-1].endswith("no leak so far")


@pytest.mark.timeout(60)
def test_isolated_call_timeout_kills_a_hanging_call_and_exits_2() -> None:
    started = time.monotonic()
    done = soak("soak_targets:hang", "-n", "3", "--isolated", "--call-timeout", "1", "-q")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "call 1 in the worker" in done.stderr
    assert time.monotonic() - started < 30
    refused = soak("soak_targets:hang", "--call-timeout", "1")
    assert refused.returncode == 2
    assert "--call-timeout needs --isolated" in refused.stderr
