"""The ``nativeguard`` pytest plugin: fail tests that leak SDK objects, handles, threads or fds.

Registered through the ``pytest11`` entry point, so installing nativeguard is
enough; it does nothing until asked:

- ``--nativeguard`` checks every test; the ``nativeguard`` fixture or the
  ``@pytest.mark.no_leaks(...)`` marker checks one.
- A checked test takes a baseline snapshot before its function-scoped
  fixtures are set up and compares once its whole teardown is done, pytest's
  log capture included (settled for up to ``--nativeguard-settle`` seconds,
  never collecting garbage). A leak fails the test itself (reported
  ``FAILED``, as pytest-memray reports its limits, not as an error at
  teardown): the call phase's report is held back until the verdict, then
  turned into a failure whose text is the
  :class:`~nativeguard.verify._report.LeakReport`: what leaked and what holds it.
  Before declaring one, the test module's own finished frames are cleared
  (:func:`clear_finished_frames`: ``pytest.raises(...) as excinfo`` keeps
  them in a cycle). A test whose body failed or was skipped is not judged:
  its traceback keeps its frames, and so its locals, alive.
- ``--nativeguard-repeat=WARMUP:RUNS`` (or ``no_leaks(repeat=(W, R))``) runs a
  checked test's function ``W + R`` times in its call phase and judges the
  runs as :func:`~nativeguard.verify._leakcheck.leak_check` does; the leak then
  fails the call itself. Coroutine test functions are checked once instead.

Session warm-up, measured rather than ignored: on the first checked test the
plugin imports the SDK of every registered integration that is installed
(``import nativeguard`` loads none, and an SDK's import can create
process-lifetime native state: for Azure Speech 1.53 one ``ISpxAudioConfig``
handle, which would otherwise count against the first test that imports it;
an installed SDK that fails to import is a ``PytestWarning``), enables the
live-object registry (one heap walk, which hooks every integration's tracked
classes) and tracks the classes the
integrations ask leak checks to count (``ThreadPoolExecutor``, every
azure-identity credential class), all before the first baseline. Measured with SDK 1.53, the
first recognition, transcription, translation or synthesis in a process
leaves no thread, fd or handle behind once released (tests/verify/test_leakcheck.py
asserts it in a fresh interpreter); nativeguard's own reaper thread lives for
the process and is left out of thread counts by the snapshot itself.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from ._plugin.checker import LeakChecker, Session
from ._plugin.frames import call_then_clear, clear_finished_frames, item_files
from ._plugin.marks import MARKER, MARKER_HELP, Settings, parse_repeat, settings_from_marker
from .verify._check import DEFAULT_SETTLE_S

__all__ = ["LeakChecker", "clear_finished_frames", "parse_repeat"]

_SESSION = pytest.StashKey[Session]()
_SETTINGS = pytest.StashKey[Settings]()
_CHECKER = pytest.StashKey["LeakChecker"]()
_CALL_OK = pytest.StashKey[bool]()
_VERDICT = pytest.StashKey[str]()


# -- hooks --------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "nativeguard", "nativeguard: leaked Speech SDK objects, native handles, threads, fds"
    )
    group.addoption(
        "--nativeguard",
        action="store_true",
        default=False,
        help="check every test: fail it (at teardown) if it leaked SDK instances, native "
        "handles, threads or fds",
    )
    group.addoption(
        "--nativeguard-repeat",
        metavar="WARMUP:RUNS",
        default=None,
        help="run each checked test WARMUP+RUNS times and fail it only if a count grows in "
        "every measured run (CPython -R style), e.g. 3:5",
    )
    group.addoption(
        "--nativeguard-settle",
        metavar="SECONDS",
        default=None,
        help=f"how long a check waits for counts to come back (default {DEFAULT_SETTLE_S:g})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    repeat_option = config.getoption("nativeguard_repeat", None)
    repeat = (
        None if repeat_option is None else parse_repeat(repeat_option, where="--nativeguard-repeat")
    )
    settle_option = config.getoption("nativeguard_settle", None)
    settle_s = DEFAULT_SETTLE_S
    if settle_option is not None:
        try:
            settle_s = float(settle_option)
        except ValueError:
            settle_s = -1.0
        if not settle_s >= 0:
            raise pytest.UsageError(
                f"--nativeguard-settle takes a number of seconds >= 0, e.g. 1.5; "
                f"got {settle_option!r}"
            )
    config.stash[_SESSION] = Session(
        check_all=bool(config.getoption("nativeguard", False)), repeat=repeat, settle_s=settle_s
    )


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    state = config.stash[_SESSION]
    for item in items:
        marker = item.get_closest_marker(MARKER)
        if marker is not None:
            try:
                settings = settings_from_marker(marker, state.repeat)
            except pytest.UsageError as error:
                raise pytest.UsageError(f"{item.nodeid}: {error}") from None
        elif state.check_all or "nativeguard" in getattr(item, "fixturenames", ()):
            settings = Settings(repeat=state.repeat)
        else:
            continue
        item.stash[_SETTINGS] = settings


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_OK] = report.passed
    return report


@pytest.fixture(autouse=True)
def _nativeguard_autocheck(request: pytest.FixtureRequest) -> Iterator[LeakChecker | None]:
    """Baseline before the test's function-scoped fixtures, verdict after their teardown."""
    item = request.node
    settings = item.stash.get(_SETTINGS, None)
    if settings is None:
        yield None
        return
    state = request.config.stash[_SESSION]
    state.warm_up()
    if settings.types:
        classes = [t for t in settings.types if isinstance(t, type)]
        if classes:
            from .verify import _registry  # noqa: PLC0415

            _registry.track_types(*classes)
    checker = LeakChecker(settings, state.settle_s, test_files=item_files(item))
    item.stash[_CHECKER] = checker
    state.checked += 1
    yield checker  # the verdict: pytest_runtest_teardown, once everything is torn down


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Judge after every teardown, pytest's own included.

    The logging plugin keeps the test's log records (and the exceptions and
    frames their arguments reference) in the item until its teardown hook
    finished; judging inside a fixture finalizer would blame the test for them.
    """
    outcome = yield  # a failing teardown propagates; it is judged no further
    checker = item.stash.get(_CHECKER, None)
    if checker is None:
        return outcome
    del item.stash[_CHECKER]
    if checker.leak_check_result is not None or not item.stash.get(_CALL_OK, False):
        return outcome  # judged run by run in the call phase, or the body failed / was skipped
    verdict = checker._verdict()
    if verdict is not None:
        state = item.config.stash[_SESSION]
        state.leaked.append(item.nodeid)
        item.user_properties.append(("nativeguard", json.dumps({"leak": verdict})))
        # The test fails, not its teardown: see pytest_runtest_protocol.
        item.stash[_VERDICT] = f"nativeguard: {item.nodeid} leaked\n{verdict}"
    return outcome


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Run a checked test with its reports held back until the leak verdict.

    The verdict comes after teardown, when the call phase's ``passed`` has
    normally been reported already; a leak would then read as an error of
    the teardown ("3 passed, 2 errors"). Here the phases run unlogged, a
    leak turns the passed call report into a failure whose text is the leak
    report, and the reports are logged in order: the summary reads
    "2 failed". pytest-memray fails the call report the same way (its check
    ends with the call; ours needs the teardown done first).
    """
    if item.stash.get(_SETTINGS, None) is None:
        return None
    from _pytest.runner import runtestprotocol  # noqa: PLC0415 - pytest's own protocol

    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    verdict = item.stash.get(_VERDICT, None)
    if verdict is not None:
        del item.stash[_VERDICT]
        for report in reports:
            if report.when == "call" and report.passed:
                report.outcome = "failed"
                report.longrepr = verdict
                report.user_properties = list(item.user_properties)
                break
    for report in reports:
        ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@pytest.fixture
