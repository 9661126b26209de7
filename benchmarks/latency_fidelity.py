"""How far the latency proxy's answer is from netem's (issue 14).

    python benchmarks/latency_fidelity.py [--rounds N] [--users U] [--hold-s S] [--out DIR]
        [--relay ours|python]

netem is the faithful backend (the study's `tc netem` on the server's egress); the proxy
is what runs on kernels without sch_netem, such as this machine's. The proxy does not
delay TCP handshakes and costs CPU. This measures what that does to the study's question:
for sync_gunicorn and async_unlimited on io_create/ at 0 and 100 ms, each cell runs under
netem and under the proxy, and each backend's 100/0 ratio of steady sRPS is compared.

Everything runs inside one User-Mode Linux boot (tests/uml.py; needs root and Debian's
user-mode-linux, whose kernel has sch_netem as a module). In each round the four cells
come in a shuffled order (seeded) and each runs under both backends back to back, the
backend going first alternating, so a drift of the machine favours neither. Each cell is
its own `python -m bench run` with the harness's own latency code.

UML has one slow CPU (system calls especially): absolute sRPS here are far below the
host's, and the proxy's CPU cost weighs more than on a machine with a core to spare.
The load profile is `tiny` (load/profiles.toml) with a longer hold (12 s) and, with
--users, another number of users (5 by default: async stays latency-bound on the guest's
one CPU; with 10 it is CPU-bound at both latencies). It is defined here and handed to the
harness through BENCH_REPO (a copy of load/ with one more profile; the other data folders
are links): load/profiles.toml itself is not changed.

--relay python runs the Python proxy (bench/latency/delay_proxy.py) where a run would run
the C relay (bench/latency/relay.py), to compare the two against netem.

Writes DIR/fidelity.json (every cell, and the summary) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("sync_gunicorn", "async_unlimited")
ROUTE = "io_create"
LATENCIES = (0, 100)
BACKENDS = ("netem", "proxy")
PROFILE = "uml_fidelity"
ROWS = 2000
CELL_TIMEOUT_S = 420


def _profile_table(users: int, hold_s: float) -> dict[str, Any]:
    """`tiny` from load/profiles.toml with `users` users and a hold of `hold_s` seconds,
    whichever of the file's hold keys it uses."""
    with (REPO / "load" / "profiles.toml").open("rb") as handle:
        table = dict(tomllib.load(handle)["tiny"])
    table.update(users=users, spawn_rate=users,
                 description=f"latency_fidelity.py: tiny with {users} users, {hold_s} s hold")
    for key in ("min_hold_s", "max_hold_s"):
        if key in table:
            table[key] = hold_s
    if "duration_s" in table:  # the earlier format: hold from hold_start_s to duration_s
        table["duration_s"] = float(table["hold_start_s"]) + 1 + hold_s
    return table


