"""nativeguard.monitor: the sampler thread, bounded history, slope warnings, logs, Prometheus."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from pathlib import Path

import azure.cognitiveservices.speech as speechsdk
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nativeguard.isolate import WorkerPool
from nativeguard.monitor import (
    LOGGER_NAME,
    MULTIPROC_ENV,
    RETIREMENT_REASONS,
    MemoryGrowthWarning,
    Monitor,
    MonitorStateError,
    count_retirement,
)

SECRET = "monitor-secret-key-5f3a9"


def _monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nativeguard-monitor"]


def test_sampler_thread_samples_and_stops() -> None:
    assert _monitor_threads() == []
    monitor = Monitor(interval_s=0.02, slope_limits=None)
    with monitor:
        (thread,) = _monitor_threads()
        deadline = time.monotonic() + 10
        while len(monitor.history) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(monitor.history) >= 4
        times = [s.monotonic for s in monitor.history]
        assert times == sorted(times)
    assert not thread.is_alive()
    assert _monitor_threads() == []
    assert monitor.closed
    monitor.close()  # idempotent
    with pytest.raises(MonitorStateError, match="closed"):
        monitor.sample()
    with pytest.raises(MonitorStateError, match="closed"):
        monitor.start()


def test_history_is_bounded_and_keeps_the_newest() -> None:
    monitor = Monitor(interval_s=None, history=5, slope_window=3, slope_limits=None)
    taken = [monitor.sample() for _ in range(12)]
    assert monitor.history == tuple(taken[-5:])
    monitor.close()


def test_request_hook_samples_every_n_requests() -> None:
    monitor = Monitor(interval_s=None, every_requests=3, slope_limits=None)
    results = [monitor.request_done() for _ in range(7)]
    assert [r is not None for r in results] == [False, False, True, False, False, True, False]
    assert len(monitor.history) == 2
    with pytest.raises(MonitorStateError, match="every_requests"):
        Monitor(interval_s=None).request_done()


def test_structured_log_fields_and_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    config = speechsdk.SpeechConfig(subscription=SECRET, region="westus")
    monitor = Monitor(interval_s=None, slope_limits=None)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        reading = monitor.sample()
    (record,) = [r for r in caplog.records if r.name == LOGGER_NAME]
    fields = record.nativeguard  # type: ignore[attr-defined]
    assert fields["event"] == "sample"
    assert fields["rss_bytes"] == reading.rss_bytes
    assert fields["fds"] == reading.fds
    assert fields["live_objects"]["SpeechConfig"] >= 1
    assert fields["native_resources"]["azure_speech"]["ISpxSpeechConfig"] >= 1
    assert "nativeguard memory: rss=" in record.getMessage()
    everything = record.getMessage() + repr(record.__dict__)
    assert SECRET not in everything
    del config
    monitor.close()


def test_slope_warning_is_raised_once_while_the_metric_grows(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monitor = Monitor(interval_s=None, slope_window=3, slope_limits={"fds": 1.0})
    opened = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
                for number in range(6):
                    opened.append(open(tmp_path / f"f{number}", "w"))  # noqa: SIM115
                    time.sleep(0.01)
                    monitor.sample()
        growth = [w for w in caught if issubclass(w.category, MemoryGrowthWarning)]
        assert len(growth) == 1, [str(w.message) for w in caught]
        assert "fds grows" in str(growth[0].message)
        (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert record.nativeguard["metric"] == "fds"  # type: ignore[attr-defined]
        assert record.nativeguard["slope_per_hour"] > 1.0  # type: ignore[attr-defined]
        assert monitor.slopes()["fds"] > 0
    finally:
        for file in opened:
            file.close()
        monitor.close()
    # Flat again: the flag resets, so a new growth would warn again.
    monitor2 = Monitor(interval_s=None, slope_window=3, slope_limits={"fds": 1.0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            monitor2.sample()
    assert [w for w in caught if issubclass(w.category, MemoryGrowthWarning)] == []
    monitor2.close()


def _metrics(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(registry).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


@pytest.mark.usefixtures("fork_server")
def test_prometheus_metrics_from_the_latest_reading() -> None:
    registry = CollectorRegistry()
    config = speechsdk.SpeechConfig(subscription=SECRET, region="westus")
    with (
        Monitor(interval_s=None, prometheus=True, registry=registry, slope_limits=None) as monitor,
        WorkerPool(1, max_tasks=1, warm_spare=False) as pool,
    ):
        monitor.watch_pool(pool)
        for _ in range(3):
            pool.submit(os.getpid).result()
        monitor.record_release(2)
        reading = monitor.sample()
        metrics = _metrics(registry)
        stats = pool.statistics()
    assert metrics["nativeguard_rss_bytes"] == [({}, float(reading.rss_bytes))]
    assert metrics["nativeguard_heap_in_use_bytes"] == [({}, float(reading.heap_in_use_bytes))]
    assert metrics["nativeguard_heap_retained_bytes"] == [({}, float(reading.heap_retained_bytes))]
    native = {
        (labels["integration"], labels["type"]): value
        for labels, value in metrics["nativeguard_native_resources"]
    }
    assert (
        native[("azure_speech", "ISpxSpeechConfig")]
        == reading.native["azure_speech"]["ISpxSpeechConfig"]
    )
    live = {labels["type"]: value for labels, value in metrics["nativeguard_live_objects"]}
    assert live["SpeechConfig"] == reading.instances["SpeechConfig"]
    assert metrics["nativeguard_threads"] == [({}, float(reading.threads))]
    assert metrics["nativeguard_fds"] == [({}, float(reading.fds))]
    assert metrics["nativeguard_releases_total"] == [({}, 2.0)]
    retired = {labels["reason"]: v for labels, v in metrics["nativeguard_worker_retirements_total"]}
    assert retired["max_tasks"] == stats.recycles["max_tasks"] >= 2
    assert SECRET not in generate_latest(registry).decode()
    # close() unregistered the collector.
    assert "nativeguard_rss_bytes" not in _metrics(registry)
    del config


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match=r"interval_s must be a number >= 0\.01"):
        Monitor(interval_s=0)
    with pytest.raises(ValueError, match="history must be an int >= 2"):
        Monitor(history=1)
    with pytest.raises(ValueError, match=r"slope_window .* cannot exceed history"):
        Monitor(history=5, slope_window=6)
    with pytest.raises(ValueError, match="no metric 'rss'"):
        Monitor(slope_limits={"rss": 1.0})
    with pytest.raises(ValueError, match=r"slope_limits\['fds'\] must be a number"):
        Monitor(slope_limits={"fds": "many"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"logger must be a logging\.Logger"):
        Monitor(logger="nativeguard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every_requests must be an int >= 1"):
        Monitor(every_requests=True)
    monitor = Monitor(interval_s=None)
    with pytest.raises(TypeError, match="watch_pool\\(\\) takes a WorkerPool, got list"):
        monitor.watch_pool([])  # type: ignore[arg-type]
    monitor.start()
    with pytest.raises(MonitorStateError, match="already started"):
        monitor.start()
    monitor.close()


def test_a_failing_reading_is_logged_and_the_thread_survives(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import nativeguard.monitor as module

    real = module.read_sample
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("proc unreadable")
        return real()

    monkeypatch.setattr(module, "read_sample", flaky)
    with (
        caplog.at_level(logging.ERROR, logger=LOGGER_NAME),
        Monitor(interval_s=0.02, slope_limits=None) as monitor,
    ):
        deadline = time.monotonic() + 10
        while len(monitor.history) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(monitor.history) >= 3
    assert any("a reading failed" in r.getMessage() for r in caplog.records)


def test_request_hook_counts_exactly_under_concurrency() -> None:
    monitor = Monitor(interval_s=None, every_requests=10, history=100, slope_limits=None)
    barrier = threading.Barrier(8)

    def requests() -> None:
        barrier.wait()
        for _ in range(50):
            monitor.request_done()

    threads = [threading.Thread(target=requests) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert len(monitor.history) == 8 * 50 // 10
    monitor.close()


def test_after_fork_the_child_samples_and_starts_its_own_thread() -> None:
    monitor = Monitor(interval_s=0.02, slope_limits=None)
    monitor.start()
    try:
        with warnings.catch_warnings():
            # 3.12+ warns on fork() of a process with threads (the sampler among them).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            code = 1
            try:
                if _monitor_threads() == [] and monitor.sample() is not None:
                    monitor.start()
                    deadline = time.monotonic() + 5
                    count = len(monitor.history)
                    while len(monitor.history) < count + 2 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    if len(monitor.history) >= count + 2 and len(_monitor_threads()) == 1:
                        code = 0
                monitor.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(_monitor_threads()) == 1  # the parent's sampler is untouched
    finally:
        monitor.close()


def test_a_second_monitor_on_one_registry_is_refused_until_the_first_closes() -> None:
    registry = CollectorRegistry()
    first = Monitor(interval_s=None, prometheus=True, registry=registry)
    with pytest.raises(ValueError, match="already exports nativeguard's metrics"):
        Monitor(interval_s=None, prometheus=True, registry=registry)
    first.close()
    second = Monitor(interval_s=None, prometheus=True, registry=registry)
    second.sample()
    assert len(_metrics(registry)["nativeguard_rss_bytes"]) == 1
    second.close()


# -- retirements: record_retirement / count_retirement (issue 15 item 5) -------


def test_recorded_retirements_are_exported_with_the_watched_pools() -> None:
    registry = CollectorRegistry()
    other = Monitor(interval_s=None, slope_limits=None)
    closed = Monitor(interval_s=None, slope_limits=None)
    closed.close()
    with Monitor(interval_s=None, prometheus=True, registry=registry, slope_limits=None) as monitor:
        monitor.record_retirement("max_growth", 2)
        monitor.record_retirement("max_tasks")
        monitor.record_retirement("max_rss", 0)  # a no-op, not a label
        count_retirement("crashed")  # every open Monitor of the process counts it
        count_retirement("max_growth", 3)
        assert monitor.retirements == {"max_growth": 5, "max_tasks": 1, "crashed": 1}
        retired = {
            labels["reason"]: value
            for labels, value in _metrics(registry)["nativeguard_worker_retirements_total"]
        }
    assert retired == {"max_growth": 5.0, "max_tasks": 1.0, "crashed": 1.0}
    assert other.retirements == {"crashed": 1, "max_growth": 3}
    assert closed.retirements == {}  # a closed Monitor counts nothing more
    other.close()


@pytest.mark.usefixtures("fork_server")
def test_recorded_and_pool_retirements_add_up() -> None:
    """A pool's own count is merged by maximum (polled), a recorded one is added."""
    with (
        Monitor(interval_s=None, slope_limits=None) as monitor,
        WorkerPool(1, max_tasks=1, warm_spare=False) as pool,
    ):
        monitor.watch_pool(pool)
        monitor.record_retirement("max_tasks", 10)
        for _ in range(3):
            pool.submit(os.getpid).result()
        monitor.sample()
        monitor.sample()  # polling twice does not count twice
        recycled = pool.statistics().recycles["max_tasks"]
        assert recycled >= 2
        assert monitor.retirements["max_tasks"] == recycled + 10


