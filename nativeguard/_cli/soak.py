"""The ``nativeguard soak`` subcommand: arguments, progress, outputs, exit status.

Exit status: 0 no leak, 1 a leak, 2 a usage error (bad arguments, a target
that does not import, matplotlib missing for ``--plot``/``--html``, or a
target or setup that raised: then nothing could be judged), 130 interrupted
(the calls made so far are still judged and written).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any, TextIO

from ..verify._leakcheck import DEFAULT_RSS_GROWTH_MB
from .soak_run import (
    DEFAULT_ITERATIONS,
    DEFAULT_SETTLE_S,
    DEFAULT_WARMUP,
    Sample,
    SoakError,
    SoakRun,
    SoakUsageError,
    Verdict,
    load_run,
    run_soak,
)

__all__ = ["add_soak_parser", "soak_command"]

EXIT_OK = 0
EXIT_LEAK = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be between 0 and 60 seconds, got {value:g}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
    return value


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of MB: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
    return value


def add_soak_parser(commands: Any) -> None:
    """Register ``soak`` on the ``nativeguard`` command's subparsers."""
    soak = commands.add_parser(
        "soak",
        help="call a function many times, sample memory after each call, judge the trend",
        description=(
            "Call TARGET (module:function, no arguments, or those --setup returns) --warmup "
            "times, then --iterations times, sampling RSS, glibc's heap, Python's blocks, "
            "native handles, live objects, threads and fds after each call; print a verdict "
            "per metric. Exit status 0: no leak, 1: leak, 2: usage error."
        ),
    )
    soak.add_argument("target", nargs="?", metavar="TARGET", help="module:function to soak")
    soak.add_argument(
        "--setup",
        metavar="MODULE:FUNCTION",
        help=(
            "called once before the baseline; returns TARGET's arguments (a tuple, a dict of "
            "keywords, one value or None); a generator is resumed after the soak, for teardown"
        ),
    )
    soak.add_argument(
        "--warmup",
        type=_count(0),
        default=DEFAULT_WARMUP,
        metavar="W",
        help=f"unmeasured calls first (default {DEFAULT_WARMUP})",
    )
    soak.add_argument(
        "--iterations",
        "-n",
        type=_count(3),
        default=DEFAULT_ITERATIONS,
        metavar="N",
        help=f"measured calls (default {DEFAULT_ITERATIONS})",
    )
    soak.add_argument(
        "--settle",
        type=_seconds,
        default=DEFAULT_SETTLE_S,
        metavar="S",
        help=(
            f"wait up to S seconds after each call for native teardown (default "
            f"{DEFAULT_SETTLE_S:g}; a leaking call costs S/2; 0 reads at once)"
        ),
    )
    soak.add_argument(
        "--no-trim",
        action="store_true",
        help="do not malloc_trim after each call (shows the free heap glibc keeps growing)",
    )
    soak.add_argument(
        "--growth-limit",
        type=_megabytes,
        default=DEFAULT_RSS_GROWTH_MB,
        metavar="MB",
        help=(
            f"fitted RSS / heap growth over the measured calls that is a leak "
            f"(default {DEFAULT_RSS_GROWTH_MB:g})"
        ),
    )
    soak.add_argument(
        "--isolated",
        action="store_true",
        help="run the calls (and the sampling) in a WorkerPool worker process",
    )
    soak.add_argument(
        "--call-timeout",
        type=_positive_seconds,
        metavar="S",
        help="with --isolated: kill a call (or the setup) that runs longer than S seconds",
    )
    soak.add_argument("--json", metavar="PATH", help="write every sample and the verdicts")
    soak.add_argument(
        "--plot", metavar="PATH", help="write the chart, PNG or SVG by suffix (needs [plot])"
    )
    soak.add_argument(
        "--html", metavar="PATH", help="write one self-contained page: chart, verdicts, report"
    )
    soak.add_argument("--label", default="", help="the run's name in charts and comparisons")
    soak.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="compare two runs' --json files (terminal table; --plot/--html for one chart)",
    )
    soak.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def _usage(message: str, stderr: TextIO) -> int:
    print(f"nativeguard soak: error: {message}", file=stderr)
    return EXIT_USAGE


