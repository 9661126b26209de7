"""The report's figures (matplotlib, Agg backend): PNG for report.html, PNG + SVG on disk."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from bench.report.choose import Choice  # noqa: E402
from bench.report.series import Series  # noqa: E402
from bench.report.stats import Estimate  # noqa: E402

LOG_SCALE_SPREAD = 20.0  # max/min of a panel's means above which its y axis is logarithmic
# matplotlib's tab10, so every figure gives a column the same colour.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
RAMP_COLOUR = "#f3e9d2"
HOLD_COLOUR = "#e3f0e3"
WARMUP_COLOUR = "#f7f2e6"

plt.rcParams.update({
    "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "report",
    "svg.fonttype": "none",
})


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def save(fig: Figure, folder: Path, name: str, svg: bool = True, dpi: int = 110) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png"]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    if svg:
        paths.append(folder / f"{name}.svg")
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return paths


def needs_log_scale(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) >= 2 and max(positive) / min(positive) > LOG_SCALE_SPREAD


def interaction_figure(columns: list[str], routes: list[str], latencies: list[int],
                       estimates: Mapping[tuple[str, str, int], Estimate], folder: Path
                       ) -> list[Path]:
    """Steady sRPS vs latency, one panel per route, one line per column, 95% CI bars."""
    fig, axes = plt.subplots(1, len(routes), figsize=(4.2 * len(routes), 3.6), squeeze=False)
    for ax, route in zip(axes[0], routes, strict=True):
        means: list[float] = []
        for index, column in enumerate(columns):
            xs, ys, lows, highs = [], [], [], []
            for latency in latencies:
                estimate = estimates.get((column, route, latency))
                if estimate is None:
                    continue
                xs.append(latency)
                ys.append(estimate.mean)
                lows.append(estimate.mean - (estimate.low if estimate.low is not None
                                             else estimate.mean))
                highs.append((estimate.high if estimate.high is not None else estimate.mean)
                             - estimate.mean)
            if not xs:
                continue
            means += ys
            ax.errorbar(xs, ys, yerr=[[max(v, 0.0) for v in lows], highs], marker="o",
                        markersize=4, capsize=3, linewidth=1.5, color=colour(index),
                        label=column)
        if needs_log_scale(means):
            ax.set_yscale("log")
            ax.set_ylabel("steady sRPS (log scale)")
        else:
            ax.set_ylim(bottom=0)
            ax.set_ylabel("steady sRPS")
        ax.set_title(f"{route}/")
        ax.set_xlabel("added latency (ms)")
        ax.set_xticks(latencies)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4),
                   frameon=False, bbox_to_anchor=(0.5, -0.02 - 0.05 * (len(labels) // 5)))
    fig.suptitle("Steady successful requests/s vs added latency (95% CI)", fontsize=11)
    fig.tight_layout(rect=(0, 0.08 + 0.05 * (len(labels) // 5), 1, 1))
    return save(fig, folder, "interaction")


def resources_figure(columns: list[str], routes: list[str],
                     values: Mapping[tuple[str, str], dict[str, float | None]], folder: Path
                     ) -> list[Path]:
    """Grouped bars per route: peak server+DB memory, peak DB connections, KiB per request."""
    panels = [("peak_server_db_rss_mib", "peak server + DB memory (MiB)"),
              ("peak_db_connections", "peak PostgreSQL connections"),
              ("rss_per_in_flight_kib", "memory per concurrent request (KiB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(12.6, 3.4), squeeze=False)
    width = 0.8 / max(len(columns), 1)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for index, column in enumerate(columns):
            xs, ys = [], []
            for position, route in enumerate(routes):
                value = values.get((column, route), {}).get(key)
                if value is not None:
                    xs.append(position - 0.4 + width * (index + 0.5))
                    ys.append(value)
            ax.bar(xs, ys, width=width, color=colour(index), label=column)
        ax.set_xticks(range(len(routes)), [f"{r}/" for r in routes])
        ax.set_title(title)
        ax.grid(axis="x", visible=False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4),
                   frameon=False)
    fig.suptitle("Resources at peak, per column and route (max over latencies and repeats)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.1 + 0.05 * (len(labels) // 5), 1, 1))
    return save(fig, folder, "resources")


def choose_figure(route: str, columns: list[str], choices: list[Choice], folder: Path
                  ) -> list[Path]:
    """Steady sRPS against peak DB connections (top) and peak server + DB MiB (bottom), one
    panel per latency; front columns filled, dominated or incomplete ones hollow."""
    fig, axes = plt.subplots(2, len(choices), figsize=(3.4 * len(choices) + 0.6, 5.6),
                             squeeze=False)
    panels = [("db_connections", "peak DB connections"),
              ("server_db_mib", "peak server + DB MiB")]
    for col, choice in enumerate(choices):
        srps = [p.srps.mean for p in choice.points]
        for row, (key, xlabel) in enumerate(panels):
            ax = axes[row][col]
            xs: list[float] = []
            for point in choice.points:
                x = getattr(point, key)
                if x is None:
                    continue
                xs.append(x)
                index = columns.index(point.column)
                on_front = point.column in choice.front
                ax.plot([x], [point.srps.mean], marker="o", markersize=7, linestyle="none",
                        color=colour(index), markerfacecolor=colour(index) if on_front
                        else "none", markeredgewidth=1.5)
            if needs_log_scale(xs):
                ax.set_xscale("log")
            if needs_log_scale(srps):
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            ax.set_xlabel(xlabel)
            if col == 0:
                ax.set_ylabel("steady sRPS")
            if row == 0:
                ax.set_title(f"{route}/ at {choice.latency_ms} ms")
            if not choice.points:
                ax.text(0.5, 0.5, "no steady sRPS", transform=ax.transAxes, ha="center",
                        va="center", color="#777777")
    shown = {p.column for choice in choices for p in choice.points}
    ordered = [c for c in columns if c in shown]
    if ordered:  # one filled marker per column, whatever its state in the panels
        fig.legend([Line2D([], [], marker="o", linestyle="none", color=colour(
            columns.index(c))) for c in ordered], ordered, loc="lower center",
            ncol=min(len(ordered), 4), frameon=False)
    fig.suptitle(f"{route}/: steady sRPS against what it costs (filled: on the Pareto "
                 "front; hollow: dominated or lacking a figure)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(ordered) + 3) // 4), 1, 1))
    return save(fig, folder, f"choose_{safe_name(route)}")


@dataclass(frozen=True)
class Phases:
    """A cell's phases in seconds since its load started: ramp, detected warm-up, window."""

    ramp_s: float | None
    warmup_s: float | None
    end_s: float | None


