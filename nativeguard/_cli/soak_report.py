"""What ``nativeguard soak`` shows: the verdict table, the chart (PNG/SVG) and the HTML page.

The chart is made for a bug report: memory components stacked over the calls
(glibc's heap in use, the free heap it keeps, the rest of RSS) with RSS's
fitted slope and its 95 % band over the measured calls, the warm-up shaded;
native handles, live instances, threads and fds on a second panel; time per
call and Python's allocated blocks on a third. Matplotlib (the ``plot``
extra) is imported only here, and only to draw, without pyplot's global state
(a ``Figure`` saved directly), so it works headless and in threads.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence
from typing import Any

from .soak_run import LEAK, NOT_JUDGED, PLATEAU, Sample, SoakRun, Verdict, slope_band

__all__ = [
    "MissingPlotExtra",
    "compare_table",
    "figure_bytes",
    "require_matplotlib",
    "verdict_table",
    "write_html",
    "write_plot",
]

_MB = 1 << 20
_COLORS = {"heap": "#4c72b0", "retained": "#8fb3de", "other": "#d0d0d0", "rss": "#222222"}
_RUN_COLORS = ("#c44e52", "#4c72b0")
_MAX_COUNT_LINES = 10


class MissingPlotExtra(ImportError):
    """Charts need matplotlib: ``pip install 'nativeguard[plot]'``."""


def require_matplotlib() -> None:
    """Raise :class:`MissingPlotExtra` now, before a long soak, if charts cannot be drawn."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError as error:
        raise MissingPlotExtra(
            f"--plot and --html draw with matplotlib, which is not installed ({error}); "
            "install it with: pip install 'nativeguard[plot]'"
        ) from None


# ------------------------------------------------------------------- text


def _fmt(value: float, kind: str, *, signed: bool = True) -> str:
    sign = "+" if signed else ""
    if kind == "bytes":
        return f"{value / _MB:{sign},.2f} MB"
    if kind == "seconds":
        return f"{value * 1000:{sign}.1f} ms"
    if kind == "blocks":
        return f"{value:{sign},.0f}"
    return f"{value:{sign}.2f}" if value != int(value) else f"{int(value):{sign}d}"


def _verdict_row(verdict: Verdict) -> tuple[str, str, str, str]:
    if verdict.kind == "seconds":
        growth = "median " + _fmt(verdict.growth, "seconds", signed=False)
    else:
        growth = _fmt(verdict.growth, verdict.kind)
    band = (
        f"{_fmt(verdict.slope, verdict.kind)} "
        f"({_fmt(verdict.slope_low, verdict.kind)} .. {_fmt(verdict.slope_high, verdict.kind)})"
    )
    return verdict.metric, verdict.verdict, growth, band


def _shown(run: SoakRun) -> list[Verdict]:
    """Every judged metric, and counts only when they moved (a quiet table for a clean run)."""
    out = []
    for verdict in run.verdicts:
        moved = verdict.growth != 0 or verdict.slope != 0 or verdict.verdict != "no leak"
        if verdict.kind != "count" or moved or not verdict.metric.startswith("instances:"):
            out.append(verdict)
    return out


def _header(run: SoakRun) -> str:
    where = "in a worker process (--isolated)" if run.isolated else "in this process"
    done = "" if run.completed else f", INTERRUPTED after {len(run.measured)} measured"
    return (
        f"nativeguard soak {run.target}: {run.warmup} warm-up + {run.iterations} measured "
        f"calls{done}, {where}, {run.elapsed_s:.1f} s"
    )


