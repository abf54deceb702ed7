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
  :class:`~nativeguard._report.LeakReport`: what leaked and what holds it.
  Before declaring one, the test module's own finished frames are cleared
  (:func:`clear_finished_frames`: ``pytest.raises(...) as excinfo`` keeps
  them in a cycle). A test whose body failed or was skipped is not judged:
  its traceback keeps its frames, and so its locals, alive.
- ``--nativeguard-repeat=WARMUP:RUNS`` (or ``no_leaks(repeat=(W, R))``) runs a
  checked test's function ``W + R`` times in its call phase and judges the
  runs as :func:`~nativeguard._leakcheck.leak_check` does; the leak then
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
leaves no thread, fd or handle behind once released (tests/test_leakcheck.py
asserts it in a fresh interpreter); nativeguard's own reaper thread lives for
the process and is left out of thread counts by the snapshot itself.
"""

from __future__ import annotations

import functools
import gc
import inspect
import json
import logging
import time
import types
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from ._check import DEFAULT_SETTLE_S, Allow, check, coerce_allow, type_names
from ._leakcheck import LeakCheck, leak_check
from ._report import LeakReport
from ._snapshot import Snapshot, snapshot

__all__ = ["LeakChecker", "clear_finished_frames", "parse_repeat"]

_MARKER = "no_leaks"
_MARKER_KWARGS = (
    "types",
    "native_handles",
    "threads",
    "fds",
    "rss_growth_mb",
    "repeat",
    "allow",
)
_MARKER_HELP = (
    f"{_MARKER}(types=None, native_handles=True, threads=True, fds=True, rss_growth_mb=None, "
    "repeat=None, allow=()): fail the test if it leaks Speech SDK instances (or instances "
    "of `types`, names or classes), native handles, threads or fds; rss_growth_mb fails "
    "it if RSS grows more than that; repeat=(WARMUP, RUNS) runs it refleak-style; "
    "allow=[nativeguard.verify.Allow(what, reason)] excuses growth, with a reason"
)
_MB = 1 << 20


def parse_repeat(value: object, *, where: str) -> tuple[int, int]:
    """``"W:R"`` or ``(W, R)`` as ``(warmup, runs)``; ``pytest.UsageError`` with a fix otherwise."""
    fix = f"{where} takes WARMUP:RUNS with WARMUP >= 0 and RUNS >= 2, e.g. 3:5"
    parts: Sequence[object]
    if isinstance(value, str):
        parts = value.split(":")
    elif isinstance(value, (tuple, list)):
        parts = value
    else:
        raise pytest.UsageError(f"{fix}; got {value!r}")
    if len(parts) != 2:
        raise pytest.UsageError(f"{fix}; got {value!r}")
    numbers: list[int] = []
    for part in parts:
        if isinstance(part, bool):
            raise pytest.UsageError(f"{fix}; got {value!r}")
        try:
            numbers.append(int(part) if isinstance(part, (int, str)) else -1)
        except ValueError:
            raise pytest.UsageError(f"{fix}; got {value!r}") from None
    warmup, runs = numbers
    if warmup < 0 or runs < 2:
        raise pytest.UsageError(f"{fix}; got {value!r}")
    return warmup, runs


# -- per-test settings ----------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """How one test is checked, from the command line and its marker."""

    types: tuple[str | type, ...] | None = None
    native_handles: bool = True
    threads: bool = True
    fds: bool = True
    rss_growth_mb: float | None = None
    repeat: tuple[int, int] | None = None
    allow: tuple[Allow, ...] = ()


def _settings_from_marker(marker: pytest.Mark, default_repeat: tuple[int, int] | None) -> _Settings:
    where = f"@pytest.mark.{_MARKER}"
    if marker.args:
        raise pytest.UsageError(
            f"{where} takes keyword arguments only, got positional {marker.args!r}; "
            f"write e.g. @pytest.mark.{_MARKER}(types=['SpeechRecognizer'])"
        )
    unknown = sorted(set(marker.kwargs) - set(_MARKER_KWARGS))
    if unknown:
        raise pytest.UsageError(
            f"{where} got unknown argument(s) {', '.join(unknown)}; "
            f"it takes {', '.join(_MARKER_KWARGS)}"
        )
    kwargs = marker.kwargs
    for name in ("native_handles", "threads", "fds"):
        if not isinstance(kwargs.get(name, True), bool):
            raise pytest.UsageError(
                f"{where}({name}=...) takes True or False, got {kwargs[name]!r}"
            )
    rss = kwargs.get("rss_growth_mb")
    if rss is not None and (
        isinstance(rss, bool) or not isinstance(rss, (int, float)) or not rss > 0
    ):
        raise pytest.UsageError(
            f"{where}(rss_growth_mb=...) takes a number of megabytes > 0 or None, got {rss!r}"
        )
    repeat = kwargs.get("repeat")
    parsed = default_repeat if repeat is None else parse_repeat(repeat, where=f"{where}(repeat=)")
    try:
        allow = coerce_allow(kwargs.get("allow", ()))
    except TypeError as error:
        raise pytest.UsageError(f"{where}(allow=...): {error}") from None
    return _Settings(
        types=_marker_types(kwargs.get("types"), where),
        native_handles=kwargs.get("native_handles", True),
        threads=kwargs.get("threads", True),
        fds=kwargs.get("fds", True),
        rss_growth_mb=None if rss is None else float(rss),
        repeat=parsed,
        allow=allow,
    )


def _marker_types(types: object, where: str) -> tuple[str | type, ...] | None:
    if types is None:
        return None
    entries = (types,) if isinstance(types, (str, type)) else types
    if not isinstance(entries, Iterable):
        raise pytest.UsageError(
            f"{where}(types=...) takes type names or classes, got {types!r}; "
            "write e.g. types=['SpeechRecognizer'] or types=[MyClient]"
        )
    found: list[str | type] = []
    for entry in entries:
        if isinstance(entry, type):
            if not entry.__weakrefoffset__:
                raise pytest.UsageError(
                    f"{where}(types=...): {entry.__qualname__} instances do not support weak "
                    "references, so they cannot be counted; add '__weakref__' to its "
                    "__slots__ or leave it out"
                )
        elif not isinstance(entry, str) or not entry:
            raise pytest.UsageError(
                f"{where}(types=...) takes type names or classes, got {entry!r}; "
                "write e.g. types=['SpeechRecognizer'] or types=[MyClient]"
            )
        found.append(entry)
    return tuple(found)


# -- session state ------------------------------------------------------------------


@dataclass
class _Session:
    """Command-line options and what the session did."""

    check_all: bool
    repeat: tuple[int, int] | None
    settle_s: float
    warmup_s: float | None = None
    tracked: tuple[str, ...] = ()
    checked: int = 0
    repeated: int = 0
    leaked: list[str] = field(default_factory=list)

    def warm_up(self) -> None:
        """Once, before the first baseline: registry on, extra types tracked, SDK imported."""
        if self.warmup_s is not None:
            return
        from . import _registry  # noqa: PLC0415 - the SDK is imported only when checking
        from ._integration import activate_installed  # noqa: PLC0415

        started = time.monotonic()
        for failure in activate_installed():
            warnings.warn(
                f"nativeguard: an installed SDK failed to import at warm-up: {failure}",
                pytest.PytestWarning,
                stacklevel=2,
            )
        _registry.enable()
        extra = _extra_types()
        for cls in extra:
            try:
                _registry.track_types(cls)
            except TypeError:
                continue  # not weak-referenceable in this version: not countable
        self.tracked = tuple(cls.__qualname__ for cls in extra)
        snapshot()  # first reading: loads the SDK core and its handle table
        self.warmup_s = time.monotonic() - started


def _extra_types() -> list[type]:
    """The classes every integration asks leak checks to count (executors, credentials)."""
    from ._integration import counted_types  # noqa: PLC0415 - loads entry points when checking

    return counted_types()


_SESSION = pytest.StashKey[_Session]()
_SETTINGS = pytest.StashKey[_Settings]()
_CHECKER = pytest.StashKey["LeakChecker"]()
_CALL_OK = pytest.StashKey[bool]()
_VERDICT = pytest.StashKey[str]()


# -- the checker the fixture yields -------------------------------------------------


class LeakChecker:
    """What the ``nativeguard`` fixture yields: the test's baseline and allowlist.

    The verdict is given at teardown; :meth:`check` asks for one now without
    failing anything.
    """

    def __init__(
        self, settings: _Settings, settle_s: float, *, test_files: frozenset[str] = frozenset()
    ) -> None:
        self._settings = settings
        self._settle_s = settle_s
        self._test_files = test_files
        self._allow: list[Allow] = list(settings.allow)
        self._names = type_names(settings.types)
        self._before = self._baseline()
        self.leak_check_result: LeakCheck | None = None
        """Set in repeat mode: the judged runs."""

    def _baseline(self) -> Snapshot:
        if self._settings.rss_growth_mb is not None:
            from ._memory import trim  # noqa: PLC0415

            trim()
        return snapshot()

    @property
    def before(self) -> Snapshot:
        """The baseline the test is compared with."""
        return self._before

    @property
    def allowed(self) -> tuple[Allow, ...]:
        return tuple(self._allow)

    def allow(self, what: str, reason: str) -> None:
        """Excuse growth of ``what`` (see :class:`Allow`) for this test; ``reason`` is required."""
        self._allow.append(Allow(what, reason))

    def reset(self) -> Snapshot:
        """Take a new baseline, e.g. after the test's own warm-up; returns it."""
        self._before = self._baseline()
        return self._before

    def check(self) -> LeakReport | None:
        """What leaked since the baseline, settled; None if nothing did. Never fails the test."""
        return check(
            self._before,
            allow=self._allow,
            types=self._names,
            native_handles=self._settings.native_handles,
            threads=self._settings.threads,
            fds=self._settings.fds,
            settle_s=self._settle_s,
        )

    def rss_growth_bytes(self) -> int:
        """RSS now (after ``malloc_trim``) minus the baseline's."""
        from ._memory import trim  # noqa: PLC0415

        trim()
        return snapshot().rss_bytes - self._before.rss_bytes

    def leak_check(self, fn: Callable[[], object], **kwargs: Any) -> LeakCheck:
        """:func:`~nativeguard._leakcheck.leak_check` with this test's switches and allowlist."""
        options: dict[str, Any] = {
            "allow": self._allow,
            "types": self._names,
            "native_handles": self._settings.native_handles,
            "threads": self._settings.threads,
            "fds": self._settings.fds,
            "rss_growth_mb": self._settings.rss_growth_mb,
            "settle_s": self._settle_s,
        }
        options.update(kwargs)
        return leak_check(fn, **options)

    def _verdict(self) -> str | None:
        """The failure text at teardown, or None.

        On a suspected leak, the test's own finished frames are cleared (see
        :func:`clear_finished_frames`) and the check runs again.
        """
        report = self.check()
        if report is not None:
            # Checked again even when no frame was cleared: the heap walk that
            # looks for them allocates, and the automatic collection it can
            # trigger may just have freed the suspects (the verdict would be stale).
            clear_finished_frames(self._test_files)
            report = self.check()
        lines = [] if report is None else [str(report)]
        limit = self._settings.rss_growth_mb
        if limit is not None:
            grown = self.rss_growth_bytes()
            if grown > limit * _MB:
                lines.append(
                    f"RSS grew by {grown / _MB:.1f} MB (after malloc_trim), more than the "
                    f"{limit:g} MB no_leaks(rss_growth_mb=...) allows"
                )
        return "\n".join(lines) if lines else None


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
    config.addinivalue_line("markers", _MARKER_HELP)
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
    config.stash[_SESSION] = _Session(
        check_all=bool(config.getoption("nativeguard", False)), repeat=repeat, settle_s=settle_s
    )


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    state = config.stash[_SESSION]
    for item in items:
        marker = item.get_closest_marker(_MARKER)
        if marker is not None:
            try:
                settings = _settings_from_marker(marker, state.repeat)
            except pytest.UsageError as error:
                raise pytest.UsageError(f"{item.nodeid}: {error}") from None
        elif state.check_all or "nativeguard" in getattr(item, "fixturenames", ()):
            settings = _Settings(repeat=state.repeat)
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
            from . import _registry  # noqa: PLC0415

            _registry.track_types(*classes)
    checker = LeakChecker(settings, state.settle_s, test_files=_test_files(item))
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


