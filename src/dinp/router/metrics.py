"""What one router worker counts, and the Prometheus text made from it.

Why not prometheus_client: every request of every app is counted, so recording one must
cost a dict update and a bisect, with no locks and no label lookups; and the supervisor of
several worker processes sums their counters, which is easiest when a worker's counters are
plain data (`WorkerStats`) it can send as one JSON line.

The access log is in accesslog.py.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TypedDict

# Upper bounds (seconds) of the latency histogram's buckets.
BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
          10.0, 30.0, 60.0)

# Kinds of backend errors, the `kind` label of dinp_router_backend_errors_total.
CONNECT = "connect"  # refused, unreachable, or not accepted within connect_timeout
CLOSED = "closed"  # the connection ended before a complete response
INVALID = "invalid"  # not a valid HTTP response
TIMEOUT = "timeout"  # no answer within backend_timeout


class AppStats(TypedDict):
    """One app's counters as plain data."""

    codes: dict[str, int]  # status code (as text: JSON keys are strings) -> responses
    buckets: list[int]  # latency counts per BOUNDS bucket, not cumulative, +Inf last
    sum: float
    errors: dict[str, int]  # kind -> backend errors


class WorkerStats(TypedDict):
    """One worker's state, or the sum of several workers' (see `merge`)."""

    apps: dict[str, AppStats]  # "" holds requests that matched no app
    connections: int  # client connections open
    idle_backends: int  # pooled keep-alive connections to backends
    backends_down: int  # instances skipped after a failure (passive health)
    routes: int  # hosts in the route table
    backends: int  # backend addresses in the route table
    rev: int  # route table revision (of the most behind worker)
    ready: bool  # has a route table (every worker, when merged)
    table_age: float  # seconds since the table was last read (of the oldest worker)
    redis: bool | None  # every worker follows Redis; None: the table is not from Redis
    workers: int
    proxy_protocol_errors: int  # connections closed for a bad or missing PROXY header
    tls_refused: int  # TLS handshakes refused: no certificate for the name asked
    tls_certificates: int  # domains of the table with a certificate in use
    tls_certificates_refused: int  # domains of the table whose certificate is left out
    # When the operator's certificate in use expires (Unix time; the soonest of the
    # workers'), None without one; and whether its files changed and do not load.
    tls_file_expires: float | None
    tls_file_stale: bool


