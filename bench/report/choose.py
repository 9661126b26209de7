"""What to choose, per route and latency: the Pareto front of the columns and the winner by
steady sRPS, in sentences made from the numbers.

Four axes per column at one (route, latency): steady sRPS (higher is better; the report's
estimate, `stats.steady_estimate`), p99 response time (mean over the successful repeats),
peak server + DB memory and peak PostgreSQL connections (the largest over the successful
repeats; lower is better for all three). A column is on the front when no other column is
at least as good on every axis and better on one. The winner is separated from the
runner-up when their 95% intervals (across repeats, else within the cell; `stats.py`) do
not overlap. Columns with no successful repeat, or without one of the four figures, are
named with the reason, never dropped; unsteady columns are compared as measured and named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.report.data import Run
from bench.report.stats import METHOD_REPEATS, Estimate, mean_metric, ok_cells
from bench.report.tables import UNSTEADY_MARK, Estimates, number

AXES = ("steady sRPS", "p99", "peak server + DB MiB", "peak DB connections")
METHOD = (
    "Pareto front: no other column is at least as good on all of steady sRPS (higher is "
    "better), p99 response time, peak server + DB memory and peak PostgreSQL connections "
    "(lower is better), and better on one. p99 is the mean over a column's successful "
    "repeats, the peaks the largest. The winner is separated from the runner-up when their "
    "95% intervals (across repeats where there are several, else the cell's own batch-means "
    "interval) do not overlap; overlapping intervals mean this run cannot rank the two.")


@dataclass(frozen=True)
class Point:
    """One column at one (route, latency), on the four axes (None: not recorded)."""

    column: str
    srps: Estimate
    p99_ms: float | None
    server_db_mib: float | None
    db_connections: float | None
    repeats_note: str = ""  # " (1 of 2 repeats)" when some repeats did not succeed

    @property
    def costs(self) -> tuple[float, float, float, float] | None:
        """The four axes, each oriented so that lower is better; None if one is missing."""
        values = (self.p99_ms, self.server_db_mib, self.db_connections)
        if any(v is None for v in values):
            return None
        p99, mib, connections = values
        assert p99 is not None and mib is not None and connections is not None
        return (-self.srps.mean, p99, mib, connections)

    @property
    def missing_axes(self) -> list[str]:
        return [name for name, value in zip(AXES[1:], (self.p99_ms, self.server_db_mib,
                                                        self.db_connections), strict=True)
                if value is None]

    @property
    def label(self) -> str:
        return self.column + (f" {UNSTEADY_MARK}" if self.srps.unsteady else "") + \
            self.repeats_note


def dominates(a: Point, b: Point) -> bool:
    """a is at least as good as b on every axis and better on at least one."""
    ca, cb = a.costs, b.costs
    if ca is None or cb is None:
        return False
    return all(x <= y for x, y in zip(ca, cb, strict=True)) and ca != cb


@dataclass(frozen=True)
class Winner:
    best: Point
    runner_up: Point | None
    separated: bool | None  # None: a missing interval, or no runner-up


@dataclass
class Choice:
    route: str
    latency_ms: int
    points: list[Point]  # columns with a steady sRPS, in the report's column order
    front: list[str]
    dominated: dict[str, list[str]]  # column -> the front columns that dominate it
    incomplete: list[Point]  # a steady sRPS but not all four axes: not on the front
    absent: list[tuple[str, str]] = field(default_factory=list)  # (column, why not)
    winner: Winner | None = None


def _absent_reason(run: Run, column: str, route: str, latency: int) -> str | None:
    cells = run.group(column, route, latency)
    if not cells:
        return "not planned"
    if ok_cells(cells):
        return None
    broken = [c for c in cells if c.status not in ("ok", "missing")]
    if not broken:
        return "missing: no cell.json"
    first = broken[0]
    return first.status + (f": {first.reason}" if first.reason else "")


def _point(run: Run, column: str, route: str, latency: int, estimate: Estimate) -> Point:
    cells = ok_cells(run.group(column, route, latency))

    def peak(name: str) -> float | None:
        values = [v for c in cells if (v := c.metric(name)) is not None]
        return max(values) if values else None

    total = len(run.group(column, route, latency))
    note = "" if len(cells) == total else f" ({len(cells)} of {total} repeats)"
    return Point(column, estimate, mean_metric(cells, "p99_ms"),
                 peak("peak_server_db_rss_mib"), peak("peak_db_connections"), note)


def winner_of(points: list[Point]) -> Winner | None:
    """The highest steady sRPS (the first column on a tie), its runner-up, and whether
    their intervals separate them."""
    if not points:
        return None
    ranked = sorted(points, key=lambda p: -p.srps.mean)  # stable: column order on ties
    best = ranked[0]
    if len(ranked) == 1:
        return Winner(best, None, None)
    second = ranked[1]
    if best.srps.low is None or second.srps.high is None:
        return Winner(best, second, None)
    return Winner(best, second, best.srps.low > second.srps.high)


def choose(run: Run, estimates: Estimates, route: str, latency: int) -> Choice:
    points: list[Point] = []
    absent: list[tuple[str, str]] = []
    for column in [c.name for c in run.columns]:
        reason = _absent_reason(run, column, route, latency)
        estimate = estimates.get((column, route, latency))
        if reason is None and estimate is None:
            successes = mean_metric(run.group(column, route, latency), "total_successes")
            reason = "no steady sRPS" + ("" if successes is None else
                                         f": {number(successes, 0)} successful requests")
        if reason is not None:
            absent.append((column, reason))
            continue
        assert estimate is not None
        points.append(_point(run, column, route, latency, estimate))
    complete = [p for p in points if p.costs is not None]
    dominated = {p.column: [q.column for q in complete if dominates(q, p)] for p in complete}
    front = [p.column for p in complete if not dominated[p.column]]
    dominated = {column: [d for d in by if d in front] for column, by in dominated.items()
                 if by}
    return Choice(route, latency, points, front, dominated,
                  [p for p in points if p.costs is None], absent, winner_of(points))


def _interval(estimate: Estimate) -> str:
    if estimate.low is None or estimate.high is None:
        return "no interval"
    how = (f"across {estimate.n} repeats" if estimate.method == METHOD_REPEATS
           else "within the cell")
    return f"95% CI {number(estimate.low)} to {number(estimate.high)}, {how}"


def winner_sentence(winner: Winner) -> str:
    best, second = winner.best, winner.runner_up
    head = (f"Highest steady sRPS: {best.label}, "
            f"{number(best.srps.mean)} ({_interval(best.srps)})")
    if second is None:
        return head + "; no other column has a steady sRPS to compare it with."
    margin = best.srps.mean - second.srps.mean
    relative = (f" ({best.srps.mean / second.srps.mean:.2f}x)" if second.srps.mean > 0
                else "")
    other = (f"the runner-up {second.label} at "
             f"{number(second.srps.mean)} ({_interval(second.srps)})")
    text = (f"{head}, level with {other} (the first in column order is named)" if margin == 0
            else f"{head}, ahead of {other} by {number(margin)} sRPS{relative}")
    if winner.separated is None:
        return text + "; without both intervals this run cannot say whether it is separated."
    if winner.separated:
        return text + "; the intervals do not overlap: separated."
    return text + "; the intervals overlap: not separated, this run cannot rank the two."


def choice_sentences(choice: Choice) -> list[str]:
    """The sentences for one (route, latency), each made from the numbers."""
    where = f"{choice.route}/ at {choice.latency_ms} ms"
    if not choice.points:
        out = [f"{where}: no column has a steady sRPS, so there is nothing to choose."]
    else:
        labels = {p.column: p.label for p in choice.points}
        if choice.front:
            front = ", ".join(labels[c] for c in choice.front)
            out = [f"{where}: Pareto front (steady sRPS, p99, peak server + DB MiB, "
                   f"peak DB connections): {front}."]
        else:
            out = [f"{where}: no column has all four figures, so there is no Pareto front."]
        if choice.dominated:
            out.append("Dominated: " + "; ".join(
                f"{labels[c]} (by {', '.join(labels[d] for d in by)})"
                for c, by in choice.dominated.items()) + ".")
        if choice.incomplete:
            out.append("Left out of the front for lack of a figure: " + "; ".join(
                f"{p.label} (no {', no '.join(p.missing_axes)})" for p in choice.incomplete)
                + ".")
        if choice.winner is not None:
            out.append(winner_sentence(choice.winner))
        unsteady = [p.column for p in choice.points if p.srps.unsteady]
        if unsteady:
            out.append(f"{UNSTEADY_MARK} never settled, compared as measured (an average "
                       "over a drift, not a steady state): " + ", ".join(unsteady) + ".")
    if choice.absent:
        out.append("Not compared: " + "; ".join(f"{c} ({why})" for c, why in choice.absent)
                   + ".")
    return out