def _toml_value(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def make_repo(root: Path, users: int, hold_s: float) -> Path:
    """A BENCH_REPO whose load/profiles.toml has one more profile; the rest are links."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("servers", "shared_app", "pyproject.toml"):
        (root / name).symlink_to(REPO / name)
    (root / "load").mkdir()
    (root / "load" / "locustfile.py").symlink_to(REPO / "load" / "locustfile.py")
    text = (REPO / "load" / "profiles.toml").read_text()
    lines = [f"\n[{PROFILE}]"] + [f"{key} = {_toml_value(value)}"
                                  for key, value in _profile_table(users, hold_s).items()]
    (root / "load" / "profiles.toml").write_text(text + "\n".join(lines) + "\n")
    return root


def run_cell(out: Path, variant: str, latency_ms: int, backend: str, repo: Path
             ) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench", "run", "--latency-backend", backend,
               "--variants", variant, "--routes", ROUTE, "--latencies", str(latency_ms),
               "--profile", PROFILE, "--rows", str(ROWS), "--no-report", "--out", str(out)]
    started = time.monotonic()
    env = {**os.environ, "BENCH_REPO": str(repo)}
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=CELL_TIMEOUT_S)
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    except subprocess.TimeoutExpired:
        tail = [f"timed out after {CELL_TIMEOUT_S} s"]
    record: dict[str, Any] = {"variant": variant, "latency_ms": latency_ms,
                                 "backend": backend, "wall_s": round(time.monotonic() - started, 1),
                                 "out": str(out)}
    cells = sorted(out.glob("cells/*/cell.json"))
    if not cells:
        return {**record, "status": "failed", "reason": " | ".join(tail)}
    cell = json.loads(cells[0].read_text())
    metrics = cell.get("metrics") or {}
    run = json.loads((out / "run.json").read_text())
    return {**record, "status": cell["status"], "reason": cell.get("reason"),
            "ran_backend": run.get("latency_backend"),
            "steady_srps": metrics.get("steady_srps"),
            "steady_srps_ci95": metrics.get("steady_srps_ci95"),
            "p50_ms": metrics.get("p50_ms"), "total_failures": metrics.get("total_failures"),
            "verification_ms": cell.get("verification_ms")}


def _srps(cells: list[dict[str, Any]], variant: str, backend: str, latency_ms: int,
          round_no: int | None = None) -> list[float]:
    """Steady sRPS of the ok cells that match (of one round, or of all)."""
    return [float(c["steady_srps"]) for c in cells
            if c["variant"] == variant and c["backend"] == backend
            and c["latency_ms"] == latency_ms and c["status"] == "ok"
            and c["steady_srps"] is not None and round_no in (None, c["round"])]


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and backend: mean steady sRPS at 0 and 100 ms, their ratio; and the
    proxy's ratio minus netem's (points) and over netem's (relative)."""
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        row: dict[str, Any] = {}
        for backend in BACKENDS:
            at0, at100 = _srps(cells, variant, backend, 0), _srps(cells, variant, backend, 100)
            mean0 = statistics.fmean(at0) if at0 else None
            mean100 = statistics.fmean(at100) if at100 else None
            # One request alone (the harness's verification, before the load): what the
            # undelayed handshakes change without queueing.
            alone = [float(c["verification_ms"][ROUTE]) for c in cells
                     if c["variant"] == variant and c["backend"] == backend
                     and c["latency_ms"] == 100 and c.get("verification_ms")]
            row[backend] = {"srps_0": mean0, "srps_100": mean100, "n_0": len(at0),
                            "n_100": len(at100),
                            "ratio": mean100 / mean0 if mean0 and mean100 is not None else None,
                            "request_alone_ms_100": statistics.median(alone) if alone else None}
        netem, proxy = row["netem"]["ratio"], row["proxy"]["ratio"]
        if netem and proxy is not None:
            row["difference_points"] = 100 * (proxy - netem)
            row["difference_relative"] = proxy / netem - 1
        # The same difference within each round (its spread shows the noise).
        by_round = []
        for round_no in sorted({c["round"] for c in cells}):
            values = [_srps(cells, variant, backend, latency_ms, round_no)
                      for backend in BACKENDS for latency_ms in LATENCIES]
            if all(values) and values[0][0] and values[2][0]:
                n0, n100, p0, p100 = (v[0] for v in values)
                by_round.append(round(100 * (p100 / p0 - n100 / n0), 1))
        row["difference_points_by_round"] = by_round
        summary[variant] = row
    return summary


def table(summary: dict[str, Any]) -> str:
    def num(value: object, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, (int, float)) else "n/a"

    lines = ["| variant | netem 0 ms | netem 100 ms | netem 100/0 | proxy 0 ms | proxy 100 ms "
             "| proxy 100/0 | proxy - netem |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, row in summary.items():
        n, p = row["netem"], row["proxy"]
        diff = row.get("difference_points")
        rel = row.get("difference_relative")
        lines.append(
            f"| {variant} | {num(n['srps_0'], '.2f')} | {num(n['srps_100'], '.2f')} "
            f"| {num(n['ratio'], '.1%')} | {num(p['srps_0'], '.2f')} | {num(p['srps_100'], '.2f')} "
            f"| {num(p['ratio'], '.1%')} | {num(diff, '+.1f')} points"
            f" ({num(rel, '+.0%')}; by round {row.get('difference_points_by_round')}) |")
    lines.append("\nOne io_create request alone at 100 ms (verification, median ms): " + "; ".join(
        f"{variant} netem {num(row['netem'].get('request_alone_ms_100'), '.0f')}, "
        f"proxy {num(row['proxy'].get('request_alone_ms_100'), '.0f')}"
        for variant, row in summary.items()))
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def inside(args: argparse.Namespace) -> int:
    """In the UML guest: every cell, both backends, interleaved."""
    out: Path = args.out
    repo = make_repo(Path("/tmp/fidelity-repo"), args.users, args.hold_s)
    rng = random.Random(args.seed)
    data: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": args.seed, "rounds": args.rounds, "route": ROUTE, "rows": ROWS,
        "profile": _profile_table(args.users, args.hold_s), "cells": []}
    cells: list[dict[str, Any]] = data["cells"]
    flip = 0
    for round_no in range(1, args.rounds + 1):
        order = [(v, lat) for v in VARIANTS for lat in LATENCIES]
        rng.shuffle(order)
        for variant, latency_ms in order:
            backends = BACKENDS if flip % 2 == 0 else BACKENDS[::-1]
            flip += 1
            for backend in backends:
                cell_out = out / "runs" / f"r{round_no}_{variant}_{latency_ms}ms_{backend}"
                record = {"round": round_no, **run_cell(cell_out, variant, latency_ms,
                                                        backend, repo)}
                cells.append(record)
                print(f"round {round_no} {variant} {latency_ms} ms {backend}: "
                      f"{record['status']} steady sRPS {record.get('steady_srps')} "
                      f"({record['wall_s']} s)", flush=True)
                data["summary"] = summarize(cells)
                write_json(out / "fidelity.json", data)
    data["ended_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(out / "fidelity.json", data)
    return 0


def outside(args: argparse.Namespace) -> int:
    """On the host: boot UML, run this script inside it, print the table."""
    sys.path.insert(0, str(REPO / "tests"))
    import uml  # tests/uml.py

    from bench.pg_install import ensure_os_user

    problem = uml.uml_problem()
    if problem:
        print(f"User-Mode Linux unavailable: {problem}", file=sys.stderr)
        return 2
    ensure_os_user()  # the guest's /etc is read-only
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--inside", "--out", str(out),
            "--rounds", str(args.rounds), "--users", str(args.users),
            "--hold-s", str(args.hold_s), "--seed", str(args.seed)]
    budget = args.rounds * len(VARIANTS) * len(LATENCIES) * len(BACKENDS) * 120 + 120
    env = {"BENCH_CACHE_DIR": "/tmp/bench-cache"}
    if args.relay == "python":
        env["BENCH_PROXY_RELAY"] = "python"
    result = uml.run_in_uml(argv, rw=[out], env=env,
                            timeout_s=budget, mem="2G")
    print(result.output.strip())
    print(f"UML boot to power-off: {result.seconds:.0f} s, exit {result.returncode}")
    path = out / "fidelity.json"
    if not path.exists():
        print(result.console[-2000:], file=sys.stderr)
        return 1
    data = json.loads(path.read_text())
    data["uml_wall_s"] = round(result.seconds, 1)
    write_json(path, data)
    print(table(data.get("summary", {})))
    print(f"cells and summary: {path}")
    return 0 if result.returncode == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="repeats of every cell (3)")
    # 5: async stays latency-bound on the guest's one CPU (with 10 it is CPU-bound).
    parser.add_argument("--users", type=int, default=5, help="Locust users (5)")
    parser.add_argument("--hold-s", type=float, default=12.0, help="hold per cell, s (12)")
    parser.add_argument("--seed", type=int, default=14, help="seed of the cell order (14)")
    parser.add_argument("--relay", choices=("ours", "python"), default="ours",
                        help="the proxy program: ours (the C relay where the guest builds "
                             "it, as a run), or python (the Python proxy)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default results/fidelity-<date-time>)")
    parser.add_argument("--table", type=Path, default=None, metavar="FIDELITY_JSON",
                        help="only summarize an earlier run's fidelity.json and print it")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        data = json.loads(args.table.read_text())
        data["summary"] = summarize(data["cells"])
        write_json(args.table, data)
        print(table(data["summary"]))
        return 0
    if args.out is None:
        stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
        args.out = REPO / "results" / f"fidelity-{stamp}"
    return inside(args) if args.inside else outside(args)


if __name__ == "__main__":
    sys.exit(main())