def test_retirement_arguments_are_refused_by_name_and_never_echo_a_secret() -> None:
    monitor = Monitor(interval_s=None, slope_limits=None)
    for call in (monitor.record_retirement, count_retirement):
        for bad in (None, 3, b"max_tasks", ["max_tasks"]):
            with pytest.raises(TypeError, match=f"reason must be a str, got {type(bad).__name__}"):
                call(bad)  # type: ignore[arg-type]
        with pytest.raises(
            ValueError, match=r"reason must be one of .*max_tasks.*; got 'max_growht'"
        ):
            call("max_growht")
        for bad in ("", "MAX_TASKS", " max_tasks", "max_tasks\n"):
            with pytest.raises(ValueError, match="reason must be one of"):
                call(bad)
        with pytest.raises(ValueError, match="reason must be one of") as caught:
            call(SECRET)
        assert SECRET not in str(caught.value)
        assert f"a str of {len(SECRET)} chars" in str(caught.value)
        with pytest.raises(ValueError, match="a str of 10000 chars") as caught:
            call("x" * 10_000)
        assert len(str(caught.value)) < 400
        for bad_count in (-1, True, 1.5, "2", None):
            with pytest.raises(ValueError, match="count must be an int >= 0"):
                call("max_tasks", bad_count)  # type: ignore[arg-type]
    assert monitor.retirements == {}  # nothing refused was counted
    monitor.close()
    with pytest.raises(MonitorStateError, match="closed"):
        monitor.record_retirement("max_tasks")
    assert {"max_tasks", "max_rss", "max_growth", "growth_slope", "crashed"} <= RETIREMENT_REASONS


