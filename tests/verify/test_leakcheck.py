"""leak_check(): the per-run verdict as pure logic, then real SDK leaks and clean scenarios."""

from __future__ import annotations

import gc
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import azure.cognitiveservices.speech as speechsdk
import pytest

import nativeguard
from nativeguard.verify import _leakcheck, _snapshot
from nativeguard.verify._check import Allow
from nativeguard.verify._leakcheck import LeakCheck, judge, leak_check, series, theil_sen_slope
from nativeguard.verify._snapshot import Counts, Snapshot

MB = 1 << 20


def snap(
    instances=None, handles=None, threads=(), os_threads=1, fds=10, rss=100 * MB, blocks=1000
) -> Snapshot:
    return Snapshot(
        instances=Counts(instances or {}),
        native_handles=Counts(handles or {}),
        python_threads=tuple(sorted(threads)),
        os_threads=os_threads,
        fds=fds,
        rss_bytes=rss,
        allocated_blocks=blocks,
        full_heap=False,
    )


# -- pure logic -------------------------------------------------------------------


def test_theil_sen_ignores_one_jump_and_follows_steady_growth():
    assert theil_sen_slope([0, 1, 2, 3, 4, 5]) == 1.0
    assert theil_sen_slope([0, 10, 10, 10, 10, 10]) == 0.0  # one step, then a plateau
    assert theil_sen_slope([0, 2, 1, 3, 5, 4]) == pytest.approx(0.8, abs=0.3)
    assert theil_sen_slope([7]) == 0.0


def test_series_is_one_delta_per_run_per_metric():
    taken = [
        snap({"A": 1}, {"ISpxA": 1}, ["Main"], os_threads=3, fds=10, rss=100 * MB),
        snap({"A": 2}, {"ISpxA": 1}, ["Main", "w-1"], os_threads=5, fds=11, rss=101 * MB),
        snap({"A": 2, "B": 1}, {}, ["Main", "w-1", "pool-1"], os_threads=6, fds=11),
    ]
    deltas = series(taken, thread_prefixes=["pool-"])
    assert deltas["instances:A"] == (1, 0)
    assert deltas["instances:B"] == (0, 1)
    assert deltas["native_handles:ISpxA"] == (0, -1)
    assert deltas["python_threads"] == (1, 0)  # pool-1 is allowed by prefix
    assert deltas["native_threads"] == (1, 0)  # OS threads beyond the named ones
    assert deltas["fds"] == (1, 0)
    assert deltas["rss_bytes"] == (MB, -MB)
    with pytest.raises(ValueError, match="two snapshots"):
        series(taken[:1])


@pytest.mark.parametrize(
    ("values", "leaks"),
    [
        ((1, 1, 1, 1, 1), True),
        ((5, 5, 6, 5, 5), True),
        ((3, 0, 0, 0, 0), False),  # lazy init in the first measured run
        ((1, 1, 0, 1, 1), False),  # one run gave it back: not growth in every run
        ((8, -8, 1, 1, 1), False),
        ((0, 0, 0, 0, 0), False),
    ],
)
def test_count_metric_leaks_only_if_every_run_grew(values, leaks):
    found, _, _ = judge({"instances:SpeechRecognizer": values})
    assert (found == ("instances:SpeechRecognizer",)) is leaks


@pytest.mark.parametrize(
    ("values", "leaks"),
    [((0, 0, 0, 0, 1), True), ((1, -1, 0, 0, 0), False), ((0, 2, -1, 0, 0), True)],
)
def test_fds_leak_on_any_net_growth(values, leaks):
    assert (judge({"fds": values})[0] == ("fds",)) is leaks


