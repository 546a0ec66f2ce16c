"""`dinp router` itself: one router in this process, or a Supervisor of worker processes.

Python runs one core per process, so `dinp router --workers N` (default: one per core)
starts N worker processes, each a whole router (worker.py) with its own listener on the
same port (SO_REUSEPORT: the kernel spreads connections), its own Redis follower and
backend pool, always on uvloop. The parent only supervises: it restarts a worker that
dies, serves the admin port, and asks every worker for its counters (one JSON line over a
socketpair, the control socket) when /metrics or /health is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import socket

from aiohttp import web

from dinp.config import RouterConfig, split_hostport
from dinp.errors import ConfigError, Unavailable
from dinp.lifecycle import cannot_listen, run_until_stopped, start_site
from dinp.router.admin import admin_app
from dinp.router.cert_files import CertFiles
from dinp.router.metrics import WorkerStats
from dinp.router.proxy import trusted_networks
from dinp.router.worker import SHUTDOWN_GRACE, Router, open_access_log, run_worker
from dinp.routes import redact

log = logging.getLogger("dinp.router")

# How long the supervisor waits for a worker's answer to a question on its control socket.
CONTROL_TIMEOUT = 2.0


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


def _log_setup() -> tuple[int, bool]:
    """The root logger's level and whether it logs JSON, for a worker to log alike."""
    from dinp.output import JsonFormatter

    root = logging.getLogger()
    json_logs = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return root.level, json_logs


def worker_main(config: RouterConfig, index: int, control: socket.socket, level: int,
                json_logs: bool, ticket_secret: bytes,
                wildcard_texts: tuple[str, str] | None = None) -> None:
    """A worker process (spawned by the Supervisor): one Router on uvloop until SIGTERM
    or until its supervisor goes away (its control socket closes)."""
    import uvloop

    from dinp.output import setup_logging

    # Ctrl-C reaches the whole process group: the supervisor alone decides, by SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(verbose=level <= logging.DEBUG, quiet=level >= logging.WARNING,
                  json_logs=json_logs)
    uvloop.run(_worker(config, control, ticket_secret, wildcard_texts))


