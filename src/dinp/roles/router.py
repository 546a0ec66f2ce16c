"""`dinp router`: the HTTP reverse proxy in front of every app.

It routes by Host (custom domains through the table's cnames) to the healthy instances of
an app, round robin, skipping for `fail_timeout` an instance that just failed, and answers
400, 404 (no such app), 405, 408, 414, 431, 502 (no instance accepted the request or it
failed before answering), 503 (no healthy instance) and 504 (no answer within
backend_timeout) with a short page saying what happened. The data path lives in
proxy_http.py and proxy_client.py (asyncio protocols + httptools); this module is the role
around it: listeners, worker processes, the admin port, following the route table, and
shutdown.

Processes. Python runs one core per process, so `dinp router --workers N` (default: one
per core) starts N worker processes, each a whole router with its own listener on the same
port (SO_REUSEPORT: the kernel spreads connections), its own Redis follower and backend
pool, always on uvloop. The parent only supervises: it restarts a worker that dies, serves
the admin port, and asks every worker for its counters (one JSON line over a socketpair)
when /metrics or /health is read. With one worker the router runs in one process.

Two ways to feed a Router a table:

- `serve(config)`: `dinp router`, following Redis with a RedisRouteFollower; when Redis
  goes away it keeps serving the last table it read and /health says `"redis": false`.
- in-process (`dinp up`): build a Router, `store.subscribe(router.set_table)` on a
  MemoryRouteStore, then `start_http`, `start_admin` and finally `close`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dinp.config import RouterConfig, split_hostport
from dinp.errors import ConfigError, Unavailable
from dinp.roles.lifecycle import forced, run_until_stopped, start_site
from dinp.roles.proxy_http import Proxy, Settings
from dinp.roles.proxy_metrics import AccessLog, Snapshot, merge, render
from dinp.routes import RedisRouteFollower, RouteTable, redact

log = logging.getLogger("dinp.router")

# How long a stopping router lets requests in flight finish.
SHUTDOWN_GRACE = 5.0
# How long the supervisor waits for a worker's answer to a question on its control socket.
CONTROL_TIMEOUT = 2.0
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def open_access_log(path: str) -> AccessLog:
    try:
        return AccessLog(path)
    except OSError as exc:
        raise ConfigError(f"cannot open the access log {path}: {exc.strerror or exc}") from exc


def settings_of(config: RouterConfig) -> Settings:
    return Settings(
        connect_timeout=config.connect_timeout, backend_timeout=config.backend_timeout,
        client_timeout=config.client_timeout, header_timeout=config.header_timeout,
        max_header_size=config.max_header_size, max_request_line=config.max_request_line,
        fail_timeout=config.fail_timeout, max_idle_per_backend=config.max_idle_per_backend,
    )


class Router:
    """One router process: its listeners, its route table and its pool of backend
    connections. `overrides` replace single fields of `settings` (connect_timeout=…)."""

    def __init__(self, settings: Settings | None = None, *, access_log: str = "",
                 **overrides: Any) -> None:
        settings = dataclasses.replace(settings or Settings(), **overrides)
        self.proxy = Proxy(settings,
                           access_log=open_access_log(access_log) if access_log else None)
        # Set by whoever feeds the table from Redis, so /health can tell whether it is live.
        self.follower: RedisRouteFollower | None = None
        self.bound_http_port: int | None = None
        self.bound_admin_port: int | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._admin: web.AppRunner | None = None

    @classmethod
    def from_config(cls, config: RouterConfig) -> Router:
        return cls(settings_of(config), access_log=config.access_log)

    @property
    def table(self) -> RouteTable:
        return self.proxy.table

    def set_table(self, table: RouteTable) -> None:
        """Use `table` from the next request on; requests in flight keep their backend."""
        self.proxy.set_table(table)

    @property
    def redis_connected(self) -> bool | None:
        """None when the table does not come from Redis."""
        return None if self.follower is None else self.follower.connected.is_set()

    @property
    def stopping(self) -> bool:
        return self.proxy.closing

    def snapshot(self) -> Snapshot:
        snap = self.proxy.snapshot()
        snap["redis"] = self.redis_connected
        return snap

    async def start_http(
        self, host: str, port: int, *, reuse_port: bool = False
    ) -> list[asyncio.base_events.Server]:
        """Listen for clients; port 0 picks a free port (see bound_http_port)."""
        loop = asyncio.get_running_loop()
        self.proxy.start()
        try:
            server = await loop.create_server(
                self.proxy.protocol, host, port, reuse_port=reuse_port, backlog=2048
            )
        except OSError as exc:
            raise Unavailable(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="Another process uses that port? Choose another http_listen.",
            ) from exc
        self._servers.append(server)
        self.bound_http_port = server.sockets[0].getsockname()[1]
        return [server]

    async def start_admin(self, host: str, port: int) -> None:
        """The admin port: `GET /health` for load balancers, `GET /metrics` for Prometheus."""

        async def snapshots() -> list[Snapshot]:
            return [self.snapshot()]

        self._admin = await start_site(admin_app(snapshots, lambda: self.stopping),
                                       host, port)
        self.bound_admin_port = self._admin.addresses[0][1]

    async def close(self, *, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, let requests in flight finish for up to `grace` seconds, then
        cut what is left. Idle keep-alive connections are closed at once."""
        proxy = self.proxy
        proxy.closing = True  # from now on a connection closes after its response
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while proxy.connections:
            # Again each round: a connection accepted just before the listener closed
            # may show up late, and it must not hold the stop up for its idle timeout.
            for conn in list(proxy.connections):
                conn.close_if_idle()
            if not proxy.connections or loop.time() >= deadline or forced():
                break
            await asyncio.sleep(0.05)
        if proxy.connections:
            log.warning("cutting %d connection(s) still busy after %g s",
                        len(proxy.connections), grace)
        for conn in list(proxy.connections):
            conn.abort()
        proxy.pool.close()
        proxy.stop()
        if proxy.access_log is not None:
            proxy.access_log.close()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


