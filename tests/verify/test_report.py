"""build_report / LeakReport: real SDK leaks, bounded text, JSON, and no secrets anywhere."""

from __future__ import annotations

import gc
import json
import threading
import tracemalloc
import weakref
from dataclasses import dataclass

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard._core._holders import INVISIBLE, UNREACHABLE
from nativeguard.integrations.azure_speech import native_handles
from nativeguard.verify._report import (
    MAX_COUNTS_SHOWN,
    MAX_LINKS_SHOWN,
    MAX_OBJECTS_DESCRIBED,
    MAX_OBJECTS_SHOWN,
    LeakedObject,
    LeakReport,
    build_report,
    creation_traceback,
)

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def tracing():
    """tracemalloc on for the test (creation tracebacks), restored after."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start(8)
    try:
        yield
    finally:
        if not was_tracing:
            tracemalloc.stop()


def transcribe_naively(config, wav) -> list[str]:
    """The field write-ups' pattern: a closure that captures the transcriber."""
    transcriber = speechsdk.transcription.ConversationTranscriber(
        config, speechsdk.audio.AudioConfig(filename=wav)
    )
    texts: list[str] = []
    done = threading.Event()

    def on_transcribed(evt):
        texts.append(evt.result.text)
        assert transcriber is not None  # the cycle: closure -> cell -> transcriber

    transcriber.transcribed.connect(on_transcribed)
    transcriber.session_stopped.connect(lambda evt: done.set())
    transcriber.start_transcribing_async().get()
    assert done.wait(10)
    return texts


def live(type_name: str) -> list[object]:
    """Live SDK objects of a type (a heap walk: tests only)."""
    return [obj for obj in gc.get_objects() if type(obj).__qualname__ == type_name]


def grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


def test_the_naive_pattern_reported(speech_service, wav_path, no_automatic_gc, tracing, capsys):
    handles_before = native_handles()
    assert len(transcribe_naively(speech_service.speech_config(), wav_path)) == 2
    handles = {k: v for k, v in grown(handles_before, native_handles()).items() if v}
    leaked = live("ConversationTranscriber")
    assert len(leaked) == 1
    report = build_report(leaked, native_handles=handles, instances={"ConversationTranscriber": 1})
    leaked.clear()
    assert report.objects == (
        LeakedObject(
            type_name="ConversationTranscriber",
            chain=(
                "ConversationTranscriber",
                "cell of transcribe_naively.<locals>.on_transcribed (variable transcriber)",
                "function transcribe_naively.<locals>.on_transcribed",
                "list EventSignal.__callbacks",
                "EventSignal ConversationTranscriber.__transcribed_signal",
                UNREACHABLE,
            ),
            created_at=report.objects[0].created_at,
            unreachable=True,
        ),
    )
    created_at = report.objects[0].created_at
    assert created_at is not None
    assert created_at[-1].endswith(f"test_report.py:{constructor_line()}")
    assert report.omitted == 0
    assert report.native_handles["ISpxRecognizer"] == 1
    assert not report.clean
    text = str(report)
    assert "  1. ConversationTranscriber (unreachable: gc.collect() would free it)" in text
    assert "ISpxRecognizer +1" in text
    with capsys.disabled():  # pasted into docs/leak-report.md
        print(f"\n{text}")
    gc.collect()
    assert native_handles() == handles_before


def constructor_line() -> int:
    from pathlib import Path

    source = Path(__file__).read_text().splitlines()
    return next(
        i
        for i, text in enumerate(source, 1)
        if "transcriber = speechsdk.transcription.ConversationTranscriber(" in text
    )


def test_a_subscription_key_never_appears(speech_service, wav_path, tracing):
    """The leaked objects carry a real key in their properties; nothing prints it."""
    config = speechsdk.SpeechConfig(subscription=KEY, region="westus")
    recognizer = speechsdk.SpeechRecognizer(config, speechsdk.audio.AudioConfig(filename=wav_path))
    assert config.subscription_key == KEY  # the SDK does keep it
    # Held by a dict keyed by the key itself: keys of plain dicts are values.
    by_key = {KEY: config}
    report = build_report(
        [config, recognizer],
        native_handles={"ISpxSpeechConfig": 1},
        instances={"SpeechConfig": 1, "SpeechRecognizer": 1},
        new_threads=[f"worker subscription_key={KEY}"],
        allowed=[("fds", f"Ocp-Apim-Subscription-Key: {KEY}")],
    )
    texts = [str(report), repr(report), json.dumps(report.to_dict())]
    for text in texts:
        assert KEY not in text
    chains = {obj.type_name: obj.chain for obj in report.objects}
    frame = "in frame test_a_subscription_key_never_appears (test_report.py:"
    assert chains["SpeechConfig"][0] == "SpeechConfig"
    assert chains["SpeechConfig"][1].startswith(f"local config {frame}")
    assert chains["SpeechRecognizer"][0] == "SpeechRecognizer"
    assert chains["SpeechRecognizer"][1].startswith(f"local recognizer {frame}")
    assert report.new_threads == ("worker subscription_key=<redacted>",)
    assert report.allowed == (("fds", "Ocp-Apim-Subscription-Key: <redacted>"),)
    del by_key


def line_of(text: str) -> int:
    from pathlib import Path

    source = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if text in line)


HELD: list[object] = []