def test_rss_needs_sustained_growth_beyond_the_limit():
    limit = 4 * MB
    steady = tuple([2 * MB] * 5)
    assert judge({"rss_bytes": steady}, rss_growth_limit_bytes=limit)[0] == ("rss_bytes",)
    assert judge({"rss_bytes": steady})[0] == ()  # no limit: not judged
    plateau = (10 * MB, 0, 0, 0, 0)  # one big jump, then flat
    assert judge({"rss_bytes": plateau}, rss_growth_limit_bytes=limit)[0] == ()
    early = (5 * MB, 5 * MB, 0, 0, 0)  # grew, then stopped: a plateau after warm-up
    assert judge({"rss_bytes": early}, rss_growth_limit_bytes=limit)[0] == ()
    small = tuple([MB // 2] * 5)  # 2.5 MB over five runs
    assert judge({"rss_bytes": small}, rss_growth_limit_bytes=limit)[0] == ()


def test_allocated_blocks_are_never_judged():
    assert judge({"allocated_blocks": (500, 500, 500, 500, 500)})[0] == ()


def test_switches_types_and_allowlist():
    deltas = {
        "instances:A": (1, 1, 1),
        "instances:B": (1, 1, 1),
        "native_handles:ISpxA": (1, 1, 1),
        "python_threads": (1, 1, 1),
        "native_threads": (2, 2, 2),
        "fds": (1, 0, 0),
    }
    assert judge(deltas)[0] == tuple(deltas)
    leaks, used, _ = judge(
        deltas,
        types=frozenset({"A"}),
        native_handles=False,
        threads=False,
        fds=False,
    )
    assert leaks == ("instances:A",)
    assert used == ()
    allow = [Allow("A", "a cache"), Allow("fds", "a log"), Allow("native_threads", "timers")]
    leaks, used, _ = judge(deltas, allow=allow)
    assert leaks == ("instances:B", "native_handles:ISpxA", "python_threads")
    assert {a.what for a in used} == {"A", "fds", "native_threads"}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"runs": 1}, "runs must be an int >= 2"),
        ({"warmup": -1}, "warmup must be an int >= 0"),
        ({"rss_growth_mb": 0}, "rss_growth_mb must be finite and > 0"),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        leak_check(lambda: None, **kwargs)


def test_coroutine_functions_are_refused_with_the_fix():
    async def fn() -> None:
        pass

    with pytest.raises(TypeError, match=r"asyncio\.run\(fn\(\)\)"):
        leak_check(fn)


# -- against the real SDK ---------------------------------------------------------


def test_one_sdk_object_per_run_is_caught_with_the_defaults(speech_service, wav_path):
    kept: list = []

    def leaky() -> None:
        kept.append(
            speechsdk.SpeechRecognizer(
                speech_service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
            )
        )

    result = leak_check(leaky)
    try:
        assert isinstance(result, LeakCheck)
        assert result.leaked
        assert result.deltas["instances:SpeechRecognizer"] == (1, 1, 1, 1, 1)
        assert "instances:SpeechRecognizer" in result.leaks
        assert "native_handles:ISpxRecognizer" in result.leaks
        assert "fds" in result.leaks  # each recognizer holds its WAV file open
        assert result.report is not None
        assert result.report.instances["SpeechRecognizer"] == 5
        text = str(result)
        assert "instances:SpeechRecognizer: +1 +1 +1 +1 +1  <- leak" in text
        assert "list" in str(result.report)  # what holds them
        assert result.to_dict()["deltas"]["instances:SpeechRecognizer"] == [1, 1, 1, 1, 1]
    finally:
        kept.clear()


def test_lazy_initialisation_is_not_a_leak(speech_service, wav_path):
    cache: list = []

    def cached() -> None:
        if not cache:
            cache.append(speechsdk.SpeechConfig(subscription="k", region="westus"))

    result = leak_check(cached, warmup=0, runs=3)
    cache.clear()
    assert not result.leaked, str(result)
    assert result.deltas["instances:SpeechConfig"][0] == 1


def test_project_clean_scenarios_have_no_false_positive(speech_service, wav_path):
    config = speech_service.speech_config()

    def recognize() -> None:
        with nativeguard.managed_recognizer(
            config, speechsdk.audio.AudioConfig(filename=wav_path)
        ) as recognizer:
            assert recognizer.recognize_once_async().get().text

    def transcribe() -> None:
        assert nativeguard.transcribe(config, wav_path).segments

    def synthesize() -> None:
        assert nativeguard.synthesize(config, "hello there").duration_s > 0

    @nativeguard.guarded
    def naive_pattern_guarded() -> None:
        recognizer = speechsdk.SpeechRecognizer(
            config, speechsdk.audio.AudioConfig(filename=wav_path)
        )
        done = threading.Event()
        recognizer.recognized.connect(lambda evt: recognizer.properties)  # closure cycle
        recognizer.session_stopped.connect(lambda evt: done.set())
        recognizer.recognize_once_async().get()

    def executor() -> None:
        with nativeguard.managed_executor(max_workers=2) as pool:
            assert sum(pool.map(abs, range(-3, 3))) == 9

    for scenario in (recognize, transcribe, synthesize, naive_pattern_guarded, executor):
        result = leak_check(scenario)
        assert not result.leaked, f"{scenario.__name__}: {result}"


