"""holder_chain: exact chains against the real SDK, and every kind of root."""

from __future__ import annotations

import gc
import importlib.util
import sys
import textwrap
import threading
import time
import types
import weakref
from pathlib import Path
from typing import ClassVar

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard._core._holders import (
    INVISIBLE,
    MAX_VISITED,
    UNREACHABLE,
    holder_chain,
    holder_chains,
)
from nativeguard.verify import Allow


def transcribe_naively(
    service, wav
) -> weakref.ref[speechsdk.transcription.ConversationTranscriber]:
    """The field write-ups' pattern: a closure that captures the transcriber."""
    transcriber = speechsdk.transcription.ConversationTranscriber(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
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
    assert len(texts) == 2
    return weakref.ref(transcriber)


NAIVE_CYCLE = (
    "ConversationTranscriber",
    "cell of transcribe_naively.<locals>.on_transcribed (variable transcriber)",
    "function transcribe_naively.<locals>.on_transcribed",
    "list EventSignal.__callbacks",
    "EventSignal ConversationTranscriber.__transcribed_signal",
)


# -- the real SDK ---------------------------------------------------------------


def test_naive_pattern_is_an_unreachable_cycle_not_a_holder(
    speech_service, wav_path, no_automatic_gc
):
    ref = transcribe_naively(speech_service, wav_path)
    assert ref() is not None  # leaked: only the collector can free it
    chains = holder_chains([ref()])
    assert chains[0].links == (*NAIVE_CYCLE, UNREACHABLE)
    assert chains[0].unreachable
    gc.collect()
    assert ref() is None  # what "unreachable" promised


LEAKY_APP = """
import threading
import types
import weakref
from pathlib import Path
from typing import ClassVar

import azure.cognitiveservices.speech as speechsdk

CLEANUP = []  # "disconnect everything at shutdown": keeps every signal alive


def start(speech_config, wav):
    transcriber = speechsdk.transcription.ConversationTranscriber(
        speech_config, speechsdk.audio.AudioConfig(filename=wav)
    )
    done = threading.Event()

    def on_transcribed(evt):
        print(transcriber, evt.result.text)

    transcriber.transcribed.connect(on_transcribed)
    transcriber.session_stopped.connect(lambda evt: done.set())
    CLEANUP.append(transcriber.transcribed.disconnect_all)
    transcriber.start_transcribing_async().get()
    assert done.wait(10)
    return weakref.ref(transcriber)
"""


@pytest.fixture
def leaky_app(tmp_path):
    """A module of a service that keeps bound methods of SDK signals in a global list."""
    path = tmp_path / "leaky_app.py"
    path.write_text(textwrap.dedent(LEAKY_APP))
    spec = importlib.util.spec_from_file_location("leaky_app", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["leaky_app"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        module.CLEANUP.clear()
        del sys.modules["leaky_app"]
        gc.collect()


@pytest.mark.no_leaks(
    allow=[
        Allow(
            "ExceptionWithCallStack",
            "measured: SDK 1.53's core keeps one after an unstopped transcriber is released",
        )
    ]
)
def test_naive_pattern_held_by_a_module_global(speech_service, wav_path, leaky_app, capsys):
    ref = leaky_app.start(speech_service.speech_config(), wav_path)
    chains = holder_chains([ref()])
    assert chains[0].links == (
        "ConversationTranscriber",
        "cell of start.<locals>.on_transcribed (variable transcriber)",
        "function start.<locals>.on_transcribed",
        "list EventSignal.__callbacks",
        "EventSignal",
        "bound method EventSignal.disconnect_all",
        "list",
        "global CLEANUP in module leaky_app",
    )
    assert not chains[0].unreachable
    gc.collect()
    assert ref() is not None  # held, not garbage: the collector cannot help
    leaky_app.CLEANUP.clear()
    gc.collect()
    assert ref() is None


def test_a_running_frames_local_is_a_root_and_the_search_keeps_nothing_alive(
    speech_service, wav_path
):
    config = speech_service.speech_config()
    recognizer = speechsdk.SpeechRecognizer(config, speechsdk.audio.AudioConfig(filename=wav_path))
    chain, line = holder_chain(recognizer), sys._getframe().f_lineno
    assert chain == (
        "SpeechRecognizer",
        "local recognizer in frame "
        "test_a_running_frames_local_is_a_root_and_the_search_keeps_nothing_alive "
        f"(test_holders.py:{line})",
    )
    # Reading a running frame's locals on 3.11 leaves a snapshot dict on it
    # that holds every local; the search empties it again.
    ref = weakref.ref(recognizer)
    del recognizer
    assert ref() is None  # freed by refcounting at once: nothing else held it
    del config


def test_an_sdk_object_reached_through_a_finished_frame(speech_service, wav_path):
    errors: list[BaseException] = []

    def fail(config):
        recognizer = speechsdk.SpeechRecognizer(
            config, speechsdk.audio.AudioConfig(filename=wav_path)
        )
        raise RuntimeError(f"no luck with {type(recognizer).__name__}")

    try:
        fail(speech_service.speech_config())
    except RuntimeError as exc:
        errors.append(exc)
    frame = errors[0].__traceback__.tb_next.tb_frame
    ref = weakref.ref(frame.f_locals["recognizer"])
    del frame
    chain, line = holder_chain(ref()), sys._getframe().f_lineno
    # A frame is named by its code's co_qualname, which Python 3.10 does not have.
    frame_name = getattr(fail.__code__, "co_qualname", fail.__name__)
    assert chain[:5] == (
        "SpeechRecognizer",
        f"local recognizer in finished frame {frame_name} (test_holders.py:{fail_line()})",
        "traceback",
        "traceback",
        "RuntimeError",
    )
    assert chain[5:] == (
        "list",
        "local errors in frame test_an_sdk_object_reached_through_a_finished_frame "
        f"(test_holders.py:{line})",
    )
    errors.clear()
    assert ref() is None


def fail_line() -> int:
    """The line of ``raise`` in test_an_sdk_object_reached_through_a_finished_frame."""
    source = Path(__file__).read_text().splitlines()
    return next(i for i, text in enumerate(source, 1) if 'raise RuntimeError(f"no luck' in text)


# -- every kind of holder, in plain Python -------------------------------------------


class Leaf:
    pass


class Session:
    def __init__(self, leaf: Leaf) -> None:
        self.__leaf = leaf  # private: reported as written, not mangled

    @property
    def leaf(self) -> Leaf:
        return self.__leaf


class Slotted:
    __slots__ = ("__weakref__", "leaf")


class Kept:
    leaves: ClassVar[list[Leaf]] = []


SESSIONS: list[Session] = []
LOCAL = threading.local()


def test_instance_attributes_read_the_same_inline_or_materialised():
    session = Session(Leaf())
    SESSIONS.append(session)
    try:
        expected = (
            "Leaf Session.__leaf",
            "Session",
            "list",
            f"global SESSIONS in module {__name__}",
        )
        del session
        chain = holder_chain(SESSIONS[0].leaf)
        assert chain == expected
        vars(SESSIONS[0])  # 3.11: the dict now exists and is the referrer
        chain = holder_chain(SESSIONS[0].leaf)
        assert chain == expected
    finally:
        SESSIONS.clear()


def test_slots_class_attributes_thread_locals_and_defaults():
    slotted = Slotted()
    slotted.leaf = Leaf()
    chain = holder_chain(slotted.leaf)
    assert chain[0] == "Leaf Slotted.leaf"

    Kept.leaves.append(Leaf())
    try:
        chain = holder_chain(Kept.leaves[0])
        assert chain == (
            "Leaf",
            "list",
            f"class attribute Kept.leaves in module {__name__}",
        )
    finally:
        Kept.leaves.clear()

    floating = types.ModuleType("floating")  # not in sys.modules
    floating.KEEP = [Leaf()]  # type: ignore[attr-defined]
    chain = holder_chain(floating.KEEP[0])
    assert chain == ("Leaf", "list", "global KEEP in module floating")

    LOCAL.leaf = Leaf()
    try:
        chain = holder_chain(LOCAL.leaf)
        assert chain == (
            "Leaf thread-local _local.leaf",
            "thread-local _local",
            f"global LOCAL in module {__name__}",
        )
    finally:
        del LOCAL.leaf

    def remember(leaf=Leaf()):  # noqa: B008 - the default is the point
        return leaf

    chain, line = holder_chain(remember()), sys._getframe().f_lineno
    assert chain == (
        "Leaf",
        f"default arguments of {remember.__qualname__}",
        f"function {remember.__qualname__}",
        f"local remember in frame test_slots_class_attributes_thread_locals_and_defaults "
        f"(test_holders.py:{line})",
    )


def test_a_live_thread_is_a_root():
    release = threading.Event()
    box: list[weakref.ref[Leaf]] = []

    def hold(leaf: Leaf) -> None:
        box.append(weakref.ref(leaf))
        del leaf  # only Thread._args holds it now
        release.wait(30)

    worker = threading.Thread(target=hold, name="keeper", args=(Leaf(),))
    worker.start()
    try:
        while not box:
            time.sleep(0.001)
        chain = holder_chain(box[0]())
        assert chain == ("Leaf", "tuple Thread._args", "thread keeper (Thread)")
    finally:
        release.set()
        worker.join()


def test_another_threads_running_frame_is_invisible_not_unreachable():
    """gc cannot see a running frame's locals; refcounts show something else holds it."""
    ready, release = threading.Event(), threading.Event()
    box: list[weakref.ref[Leaf]] = []

    def work():
        items = [Leaf()]
        box.append(weakref.ref(items[0]))
        ready.set()
        release.wait(30)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert ready.wait(10)
        chain = holder_chain(box[0]())
        if sys.version_info >= (3, 13):
            # PEP 667: another thread's locals are read without a snapshot, so
            # its frame is named (docs/leak-report.md, Limits).
            root = f"local items in frame {work.__qualname__} (test_holders.py:"
            assert chain[:2] == ("Leaf", "list")
            assert len(chain) == 3
            assert chain[2].startswith(root)
        else:
            assert chain == ("Leaf", "list", INVISIBLE)
    finally:
        release.set()
        worker.join()


def test_a_plain_cycle_is_unreachable_and_ignored_containers_are_not_holders():
    def make() -> weakref.ref[Leaf]:
        leaf = Leaf()
        leaf.me = [leaf]  # type: ignore[attr-defined]
        return weakref.ref(leaf)

    gc.disable()
    try:
        ref = make()
        kept = [ref()]  # e.g. a checker's list of what leaked
        assert holder_chains(kept, ignore=[kept])[0] == holder_chains(kept)[0]
        chain = holder_chains(kept)[0]
        assert chain.links == ("Leaf", "list Leaf.me", UNREACHABLE)
        assert chain.unreachable
        # Held by one more list that is not ignored: not garbage any more.
        other = [kept[0]]
        chain = holder_chains(kept)[0]
        assert not chain.unreachable
        other.clear()
        kept.clear()
    finally:
        gc.enable()
    gc.collect()
    assert ref() is None


def test_a_root_named_by_the_caller_ends_the_chain():
    # A checker's box holding a call's return value, also a local here.
    leaf = Leaf()
    box = [(leaf, 1)]
    del leaf
    line = sys._getframe().f_lineno + 1
    unnamed = holder_chain(box[0][0])
    named = holder_chain(box[0][0], roots=[(box, "return value")])
    frame = f"{test_a_root_named_by_the_caller_ends_the_chain.__name__} (test_holders.py:{line})"
    assert unnamed == ("Leaf", "tuple", "list", f"local box in frame {frame}")
    assert named == ("Leaf", "tuple", "return value")


def test_the_search_is_bounded():
    nested: list[object] = [Leaf()]
    for _ in range(30):
        nested = [nested]
    HOLDER.append(nested)
    del nested
    try:
        nested = HOLDER[0]
        innermost = nested
        for _ in range(30):
            innermost = innermost[0]
        ref = weakref.ref(innermost[0])
        del innermost, nested
        chain = holder_chain(ref(), max_depth=5)
        assert chain[:6] == ("Leaf", "list", "list", "list", "list", "list")
        assert chain[-1] == "no root found within 5 links and 6 objects (search bounded)"
        chain = holder_chain(ref(), max_visited=3)
        assert chain[-1] == "no root found within 2 links and 3 objects (search bounded)"
        chain = holder_chain(ref(), max_depth=40)
        assert chain[-1] == f"global HOLDER in module {__name__}"
    finally:
        HOLDER.clear()


HOLDER: list[object] = []


def test_invalid_bounds():
    with pytest.raises(ValueError, match=">= 1"):
        holder_chain(Leaf(), max_depth=0)


def leak_naively(config, wav, *, keep_callback: bool = False):
    """A transcriber in the closure cycle, never started (no service needed)."""
    transcriber = speechsdk.transcription.ConversationTranscriber(
        config, speechsdk.audio.AudioConfig(filename=wav)
    )

    def on_transcribed(evt):
        print(transcriber, evt)

    transcriber.transcribed.connect(on_transcribed)
    if keep_callback:
        HOLDER.append(on_transcribed)
    return weakref.ref(transcriber)


def test_a_million_unrelated_objects(wav_path, capsys):
    """Measured, not asserted: the cost of one search on a large heap (see the report)."""

    class Junk:
        __slots__ = ("x",)

    junk = [Junk() for _ in range(1_000_000)]
    config = speechsdk.SpeechConfig(subscription="0" * 32, region="westus")
    gc.disable()
    try:
        ref = leak_naively(config, wav_path)
        start = time.perf_counter()
        chain = holder_chain(ref())
        elapsed = time.perf_counter() - start
        assert chain[-1] == UNREACHABLE
        held_ref = leak_naively(config, wav_path, keep_callback=True)
        start = time.perf_counter()
        held = holder_chain(held_ref())
        held_elapsed = time.perf_counter() - start
        assert held[-2:] == ("list", f"global HOLDER in module {__name__}")
    finally:
        HOLDER.clear()
        gc.enable()
        gc.collect()
    assert ref() is None
    assert held_ref() is None
    with capsys.disabled():
        print(
            f"\n[holder_chain, {len(junk):,} unrelated objects, MAX_VISITED={MAX_VISITED}] "
            f"SDK naive cycle: {elapsed * 1000:.0f} ms; held by a global: "
            f"{held_elapsed * 1000:.0f} ms"
        )
    del junk


def test_a_search_from_inside_a_python_tracer_leaves_the_traced_frames_variables():
    """pdb-style tracers write a frame's snapshot back into its variables after each
    event: a snapshot emptied during the event would delete them."""
    chains: list[tuple[str, ...]] = []

    def target() -> Leaf:
        leaf = Leaf()
        marker = 1  # the tracer searches on this line's event
        return leaf if marker else Leaf()

    def tracer(frame, event, arg):
        if event == "call":
            return tracer if frame.f_code is target.__code__ else None
        if event == "line" and "leaf" in frame.f_locals and not chains:
            chains.append(holder_chain(frame.f_locals["leaf"]))
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = target()  # UnboundLocalError if `leaf` had been deleted
    finally:
        sys.settrace(previous)
    assert isinstance(result, Leaf)
    assert chains[0][0] == "Leaf"
    assert chains[0][1].startswith("local leaf in frame ")


# -- secrets on the chain (issue 17) -------------------------------------------------

KEY = "sk-live-4f9a1c2e7b3d5f60"
SECRET_HOLDERS: list[object] = []


class Holder:
    pass


def test_a_credential_attribute_on_the_chain_is_masked_wherever_its_value_shows():
    """``Holder.password = KEY``: the key is masked in every link, names stay."""
    holder = Holder()
    holder.password = KEY  # type: ignore[attr-defined]
    leaf = Leaf()
    setattr(holder, f"session_{KEY}", leaf)  # a per-key cache, keyed by attribute name
    SECRET_HOLDERS.append(holder)
    ref = weakref.ref(leaf)
    del leaf, holder
    try:
        chain = holder_chain(ref())
        assert KEY not in " <- ".join(chain)
        assert chain[0] == "Leaf Holder.session_<redacted>"
        assert chain[1] == "Holder"
        assert chain[-1].startswith("global SECRET_HOLDERS in module")
    finally:
        SECRET_HOLDERS.clear()


def test_a_finished_frames_local_named_token_is_masked_in_the_chain():
    def connect(token: str) -> None:
        cache = Holder()
        setattr(cache, f"client_for_{token}", Leaf())
        raise RuntimeError("refused")

    try:
        connect(KEY)
    except RuntimeError as error:
        SECRET_HOLDERS.append(error)  # its traceback keeps connect's finished frame
    try:
        frame = SECRET_HOLDERS[0].__traceback__.tb_next.tb_frame  # type: ignore[union-attr]
        ref = weakref.ref(getattr(frame.f_locals["cache"], f"client_for_{KEY}"))
        del frame
        chain = holder_chain(ref())
        text = " <- ".join(chain)
        assert (
            "Leaf Holder.client_for_<redacted> <- Holder <- local cache in finished frame" in text
        )
        assert KEY not in text
    finally:
        SECRET_HOLDERS.clear()


def test_credential_shaped_thread_names_are_masked():
    release = threading.Event()
    box: list[weakref.ref[Leaf]] = []

    def hold(leaf: Leaf) -> None:
        box.append(weakref.ref(leaf))
        del leaf
        release.wait(30)

    worker = threading.Thread(target=hold, name=f"sync token={KEY}", args=(Leaf(),))
    worker.start()
    try:
        while not box:
            time.sleep(0.001)
        chain = holder_chain(box[0]())
        assert chain[-1] == "thread sync token=<redacted> (Thread)"
        assert KEY not in " ".join(chain)
    finally:
        release.set()
        worker.join()
