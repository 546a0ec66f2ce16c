"""The server's and the agents' Prometheus metrics, served as text on `metrics_listen`.

Here prometheus_client does the work (the router counts by hand, since it records every
request of every app on its hot path; see router/metrics.py): the server and the agent
record a few events a second at most, and the library gives correct histograms and the
text format for free. Each role object owns its registry, so several in one process
(`dinp up`, tests) never mix their counts. Gauges of state (instances by state, nodes by
status) and the counters the logs module keeps are read from the role when scraped,
never kept in step by hand.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dinp.config import split_hostport
from dinp.errors import Unavailable
from dinp.lifecycle import start_site

log = logging.getLogger(__name__)
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
Gauges = Callable[[], Mapping[str, tuple[str, str, Mapping[str, float] | float]]]


class _StateCollector(Collector):
    """Gauges computed when scraped: name -> (help, label name, {label value: value} or a
    bare value)."""

    def __init__(self, read: Gauges) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        for name, (doc, label, values) in self.read().items():
            if name.endswith("_total"):  # a counter kept by the role itself
                yield CounterMetricFamily(name.removesuffix("_total"), doc,
                                          value=float(values))  # type: ignore[arg-type]
                continue
            if isinstance(values, Mapping):
                family = GaugeMetricFamily(name, doc, labels=[label])
                for key, value in sorted(values.items()):
                    family.add_metric([key], value)
            else:
                family = GaugeMetricFamily(name, doc, value=values)
            yield family


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.reconciles = Counter("dinp_server_reconciles", "Reconcile passes, by outcome "
                                  "(done, paused: the database was unreachable).",
                                  ["outcome"], registry=r)
        self.reconcile_seconds = Histogram("dinp_server_reconcile_seconds",
                                           "Time one reconcile pass takes.", buckets=FAST,
                                           registry=r)
        self.held_down = Counter("dinp_server_nodes_held", "Nodes not marked down although "
                                 "silent, because too many fell silent at once.",
                                 registry=r)
        self.plan_seconds = Histogram("dinp_server_plan_seconds",
                                      "Time the planner takes, in the passes that planned "
                                      "(a pass whose inputs did not change reuses the "
                                      "last plan).", buckets=FAST, registry=r)
        self.heartbeat_seconds = Histogram("dinp_server_heartbeat_seconds",
                                           "Time the server takes to handle a heartbeat.",
                                           buckets=FAST, registry=r)
        self.heartbeats = Counter("dinp_server_heartbeats", "Heartbeats handled, by outcome "
                                  "(ok, refused).", ["outcome"], registry=r)
        self.actions = Counter("dinp_server_actions", "What reconciles did: instances "
                               "placed and removed, nodes marked.", ["action"], registry=r)
        self.rollouts = Counter("dinp_server_rollouts", "Rollouts that ended, by outcome "
                                "(deployed, failed, cancelled).", ["outcome"], registry=r)
        self.certificate_failures = Counter("dinp_certificate_failures", "ACME orders that "
                                            "failed (each is retried with backoff).",
                                            registry=r)
        self.certificates_issued = Counter("dinp_certificates_issued", "Certificates "
                                           "issued or renewed by ACME.", registry=r)

    def watch(self, read: Gauges) -> None:
        self.registry.register(_StateCollector(read))


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.starts = Counter("dinp_agent_container_starts", "Containers started, by "
                              "outcome (ok, failed: the engine refused, the image could "
                              "not be pulled…).", ["outcome"], registry=r)
        self.stops = Counter("dinp_agent_container_stops", "Containers stopped and "
                             "removed.", registry=r)
        self.crashes = Counter("dinp_agent_container_crashes", "Containers of assigned "
                               "instances that exited (or were killed).", registry=r)
        self.stuck = Counter("dinp_agent_instances_stuck", "Instances replaced for never "
                             "becoming healthy, or staying unhealthy.", registry=r)
        self.heartbeat_seconds = Histogram("dinp_agent_heartbeat_seconds", "Round trip of "
                                           "a heartbeat to the server.", buckets=FAST,
                                           registry=r)
        self.heartbeats = Counter("dinp_agent_heartbeats", "Heartbeats sent, by outcome "
                                  "(ok, refused, failed).", ["outcome"], registry=r)

    def watch(self, read: Gauges) -> None:
        self.registry.register(_StateCollector(read))


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            content_type="text/plain", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """Serve `/metrics` (Prometheus text) on host:port until the runner is cleaned up."""
    return await start_site(metrics_app(registry), host, port)


@contextlib.asynccontextmanager
async def metrics_served(registry: CollectorRegistry, listen: str, *, key: str,
                         default_port: int) -> AsyncIterator[None]:
    """Serve the registry on `listen` while the block runs. Metrics are for watching the
    role, not its work: a port that cannot be taken is logged, and the role goes on."""
    runner = None
    if listen:
        host, port = split_hostport(listen, default_port=default_port)
        try:
            runner = await serve_metrics(registry, host, port)
            log.info("metrics on http://%s:%d/metrics", host, runner.addresses[0][1])
        except Unavailable as exc:
            log.warning("metrics not served: %s (%s)", exc, key)
    try:
        yield
    finally:
        if runner is not None:
            await runner.cleanup()
