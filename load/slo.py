"""Check a Locust run against SLOs: p99 latency, error rate, served RPS; 429s apart.

    python load/slo.py out/locust --p99-ms 50 --max-error-rate 0.01 --min-rps 20

reads ``out/locust_stats.csv`` (and ``_failures.csv`` for the reasons),
prints a table per route, writes ``out/locust_slo.json`` and exits 0 when
every SLO holds, 1 when one is missed, 2 when there is nothing to judge.

Why not Locust's own ``--check-*`` flags: they count a 429 as a failure and
fold its (fast) latency into the percentiles. Here the locustfile records a
429 under ``<route> [429]``; this checker counts those as *shed* (the server
refusing work it cannot take in time, which is correct), reports their rate
and can bound it, and judges latency only on the requests the server took.
Everything else Locust marks failed (timeouts, refused connections, 5xx,
unexpected 4xx) is an *error*.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

SHED_SUFFIX = " [429]"
EXIT_OK, EXIT_MISSED, EXIT_UNUSABLE = 0, 1, 2


@dataclass
class Route:
    """One route's served requests (2xx or error) and shed requests (429)."""

    name: str
    requests: int = 0
    errors: int = 0
    shed: int = 0
    rps: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


@dataclass
class Summary:
    routes: dict[str, Route]
    total: int  # every request sent: served + errors + shed
    errors: int
    shed: int
    rps: float  # all requests per second, as Locust measured them
    served_rps: float  # non-error, non-429 requests per second
    error_rate: float
    shed_rate: float
    failures: list[dict[str, str]] = field(default_factory=list)
    checks: list[dict[str, object]] = field(default_factory=list)


def _ms(value: str) -> float | None:
    return None if value in ("", "N/A") else float(value)


def read_summary(prefix: Path) -> Summary:
    """Per-route counts and percentiles from ``PREFIX_stats.csv``."""
    routes: dict[str, Route] = {}
    aggregated_rps = 0.0
    with open(f"{prefix}_stats.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            name, count = row["Name"], int(row["Request Count"])
            if name == "Aggregated":
                aggregated_rps = float(row["Requests/s"])
                continue
            if name.endswith(SHED_SUFFIX):
                base = name.removesuffix(SHED_SUFFIX)
                routes.setdefault(base, Route(base)).shed += count
                continue
            route = routes.setdefault(name, Route(name))
            route.requests, route.errors = count, int(row["Failure Count"])
            route.rps = float(row["Requests/s"])
            route.p50_ms, route.p95_ms = _ms(row["50%"]), _ms(row["95%"])
            route.p99_ms, route.max_ms = _ms(row["99%"]), _ms(row["Max Response Time"])
    served = sum(r.requests for r in routes.values())
    errors = sum(r.errors for r in routes.values())
    shed = sum(r.shed for r in routes.values())
    total = served + shed
    return Summary(
        routes=routes,
        total=total,
        errors=errors,
        shed=shed,
        rps=aggregated_rps,
        served_rps=aggregated_rps * (served - errors) / total if total else 0.0,
        error_rate=errors / total if total else 0.0,
        shed_rate=shed / total if total else 0.0,
        failures=_read_failures(prefix),
    )


def _read_failures(prefix: Path) -> list[dict[str, str]]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return sorted(rows, key=lambda r: -int(r["Occurrences"]))[:5]


def check(
    summary: Summary,
    p99_ms: float | None,
    max_error_rate: float | None,
    min_rps: float | None,
    max_shed_rate: float | None,
    routes: list[str],
) -> bool:
    """Record each SLO's verdict in ``summary.checks``; True when all hold."""
    judged = [r for r in summary.routes.values() if r.requests and (not routes or r.name in routes)]

    def record(slo: str, value: float | None, limit: float, ok: bool) -> None:
        summary.checks.append({"slo": slo, "value": value, "limit": limit, "ok": ok})

    if p99_ms is not None:
        if not judged:
            record(f"p99 ms of {routes or 'any route'}", None, p99_ms, False)
        for route in judged:
            value = route.p99_ms
            record(f"p99 ms {route.name}", value, p99_ms, value is not None and value <= p99_ms)
    if max_error_rate is not None:
        ok = summary.error_rate <= max_error_rate
        record("error rate", summary.error_rate, max_error_rate, ok)
    if max_shed_rate is not None:
        record("429 rate", summary.shed_rate, max_shed_rate, summary.shed_rate <= max_shed_rate)
    if min_rps is not None:
        record("served rps", summary.served_rps, min_rps, summary.served_rps >= min_rps)
    return all(c["ok"] for c in summary.checks)


def render(summary: Summary) -> str:
    lines = [
        f"{'route':<18}{'requests':>9}{'errors':>8}{'429':>7}{'rps':>8}"
        f"{'p50':>7}{'p95':>7}{'p99':>7}{'max':>8}  (ms)"
    ]
    for r in summary.routes.values():
        cells = (r.p50_ms, r.p95_ms, r.p99_ms)
        ms = "".join(f"{'-' if v is None else f'{v:.0f}':>7}" for v in cells)
        top = "-" if r.max_ms is None else f"{r.max_ms:.0f}"
        lines.append(
            f"{r.name:<18}{r.requests:>9}{r.errors:>8}{r.shed:>7}{r.rps:>8.1f}{ms}{top:>8}"
        )
    lines.append(
        f"total {summary.total} requests, {summary.rps:.1f} rps ({summary.served_rps:.1f} served); "
        f"errors {summary.errors} ({summary.error_rate:.2%}); "
        f"429 {summary.shed} ({summary.shed_rate:.2%})"
    )
    lines += [
        f"  error x{f['Occurrences']}: {f['Name']}: {f['Error'][:160]}" for f in summary.failures
    ]
    for c in summary.checks:
        value = "n/a" if c["value"] is None else f"{c['value']:.4g}"
        relation = ">=" if c["slo"] == "served rps" else "<="
        verdict = "PASS" if c["ok"] else "MISS"
        lines.append(f"{verdict} {c['slo']}: {value} (SLO {relation} {c['limit']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prefix", type=Path, help="Locust --csv prefix (reads PREFIX_stats.csv)")
    parser.add_argument("--p99-ms", type=float, default=None, help="p99 latency bound per route")
    parser.add_argument("--max-error-rate", type=float, default=None, help="errors / requests")
    parser.add_argument("--min-rps", type=float, default=None, help="served requests per second")
    parser.add_argument("--max-shed-rate", type=float, default=None, help="429s / requests")
    parser.add_argument(
        "--route", action="append", default=[], help="judge p99 on this route only (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        summary = read_summary(args.prefix)
    except (OSError, KeyError, ValueError) as exc:
        sys.stderr.write(f"slo: cannot read {args.prefix}_stats.csv: {exc}\n")
        return EXIT_UNUSABLE
    if summary.total == 0:
        sys.stderr.write("slo: the run sent no requests; nothing to judge\n")
        return EXIT_UNUSABLE
    ok = check(
        summary, args.p99_ms, args.max_error_rate, args.min_rps, args.max_shed_rate, args.route
    )
    sys.stdout.write(render(summary) + "\n")
    Path(f"{args.prefix}_slo.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return EXIT_OK if ok else EXIT_MISSED


if __name__ == "__main__":
    sys.exit(main())
