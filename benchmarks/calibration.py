"""Do the cells' intervals survive a rerun? Repeats of the same cells, compared.

    python benchmarks/calibration.py [--profile long] [--repeats 3] [--out DIR]
    python benchmarks/calibration.py --results DIR     # only read a run that exists

Runs {sync_gunicorn, async_unlimited} x io_create/ x {0, 100 ms} with --repeats 3
(interleaved, shuffled: bench run's own order), then for each cell and each pair of its
repeats prints z = |difference| / sqrt(se_a^2 + se_b^2), from each repeat's own 95%
interval (bench/report/stats.py repeat_pairs, as the report's calibration line). For
honest intervals z is |N(0, 1)|: above 2.5 about 1% of the time. Also prints each
repeat's steady sRPS, half-width, hold, why it stopped, the machine's CPU loop timed
just before it (cell.json machine_loop_ms) and the machine's speed during it (the probe,
metrics machine_probe_ms), with the probe's change between the repeats of a pair and the
pair's z at the same machine speed (speed z: the second repeat moved to the first one's
probe along the cells' slope of throughput on it, corrected for the probe's own noise:
bench/report/stats.py pooled_slope). Exits 1 unless every cell is ok and at
least all but one pair have z <= 2.5 as measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.processes import run_to_end  # noqa: E402
from bench.report.data import load_run  # noqa: E402
from bench.report.stats import CALIBRATION_Z, calibration_sentence, repeat_pairs  # noqa: E402

VARIANTS = "sync_gunicorn,async_unlimited"


def _num(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def run_cells(out: Path, profile: str, repeats: int, backend: str) -> float:
    cmd = [sys.executable, "-m", "bench", "run", "--variants", VARIANTS, "--routes",
           "io_create", "--latencies", "0,100", "--repeats", str(repeats), "--profile", profile,
           "--latency-backend", backend, "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    run_to_end(cmd, cwd=REPO)  # Ctrl-C: the run stops its servers before this exits
    return time.monotonic() - t0


def report(folder: Path) -> int:
    run = load_run(folder)
    print(f"\nrun {folder} (profile {run.info.get('profile', {}).get('name')}, seed "
          f"{run.info.get('seed')}, calibration "
          f"{(run.info.get('machine_calibration') or {}).get('median_ms')} ms "
          f"± {100 * ((run.info.get('machine_calibration') or {}).get('cv') or 0):.1f}%)")
    print(f"{'cell':<40} {'order':>5} {'steady sRPS':>12} {'±%':>6} {'warm-up s':>9} "
          f"{'window s':>8} {'loop ms':>7} {'probe ms':>8} {'slope':>7} {'stopped by':>10}"
          "  status")
    for cell in sorted(run.cells, key=lambda c: (c.column, c.latency_ms, c.repeat)):
        m = cell.metrics
        print(f"{cell.cell_id:<40} {cell.order or 0:>5} {m.get('steady_srps', 0):>12.2f} "
              f"{m.get('steady_half_width_pct') or 0:>6.1f} {m.get('warmup_s', 0):>9.2f} "
              f"{m.get('window_s', 0):>8.2f} {cell.machine_loop_ms or 0:>7.1f} "
              f"{_num(m.get('machine_probe_ms'), 8, 3)} {_num(m.get('speed_slope'), 7, 1)} "
              f"{cell.stopped_by or '-':>10}  {cell.status}"
              f"{' UNSTEADY' if m.get('unsteady') else ''}"
              f"{' (' + cell.reason.splitlines()[0] + ')' if cell.reason else ''}")
    pairs = repeat_pairs(run.cells)
    print(f"\n{'cell':<32} {'repeats':>8} {'values':>20} {'z':>6} {'speed z':>7} "
          f"{'speed change':>12}")
    for pair in pairs:
        values = f"{pair.values[0]:.2f} / {pair.values[1]:.2f}"
        change = pair.machine_change
        print(f"{pair.column + ' ' + str(pair.latency_ms) + ' ms':<32} "
              f"{pair.repeats[0]} vs {pair.repeats[1]:<3} {values:>20} {pair.z:>6.2f} "
              f"{_num(pair.speed_z, 7, 2)} "
              f"{'-' if change is None else f'{100 * change:.1f}%':>12}")
    within = sum(p.z <= CALIBRATION_Z for p in pairs)
    print(f"\n{within} of {len(pairs)} pairs within z <= {CALIBRATION_Z}")
    speed = [p.speed_z for p in pairs if p.speed_z is not None]
    if speed:
        print(f"{sum(z <= CALIBRATION_Z for z in speed)} of {len(speed)} pairs within speed z "
              f"<= {CALIBRATION_Z}")
    sentence = calibration_sentence(pairs)
    if sentence:
        print(sentence)
    ok = all(c.status == "ok" for c in run.cells)
    return 0 if ok and pairs and within >= len(pairs) - 1 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="long",
                        help="load profile (default long: holds up to 60 s for 5%%)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-backend", default="auto")
    parser.add_argument("--out", type=Path, help="results folder (default: a temp folder)")
    parser.add_argument("--results", type=Path, help="only read this existing run")
    args = parser.parse_args()
    if args.results:
        return report(args.results)
    out = args.out or Path(tempfile.mkdtemp(prefix="calibration-")) / "run"
    wall = run_cells(out, args.profile, args.repeats, args.latency_backend)
    print(f"wall time {wall / 60:.1f} min")
    return report(out)


if __name__ == "__main__":
    sys.exit(main())