def _phases(ax: Axes, phases: Phases) -> None:
    if phases.ramp_s is None:
        return
    ax.axvspan(0, phases.ramp_s, color=RAMP_COLOUR, zorder=0, linewidth=0)
    if phases.warmup_s is not None and phases.warmup_s > phases.ramp_s:
        ax.axvspan(phases.ramp_s, phases.warmup_s, color=WARMUP_COLOUR, zorder=0, linewidth=0)
    start = phases.warmup_s if phases.warmup_s is not None else phases.ramp_s
    if phases.end_s is not None and phases.end_s > start:
        ax.axvspan(start, phases.end_s, color=HOLD_COLOUR, zorder=0, linewidth=0)


def _plot(ax: Axes, xs: list[float], ys: list[float | None], **style: object) -> None:
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], **style)  # type: ignore[arg-type]


def timeseries_figure(cell_id: str, series: Series, phases: Phases, folder: Path) -> Path:
    """Users, sRPS and failures/s, p50/p95 over time; ramp shaded sand, hold green."""
    fig, axes = plt.subplots(3, 1, figsize=(6.4, 4.6), sharex=True)
    users, rates, latency = axes
    for ax in axes:
        _phases(ax, phases)
    _plot(users, series.t_s, series.users, color="#555555")
    users.set_ylabel("users")
    if all(u is None for u in series.users):
        users.text(0.5, 0.5, "users not recorded (rebuilt from responses.csv)",
                   transform=users.transAxes, ha="center", va="center", color="#777777")
    _plot(rates, series.t_s, series.srps, color=colour(0), label="sRPS")
    _plot(rates, series.t_s, series.failures_per_s, color=colour(3), label="failures/s")
    rates.set_ylabel("per second")
    rates.legend(loc="upper left", frameon=False, fontsize=7)
    _plot(latency, series.t_s, series.p50_ms, color=colour(2), label="p50")
    _plot(latency, series.t_s, series.p95_ms, color=colour(1), label="p95")
    latency.set_ylabel("response ms")
    latency.set_xlabel("seconds since start (sand: ramp, light: detected warm-up, "
                       "green: steady window)")
    if latency.get_lines():
        latency.legend(loc="upper left", frameon=False, fontsize=7)
    else:  # no request ended: no response time to draw (matplotlib would warn)
        latency.text(0.5, 0.5, "no request ended", transform=latency.transAxes, ha="center",
                     va="center", color="#777777")
    fig.suptitle(cell_id, fontsize=9)
    fig.tight_layout()
    return save(fig, folder, f"ts_{safe_name(cell_id)}", svg=False, dpi=72)[0]


@dataclass(frozen=True)
class RatioBar:
    """One matched cell of a comparison: NEW / BASE with its 95% interval, and its verdict."""

    label: str
    ratio: float
    low: float | None
    high: float | None
    verdict: str  # faster | slower | anything else (drawn grey)


VERDICT_COLOURS = {"faster": "#1a7f37", "slower": "#b42318"}


def ratio_figure(bars: list[RatioBar], min_change: float, folder: Path,
                 name: str = "compare_ratios") -> list[Path]:
    """NEW / BASE steady sRPS per matched cell with its 95% interval, sorted; 1 and the
    --min-change band marked. Intervals past the axis are cut at its edge."""
    bars = sorted(bars, key=lambda b: b.ratio)
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.17 * max(len(bars), 1)))
    right = max([2.0, *(1.15 * b.ratio for b in bars)])
    for y, bar in enumerate(bars):
        low = bar.ratio if bar.low is None else max(bar.low, 0.0)
        high = bar.ratio if bar.high is None else min(bar.high, right)
        colour_of = VERDICT_COLOURS.get(bar.verdict, "#7f7f7f")
        ax.plot([low, high], [y, y], color=colour_of, linewidth=1.4)
        ax.plot([bar.ratio], [y], "o", color=colour_of, markersize=3.5)
    ax.axvline(1.0, color="#333333", linewidth=0.8)
    if min_change > 0:
        ax.axvspan(1 - min_change, 1 + min_change, color="#eeeeee", zorder=0, linewidth=0)
    ax.set_yticks(range(len(bars)), [b.label for b in bars], fontsize=6.5)
    ax.set_ylim(-0.7, len(bars) - 0.3)
    ax.set_xlim(0, right)
    ax.set_xlabel("NEW / BASE steady sRPS (95% CI; green faster, red slower, grey not "
                  "significant or no test)")
    ax.grid(axis="y", visible=False)
    fig.suptitle("Steady sRPS ratio per cell, sorted", fontsize=11)
    fig.tight_layout()
    return save(fig, folder, name, svg=False)
