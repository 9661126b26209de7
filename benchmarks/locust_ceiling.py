"""The load generator's ceiling on this machine: how many io_create requests per second
Locust (one process, FastHttpUser, as in a run) can send when the server costs nothing.
Compare it with the fastest variant's io_create throughput in a bench run: the ratio is
the headroom (issue 3).

    python benchmarks/locust_ceiling.py [--profile quick] [--processes 1] [--results DIR]
    python benchmarks/locust_ceiling.py --workers 2   # a master and 2 `bench load-worker`s

The "server" is a minimal HTTP/1.1 responder (a process of its own, on the server's core)
that answers every request with a fixed io_create-like JSON body. Locust runs on the other
core(s) exactly as the runner starts it; with --workers N, as `bench run --load-workers N`
starts it: a master here and N `python -m bench load-worker` processes (on this host, on
the same cores: what a second worker adds on other hosts is not measured here). With
--results DIR the best io_create steady sRPS
of that run is read from its summary.csv and set beside the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.load import LocustRun, MasterLocustRun, load_profile
from bench.metrics import cell_metrics
from bench.processes import stop_process
from bench.resources import ResourceSampler

BODY = json.dumps({"id": "00000000-0000-4000-8000-000000000000", "title": "t",
                   "content": "c", "created_at": "2026-01-01T00:00:00Z",
                   "updated_at": "2026-01-01T00:00:00Z"}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class Responder(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in self.buffer[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            self.transport.write(RESPONSE)


def serve(port: int, cpus: list[int]) -> None:
    os.sched_setaffinity(0, cpus)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Responder, "127.0.0.1", port,
                                                                backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def best_bench_srps(results: Path) -> tuple[str, float] | None:
    best: tuple[str, float] | None = None
    with (results / "summary.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["route"] != "io_create" or row["status"] != "ok" or not row["steady_srps"]:
                continue
            value = float(row["steady_srps"])
            if best is None or value > best[1]:
                best = (row["cell_id"], value)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0,
                        help="Locust workers of a master (bench run --load-workers)")
    parser.add_argument("--results", type=Path, help="a results folder to compare with")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, other_cpus = (cpus[-1:], cpus[:-1]) if len(cpus) > 1 else (cpus, cpus)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = multiprocessing.Process(target=serve, args=(port, server_cpus), daemon=True)
    server.start()
    profile = load_profile(args.profile)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="locust-ceiling-") as tmp:
            out = Path(tmp)
            url = f"http://127.0.0.1:{port}"
            locust: LocustRun
            if args.workers:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    master_port = probe.getsockname()[1]
                locust = MasterLocustRun(url, "io_create", profile, out, args.workers,
                                         "127.0.0.1", master_port, cpu_affinity=other_cpus)
                for _ in range(args.workers):
                    worker = subprocess.Popen(
                        [sys.executable, "-m", "bench", "load-worker", "--master",
                         f"127.0.0.1:{master_port}"], stdout=subprocess.DEVNULL,
                        start_new_session=True)
                    os.sched_setaffinity(worker.pid, other_cpus)
                    workers.append(worker)
            else:
                locust = LocustRun(url, "io_create", profile, out, processes=args.processes,
                                   cpu_affinity=other_cpus)
            sampler = ResourceSampler(out / "resources.csv", lambda: [], lambda: [],
                                      lambda: [*locust.pids(), *(w.pid for w in workers)],
                                      db_user="")
            locust.start()
            sampler.start()
            try:
                locust.wait(timeout=profile.max_duration_s + 120)
            finally:
                sampler.stop()
                locust.stop()
            metrics = cell_metrics(out, profile)
    finally:
        for worker in workers:
            stop_process(worker, 5)
        server.terminate()
        server.join(5)
    ceiling = metrics.get("steady_srps") or 0.0
    result: dict[str, object] = {
        "profile": profile.name, "locust_processes": args.processes,
        "locust_workers": args.workers, "workers": metrics.get("load_workers"),
        "ceiling_rps": ceiling, "p50_ms": metrics.get("p50_ms"),
        "mean_locust_cpu_pct": metrics.get("mean_locust_cpu_pct"),
        "peak_locust_cpu_pct": metrics.get("peak_locust_cpu_pct")}
    how = f"a master and {args.workers} worker(s)" if args.workers \
        else f"{args.processes} process(es)"
    print(f"Locust ceiling ({how}, profile {profile.name}): "
          f"{ceiling} requests/s on io_create; Locust CPU mean {result['mean_locust_cpu_pct']}%,"
          f" peak {result['peak_locust_cpu_pct']}% (3 s average)")
    if args.results:
        best = best_bench_srps(args.results)
        if best:
            result.update(best_cell=best[0], best_cell_srps=best[1],
                          headroom=round(ceiling / best[1], 2) if best[1] else None)
            print(f"fastest io_create cell in {args.results.name}: {best[0]} at {best[1]} "
                  f"sRPS: the ceiling is {result['headroom']}x that")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
