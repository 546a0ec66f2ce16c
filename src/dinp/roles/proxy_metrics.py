"""What one router worker counts, the Prometheus text made from it, and the access log.

Why not prometheus_client: every request of every app is counted, so recording one must
cost a dict update and a bisect, with no locks and no label lookups; and the supervisor of
several worker processes sums their counters, which is easiest when a worker's counters are
plain data (`Snapshot`) it can send as one JSON line.

The access log is written by the worker itself in whole lines (one `os.write` per batch,
to a file opened with O_APPEND), so several workers can share one file without mixing
their lines. It is buffered and flushed every tick, never on the request path.
"""

from __future__ import annotations

import os
import time
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


class AppSnapshot(TypedDict):
    codes: dict[str, int]  # status code (as text: JSON keys are strings) -> responses
    buckets: list[int]  # latency counts per BOUNDS bucket, not cumulative, +Inf last
    sum: float
    errors: dict[str, int]  # kind -> backend errors


class Snapshot(TypedDict):
    """One worker's state, or the sum of several workers' (see `merge`)."""

    apps: dict[str, AppSnapshot]  # "" holds requests that matched no app
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


class AppStats:
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

    def snapshot(self) -> AppSnapshot:
        return {"codes": {str(c): n for c, n in self.codes.items()},
                "buckets": list(self.buckets), "sum": self.total, "errors": dict(self.errors)}


def merge(snapshots: list[Snapshot]) -> Snapshot:
    """The sum of several workers' snapshots (gauges of the table: the worst worker's)."""
    apps: dict[str, AppSnapshot] = {}
    for snap in snapshots:
        for app, stats in snap["apps"].items():
            into = apps.setdefault(app, {"codes": {}, "buckets": [0] * (len(BOUNDS) + 1),
                                         "sum": 0.0, "errors": {}})
            for code, n in stats["codes"].items():
                into["codes"][code] = into["codes"].get(code, 0) + n
            into["buckets"] = [a + b for a, b in zip(into["buckets"], stats["buckets"],
                                                     strict=True)]
            into["sum"] += stats["sum"]
            for kind, n in stats["errors"].items():
                into["errors"][kind] = into["errors"].get(kind, 0) + n
    redis = [s["redis"] for s in snapshots]
    return {
        "apps": apps,
        "connections": sum(s["connections"] for s in snapshots),
        "idle_backends": sum(s["idle_backends"] for s in snapshots),
        "backends_down": max((s["backends_down"] for s in snapshots), default=0),
        "routes": min((s["routes"] for s in snapshots), default=0),
        "backends": min((s["backends"] for s in snapshots), default=0),
        "rev": min((s["rev"] for s in snapshots), default=0),
        "ready": bool(snapshots) and all(s["ready"] for s in snapshots),
        "table_age": max((s["table_age"] for s in snapshots), default=0.0),
        "redis": None if None in redis else all(r is True for r in redis),
        "workers": sum(s["workers"] for s in snapshots),
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(snap: Snapshot) -> str:
    """The Prometheus text exposition (version 0.0.4) of a snapshot."""
    lines: list[str] = []

    def family(name: str, kind: str, doc: str) -> None:
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")

    apps = sorted(snap["apps"].items())
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
    gauges = [
        ("dinp_router_routes", "Hosts in the route table.", snap["routes"]),
        ("dinp_router_route_backends", "Backend addresses in the route table.",
         snap["backends"]),
        ("dinp_router_route_table_revision", "Revision of the route table (oldest worker).",
         snap["rev"]),
        ("dinp_router_route_table_age_seconds",
         "Seconds since the route table was last read (oldest worker).", snap["table_age"]),
        ("dinp_router_redis_connected", "1 when every worker follows Redis.",
         int(bool(snap["redis"]))),
        ("dinp_router_ready", "1 when every worker has a route table.",
         int(snap["ready"])),
        ("dinp_router_connections", "Client connections open.", snap["connections"]),
        ("dinp_router_backend_idle_connections", "Pooled keep-alive connections to apps.",
         snap["idle_backends"]),
        ("dinp_router_backends_down",
         "Instances skipped for fail_timeout after a failure.", snap["backends_down"]),
        ("dinp_router_workers", "Worker processes answering.", snap["workers"]),
    ]
    for name, doc, value in gauges:
        family(name, "gauge", doc)
        lines.append(f"{name} {_num(value)}")
    return "\n".join(lines) + "\n"


def _quote(value: bytes) -> bytes:
    return value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')


class AccessLog:
    """The access log, in the combined format plus the host, app, backend, duration and
    request id:

        127.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET /a HTTP/1.1" 200 512 "-" "curl/8"
        web.example.com web 10.0.0.5:32768 0.003 1f2e3d4c5b6a7988-2a
    """

    FLUSH_AT = 64 * 1024

    def __init__(self, target: str) -> None:
        """`target`: "-" for stdout, else a file path (appended to, created if needed)."""
        self.target = target
        if target == "-":
            self._fd = 1
            self._own = False
        else:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._own = True
        self._lines: list[bytes] = []
        self._size = 0
        self._second = -1
        self._stamp = b""

    def _now(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(now)).encode()
        return self._stamp

    def write(self, *, peer: bytes, method: bytes, url: bytes, http10: bool, status: int,
              size: int, referer: bytes | None, agent: bytes | None, host: bytes | None,
              app: str, backend: str, seconds: float, request_id: bytes) -> None:
        line = b'%s - - %s "%s %s %s" %d %d "%s" "%s" %s %s %s %.3f %s\n' % (
            peer, self._now(), method, _quote(url), b"HTTP/1.0" if http10 else b"HTTP/1.1",
            status, size, b"-" if referer is None else _quote(referer),
            b"-" if agent is None else _quote(agent), host or b"-", app.encode() or b"-",
            backend.encode() or b"-", seconds, request_id,
        )
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = memoryview(b"".join(self._lines))
        self._lines.clear()
        self._size = 0
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError:
            pass  # a full disk or a closed stdout must not stop the router

    def close(self) -> None:
        self.flush()
        if self._own:
            os.close(self._fd)
            self._own = False
