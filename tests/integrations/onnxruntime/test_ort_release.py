"""onnxruntime sessions through nativeguard: success paths, release, counters, plain outputs."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from nativeguard import ClosedResourceError, NativeGuardError, Scope, guarded, verify
from nativeguard.integrations import onnxruntime as ngo

pytestmark = pytest.mark.usefixtures("no_sessions")

Feeds = Callable[..., dict[str, Any]]


def test_importing_the_integration_imports_neither_onnxruntime_nor_numpy() -> None:
    import subprocess

    code = (
        "import sys, nativeguard.integrations.onnxruntime as m; "
        "print(m.INTEGRATION.name, 'onnxruntime' in sys.modules, 'numpy' in sys.modules, "
        "m.INTEGRATION.counters())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split("\n")[0] == (
        "onnxruntime False False {'onnxruntime.sessions': 0, 'onnxruntime.session_bytes': 0}"
    )


def test_managed_session_counts_one_and_frees_it_at_block_end(
    small_model: bytes, feeds: Feeds
) -> None:
    with ngo.managed_session(small_model, release="inline") as session:
        assert ngo.live_sessions() == 1
        assert ngo.INTEGRATION.counters() == {
            "onnxruntime.sessions": 1,
            "onnxruntime.session_bytes": len(small_model),
        }
        outputs = ngo.run(session, feeds())
    assert ngo.live_sessions() == 0
    assert list(outputs) == ["y"]
    assert outputs["y"].shape == (2, 8)
    assert outputs["y"].flags.owndata
    assert outputs["y"].base is None
    with pytest.raises(ClosedResourceError, match=r"accessed \.run"):
        session.run(None, feeds())


def test_infer_returns_owned_arrays_equal_to_a_plain_run(
    model_file: Path, small_model: bytes, feeds: Feeds
) -> None:
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    reference = ort.InferenceSession(small_model, providers=["CPUExecutionProvider"])
    expected = reference.run(None, {"x": x})[0]
    del reference
    for model in (model_file, str(model_file), small_model, bytearray(small_model)):
        result = ngo.infer(model, {"x": x})
        assert ngo.live_sessions() == 0
        np.testing.assert_array_equal(result["y"], expected)
        assert result["y"].flags.owndata


def test_metadata_of_a_managed_session_is_plain_and_pins_nothing(small_model: bytes) -> None:
    with ngo.managed_session(small_model, release="inline") as session:
        first = session.get_inputs()[0]
        meta = session.get_modelmeta()
    assert first == ngo.NodeInfo("x", "tensor(float)", ("batch", 16))
    assert isinstance(meta, ngo.ModelInfo)
    assert ngo.live_sessions() == 0  # onnxruntime's own NodeArg would keep it alive


def test_guarded_releases_a_session_the_call_returns(small_model: bytes, feeds: Feeds) -> None:
    verify.snapshot()  # the constructor hook is installed

    @guarded
    def make() -> Any:
        session = ort.InferenceSession(small_model, providers=["CPUExecutionProvider"])
        assert ngo.live_sessions() == 1
        return session

    kept = make()
    assert ngo.live_sessions() == 0
    assert ngo.is_released(kept)
    assert isinstance(kept, ort.InferenceSession)
    with pytest.raises(ngo.SessionReleasedError, match=r"617-byte model was released.*\.run"):
        kept.run(None, feeds())
    with pytest.raises(ClosedResourceError):  # the SessionReleasedError is one
        kept.get_inputs()
    assert "released onnxruntime InferenceSession" in repr(kept)


def test_a_cycle_through_the_session_does_not_keep_its_native_memory(
    small_model: bytes, no_automatic_gc: None
) -> None:
    class Holder:
        def __init__(self, session: Any) -> None:
            self.session = session
            self.callback = lambda: self

    scope = Scope(release="inline")
    session = scope.register(ort.InferenceSession(small_model, providers=["CPUExecutionProvider"]))
    held = [Holder(session)]  # reachable: no collection can free it
    del session
    gc.collect()
    assert ngo.live_sessions() == 1
    scope.close()
    assert ngo.live_sessions() == 0  # freed by the release while its holder lives
    assert ngo.is_released(held[0].session)
    assert held[0].callback() is held[0]  # the holder's own state is untouched


def test_io_bindings_and_session_ortvalues_that_pin_the_session_are_released(
    small_model: bytes,
) -> None:
    with ngo.managed_session(small_model, release="inline") as session:
        binding = session.io_binding()
        binding.bind_cpu_input("x", np.ones((2, 16), np.float32))
        binding.bind_output("y")
        session.run_with_iobinding(binding)
        copied = binding.copy_outputs_to_cpu()[0]
        value = session.create_ortvalue_from_shape_and_type([2, 16], np.float32, "cpu")
    assert ngo.live_sessions() == 0
    assert ngo.is_released(binding)
    assert ngo.is_released(value)
    with pytest.raises(ngo.SessionReleasedError, match="IOBinding was released"):
        binding.get_outputs()
    with pytest.raises(ngo.SessionReleasedError, match="OrtValue was released"):
        value.numpy()
    assert copied.shape == (2, 8)


def test_an_output_ortvalue_of_an_io_binding_pins_the_session_and_is_reported(
    small_model: bytes,
) -> None:
    verify.snapshot()  # the hook counts the session as it is built
    scope = Scope(release="inline", step_timeout_s=0.6)
    session = scope.register(ort.InferenceSession(small_model, providers=["CPUExecutionProvider"]))
    binding = session.io_binding()
    binding.bind_cpu_input("x", np.ones((2, 16), np.float32))
    binding.bind_output("y")
    session.run_with_iobinding(binding)
    outputs = binding.get_outputs()  # native keep-alive on the session, invisible to Python
    del binding
    with pytest.raises(NativeGuardError) as caught:
        scope.close()
    (pinned,) = caught.value.exceptions  # type: ignore[attr-defined]
    assert isinstance(pinned, ngo.SessionPinnedError)
    assert pinned.references >= 1
    assert "IOBinding.get_outputs()" in str(pinned)
    assert ngo.is_released(session)
    assert ngo.live_sessions() == 1  # the counter tells the truth meanwhile
    del outputs
    assert ngo.live_sessions() == 0


def test_the_trim_after_release_gives_the_arena_back(
    big_model: bytes, feeds: Feeds, no_automatic_gc: None
) -> None:
    from nativeguard._core._malloc import rss_bytes

    ngo.infer(big_model, feeds(rows=1024))  # warm: first-use state of onnxruntime
    verify.trim()
    start = rss_bytes()
    for _ in range(5):
        ngo.infer(big_model, feeds(rows=1024))
    assert ngo.live_sessions() == 0
    assert rss_bytes() - start < 10 * (1 << 20)
    ngo.set_trim_threshold(None)
    try:
        for _ in range(3):
            ngo.infer(big_model, feeds(rows=1024))
        untrimmed = rss_bytes() - start
    finally:
        ngo.set_trim_threshold(ngo.DEFAULT_TRIM_THRESHOLD_BYTES)
    verify.trim()
    # The test can fail: without the trim, glibc keeps the freed arena.
    assert untrimmed > 12 * (1 << 20), untrimmed


def test_counters_see_sessions_built_by_anyone_and_their_threads_go(small_model: bytes) -> None:
    before = verify.snapshot()
    session = ort.InferenceSession(small_model, providers=["CPUExecutionProvider"])
    during = verify.snapshot()
    assert during.native_handles["onnxruntime.sessions"] == 1
    assert during.native_handles["onnxruntime.session_bytes"] == len(small_model)
    assert during.instances["InferenceSession"] == before.instances.get("InferenceSession", 0) + 1
    grown = set(during.os_thread_ids or ()) - set(before.os_thread_ids or ())
    with Scope(release="inline") as scope:
        scope.register(session)
    del session
    after = verify.snapshot()
    assert after.native_handles.get("onnxruntime.sessions", 0) == 0
    assert not grown & set(after.os_thread_ids or ())  # its intra-op threads, by identity
    assert verify.check(before, settle_s=1.0) is None


def test_set_trim_threshold_refuses_bad_values() -> None:
    with pytest.raises(TypeError, match="got str"):
        ngo.set_trim_threshold("8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        ngo.set_trim_threshold(-1)
    assert ngo.trim_threshold() == ngo.DEFAULT_TRIM_THRESHOLD_BYTES


def test_release_is_idempotent_and_a_second_scope_finds_nothing_to_do(small_model: bytes) -> None:
    session = ort.InferenceSession(small_model, providers=["CPUExecutionProvider"])
    for _ in range(2):
        with Scope(release="inline") as scope:
            scope.register(session)
    assert ngo.is_released(session)
    assert ngo.live_sessions() == 0
    ngo.release_session(session, 1.0)
    assert threading.active_count() >= 1
