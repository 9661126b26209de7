"""What the cells cost and how they failed: the resources and failed-requests tables."""

from __future__ import annotations

from bench.report.data import Run
from bench.report.tables import Table, TableCell, number

# (column, route) -> peak figures over its latencies and repeats
ResourceValues = dict[tuple[str, str], dict[str, float | None]]


def resource_values(run: Run) -> ResourceValues:
    values: ResourceValues = {}
    keys = ("peak_server_rss_mib", "peak_server_db_rss_mib", "peak_server_threads",
            "peak_db_connections", "peak_pgbouncer_rss_mib", "peak_pgbouncer_clients",
            "peak_pgbouncer_servers")
    for column in [c.name for c in run.columns]:
        for route in run.routes:
            cells = [c for c in run.cells if (c.column, c.route) == (column, route)
                     and c.status != "missing"]
            if not cells:
                continue
            entry: dict[str, float | None] = {}
            for key in keys:
                found = [v for c in cells if (v := c.metric(key)) is not None]
                entry[key] = max(found) if found else None
            per_request = [v for c in cells if (v := c.metric("rss_per_in_flight_kib"))
                           is not None]
            entry["rss_per_in_flight_kib"] = (sum(per_request) / len(per_request)
                                              if per_request else None)
            values[column, route] = entry
    return values


def resources_table(values: ResourceValues) -> Table | None:
    if not values:
        return None
    # PgBouncer's columns only in a run where a variant had one.
    pooled = any(entry.get("peak_pgbouncer_rss_mib") is not None for entry in values.values())
    rows = []
    for (column, route), entry in values.items():
        row = [TableCell(column), TableCell(f"{route}/"),
               TableCell(number(entry["peak_server_rss_mib"]), True),
               TableCell(number(entry["peak_server_db_rss_mib"]), True),
               TableCell(number(entry["peak_server_threads"], 0), True),
               TableCell(number(entry["peak_db_connections"], 0), True),
               TableCell(number(entry["rss_per_in_flight_kib"], 0), True)]
        if pooled:
            row += [TableCell(number(entry["peak_pgbouncer_rss_mib"]), True),
                    TableCell(number(entry["peak_pgbouncer_clients"], 0), True),
                    TableCell(number(entry["peak_pgbouncer_servers"], 0), True)]
        rows.append(row)
    header = ["column", "route", "peak server MiB", "peak server + DB MiB", "peak threads",
              "peak DB connections", "KiB per concurrent request"]
    notes = ["Peaks are the maximum over latencies and repeats; memory is proportional set "
             "size. KiB per concurrent request: growth of server + DB memory over the run "
             "divided by the mean number of requests in flight (Little's law), averaged "
             "over the cells."]
    if pooled:
        header += ["peak PgBouncer MiB", "peak PgBouncer clients", "peak PgBouncer servers"]
        notes.append("PgBouncer (where a variant has one): its memory (also counted in server "
                     "+ DB), the app's connections to it (clients) and its connections to "
                     "PostgreSQL (servers), counted from its sockets.")
    return Table("Resources per column and route", header, rows, [], notes)


def failures_table(run: Run) -> Table | None:
    cells = [c for c in run.cells if c.metrics.get("failures_by_kind")]
    kinds: dict[str, None] = {}
    for cell in cells:
        for kind in cell.metrics["failures_by_kind"]:
            kinds[str(kind)] = None
    if not kinds:
        return None
    rows = []
    for cell in cells:
        found = cell.metrics["failures_by_kind"]
        total = cell.metric("total_requests")
        rows.append([TableCell(cell.cell_id), TableCell(cell.status),
                     *[TableCell(f"{found[k]:,}" if isinstance(found.get(k), int) else
                                 str(found.get(k, "")), True) for k in kinds],
                     TableCell(number(total, 0), True)])
    return Table("Failed requests by kind, per cell",
                 ["cell", "status", *kinds, "all requests"], rows)