def admin_app(snapshots: Callable[[], Awaitable[list[Snapshot]]],
              stopping: Callable[[], bool]) -> web.Application:
    """`GET /health` (200 while serving; 503 before the first route table, when stopping
    or when no worker answers) and
    `GET /metrics` (Prometheus text), both from the workers' snapshots."""

    async def health(request: web.Request) -> web.Response:
        snaps = await snapshots()
        if stopping() or not snaps:
            return web.json_response({"status": "stopping" if stopping() else "down",
                                      "workers": len(snaps)}, status=503)
        snap = merge(snaps)
        ready = snap["ready"]
        return web.json_response({
            # "starting": no route table yet; the load balancer must not send traffic.
            "status": "ok" if ready else "starting",
            "routes": snap["routes"],  # hosts in the table
            "rev": snap["rev"],
            "redis": snap["redis"],
            "table_age": snap["table_age"],
            "workers": snap["workers"],
        }, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        body = render(merge(await snapshots()))
        return web.Response(body=body.encode(), headers={"Content-Type": PROMETHEUS_TEXT})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(config: RouterConfig) -> None:
    """`dinp router`: serve HTTP with the table from Redis until SIGTERM/SIGINT (or until
    cancelled), then stop gracefully; in `workers` processes when more than one."""
    if config.workers < 0:
        raise ConfigError(f"workers = {config.workers}: must be 0 (one per core) or more")
    workers = config.workers or os.cpu_count() or 1
    if workers > 1:
        await Supervisor(config, workers).run()
        return
    stop = asyncio.Event()
    await run_worker(config, stop=stop.wait(), admin=True)


async def run_worker(config: RouterConfig, *, stop: Awaitable[object], admin: bool,
                     reuse_port: bool = False,
                     on_ready: Callable[[Router], Awaitable[None]] | None = None) -> None:
    """One router with its Redis follower, until `stop` completes (or a signal, when it
    serves the admin port itself, as a single process does).

    It waits up to connect_timeout for the first table; if Redis does not answer by then
    it listens anyway, not ready: /health and every request answer 503 (with
    Retry-After) until the first table arrives, never 404 "no such app".
    """
    http_host, http_port = split_hostport(config.http_listen, default_port=8080)
    router = Router.from_config(config)
    follower = RedisRouteFollower(config.redis_url, router.set_table,
                             resync_interval=config.resync_interval)
    router.follower = follower
    redis_url = redact(config.redis_url)
    follow = asyncio.create_task(follower.run(), name="dinp-route-follower")
    try:
        try:
            async with asyncio.timeout(config.connect_timeout):
                await follower.connected.wait()
        except TimeoutError:
            log.warning("Redis at %s does not answer; not ready (503) until the first route "
                        "table arrives", redis_url)
        await router.start_http(http_host, http_port, reuse_port=reuse_port)
        admin_url = "disabled"
        if admin and config.admin_listen:
            admin_host, admin_port = split_hostport(config.admin_listen, default_port=8081)
            await router.start_admin(admin_host, admin_port)
            admin_url = f"http://{admin_host}:{router.bound_admin_port}"
        if on_ready is not None:
            await on_ready(router)
        # What exists now lives as long as the process: keep the collector off it, so
        # the collections that requests trigger stay short (no latency spikes).
        gc.collect()
        gc.freeze()
        if admin:
            log.info("router serving on http://%s:%d, admin on %s, routes from %s "
                     "(%d hosts)", http_host, router.bound_http_port, admin_url, redis_url,
                     len(router.table))
            await run_until_stopped(asyncio.shield(follow), stop)
        else:
            await stop
    finally:
        await router.close()
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await follower.close()


# -- several worker processes --------------------------------------------------------------

def _log_setup() -> tuple[int, bool]:
    """The root logger's level and whether it logs JSON, for a worker to log alike."""
    from dinp.output import JsonFormatter

    root = logging.getLogger()
    json_logs = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return root.level, json_logs


def worker_main(config: RouterConfig, index: int, control: socket.socket, level: int,
                json_logs: bool) -> None:
    """A worker process (spawned by the Supervisor): one Router on uvloop until SIGTERM
    or until its supervisor goes away (its control socket closes)."""
    import uvloop

    from dinp.output import setup_logging

    # Ctrl-C reaches the whole process group: the supervisor alone decides, by SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(verbose=level <= logging.DEBUG, quiet=level >= logging.WARNING,
                  json_logs=json_logs)
    uvloop.run(_worker(config, control))