def _test_files(item: pytest.Item) -> frozenset[str]:
    path = getattr(item, "path", None)
    return frozenset() if path is None else frozenset({str(path)})


_FRAME_OWNERS = (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)


def clear_finished_frames(files: frozenset[str], *, logged: bool = False) -> int:
    """Clear the locals of finished frames the test's own bookkeeping keeps; how many.

    - Frames of code in ``files`` (the test module): a test's frames outlive
      it when a garbage cycle holds them, ``pytest.raises(...) as excinfo``
      (the frame holds ``excinfo``, whose traceback holds the frame) or an
      exception a callback stored. Their locals are the test's, not the code
      under test's.
    - With ``logged``, the traceback frames of exceptions that captured log
      records hold: ``logger.warning("failed: %s", error)`` (azure-identity
      does this) puts the exception and so every frame's locals in the
      record, and pytest keeps a phase's records until its teardown, which
      in repeat mode pins one set of objects per run. The records keep their
      message and traceback text.

    unittest clears frames the same way (``traceback.clear_frames`` in
    ``assertRaises``). Executing frames, frames of suspended generators and
    coroutines (``yield`` fixtures: clearing would close them) and module
    bodies are left alone. One heap walk.
    """
    frames: dict[int, types.FrameType] = {}
    if logged:
        for frame in _logged_frames():
            frames[id(frame)] = frame
    if not files and not frames:
        return 0
    suspended: set[int] = set()
    for obj in gc.get_objects():
        kind = type(obj)  # not isinstance(): a dead weakproxy raises on it
        if kind is types.FrameType:
            if obj.f_code.co_filename in files and obj.f_code.co_name != "<module>":
                frames[id(obj)] = obj
        elif kind in _FRAME_OWNERS:
            owned = getattr(obj, "gi_frame", None) or getattr(obj, "cr_frame", None)
            owned = owned or getattr(obj, "ag_frame", None)
            if owned is not None:  # None once the generator or coroutine finished
                suspended.add(id(owned))
    cleared = 0
    for key, frame in frames.items():
        if key in suspended:
            continue
        try:
            frame.clear()
        except RuntimeError:  # still executing
            continue
        # clear() empties the fast locals only; reading f_locals drops them from
        # the dict a tracer or a traceback formatter materialised (3.11).
        frame.f_locals  # noqa: B018
        cleared += 1
    frames.clear()
    return cleared


def _logged_frames() -> list[types.FrameType]:
    """Traceback frames of exceptions in the records of the root logger's capturing handlers."""
    found: list[types.FrameType] = []
    for handler in logging.getLogger().handlers:
        records = getattr(handler, "records", None)
        if not isinstance(records, list):
            continue
        for record in records:
            if not isinstance(record, logging.LogRecord):
                continue
            errors = list(record.args) if isinstance(record.args, tuple) else []
            if record.exc_info:
                errors.append(record.exc_info[1])
            for error in errors:
                found.extend(_traceback_frames(error))
    return found


def _traceback_frames(error: object) -> list[types.FrameType]:
    frames: list[types.FrameType] = []
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return frames


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
    if (
        settings is None
        or settings.repeat is None
        or checker is None
        or inspect.iscoroutinefunction(original)
    ):
        return (yield)
    warmup, runs = settings.repeat

    files = _test_files(pyfuncitem)

    def once(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        # As at teardown: the test's frames are not the leak, and pytest keeps
        # this phase's log records (their exceptions' frames) until teardown.
        clear_finished_frames(files, logged=True)

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
