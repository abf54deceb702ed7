"""The pytest plugin, run on inner test sessions with pytester.

Sessions that touch the SDK run in a subprocess (``runpytest_subprocess``):
the native core and the registry are process-wide, and the inner session must
not share them with this one. Usage errors are checked in-process (nothing
runs). The subprocesses load the plugin through its ``pytest11`` entry point,
as a fresh install does: no ``-p`` anywhere.
"""

from __future__ import annotations

import importlib.metadata
import re
import textwrap

import pytest

CONFTEST = textwrap.dedent(
    """
    import pytest
    from nativeguard.testing import SpeechService, write_wav


    @pytest.fixture(scope="session")
    def wav(tmp_path_factory):
        return write_wav(tmp_path_factory.mktemp("audio") / "a.wav", 1.5)


    @pytest.fixture
    def service():
        with SpeechService() as svc:
            yield svc
    """
)

LEAKS = textwrap.dedent(
    """
    import gc
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import azure.cognitiveservices.speech as speechsdk
    from azure.identity import ManagedIdentityCredential

    import nativeguard
    from nativeguard.testing import TokenService

    # As in nativeguard's own naive-pattern tests: no collection at an
    # arbitrary moment decides whether the closure cycle is still there.
    gc.disable()

    SCOPE = "https://cognitiveservices.azure.com/.default"
    HISTORY = []
    CLIENTS = []
    POOLS = {}


    def transcriber(service, wav):
        return speechsdk.transcription.ConversationTranscriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
        )


    def run(t):
        done = threading.Event()
        t.session_stopped.connect(lambda evt: done.set())
        t.start_transcribing_async().get()
        assert done.wait(15)


    def test_closure_captures_transcriber(service, wav):
        t = transcriber(service, wav)
        t.transcribed.connect(lambda evt: print(t, evt.result.text))
        run(t)
        t.stop_transcribing_async().get()


    def test_closure_captures_transcriber_guarded(service, wav):
        with nativeguard.managed_transcriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
        ) as t:
            t.transcribed.connect(lambda evt: print(t, evt.result.text))
            run(t)


    def test_kept_result(service, wav):
        t = transcriber(service, wav)
        t.transcribed.connect(lambda evt: HISTORY.append(evt.result))
        run(t)
        t.stop_transcribing_async().get()


    def test_kept_result_guarded(service, wav):
        kept = []
        with nativeguard.managed_transcriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
        ) as t:
            t.transcribed.connect(lambda evt: kept.append(evt.result))
            run(t)
        assert kept[0].text


    def test_unclosed_credential():
        with TokenService() as tokens, tokens.patch_environ():
            credential = ManagedIdentityCredential()
            assert credential.get_token(SCOPE).token
            CLIENTS.append(credential)


    def test_unclosed_credential_guarded():
        with TokenService() as tokens, tokens.patch_environ():
            with nativeguard.managed_credential(ManagedIdentityCredential()) as credential:
                assert credential.get_token(SCOPE).token


    def test_executor_never_shut_down():
        pool = POOLS.setdefault("work", ThreadPoolExecutor(max_workers=2))
        assert list(pool.map(abs, [-1, -2])) == [1, 2]


    def test_executor_guarded():
        with nativeguard.managed_executor(max_workers=2) as pool:
            assert list(pool.map(abs, [-1, -2])) == [1, 2]
    """
)


def test_entry_point_registers_the_plugin():
    points = importlib.metadata.entry_points(group="pytest11")
    assert {(p.name, p.value) for p in points} >= {("nativeguard", "nativeguard.pytest_plugin")}


