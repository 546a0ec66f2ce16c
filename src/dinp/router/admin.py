"""The router's admin port: `GET /health` for load balancers, `GET /metrics` for
Prometheus, both from the stats of every worker (one in-process Router, or the worker
processes a Supervisor asks)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from dinp.router.metrics import WorkerStats, merge, render

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def admin_app(stats: Callable[[], Awaitable[list[WorkerStats]]],
              stopping: Callable[[], bool]) -> web.Application:
    """`GET /health` (200 while serving; 503 before the first route table, when stopping
    or when no worker answers) and
    `GET /metrics` (Prometheus text), both from the workers' stats."""

    async def health(request: web.Request) -> web.Response:
        workers = await stats()
        if stopping() or not workers:
            return web.json_response({"status": "stopping" if stopping() else "down",
                                      "workers": len(workers)}, status=503)
        totals = merge(workers)
        ready = totals["ready"]
        return web.json_response({
            # "starting": no route table yet; the load balancer must not send traffic.
            "status": "ok" if ready else "starting",
            "routes": totals["routes"],  # hosts in the table
            "rev": totals["rev"],
            "redis": totals["redis"],
            "table_age": totals["table_age"],
            "workers": totals["workers"],
        }, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        body = render(merge(await stats()))
        return web.Response(body=body.encode(), headers={"Content-Type": PROMETHEUS_TEXT})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app