async def _worker(config: RouterConfig, control: socket.socket, ticket_secret: bytes,
                  wildcard_texts: tuple[str, str] | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def answer(router: Router) -> None:
        reader, writer = await asyncio.open_connection(sock=control)

        async def serve_control() -> None:
            try:
                while question := await reader.readline():
                    # The answer names the question it answers (its number), so that an
                    # answer to one asked before this worker was ready is never taken for
                    # the answer to a later one.
                    number = question.split()[-1].decode()
                    writer.write(json.dumps([number, router.stats()]).encode() + b"\n")
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            stop.set()  # the supervisor is gone

        task = asyncio.create_task(serve_control())
        stop_tasks.append(task)

    stop_tasks: list[asyncio.Task[None]] = []
    try:
        await run_worker(config, stop=stop.wait(), admin=False, reuse_port=True,
                         on_ready=answer, ticket_secret=ticket_secret,
                         wildcard_texts=wildcard_texts)
    finally:
        for task in stop_tasks:
            task.cancel()


class WorkerProcess:
    """The supervisor's handle on one worker process and its control socket."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: multiprocessing.process.BaseProcess | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._asked = 0  # questions asked on the control socket

    async def start(self, config: RouterConfig, ticket_secret: bytes,
                    wildcard_texts: tuple[str, str] | None = None) -> None:
        parent, child = socket.socketpair()
        level, json_logs = _log_setup()
        ctx = multiprocessing.get_context("spawn")
        # The secret and the certificate's key go through the spawn pipe: never in argv,
        # the environment or a file.
        self.process = ctx.Process(
            target=worker_main, args=(config, self.index, child, level, json_logs,
                                      ticket_secret, wildcard_texts),
            name=f"dinp-router-{self.index}", daemon=True,
        )
        self.process.start()
        child.close()
        self._reader, self._writer = await asyncio.open_connection(sock=parent)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    async def stats(self, timeout: float = CONTROL_TIMEOUT) -> WorkerStats | None:
        """The worker's counters; None if it does not answer in time."""
        if self._reader is None or self._writer is None or not self.alive:
            return None
        async with self._lock:
            self._asked += 1
            number = str(self._asked)
            try:
                self._writer.write(b"snapshot %s\n" % number.encode())
                await self._writer.drain()
                async with asyncio.timeout(timeout):
                    while line := await self._reader.readline():
                        answered, stats = json.loads(line)
                        if answered == number:  # else a late answer to an earlier one
                            return stats  # type: ignore[no-any-return]
            except (TimeoutError, ConnectionError, OSError, ValueError):
                return None
        return None

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
        self.workers = [WorkerProcess(i) for i in range(workers)]
        self.stopping = False
        # What every worker's TLS session ticket keys come from, for as long as this runs:
        # any worker, a restarted one too, resumes the sessions of any other.
        self.ticket_secret = os.urandom(32)
        # The operator's certificate, watched quietly: the pair in use goes to each worker
        # started, so one restarted while its files are broken still serves.
        self.cert_files: CertFiles | None = None

    async def run(self) -> None:
        config = self.config
        host, port = split_hostport(config.http_listen, default_port=8080)
        self.cert_files = check_config(config)  # refused here, not by each worker
        # Holding the ports (bound, not listening: they take no connections) makes the
        # start fail early when one is taken, and resolves port 0 for the workers.
        holders = [_reserve(host, port, "http_listen")]
        try:
            port = holders[0].getsockname()[1]
            config = dataclasses.replace(config, http_listen=_hostport(host, port))
            https = ""
            if config.https_listen:
                https_host, https_port = split_hostport(config.https_listen, default_port=443)
                holders.append(_reserve(https_host, https_port, "https_listen"))
                https_port = holders[1].getsockname()[1]
                config = dataclasses.replace(config,
                                             https_listen=_hostport(https_host, https_port))
                https = f", https://{https_host}:{https_port}"
            runner: web.AppRunner | None = None
            if self.cert_files is not None:
                self.cert_files.start()
            for worker in self.workers:
                await worker.start(config, self.ticket_secret, self._wildcard_texts())
            await self._wait_ready()
            admin_url = "disabled"
            if config.admin_listen:
                admin_host, admin_port = split_hostport(config.admin_listen,
                                                        default_port=8081)
                runner = await start_site(admin_app(self.stats, lambda: self.stopping),
                                          admin_host, admin_port)
                admin_url = f"http://{admin_host}:{runner.addresses[0][1]}"
            log.info("router serving on http://%s:%d%s with %d workers, admin on %s, "
                     "routes from %s", host, port, https, len(self.workers), admin_url,
                     redact(config.redis_url))
            await run_until_stopped(self._supervise(config))
        finally:
            self.stopping = True
            if self.cert_files is not None:
                self.cert_files.stop()
            log.info("router stopping")
            await asyncio.gather(*(w.stop(SHUTDOWN_GRACE) for w in self.workers))
            if runner is not None:
                await runner.cleanup()
            for holder in holders:
                holder.close()

    async def _wait_ready(self) -> None:
        """Until every worker answers (it answers once it listens)."""
        deadline = asyncio.get_running_loop().time() + self.config.connect_timeout + 30
        for worker in self.workers:
            while await worker.stats(timeout=1.0) is None:
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
                    await worker.start(config, self.ticket_secret, self._wildcard_texts())
                    continue
            if all(w.alive for w in self.workers):
                backoff = max(1.0, backoff / 2)

    def _wildcard_texts(self) -> tuple[str, str] | None:
        return self.cert_files.texts if self.cert_files is not None else None

    async def stats(self) -> list[WorkerStats]:
        answers = await asyncio.gather(*(w.stats() for w in self.workers))
        return [a for a in answers if a is not None]


def check_config(config: RouterConfig) -> CertFiles | None:
    """Refuse a configuration the workers would refuse, before any starts: the access log,
    the operator's certificate (loaded: it is returned, to be watched), trusted_proxies."""
    if config.access_log:
        open_access_log(config.access_log).close()
    files = None
    if config.tls_cert_file:
        files = CertFiles(config.tls_cert_file, config.tls_key_file, tell=False)
        files.warn_for_router()
        if not config.https_listen:
            log.warning("tls_cert_file is set but https_listen is not: no TLS listener")
    trusted_networks(config.trusted_proxies)
    return files


def _reserve(host: str, port: int, key: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise cannot_listen(host, port, exc, key) from exc
    return sock


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