def nativeguard(_nativeguard_autocheck: LeakChecker | None) -> LeakChecker:
    """A :class:`LeakChecker` for this test: at teardown, fail if anything leaked."""
    if _nativeguard_autocheck is None:  # pragma: no cover - collection marks every user
        raise RuntimeError("the nativeguard fixture was not set up by its plugin")
    return _nativeguard_autocheck


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    settings = pyfuncitem.stash.get(_SETTINGS, None)
    checker = pyfuncitem.stash.get(_CHECKER, None)
    original = pyfuncitem.obj
    if settings is None or checker is None or inspect.iscoroutinefunction(original):
        return (yield)
    files = item_files(pyfuncitem)
    if settings.repeat is None:

        @functools.wraps(original)
        def checked(*args: Any, **kwargs: Any) -> object:
            return call_then_clear(original, args, kwargs, files)

        pyfuncitem.obj = checked
        try:
            return (yield)
        finally:
            pyfuncitem.obj = original
    warmup, runs = settings.repeat

    def once(*args: Any, **kwargs: Any) -> None:
        # As at teardown: the test's frames are not the leak, and pytest keeps
        # this phase's log records (their exceptions' frames) until teardown.
        call_then_clear(original, args, kwargs, files, logged=True)

    @functools.wraps(original)
    def repeated(*args: Any, **kwargs: Any) -> None:
        checker.leak_check_result = checker.leak_check(
            lambda: once(*args, **kwargs), warmup=warmup, runs=runs
        )

    pyfuncitem.obj = repeated
    try:
        outcome = yield
    finally:
        pyfuncitem.obj = original
    state = pyfuncitem.config.stash[_SESSION]
    state.repeated += 1
    result = checker.leak_check_result
    if result is not None and result.leaked:
        state.leaked.append(pyfuncitem.nodeid)
        pyfuncitem.user_properties.append(("nativeguard", json.dumps(result.to_dict())))
        pytest.fail(f"nativeguard: {pyfuncitem.nodeid} leaked\n{result}", pytrace=False)
    return outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    state = terminalreporter.config.stash.get(_SESSION, None)
    if state is None or not state.checked:
        return
    repeated = f", {state.repeated} refleak-style" if state.repeated else ""
    warm = "" if state.warmup_s is None else f"; session warm-up {state.warmup_s:.2f} s"
    terminalreporter.write_line(
        f"nativeguard: {state.checked} test(s) checked{repeated}, {len(state.leaked)} leaked{warm}"
    )