class AppCounters:
    """Counters of one app, recorded on the request path."""

    __slots__ = ("buckets", "codes", "errors", "total")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.total = 0.0
        self.errors: dict[str, int] = {}

    def record(self, status: int, seconds: float) -> None:
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        self.buckets[bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def stats(self) -> AppStats:
        return {"codes": {str(c): n for c, n in self.codes.items()},
                "buckets": list(self.buckets), "sum": self.total, "errors": dict(self.errors)}


class Metrics:
    """The counters of one worker, by app; they outlive route tables (Prometheus counters
    only ever grow)."""

    def __init__(self) -> None:
        self.apps: dict[str, AppCounters] = {}
        self.no_app = AppCounters()  # requests that matched no app
        self.proxy_protocol_errors = 0
        self.tls_refused = 0

    def app(self, name: str) -> AppCounters:
        """The counters of app `name`, made on first use."""
        counters = self.apps.get(name)
        if counters is None:
            counters = self.apps[name] = AppCounters()
        return counters

    def stats(self) -> dict[str, AppStats]:
        """Every app's counters as plain data; "" holds requests that matched no app."""
        apps = {app: counters.stats() for app, counters in self.apps.items()}
        if self.no_app.codes:
            apps[""] = self.no_app.stats()
        return apps


def merge(workers: list[WorkerStats]) -> WorkerStats:
    """The sum of several workers' stats (gauges of the table: the worst worker's)."""
    apps: dict[str, AppStats] = {}
    for worker in workers:
        for app, stats in worker["apps"].items():
            into = apps.setdefault(app, {"codes": {}, "buckets": [0] * (len(BOUNDS) + 1),
                                         "sum": 0.0, "errors": {}})
            for code, n in stats["codes"].items():
                into["codes"][code] = into["codes"].get(code, 0) + n
            into["buckets"] = [a + b for a, b in zip(into["buckets"], stats["buckets"],
                                                     strict=True)]
            into["sum"] += stats["sum"]
            for kind, n in stats["errors"].items():
                into["errors"][kind] = into["errors"].get(kind, 0) + n
    redis = [s["redis"] for s in workers]
    return {
        "apps": apps,
        "connections": sum(s["connections"] for s in workers),
        "idle_backends": sum(s["idle_backends"] for s in workers),
        "backends_down": max((s["backends_down"] for s in workers), default=0),
        "routes": min((s["routes"] for s in workers), default=0),
        "backends": min((s["backends"] for s in workers), default=0),
        "rev": min((s["rev"] for s in workers), default=0),
        "ready": bool(workers) and all(s["ready"] for s in workers),
        "table_age": max((s["table_age"] for s in workers), default=0.0),
        "redis": None if None in redis else all(r is True for r in redis),
        "workers": sum(s["workers"] for s in workers),
        "proxy_protocol_errors": sum(s["proxy_protocol_errors"] for s in workers),
        "tls_refused": sum(s["tls_refused"] for s in workers),
        "tls_certificates": min((s["tls_certificates"] for s in workers), default=0),
        "tls_certificates_refused": max((s["tls_certificates_refused"] for s in workers),
                                        default=0),
        "tls_file_expires": min((e for s in workers
                                 if (e := s["tls_file_expires"]) is not None), default=None),
        "tls_file_stale": any(s["tls_file_stale"] for s in workers),
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(totals: WorkerStats) -> str:
    """The Prometheus text exposition (version 0.0.4) of one worker's stats, or of the
    sum of several (`merge`)."""
    lines: list[str] = []

    def family(name: str, kind: str, doc: str) -> None:
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")

    apps = sorted(totals["apps"].items())
    family("dinp_router_requests_total", "counter",
           "Responses given, by app and status code (app=\"\": no app matched).")
    for app, stats in apps:
        for code, n in sorted(stats["codes"].items()):
            lines.append(f'dinp_router_requests_total{{app="{_label(app)}",code="{code}"}} {n}')
    family("dinp_router_request_duration_seconds", "histogram",
           "Time from a request's head to the end of its response, by app.")
    for app, stats in apps:
        app_label = _label(app)
        cumulative = 0
        for bound, n in zip((*BOUNDS, float("inf")), stats["buckets"], strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'dinp_router_request_duration_seconds_bucket{{app="{app_label}",'
                         f'le="{le}"}} {cumulative}')
        lines.append(f'dinp_router_request_duration_seconds_sum{{app="{app_label}"}} '
                     f'{stats["sum"]!r}')
        lines.append(f'dinp_router_request_duration_seconds_count{{app="{app_label}"}} '
                     f"{cumulative}")
    family("dinp_router_backend_errors_total", "counter",
           "Failed exchanges with app instances, by app and kind "
           "(connect, closed, invalid, timeout).")
    for app, stats in apps:
        for kind, n in sorted(stats["errors"].items()):
            lines.append(f'dinp_router_backend_errors_total{{app="{_label(app)}",'
                         f'kind="{kind}"}} {n}')
    for counter, doc, count in [
        ("dinp_router_proxy_protocol_errors_total",
         "Connections closed for a missing, malformed or oversized PROXY protocol header.",
         totals["proxy_protocol_errors"]),
        ("dinp_router_tls_refused_total",
         "TLS handshakes refused: no certificate for the name asked (or no SNI).",
         totals["tls_refused"]),
    ]:
        family(counter, "counter", doc)
        lines.append(f"{counter} {count}")
    gauges = [
        ("dinp_router_tls_certificates",
         "Domains of the route table whose certificate is in use (worker most behind).",
         totals["tls_certificates"]),
        ("dinp_router_tls_certificates_refused",
         "Domains of the route table whose certificate cannot be used (see the log).",
         totals["tls_certificates_refused"]),
        ("dinp_router_routes", "Hosts in the route table.", totals["routes"]),
        ("dinp_router_route_backends", "Backend addresses in the route table.",
         totals["backends"]),
        ("dinp_router_route_table_revision", "Revision of the route table (oldest worker).",
         totals["rev"]),
        ("dinp_router_route_table_age_seconds",
         "Seconds since the route table was last read (oldest worker).", totals["table_age"]),
        ("dinp_router_redis_connected", "1 when every worker follows Redis.",
         int(bool(totals["redis"]))),
        ("dinp_router_ready", "1 when every worker has a route table.",
         int(totals["ready"])),
        ("dinp_router_connections", "Client connections open.", totals["connections"]),
        ("dinp_router_backend_idle_connections", "Pooled keep-alive connections to apps.",
         totals["idle_backends"]),
        ("dinp_router_backends_down",
         "Instances skipped for fail_timeout after a failure.", totals["backends_down"]),
        ("dinp_router_workers", "Worker processes answering.", totals["workers"]),
    ]
    if totals["tls_file_expires"] is not None:  # only with the operator's certificate
        gauges += [
            ("dinp_router_tls_file_expiry_timestamp_seconds",
             "When the certificate of tls_cert_file in use expires (Unix time; the "
             "soonest of the workers').", totals["tls_file_expires"]),
            ("dinp_router_tls_file_stale",
             "1 when the files of tls_cert_file changed and do not load: the certificate "
             "loaded before serves on (see the log).", int(totals["tls_file_stale"])),
        ]
    for name, doc, value in gauges:
        family(name, "gauge", doc)
        lines.append(f"{name} {_num(value)}")
    return "\n".join(lines) + "\n"