def test_output_is_bounded_and_counts_what_it_leaves_out(speech_service):
    configs = [speech_service.speech_config() for _ in range(MAX_OBJECTS_DESCRIBED + 40)]
    HELD.extend(configs)
    try:
        handles = {f"ISpxHandle{i:02d}": i + 1 for i in range(MAX_COUNTS_SHOWN + 3)}
        threads = [f"Dummy-{i}" for i in range(30)]
        report = build_report(configs, native_handles=handles, new_threads=threads)
        configs.clear()
        assert len(report.objects) == MAX_OBJECTS_DESCRIBED
        assert report.omitted == 40
        expected = ("SpeechConfig", "list", f"global HELD in module {__name__}")
        assert all(obj.chain == expected for obj in report.objects)
        text = str(report)
        assert text.count("\n  ") <= MAX_OBJECTS_SHOWN * 2 + 5
        assert f"{MAX_OBJECTS_DESCRIBED + 40} object(s) still alive" in text
        assert "... and 40 more object(s) not described" in text
        assert "ISpxHandle14 +15, ISpxHandle13 +14" in text  # largest first
        assert ", ... and 3 more" in text
        assert "Dummy-9, ... and 20 more" in text
        assert len(report.to_dict()["new_threads"]) == 30  # machines get all of them
    finally:
        HELD.clear()


def test_to_dict_is_json_and_mirrors_the_fields():
    HELD.append(Inner())
    try:
        report = build_report(
            HELD,
            native_handles={"ISpxRecognizer": 2, "ISpxAudioConfig": 0},
            instances={"SpeechRecognizer": 1, "PropertyCollection": -1},
            new_threads=("Dummy-1",),
            fds=3,
            allowed=[Allowed("ISpxConnection", "pooled by the SDK")],
            ignore=[HELD],
        )
    finally:
        HELD.clear()
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "objects": [
            {
                "type_name": "Inner",
                "chain": ["Inner", INVISIBLE],  # only in HELD, which is ignored
                "created_at": None,
                "unreachable": False,
            }
        ],
        "omitted": 0,
        "native_handles": {"ISpxRecognizer": 2},  # only what grew
        "instances": {"SpeechRecognizer": 1},
        "new_threads": ["Dummy-1"],
        "fds": 3,
        "allowed": [{"what": "ISpxConnection", "reason": "pooled by the SDK"}],
        "collected": {},
    }


@dataclass(frozen=True)
class Allowed:
    """Shaped like the checker's allowlist entries (``what`` and ``reason``)."""

    what: str
    reason: str


class Inner:
    pass


class Outer:
    def __init__(self) -> None:
        self.inner = Inner()


def test_objects_held_through_another_leaked_object_come_last():
    HELD.append(Outer())
    leaked = [HELD[0].inner, HELD[0]]
    try:
        report = build_report(leaked)
    finally:
        leaked.clear()
        HELD.clear()
    assert [obj.chain for obj in report.objects] == [
        ("Outer", "list", f"global HELD in module {__name__}"),
        ("Inner Outer.inner", "Outer", "list", f"global HELD in module {__name__}"),
    ]


def test_one_of_each_type_is_described_before_a_second_of_any(speech_service):
    configs = [speech_service.speech_config() for _ in range(MAX_OBJECTS_DESCRIBED + 5)]
    pool = speechsdk.audio.PushAudioInputStream()
    leaked: list[object] = [*configs, pool]
    report = build_report(leaked)
    leaked.clear()
    names = [obj.type_name for obj in report.objects]
    assert "PushAudioInputStream" in names
    assert report.omitted == 6
    del configs, pool


def test_the_report_keeps_no_reference_to_what_it_describes():
    class Leaf:
        pass

    leaf = Leaf()
    ref = weakref.ref(leaf)
    report = build_report([leaf])
    del leaf
    assert ref() is None
    assert report.objects[0].type_name.endswith("Leaf")


def test_creation_traceback_needs_tracemalloc_and_works_on_managed_dicts(
    tracing, speech_service, wav_path
):
    audio = speechsdk.audio.AudioConfig(filename=wav_path)
    recognizer = speechsdk.SpeechRecognizer(speech_service.speech_config(), audio)
    frames = creation_traceback(recognizer)
    assert frames is not None
    assert frames[-1].endswith(
        f"test_report.py:{line_of('recognizer = speechsdk.SpeechRecognizer(speech_service')}"
    )
    tracemalloc.stop()
    try:
        assert creation_traceback(recognizer) is None
    finally:
        tracemalloc.start(8)
    del recognizer, audio


def test_a_clean_report_says_so():
    report = LeakReport(objects=(), omitted=0)
    assert report.clean
    assert str(report) == "nativeguard leak report: nothing grew"


def test_str_is_bounded_even_for_a_report_built_by_hand():
    long_chain = tuple(f"list{i}" for i in range(40))
    objects = tuple(
        LeakedObject(f"T{i}", long_chain, None, unreachable=False)
        for i in range(MAX_OBJECTS_SHOWN + 5)
    )
    report = LeakReport(objects=objects, omitted=2)
    text = str(report)
    assert f"{MAX_OBJECTS_SHOWN + 7} object(s) still alive" in text
    assert "... and 7 more object(s) not described" in text
    assert f"T{MAX_OBJECTS_SHOWN - 1}" in text
    assert f"T{MAX_OBJECTS_SHOWN}" not in text
    assert text.count(f"<- ... {40 - MAX_LINKS_SHOWN + 1} more link(s)") == MAX_OBJECTS_SHOWN
    assert max(len(line) for line in text.splitlines()) <= 100