def test_leaky_tests_fail_naming_type_and_holder_and_guarded_ones_pass(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaks=LEAKS)
    result = pytester.runpytest_subprocess("--nativeguard", "-p", "no:cacheprovider")
    # Each leaking test is reported FAILED (not passed plus an error at teardown).
    result.assert_outcomes(passed=4, failed=4)
    failed = {
        line.split("::")[1].split(" ")[0]
        for line in result.outlines
        if line.startswith("FAILED test_leaks.py::")
    }
    assert failed == {
        "test_closure_captures_transcriber",
        "test_kept_result",
        "test_unclosed_credential",
        "test_executor_never_shut_down",
    }
    assert "ERROR at teardown" not in result.stdout.str()
    sections = _failure_sections(result.outlines)
    closure = sections["test_closure_captures_transcriber"]
    assert "ConversationTranscriber (unreachable: gc.collect() would free it)" in closure
    assert "cell of test_closure_captures_transcriber.<locals>.<lambda> (variable t)" in closure
    assert "ISpxRecognizer +1" in closure
    kept = sections["test_kept_result"]
    assert "ConversationTranscriptionResult" in kept
    assert "global HISTORY in module test_leaks" in kept
    credential = sections["test_unclosed_credential"]
    assert "ManagedIdentityCredential" in credential
    assert "global CLIENTS in module test_leaks" in credential
    executor = sections["test_executor_never_shut_down"]
    assert "ThreadPoolExecutor" in executor
    assert "POOLS" in executor
    assert re.search(r"new threads: ThreadPoolExecutor-\d+_0", executor)  # its worker
    summary = [line for line in result.outlines if line.startswith("nativeguard:")]
    assert summary
    assert "8 test(s) checked, 4 leaked" in summary[-1]