FIRST_USE = textwrap.dedent(
    """
    import threading
    import azure.cognitiveservices.speech as speechsdk
    from nativeguard.testing import SpeechService, write_wav
    from nativeguard.verify._check import check
    from nativeguard.verify._snapshot import snapshot

    wav = write_wav({wav!r}, 3.0)
    with SpeechService() as service:
        before = snapshot()
        config = service.speech_config()
        audio = speechsdk.audio.AudioConfig(filename=wav)
        r = speechsdk.SpeechRecognizer(config, audio)
        r.recognize_once_async().get()
        t = speechsdk.transcription.ConversationTranscriber(config, audio)
        done = threading.Event()
        t.session_stopped.connect(lambda evt: done.set())
        t.start_transcribing_async().get()
        done.wait(10)
        t.stop_transcribing_async().get()
        t.session_stopped.disconnect_all()
        s = speechsdk.SpeechSynthesizer(config, audio_config=None)
        s.speak_text_async("first use").get()
        tr = speechsdk.translation.TranslationRecognizer(
            service.translation_config("de"), audio_config=audio
        )
        tr.recognize_once_async().get()
        del r, t, s, tr, audio, config
        print("REPORT", check(before))
    """
)


def test_first_sdk_use_in_a_process_leaves_nothing_behind(tmp_path):
    """Why the plugin's session warm-up needs no SDK run: measured in a fresh interpreter."""
    script = FIRST_USE.format(wav=str(tmp_path / "a.wav"))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "REPORT None" in done.stdout, done.stdout + done.stderr


# -- cost: settle only while counts move (issue 11) -----------------------------------


class SleepLedger:
    """Stands in for the ``time`` module of _leakcheck/_snapshot: adds up the sleeps asked for."""

    def __init__(self) -> None:
        self.asked = 0.0

    def sleep(self, seconds: float) -> None:
        self.asked += seconds
        time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()


def test_a_leak_costs_a_short_look_per_run_not_a_settle(monkeypatch: pytest.MonkeyPatch):
    ledger = SleepLedger()
    monkeypatch.setattr(_leakcheck, "time", ledger)
    monkeypatch.setattr(_snapshot, "time", ledger)
    kept: list = []

    def leaky() -> None:
        kept.append(speechsdk.SpeechConfig(subscription="k", region="westus"))

    try:
        result = leak_check(leaky, warmup=3, runs=5)
        assert result.leaked
        assert result.deltas["instances:SpeechConfig"] == (1, 1, 1, 1, 1)
        assert "instances:SpeechConfig" in result.leaks
        assert len(kept) == 8  # independently: every run really ran and kept one
    finally:
        kept.clear()
    # One 10 ms look per reading when nothing moves (6 readings), not a quiet period
    # of settle_s / 2 = 0.5 s per run as before.
    assert ledger.asked <= 6 * 2 * _leakcheck.STEADY_INTERVAL_S


def test_descriptors_closed_late_are_settled_before_they_are_called_a_leak():
    closing: queue.Queue[tuple[float, int]] = queue.Queue()

    def closer() -> None:  # one thread for all runs: no thread growth from the test itself
        while (item := closing.get()) is not None:
            due, fd = item
            time.sleep(max(0.0, due - time.monotonic()))
            os.close(fd)

    worker = threading.Thread(target=closer, name="late-closer")
    worker.start()
    opened: list[int] = []

    def late_closing() -> None:
        for fd in os.pipe():
            opened.append(fd)
            closing.put((time.monotonic() + 0.1, fd))  # closed 0.1 s after the run

    try:
        result = leak_check(late_closing, warmup=1, runs=3, settle_s=2.0)
    finally:
        closing.put(None)  # type: ignore[arg-type]
        worker.join()
    assert len(opened) == 8
    assert "fds" not in result.leaks, str(result)
    assert sum(result.deltas["fds"]) <= 0


def test_a_cycle_per_run_is_a_leak_even_when_the_collector_frees_each_one():
    """Issue 9 for leak_check: young cycles die in automatic collections between readings."""
    made: list[weakref.ref] = []

    def cycle_per_run() -> None:
        config = speechsdk.SpeechConfig(subscription="k", region="westus")
        box: list[object] = [config]
        box.append(box)  # a reference cycle holding the config
        made.append(weakref.ref(config))

    thresholds = gc.get_threshold()
    gc.collect()
    gc.set_threshold(1, 10, 10)  # generation 0 collected on (almost) every allocation
    try:
        result = leak_check(cycle_per_run, warmup=1, runs=4, rss_growth_mb=None)
    finally:
        gc.set_threshold(*thresholds)
    assert len(made) == 5
    assert all(ref() is None for ref in made)  # the collector did free every one
    assert result.deltas["instances:SpeechConfig"] == (1, 1, 1, 1)
    assert "instances:SpeechConfig" in result.leaks
    assert result.report is not None
    assert result.report.collected == {"SpeechConfig": 4, "PropertyCollection": 4}
    assert not result.report.objects  # none alive: no other config is described instead
