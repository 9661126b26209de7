"""How long the embedded PostgreSQL takes to build the 1,000,000-post template (COPY) and to
clone a per-cell database from it. Targets (issue 2): template < 15 s, clone < 3 s.

    python benchmarks/pg_template.py [--rows N] [--clones K] [--pg-bin DIR]

Uses a throwaway cache folder so the template is really built, not found in the cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.postgres import PostgresCluster

TEMPLATE_TARGET_S = 15.0
CLONE_TARGET_S = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clones", type=int, default=5)
    parser.add_argument("--pg-bin", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pg-template-bench-") as tmp:
        cluster = PostgresCluster(cache_dir=Path(tmp), pg_bin=args.pg_bin)
        try:
            t0 = time.monotonic()
            cluster.start(max_connections=100)
            start_s = time.monotonic() - t0
            t0 = time.monotonic()
            cluster.ensure_template(args.rows)
            template_s = time.monotonic() - t0
            clone_s = []
            for i in range(args.clones):
                t0 = time.monotonic()
                cluster.clone_database(f"clone_{i}")
                clone_s.append(time.monotonic() - t0)
                t0 = time.monotonic()
                cluster.drop_database(f"clone_{i}")
            with cluster.connect(cluster.template or "postgres") as conn:
                size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))"
                                    ).fetchone()
        finally:
            cluster.close()
    result = {"postgres": cluster.version, "rows": args.rows, "initdb_and_start_s":
              round(start_s, 2), "template_s": round(template_s, 2),
              "template_size": size[0] if size else None,
              "clone_median_s": round(statistics.median(clone_s), 3),
              "clone_max_s": round(max(clone_s), 3)}
    print(f"PostgreSQL {cluster.version}: initdb+start {start_s:.2f} s")
    print(f"template of {args.rows:,} posts: {template_s:.2f} s (target < {TEMPLATE_TARGET_S} s),"
          f" {result['template_size']}")
    print(f"clone: median {result['clone_median_s']} s, max {result['clone_max_s']} s over "
          f"{args.clones} (target < {CLONE_TARGET_S} s)")
    print(json.dumps(result))
    ok = template_s < TEMPLATE_TARGET_S and max(clone_s) < CLONE_TARGET_S
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