def soak_command(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``nativeguard soak`` for parsed ``args``; returns the exit status."""
    if args.compare and args.target:
        return _usage("give TARGET or --compare A.json B.json, not both", stderr)
    if not args.compare and not args.target:
        return _usage("give TARGET (module:function) or --compare A.json B.json", stderr)
    if args.plot and os.path.splitext(args.plot)[1].lower() not in (".png", ".svg"):
        return _usage(f"--plot must end in .png or .svg, got {args.plot!r}", stderr)
    if args.call_timeout is not None and not args.isolated:
        return _usage(
            "--call-timeout needs --isolated (a call in this process cannot be killed)", stderr
        )
    if args.compare and args.json:
        return _usage("--json writes a soak's samples; --compare reads two, it writes none", stderr)
    if args.plot or args.html:
        from .soak_report import MissingPlotExtra, require_matplotlib  # noqa: PLC0415

        try:
            require_matplotlib()
        except MissingPlotExtra as error:
            return _usage(str(error), stderr)
    for path in (args.json, args.plot, args.html):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            return _usage(f"the directory of {path!r} does not exist", stderr)
    if args.compare:
        return _compare(args, stdout, stderr)
    return _soak(args, stdout, stderr)


def _compare(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from .soak_report import compare_table, write_html, write_plot  # noqa: PLC0415

    try:
        runs = [load_run(path) for path in args.compare]
    except SoakUsageError as error:
        return _usage(str(error), stderr)
    print(compare_table(runs[0], runs[1]), file=stdout)
    if args.plot:
        write_plot(runs, args.plot)
        print(f"chart: {args.plot}", file=stdout)
    if args.html:
        write_html(runs, args.html)
        print(f"page: {args.html}", file=stdout)
    return EXIT_OK


def _soak(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    progress = None if args.quiet else _progress_printer(stderr, args.target)
    interrupted = False
    try:
        with progress or _Null():
            run = run_soak(
                args.target,
                setup=args.setup,
                warmup=args.warmup,
                iterations=args.iterations,
                settle_s=args.settle,
                trim_heap=not args.no_trim,
                growth_limit_mb=args.growth_limit,
                isolated=args.isolated,
                progress=progress,
                label=args.label,
                task_timeout_s=args.call_timeout,
            )
    except SoakUsageError as error:
        return _usage(str(error), stderr)
    except SoakError as error:
        print(f"nativeguard soak: {error}", file=stderr)
        partial: SoakRun | None = getattr(error, "partial", None)
        if args.json and partial is not None:
            _write_json(partial, args.json, error=str(error))
        return EXIT_USAGE
    if not run.completed:
        interrupted = True
        print(
            f"nativeguard soak: interrupted after {len(run.measured)} measured call(s)",
            file=stderr,
        )
    if run.teardown_error:
        print(f"nativeguard soak: warning: {run.teardown_error}", file=stderr)
    print(_table(run), file=stdout)
    _outputs(run, args, stdout)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_LEAK if run.leaked else EXIT_OK


def _table(run: SoakRun) -> str:
    from .soak_report import verdict_table  # noqa: PLC0415

    return verdict_table(run)


def _outputs(run: SoakRun, args: argparse.Namespace, stdout: TextIO) -> None:
    if args.json:
        _write_json(run, args.json)
        print(f"samples and verdicts: {args.json}", file=stdout)
    if args.plot or args.html:
        from .soak_report import write_html, write_plot  # noqa: PLC0415

        if args.plot:
            write_plot([run], args.plot)
            print(f"chart: {args.plot}", file=stdout)
        if args.html:
            write_html([run], args.html)
            print(f"page: {args.html}", file=stdout)


def _write_json(run: SoakRun, path: str, *, error: str | None = None) -> None:
    data = run.to_dict()
    data["error"] = error
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=1)
        file.write("\n")


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _current(verdicts: tuple[Verdict, ...] | None) -> str:
    if verdicts is None:
        return "warming up"
    leaks = [v.metric for v in verdicts if v.verdict == "leak"]
    return f"leak in {', '.join(leaks)}" if leaks else "no leak so far"


class _PlainProgress:
    """One line about every tenth of the run, for logs and pipes."""

    def __init__(self, stream: TextIO, target: str) -> None:
        self.stream = stream
        self.target = target

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, sample: Sample, total: int, verdicts: tuple[Verdict, ...] | None) -> None:
        step = max(1, (total - 1) // 10)
        if sample.index % step and sample.index != total - 1:
            return
        print(
            f"soak {self.target}: call {sample.index}/{total - 1} ({sample.phase}), "
            f"RSS {sample.rss_bytes / 2**20:.1f} MB, {_current(verdicts)}",
            file=self.stream,
            flush=True,
        )


class _RichProgress:
    """A live bar with the call, RSS and the verdict so far (rich, on a terminal)."""

    def __init__(self, stream: TextIO, target: str) -> None:
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]soak[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=stream),
            transient=False,
        )
        self.task = self.progress.add_task(target, total=None, status="starting")

    def __enter__(self) -> _RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, sample: Sample, total: int, verdicts: tuple[Verdict, ...] | None) -> None:
        status = f"RSS {sample.rss_bytes / 2**20:.1f} MB | {_current(verdicts)}"
        self.progress.update(self.task, total=total - 1, completed=sample.index, status=status)


def _progress_printer(stream: TextIO, target: str | None) -> _PlainProgress | _RichProgress:
    name = target or ""
    if stream.isatty():
        try:
            return _RichProgress(stream, name)
        except ImportError:
            pass
    return _PlainProgress(stream, name)