async def _worker(config: RouterConfig, control: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def answer(router: Router) -> None:
        reader, writer = await asyncio.open_connection(sock=control)

        async def serve_control() -> None:
            try:
                while await reader.readline():
                    writer.write(json.dumps(router.snapshot()).encode() + b"\n")
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            stop.set()  # the supervisor is gone

        task = asyncio.create_task(serve_control())
        stop_tasks.append(task)

    stop_tasks: list[asyncio.Task[None]] = []
    try:
        await run_worker(config, stop=stop.wait(), admin=False, reuse_port=True,
                         on_ready=answer)
    finally:
        for task in stop_tasks:
            task.cancel()


class Worker:
    """The supervisor's handle on one worker process and its control socket."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: multiprocessing.process.BaseProcess | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def start(self, config: RouterConfig) -> None:
        parent, child = socket.socketpair()
        level, json_logs = _log_setup()
        ctx = multiprocessing.get_context("spawn")
        self.process = ctx.Process(
            target=worker_main, args=(config, self.index, child, level, json_logs),
            name=f"dinp-router-{self.index}", daemon=True,
        )
        self.process.start()
        child.close()
        self._reader, self._writer = await asyncio.open_connection(sock=parent)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    async def snapshot(self, timeout: float = CONTROL_TIMEOUT) -> Snapshot | None:
        """The worker's counters; None if it does not answer in time."""
        if self._reader is None or self._writer is None or not self.alive:
            return None
        async with self._lock:
            try:
                self._writer.write(b"snapshot\n")
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), timeout)
            except (TimeoutError, ConnectionError, OSError):
                return None
        if not line:
            return None
        snap: Snapshot = json.loads(line)
        return snap

    def close_control(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = self._reader = None

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` (plus a moment to exit)."""
        process = self.process
        if process is None:
            return
        if process.is_alive():
            process.terminate()
            await asyncio.to_thread(process.join, grace + 2.0)
            if process.is_alive():
                log.warning("router worker %d did not stop; killing it", self.index)
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
        self.close_control()
        process.close()
        self.process = None


class Supervisor:
    """The parent of the worker processes: starts them, restarts one that dies, and serves
    the admin port from their answers."""

    def __init__(self, config: RouterConfig, workers: int) -> None:
        self.config = config
        self.workers = [Worker(i) for i in range(workers)]
        self.stopping = False

    async def run(self) -> None:
        config = self.config
        host, port = split_hostport(config.http_listen, default_port=8080)
        if config.access_log:  # refused here, not by each worker as it starts
            open_access_log(config.access_log).close()
        # Holding the port (bound, not listening: it takes no connections) makes the
        # start fail early when the port is taken, and resolves port 0 for the workers.
        holder = _reserve(host, port)
        try:
            port = holder.getsockname()[1]
            config = _with_listen(config, f"{host}:{port}")
            runner: web.AppRunner | None = None
            for worker in self.workers:
                await worker.start(config)
            await self._wait_ready()
            admin_url = "disabled"
            if config.admin_listen:
                admin_host, admin_port = split_hostport(config.admin_listen,
                                                        default_port=8081)
                runner = await start_site(admin_app(self.snapshots, lambda: self.stopping),
                                          admin_host, admin_port)
                admin_url = f"http://{admin_host}:{runner.addresses[0][1]}"
            log.info("router serving on http://%s:%d with %d workers, admin on %s, routes "
                     "from %s", host, port, len(self.workers), admin_url,
                     redact(config.redis_url))
            await run_until_stopped(self._supervise(config))
        finally:
            self.stopping = True
            log.info("router stopping")
            await asyncio.gather(*(w.stop(SHUTDOWN_GRACE) for w in self.workers))
            if runner is not None:
                await runner.cleanup()
            holder.close()

    async def _wait_ready(self) -> None:
        """Until every worker answers (it answers once it listens)."""
        deadline = asyncio.get_running_loop().time() + self.config.connect_timeout + 30
        for worker in self.workers:
            while await worker.snapshot(timeout=1.0) is None:
                if not worker.alive:
                    raise Unavailable(f"router worker {worker.index} exited at start",
                                      hint="See its log lines above.")
                if asyncio.get_running_loop().time() > deadline:
                    raise Unavailable(f"router worker {worker.index} did not start")

    async def _supervise(self, config: RouterConfig) -> None:
        """Restart a worker that exits while the router is not stopping."""
        backoff = 1.0
        while True:
            await asyncio.sleep(0.5)
            for worker in self.workers:
                if worker.process is not None and not worker.alive and not self.stopping:
                    log.error("router worker %d exited (code %s); starting it again in %g s",
                              worker.index, worker.process.exitcode, backoff)
                    await worker.stop(0)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    await worker.start(config)
                    continue
            if all(w.alive for w in self.workers):
                backoff = max(1.0, backoff / 2)

    async def snapshots(self) -> list[Snapshot]:
        answers = await asyncio.gather(*(w.snapshot() for w in self.workers))
        return [a for a in answers if a is not None]


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          hint="Another process uses that port? Choose another "
                               "http_listen.") from exc
    return sock


def _with_listen(config: RouterConfig, listen: str) -> RouterConfig:
    return dataclasses.replace(config, http_listen=listen)

