"""Does cpu/ give the same figure from one run to the next? Its cells, run several times.

    python benchmarks/cpu_work.py [--runs 3] [--variants V1,V2] [--profile quick] [--out DIR]
    python benchmarks/cpu_work.py --results DIR1 DIR2 ...     # only read runs that exist

Runs `python -m bench run --routes cpu --latencies 0` (each cpu/ request: the profile's
cpu_ms of CPU time, bench/runner.py prepare_cpu_work) --runs times, one run after the
other, each with its own start-of-run calibration, as separate `nox -s bench` runs have.
Prints per run the calibration and the loop a start-sized cpu/ would have had
(cpu_ms / the calibration's median), then each variant's steady sRPS per run and how far
apart the runs landed (highest / lowest). Exits 1 when a variant's runs differ by more
than 10%, or a cell is not ok.

Measured (2026-11-28, three such runs against three with the loop sized at each run's
start, alternating; quick, 0 ms): sized loops of 7.8, 10.8 and 12.8 million turns gave
sync_gunicorn 1.93, 1.29 and 1.00 sRPS; the CPU-time budget gave 1.50, 1.50 and 1.50.
This script's own run: calibrations of 56.4, 94.7 and 77.4 ms (sized loops would have been
11.9, 7.1 and 8.7 million turns); sync_gunicorn and sync_gthread 1.500 in all three,
async_unlimited 1.500 / 1.429 / 1.429.

It also prints each run's interval and the z of each pair of runs (|difference| / combined
standard error, as benchmarks/calibration.py). With sync_gunicorn's interval from the
times between successes (bench/steady.py, 2026-12-07): 1.477, 1.482, 1.484 at ±0.4, 0.3,
0.1% gave z 1.8, 2.9, 1.2, which is why no interval is under ±1% now; with the floor, a
new three runs gave 1.482, 1.480, 1.475 ± 1.0%, z 0.22, 0.78, 0.49. sync_gthread (±22-36%)
and async_unlimited (±79-86%) answer in groups and keep wide intervals: z under 0.1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_work_text  # noqa: E402
from bench.metrics import CI_METHOD_GAPS  # noqa: E402
from bench.processes import run_to_end  # noqa: E402
from bench.record import CellRecord  # noqa: E402
from bench.report.data import Run, load_run  # noqa: E402
from bench.report.stats import CALIBRATION_Z, pair_z  # noqa: E402

VARIANTS = "sync_gunicorn,sync_gthread,async_unlimited"
SPREAD = 1.10  # highest / lowest steady sRPS of a variant's runs that still agree


def run_once(out: Path, variants: str, profile: str) -> None:
    cmd = [sys.executable, "-m", "bench", "run", "--variants", variants, "--routes", "cpu",
           "--latencies", "0", "--profile", profile, "--latency-backend", "none",
           "--rows", "20000", "--no-report", "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    run_to_end(cmd, cwd=REPO)  # Ctrl-C: the run stops its servers before this exits


def report(runs: list[Run]) -> int:
    ok = True
    steady: dict[str, list[float]] = {}
    cells: dict[str, list[CellRecord]] = {}
    for run in runs:
        calibration = run.info.get("machine_calibration") or {}
        work = run.info.get("cpu_work") or {}
        median = calibration.get("median_ms")
        sized = (f"; a loop sized from it: {work['ms'] / median * calibration['loop']:,.0f} "
                 "turns" if work.get("ms") and median else "")
        print(f"{run.folder}: calibration {median} ms{sized}; cpu/ {cpu_work_text(work)}")
        for cell in run.cells:
            value = cell.metric("steady_srps")
            if cell.status != "ok" or value is None:
                ok = False
                print(f"  {cell.cell_id}: {cell.status} ({cell.reason})")
                continue
            steady.setdefault(cell.column, []).append(value)
            cells.setdefault(cell.column, []).append(cell)
    print(f"\n{'variant':<20} {'steady sRPS per run':<30} {'highest / lowest':>16}")
    for column, values in steady.items():
        spread = max(values) / min(values) if min(values) > 0 else float("inf")
        ok = ok and spread <= SPREAD and len(values) == len(runs)
        print(f"{column:<20} {' '.join(f'{v:.3f}' for v in values):<30} {spread:>16.3f}")
    # The runs' own intervals against each other: z = |difference| / combined standard
    # error, as benchmarks/calibration.py does for repeats within one run.
    print(f"\n{'variant':<20} {'steady sRPS ± half-width (interval from)':<56} z of each pair")
    for column, entries in cells.items():
        shown = " / ".join(
            f"{c.metric('steady_srps') or 0:.3f} ± {c.metric('steady_half_width_pct') or 0:.1f}%"
            f" ({'gaps' if c.metrics.get('ci_method') == CI_METHOD_GAPS else 'bins'})"
            for c in entries)
        zs = [z for i, a in enumerate(entries) for b in entries[i + 1:]
              if (z := pair_z(a, b)) is not None]
        above = f" (above {CALIBRATION_Z})" if any(z > CALIBRATION_Z for z in zs) else ""
        print(f"{column:<20} {shown:<56} {' '.join(f'{z:.2f}' for z in zs)}{above}")
    print(f"\nagree: every variant's runs within {SPREAD:.2f}x, every cell ok" if ok else
          f"\ndisagree: a variant's runs differ by more than {SPREAD:.2f}x, or a cell is not ok")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs, one after the other "
                                                            "(default 3)")
    parser.add_argument("--variants", default=VARIANTS, help=f"default {VARIANTS}")
    parser.add_argument("--profile", default="quick", help="load profile (default quick)")
    parser.add_argument("--out", type=Path, help="folder of the runs (default: a temp one)")
    parser.add_argument("--results", type=Path, nargs="+", help="only read these runs")
    args = parser.parse_args()
    if args.results:
        return report([load_run(folder) for folder in args.results])
    if args.runs < 2:
        parser.error("--runs must be at least 2: one run has nothing to agree with")
    out = args.out or Path(tempfile.mkdtemp(prefix="cpu-work-"))
    folders = [out / f"run{i}" for i in range(1, args.runs + 1)]
    for folder in folders:
        run_once(folder, args.variants, args.profile)
    return report([load_run(folder) for folder in folders])


if __name__ == "__main__":
    sys.exit(main())