def verdict_table(run: SoakRun) -> str:
    """The terminal table: one row per metric, then the overall verdict and the leak report."""
    rows = [("metric", "verdict", "growth", "per call (95% band)")]
    rows += [_verdict_row(v) for v in _shown(run)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [_header(run)]
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    limit = run.growth_limit_bytes / _MB
    if run.leaked:
        lines.append(f"verdict: LEAK in {', '.join(run.leaks)}")
    else:
        lines.append("verdict: no leak")
    lines.append(
        f"(counts: a leak when every measured call grew them; bytes: when the fitted growth "
        f"exceeds {limit:g} MB, its band excludes 0 and the second half still grows)"
    )
    if run.report_text:
        lines.append("")
        lines.append("last call's leak report:")
        lines.append(run.report_text)
    return "\n".join(lines)


def compare_table(first: SoakRun, second: SoakRun) -> str:
    """Two runs side by side: each metric's verdict and slope per call."""
    runs = (first, second)
    names = [run.name for run in runs]
    metrics: list[str] = []
    for run in runs:
        for verdict in _shown(run):
            if verdict.metric not in metrics:
                metrics.append(verdict.metric)
    by_run = [{v.metric: v for v in run.verdicts} for run in runs]
    rows = [("metric", *names)]
    for metric in metrics:
        cells = []
        for table in by_run:
            found = table.get(metric)
            if found is None:
                cells.append("-")
            else:
                cells.append(f"{found.verdict}, {_fmt(found.slope, found.kind)}/call")
        rows.append((metric, *cells))
    rows.append(("verdict", *(("LEAK" if r.leaked else "no leak") for r in runs)))
    rows.append(("calls", *(f"{r.warmup} + {len(r.measured)}" for r in runs)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"nativeguard soak --compare: {names[0]}  vs  {names[1]}"]
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------- charts


def _figure(width: float, height: float) -> Any:
    require_matplotlib()
    from matplotlib.figure import Figure  # noqa: PLC0415

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _mb(values: Sequence[int | None]) -> list[float]:
    return [float("nan") if v is None else v / _MB for v in values]


def _measured_start(samples: Sequence[Sample]) -> int | None:
    return next((s.index for s in samples if s.phase == "measured"), None)


_Fit = tuple[list[int], list[float], list[float], list[float]]


def _fit_line(samples: Sequence[Sample], attr: str) -> _Fit | None:
    """x, fitted y, the band's low and high y (MB) over the measured calls, pivoted mid-run."""
    start = _measured_start(samples)
    if start is None:
        return None
    window = [s for s in samples if s.index >= start - 1]
    values = [getattr(s, attr) for s in window]
    if len(window) < 3 or any(v is None for v in values):
        return None
    ys = [v / _MB for v in values]
    xs = [s.index for s in window]
    slope, low, high = slope_band(ys)
    mid_x = sorted(xs)[len(xs) // 2]
    mid_y = sorted(y - slope * (x - xs[0]) for x, y in zip(xs, ys, strict=True))[len(ys) // 2]
    fitted = [mid_y + slope * (x - xs[0]) for x in xs]
    pivot = mid_y + slope * (mid_x - xs[0])
    lows = [pivot + low * (x - mid_x) for x in xs]
    highs = [pivot + high * (x - mid_x) for x in xs]
    return xs, fitted, lows, highs


def _verdict_of(run: SoakRun, metric: str) -> Verdict | None:
    return next((v for v in run.verdicts if v.metric == metric), None)


def _memory_panel(ax: Any, run: SoakRun) -> None:
    samples = run.samples
    xs = [s.index for s in samples]
    if all(s.heap_in_use_bytes is not None for s in samples):
        ax.stackplot(
            xs,
            _mb([s.heap_in_use_bytes for s in samples]),
            _mb([s.heap_retained_bytes for s in samples]),
            _mb([s.other_bytes for s in samples]),
            labels=(
                "glibc heap in use",
                "free heap glibc keeps",
                "rest of RSS (code, stacks, pymalloc, mmaps)",
            ),
            colors=(_COLORS["heap"], _COLORS["retained"], _COLORS["other"]),
            alpha=0.9,
        )
    ax.plot(xs, _mb([s.rss_bytes for s in samples]), color=_COLORS["rss"], lw=1.4, label="RSS")
    fit = _fit_line(samples, "rss_bytes")
    verdict = _verdict_of(run, "rss_bytes")
    if fit is not None and verdict is not None:
        fx, fy, low, high = fit
        ax.fill_between(fx, low, high, color="#e377c2", alpha=0.25, lw=0, label="95% band")
        ax.plot(
            fx,
            fy,
            color="#c2185b",
            lw=1.6,
            ls="--",
            label=f"RSS slope {_per_call(verdict.slope)} ({verdict.verdict})",
        )
    _shade_warmup(ax, run)
    rss = [s.rss_bytes / _MB for s in samples]
    top = max(rss) if rss else 1.0
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("MB")
    ax.legend(loc="upper left", fontsize=8, ncol=2, framealpha=0.9)
    ax.grid(alpha=0.3)


def _per_call(slope_bytes: float) -> str:
    if abs(slope_bytes) >= _MB:
        return f"{slope_bytes / _MB:+,.1f} MB/call"
    return f"{slope_bytes / 1024:+,.1f} KiB/call"


def _shade_warmup(ax: Any, run: SoakRun) -> None:
    start = _measured_start(run.samples)
    if run.warmup and start is not None and start > 1:
        ax.axvspan(0, start - 1, color="#f0e68c", alpha=0.35, lw=0)
        ax.text(
            (start - 1) / 2,
            0.02,
            "warm-up",
            transform=ax.get_xaxis_transform(),
            ha="center",
            fontsize=8,
            color="#665500",
        )


def _count_series(run: SoakRun) -> list[tuple[str, list[int]]]:
    samples = run.samples
    series: list[tuple[str, list[int]]] = []
    integrations = sorted({name for s in samples for name in s.native})
    for integration in integrations:
        for type_name in sorted({t for s in samples for t in s.native.get(integration, {})}):
            values = [s.native.get(integration, {}).get(type_name, 0) for s in samples]
            series.append((f"native {type_name} ({integration})", values))
    for type_name in sorted({t for s in samples for t in s.instances}):
        series.append((f"live {type_name}", [s.instances.get(type_name, 0) for s in samples]))
    series.append(("Python threads", [s.python_threads for s in samples]))
    series.append(("native threads", [s.native_threads for s in samples]))
    series.append(("open fds", [s.fds for s in samples]))
    moving = [item for item in series if max(item[1]) != min(item[1])]
    steady = [item for item in series if max(item[1]) == min(item[1])]
    moving.sort(key=lambda item: -(max(item[1]) - min(item[1])))
    return (moving + steady)[:_MAX_COUNT_LINES]


def _counts_panel(ax: Any, run: SoakRun) -> None:
    xs = [s.index for s in run.samples]
    for name, values in _count_series(run):
        ax.step(xs, values, where="post", lw=1.3, label=name)
    _shade_warmup(ax, run)
    ax.set_ylabel("count")
    ax.set_ylim(bottom=0)
    # Beside the panel: up to ten lines would hide the data they name.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5, framealpha=0.9)
    ax.grid(alpha=0.3)


def _calls_panel(ax: Any, run: SoakRun) -> None:
    calls = [s for s in run.samples if s.call_s is not None]
    ax.plot(
        [s.index for s in calls],
        [1000 * (s.call_s or 0.0) for s in calls],
        color="#55a868",
        lw=1.2,
        marker=".",
        ms=3,
        label="time per call (ms)",
    )
    times = sorted(1000 * (s.call_s or 0.0) for s in calls)
    if times and times[0] > 0 and times[-1] > 20 * times[len(times) // 2]:
        # One slow call (a first use, a JIT) would flatten the others to zero.
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (log)")
    else:
        ax.set_ylabel("ms per call")
        ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(
        [s.index for s in run.samples],
        [s.python_allocated_blocks / 1000 for s in run.samples],
        color="#8172b2",
        lw=1.0,
        ls=":",
        label="Python allocated blocks (thousands)",
    )
    twin.set_ylabel("blocks (k)")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    _shade_warmup(ax, run)
    ax.set_xlabel("call (0 = baseline before the first call)")


def _title(run: SoakRun) -> str:
    verdict = f"LEAK in {', '.join(run.leaks)}" if run.leaked else "no leak"
    where = ", isolated" if run.isolated else ""
    sdk = run.versions.get("azure-cognitiveservices-speech")
    glibc = run.versions.get("glibc")
    extra = ", ".join(
        part
        for part in (f"Speech SDK {sdk}" if sdk else "", f"glibc {glibc}" if glibc else "")
        if part
    )
    return (
        f"nativeguard soak {run.name}: {verdict}\n"
        f"{run.warmup} warm-up + {len(run.measured)} measured calls{where}"
        + (f"; {extra}" if extra else "")
    )


def _run_figure(run: SoakRun) -> Any:
    figure = _figure(10, 8.5)
    axes = figure.subplots(3, 1, sharex=True, height_ratios=(3.2, 2.2, 1.4))
    _memory_panel(axes[0], run)
    axes[0].set_title("memory after each call", fontsize=10, loc="left")
    _counts_panel(axes[1], run)
    axes[1].set_title("native handles, live objects, threads, fds", fontsize=10, loc="left")
    _calls_panel(axes[2], run)
    figure.suptitle(_title(run), fontsize=11)
    return figure


def _compare_figure(first: SoakRun, second: SoakRun) -> Any:
    figure = _figure(11, 7.5)
    axes = figure.subplots(2, 2, sharex=True)
    panels: tuple[tuple[Any, str, Any, bool], ...] = (
        (axes[0][0], "RSS growth since the baseline (MB)", lambda s: s.rss_bytes / _MB, True),
        (
            axes[0][1],
            "glibc heap in use, growth since the baseline (MB)",
            lambda s: float("nan") if s.heap_in_use_bytes is None else s.heap_in_use_bytes / _MB,
            True,
        ),
        (
            axes[1][0],
            "native handles, all types",
            lambda s: sum(sum(t.values()) for t in s.native.values()),
            False,
        ),
        (
            axes[1][1],
            "live tracked objects, all types",
            lambda s: sum(s.instances.values()),
            False,
        ),
    )
    for ax, title, read, relative in panels:
        for run, color, style in zip((first, second), _RUN_COLORS, ("-", "--"), strict=True):
            verdict = "LEAK" if run.leaked else "no leak"
            values = [read(s) for s in run.samples]
            if relative and values:
                values = [v - values[0] for v in values]
            ax.plot(
                [s.index for s in run.samples],
                values,
                color=color,
                lw=1.6,
                ls=style,
                label=f"{run.name} ({verdict})",
            )
        ax.set_title(title, fontsize=10, loc="left")
        if not relative:
            ax.set_ylim(bottom=0)
        ax.axhline(0, color="#888888", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[1]:
        ax.set_xlabel("call (0 = baseline)")
    figure.suptitle(f"nativeguard soak --compare: {first.name} vs {second.name}", fontsize=11)
    return figure


def _format_of(path: str | os.PathLike[str]) -> str:
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in (".png", ".svg"):
        raise ValueError(f"--plot must end in .png or .svg, got {os.fspath(path)!r}")
    return suffix[1:]


def figure_bytes(runs: Sequence[SoakRun], fmt: str) -> bytes:
    """The chart of one run, or the comparison of two, as PNG or SVG bytes."""
    if fmt not in ("png", "svg"):
        raise ValueError(f"chart format must be 'png' or 'svg', got {fmt!r}")
    if len(runs) == 1:
        figure = _run_figure(runs[0])
    elif len(runs) == 2:
        figure = _compare_figure(runs[0], runs[1])
    else:
        raise ValueError(f"a chart shows one run or compares two, got {len(runs)}")
    buffer = io.BytesIO()
    # metadata: no creation date, so the same run draws the same file (docs stay diff-able).
    metadata: dict[str, Any] = {"Date": None} if fmt == "svg" else {"Software": "nativeguard"}
    figure.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()


def write_plot(runs: Sequence[SoakRun], path: str | os.PathLike[str]) -> None:
    """Write :func:`figure_bytes` to ``path``; the format follows its suffix (.png or .svg)."""
    data = figure_bytes(runs, _format_of(path))
    with open(path, "wb") as file:
        file.write(data)


# --------------------------------------------------------------------- html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }
td.leak { background: #f8d7da; font-weight: bold; } td.plateau { background: #fff3cd; }
td.no-leak { background: #d4edda; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""


def _html_table(run: SoakRun) -> str:
    head = "".join(
        f"<th>{html.escape(h)}</th>" for h in ("metric", "verdict", "growth", "per call (95% band)")
    )
    rows = [f"<tr>{head}</tr>"]
    for verdict in _shown(run):
        metric, word, growth, band = _verdict_row(verdict)
        css = {LEAK: "leak", PLATEAU: "plateau", NOT_JUDGED: ""}.get(word, "no-leak")
        rows.append(
            f'<tr><td>{html.escape(metric)}</td><td class="{css}">{html.escape(word)}</td>'
            f"<td>{html.escape(growth)}</td><td>{html.escape(band)}</td></tr>"
        )
    return '<table id="verdicts">' + "".join(rows) + "</table>"


def html_page(runs: Sequence[SoakRun]) -> str:
    """One self-contained page: the chart (inline SVG), the verdicts, the last call's report."""
    chart = figure_bytes(runs, "svg").decode("utf-8")
    chart = chart[chart.index("<svg") :]  # drop the XML prolog and doctype inside HTML
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape('nativeguard soak: ' + ' vs '.join(r.name for r in runs))}</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    for run in runs:
        verdict = f"LEAK in {', '.join(run.leaks)}" if run.leaked else "no leak"
        parts.append(
            f"<h1>nativeguard soak <code>{html.escape(run.name)}</code>: "
            f"{html.escape(verdict)}</h1>"
        )
        parts.append(f"<p>{html.escape(_header(run))}</p>")
        versions = ", ".join(f"{k} {v}" for k, v in sorted(run.versions.items()))
        parts.append(
            f"<p>started {html.escape(run.started_at)}; {html.escape(versions)}; settle "
            f"{run.settle_s:g} s; malloc_trim after each call: {'yes' if run.trim else 'no'}; "
            f"byte growth limit {run.growth_limit_bytes / _MB:g} MB</p>"
        )
    parts.append(f'<div id="chart">{chart}</div>')
    for run in runs:
        if len(runs) > 1:
            parts.append(f"<h2>{html.escape(run.name)}</h2>")
        parts.append(_html_table(run))
        parts.append("<h2>Leak report of the last call</h2>")
        if run.report_text:
            parts.append(f'<pre id="report">{html.escape(run.report_text)}</pre>')
        else:
            parts.append('<p id="report">Nothing the last call created is still alive.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(runs: Sequence[SoakRun], path: str | os.PathLike[str]) -> None:
    """Write :func:`html_page` to ``path``."""
    page = html_page(runs)
    with open(path, "w", encoding="utf-8") as file:
        file.write(page)
