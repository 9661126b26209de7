"""The three-way interaction (sync vs async x I/O vs cpu/ x low vs high latency) in words
and as a table; the arithmetic is `bench.report.stats.interaction`."""

from __future__ import annotations

import math

from bench.report.data import Run
from bench.report.stats import Interaction, interaction
from bench.report.tables import Estimates, Table, TableCell

INTERACTION_METHOD = (
    "interaction = [(log S_sync,io,high - log S_sync,io,low) - (log S_async,io,high - log "
    "S_async,io,low)] - [the same on cpu/], on steady sRPS S, with the study-labelled Sync "
    "and Async Unlimited columns (else the first WSGI and the first ASGI column), one value "
    "per I/O route. Negative means latency costs sync more than async on the I/O route "
    "beyond what it costs each on cpu/. Interval: delta method; each cell's standard error "
    "is its CI half-width over the t quantile of its degrees of freedom, divided by its mean "
    "for the log scale; the eight variances are summed and a normal 95% quantile applied.")


def fold_phrase(fold: float, subject: str) -> str:
    """How a throughput changed, as a factor a reader can repeat."""
    if abs(fold - 1) < 0.05:
        return f"barely changes {subject} (÷{fold:.2f})"
    if fold >= 1:
        factor = f"{fold:.2g}" if fold < 10 else f"{fold:.0f}"
        return f"divides {subject} by {factor}"
    return f"multiplies {subject} by {1 / fold:.2g}"


def interaction_columns(run: Run) -> tuple[str, str] | None:
    columns = run.columns
    labelled = {c.study_label: c.name for c in reversed(columns) if c.study_label}
    sync = labelled.get("Sync") or next(
        (c.name for c in columns if c.interface == "wsgi"), None)
    asyn = labelled.get("Async Unlimited") or next(
        (c.name for c in columns if c.interface == "asgi"), None)
    return None if sync is None or asyn is None else (sync, asyn)


def interactions(run: Run, estimates: Estimates) -> tuple[list[Interaction], list[str]]:
    """The interaction per I/O route, and a sentence for each one that cannot be had."""
    pair = interaction_columns(run)
    if pair is None:
        return [], ["The three-way interaction needs a sync (WSGI) and an async (ASGI) "
                    "column; this run does not have both."]
    if "cpu" not in run.routes or len(run.latencies) < 2:
        return [], ["The three-way interaction needs cpu/ and an I/O route at two "
                    "latencies; this run does not have them."]
    io_routes = [r for r in run.routes if r != "cpu"]
    if not io_routes:
        return [], ["The three-way interaction needs an I/O route; this run has only "
                    "cpu/."]
    hold = run.profile.min_hold_s if run.profile else 0
    floor = 0.5 / hold if hold > 0 else 0.01
    found: list[Interaction] = []
    skipped: list[str] = []
    low, high = run.latencies[0], run.latencies[-1]
    for route in io_routes:
        result = interaction(lambda c, r, ms: estimates.get((c, r, ms)), pair[0],
                             pair[1], route, low, high, floor)
        if isinstance(result, str):
            skipped.append(f"The three-way interaction for {route}/ cannot be estimated: "
                           f"it {result}.")
        else:
            found.append(result)
    return found, skipped


def interaction_sentence(found: Interaction) -> str:
    interval = ("no interval: a cell lacks a confidence interval" if found.ci is None
                else f"95% CI {found.ci[0]:.2f} to {found.ci[1]:.2f}")
    route = f"{found.io_route}/"
    sentence = (
        f"Going from {found.low_ms} to {found.high_ms} ms "
        f"{fold_phrase(found.sync_io_fold, f'sync {route} throughput')} "
        f"({found.sync_column}) and "
        f"{fold_phrase(found.async_io_fold, 'async')} ({found.async_column}), while "
        f"on cpu/ it {fold_phrase(found.sync_cpu_fold, 'sync')} and "
        f"{fold_phrase(found.async_cpu_fold, 'async')}: the three-way interaction on "
        f"log steady sRPS is {found.value:.2f} ({interval}), a factor of "
        f"{math.exp(abs(found.value)):.2g}.")
    if found.floored:
        sentence += (" Zero throughput in " + ", ".join(found.floored) + " was replaced "
                     "by half a success over the hold phase to take its log.")
    return sentence


def interaction_table(found: list[Interaction]) -> Table | None:
    if not found:
        return None
    rows = []
    for item in found:
        ci = "n/a" if item.ci is None else f"{item.ci[0]:.2f} to {item.ci[1]:.2f}"
        rows.append([TableCell(f"{item.io_route}/"),
                     TableCell(f"{item.sync_io_fold:.3g}", True),
                     TableCell(f"{item.async_io_fold:.3g}", True),
                     TableCell(f"{item.sync_cpu_fold:.3g}", True),
                     TableCell(f"{item.async_cpu_fold:.3g}", True),
                     TableCell(f"{item.value:.2f}", True), TableCell(ci, True)])
    first = found[0]
    return Table(
        f"Three-way interaction ({first.sync_column} vs {first.async_column}, "
        f"{first.low_ms} vs {first.high_ms} ms)",
        ["I/O route", "sync I/O ÷", "async I/O ÷", "sync cpu ÷", "async cpu ÷",
         "interaction (log)", "95% CI"], rows, [],
        ["÷: steady sRPS at the low latency divided by steady sRPS at the high latency."])