def _failure_sections(lines: list[str]) -> dict[str, str]:
    """``{test name: text}`` of each ``____ test_name ____`` failure section."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        header = re.fullmatch(r"_{3,} (\S+) _{3,}", line)
        if header:
            current = sections.setdefault(header.group(1), [])
        elif line.startswith(("====", "____")):
            current = None
        elif current is not None:
            current.append(line)
    return {name: "\n".join(text) for name, text in sections.items()}


REPEAT = textwrap.dedent(
    """
    import logging
    import textwrap

    import azure.cognitiveservices.speech as speechsdk
    import pytest

    CACHE = []
    KEPT = []


    def config():
        return speechsdk.SpeechConfig(subscription="k", region="westus")


    def test_cached_once():
        if not CACHE:
            CACHE.append(config())


    def test_leaks_one_per_run():
        KEPT.append(config())


    @pytest.mark.no_leaks(repeat=(1, 3))
    def test_marker_repeat_leaks():
        KEPT.append(config())


    def test_raises_and_logs_each_run():
        kept_local = config()
        with pytest.raises(TypeError) as excinfo:  # a cycle through this frame
            textwrap.dedent(kept_local)  # raises in textwrap's frame, which holds it too
        logging.getLogger("app").warning("failed: %s", excinfo.value)  # pytest keeps the record
    """
)


def test_repeat_mode_catches_one_object_per_run_and_forgives_lazy_init(pytester):
    pytester.makepyfile(test_repeat=REPEAT)
    quick = ("-p", "no:cacheprovider", "--nativeguard-settle=0.3")
    # One run cannot tell a lazily filled cache from a leak...
    once = pytester.runpytest_subprocess(*quick, "--nativeguard", "-k", "cached_once")
    once.assert_outcomes(failed=1)
    once.stdout.fnmatch_lines(["*live instances: *SpeechConfig +1*"])
    # ...refleak-style runs can: only growth in every measured run is a leak.
    result = pytester.runpytest_subprocess(*quick, "--nativeguard", "--nativeguard-repeat=2:4")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_repeat.py::test_leaks_one_per_run leaked",
            "leak_check: leak in *instances:SpeechConfig* (warmup 2, 4 measured runs*",
            "*instances:SpeechConfig: +1 +1 +1 +1  <- leak",
            "*held by: SpeechConfig <- list <- global KEPT in module test_repeat",
            "*test_repeat.py::test_marker_repeat_leaks leaked",
            "leak_check: * (warmup 1, 3 measured runs*",  # the marker's own repeat wins
            "nativeguard: 4 test(s) checked, 4 refleak-style, 2 leaked*",
        ]
    )
    assert "test_cached_once leaked" not in result.stdout.str()
    # The option alone checks only tests that ask for it (marker or fixture).
    marked = pytester.runpytest_subprocess(*quick, "--nativeguard-repeat=2:4")
    marked.assert_outcomes(passed=3, failed=1)
    marked.stdout.fnmatch_lines(["FAILED *test_marker_repeat_leaks*"])


FIXTURE_AND_MARKER = textwrap.dedent(
    """
    import logging
    import threading

    import azure.cognitiveservices.speech as speechsdk
    import pytest

    from nativeguard.verify import Allow

    KEPT = []
    STOP = threading.Event()


    class Client:
        pass


    def config():
        return speechsdk.SpeechConfig(subscription="k", region="westus")


    def test_fixture_fails_a_leak(nativeguard):
        KEPT.append(config())
        report = nativeguard.check()
        assert report is not None and report.instances["SpeechConfig"] == 1


    def test_fixture_allowlist_with_reason(nativeguard):
        nativeguard.allow("SpeechConfig", "cached by the client for the process")
        nativeguard.allow("PropertyCollection", "the cached config's properties")
        nativeguard.allow("ISpxSpeechConfig", "the cached config's native half")
        nativeguard.allow("ISpxNamedProperties", "its native property bag")
        KEPT.append(config())


    CACHED = [
        Allow(name, "a config cached for the process")
        for name in ["SpeechConfig", "PropertyCollection", "ISpxSpeechConfig"]
        + ["ISpxNamedProperties"]
    ]


    @pytest.mark.no_leaks(allow=CACHED)
    def test_marker_allowlist():
        KEPT.append(config())


    @pytest.mark.no_leaks(types=[Client])
    def test_marker_tracks_user_types():
        KEPT.append(Client())


    @pytest.mark.no_leaks(threads=False)
    def test_marker_switch_threads_off():
        threading.Thread(target=STOP.wait, name="left-running", daemon=True).start()


    @pytest.mark.no_leaks
    def test_pytest_raises_cycle_is_the_tests_own():
        kept_local = config()  # the frame holds excinfo, whose traceback holds the frame
        with pytest.raises(ValueError) as excinfo:
            raise ValueError("boom")
        assert excinfo.type is ValueError
        assert kept_local


    @pytest.mark.no_leaks
    def test_logged_exception_is_pytests_until_its_teardown():
        kept_local = config()
        try:
            raise ValueError("boom")
        except ValueError as error:
            logging.getLogger("app").warning("failed: %s", error)  # the record keeps the frame
        assert kept_local


    @pytest.mark.no_leaks
    def test_body_failure_is_not_judged_again():
        KEPT.append(config())
        assert False, "the test's own failure"


    def test_unchecked_leak_passes():
        KEPT.append(config())


    def teardown_module():
        STOP.set()
    """
)


def test_fixture_and_marker(pytester):
    pytester.makepyfile(test_fm=FIXTURE_AND_MARKER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--nativeguard-settle=0.3")
    result.assert_outcomes(passed=6, failed=3)
    text = result.stdout.str()
    assert "ERROR at teardown" not in text
    assert "FAILED test_fm.py::test_fixture_fails_a_leak" in text
    assert "FAILED test_fm.py::test_marker_tracks_user_types" in text
    assert "Client <- list <- global KEPT in module test_fm" in text
    assert "the test's own failure" in text
    assert "test_body_failure_is_not_judged_again leaked" not in text


@pytest.mark.parametrize(
    ("args", "source", "message"),
    [
        (["--nativeguard-repeat=3"], "", "--nativeguard-repeat takes WARMUP:RUNS"),
        (["--nativeguard-repeat=a:b"], "", "e.g. 3:5"),
        (["--nativeguard-repeat=3:1"], "", "RUNS >= 2"),
        (["--nativeguard-settle=-1"], "", "--nativeguard-settle takes a number of seconds"),
        ([], "@pytest.mark.no_leaks('SpeechRecognizer')", "keyword arguments only"),
        ([], "@pytest.mark.no_leaks(handles=False)", "unknown argument(s) handles"),
        ([], "@pytest.mark.no_leaks(threads='no')", "threads=...) takes True or False"),
        ([], "@pytest.mark.no_leaks(types=[3])", "types=...) takes type names or classes"),
        ([], "@pytest.mark.no_leaks(types=[int])", "do not support weak references"),
        ([], "@pytest.mark.no_leaks(repeat=(1, 1))", "no_leaks(repeat=) takes WARMUP:RUNS"),
        ([], "@pytest.mark.no_leaks(rss_growth_mb=0)", "rss_growth_mb=...) takes a number"),
        ([], "@pytest.mark.no_leaks(allow=['fds'])", "allow=...): allow= takes Allow(what"),
    ],
)
def test_misuse_is_a_usage_error_with_a_fix(pytester, args, source, message):
    pytester.makepyfile(test_misuse=f"import pytest\n\n{source}\ndef test_x():\n    pass\n")
    result = pytester.runpytest_inprocess(*args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_options_and_marker_are_documented(pytester):
    help_text = pytester.runpytest_inprocess("--help").stdout.str()
    assert "nativeguard: leaked Speech SDK objects" in help_text
    for option in ("--nativeguard ", "--nativeguard-repeat=WARMUP:RUNS", "--nativeguard-settle"):
        assert option in help_text
    markers = pytester.runpytest_inprocess("--markers").stdout.str()
    assert "@pytest.mark.no_leaks(types=None, native_handles=True, threads=True" in markers


CYCLE = textwrap.dedent(
    """
    import gc
    import threading
    import time
    import weakref

    import azure.cognitiveservices.speech as speechsdk

    from nativeguard.testing import SpeechService


    def collect_automatically():
        # An automatic (allocation-triggered) full collection, as one may run at
        # any moment: thresholds of 1 make the next allocations start it.
        thresholds = gc.get_threshold()
        gc.set_threshold(1, 1, 1)
        junk = [[] for _ in range(3)]
        gc.set_threshold(*thresholds)
        del junk


    def synthesize_naively(service):
        s = speechsdk.SpeechSynthesizer(service.speech_config(), audio_config=None)
        events = []
        done = threading.Event()

        def on_completed(evt):
            print(s)  # the closure captures the synthesizer: a cycle
            events.append(weakref.ref(evt))
            done.set()

        s.synthesis_completed.connect(on_completed)
        s.speak_text_async("hello").get()
        assert done.wait(10)
        while events[0]() is not None:  # the SDK thread is done with the event
            time.sleep(0.01)
        return weakref.ref(s)


    def test_synthesizer_cycle_collected_before_the_verdict():
        with SpeechService() as service:
            alive = synthesize_naively(service)
            assert alive() is not None  # only the cycle holds it now
        collect_automatically()
        deadline = time.monotonic() + 5
        while alive() is not None and time.monotonic() < deadline:
            # an SDK callback thread's trampoline frame may hold it a moment longer
            time.sleep(0.01)
            collect_automatically()
        assert alive() is None  # the collector freed it before the plugin looked


    def test_dropped_cleanly():
        with SpeechService() as service:
            s = speechsdk.SpeechSynthesizer(service.speech_config(), audio_config=None)
            s.speak_text_async("hello").get()
            del s
        collect_automatically()
    """
)


def test_a_cycle_the_collector_freed_before_the_verdict_still_fails_the_test(pytester):
    """Issue 9: whatever the collector does before the verdict, the cycle is reported."""
    pytester.makepyfile(test_cycle=CYCLE)
    result = pytester.runpytest_subprocess(
        "--nativeguard", "--nativeguard-settle=0.3", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_cycle.py::test_synthesizer_cycle_collected_before_the_verdict*",
        ]
    )
    text = _failure_sections(result.outlines)["test_synthesizer_cycle_collected_before_the_verdict"]
    assert "nativeguard leak report: 2 object(s) left in reference cycles" in text
    assert "already freed by an automatic garbage collection: " in text
    assert "SpeechSynthesizer +1" in text  # and its PropertyCollection