def test_retirements_count_exactly_under_concurrency() -> None:
    monitor = Monitor(interval_s=None, slope_limits=None)
    barrier = threading.Barrier(8)
    reasons = sorted(RETIREMENT_REASONS)

    def record(number: int) -> None:
        barrier.wait()
        for step in range(500):
            reason = reasons[(number + step) % len(reasons)]
            if step % 2:
                monitor.record_retirement(reason)
            else:
                count_retirement(reason)

    threads = [threading.Thread(target=record, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert sum(monitor.retirements.values()) == 8 * 500
    monitor.close()


def test_multiprocess_mode_that_cannot_work_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """This process imported prometheus_client in single-process mode, so setting the
    variable now cannot work: refused by name, nothing counted, no file written."""
    monitor = Monitor(interval_s=None, slope_limits=None)
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "missing"))
    with pytest.raises(MonitorStateError, match="is not a directory: create it"):
        count_retirement("max_rss")
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(MonitorStateError, match="prometheus_client was imported before it was"):
        count_retirement("max_rss")
    assert list(tmp_path.iterdir()) == []
    assert monitor.retirements == {}
    monitor.close()


def test_after_fork_a_childs_retirement_is_its_own() -> None:
    monitor = Monitor(interval_s=None, slope_limits=None)
    monitor.record_retirement("max_tasks")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            count_retirement("max_growth")
            if monitor.retirements == {"max_tasks": 1, "max_growth": 1}:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert monitor.retirements == {"max_tasks": 1}  # the child's count stayed in the child
    monitor.close()


def test_native_resources_carry_their_own_integrations_label() -> None:
    """A gRPC channel is labelled grpc, the Speech handle table azure_speech: exactly."""
    grpc = pytest.importorskip("grpc", reason="the grpc extra is not installed")
    registry = CollectorRegistry()
    config = speechsdk.SpeechConfig(subscription=SECRET, region="westus")
    channel = grpc.insecure_channel("127.0.0.1:9")  # never connected: no socket, no thread
    try:
        with Monitor(interval_s=None, prometheus=True, registry=registry, slope_limits=None) as m:
            reading = m.sample()
            metrics = _metrics(registry)
    finally:
        channel.close()
        del channel
    native = {
        (labels["integration"], labels["type"]): value
        for labels, value in metrics["nativeguard_native_resources"]
    }
    assert native[("grpc", "grpc.channels")] == reading.native["grpc"]["grpc.channels"] >= 1
    assert ("azure_speech", "grpc.channels") not in native
    assert native[("azure_speech", "ISpxSpeechConfig")] >= 1
    assert config is not None
