"""The agent's logs listener: `GET /logs`, this node's containers' lines for the server.

    GET /logs?app=NAME[&instance=ID][&since=UNIX][&tail=N][&follow=1]
    Authorization: Bearer <this agent's cluster_token value>

answers NDJSON: the backlog (the last `tail` lines of each of the app's containers here,
live or removed, since `since`) in time order, then with `follow` `{"caught_up": true}`
and each new line as it comes, from containers that start meanwhile too, with
`{"tick": <unix>}` every few seconds so a silent stream is told from a dead one, and
`{"dropped": n}` where a reader that did not keep up lost lines.

Who may ask: whoever presents the very token this agent holds as `cluster_token` (the
cluster token, or this node's credential): the servers, which present the node's
current credential when one was made, else the cluster token. Compared in constant time.
Only containers this agent lists (its node's, its cluster's) and the lines it kept of
those it removed are served, never another cluster's.

A reader never slows the agent: Docker is read on threads of this module's own (never
the default executor the heartbeat uses), each follower through a bounded LineQueue,
and the only thing that waits for a slow reader is its own request. It also keeps the
last lines of each container the agent removes (`log_archive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from dinp import logs, tokens, validation
from dinp.config import AgentConfig
from dinp.container import Container, DockerRuntime
from dinp.docker_logs import LogReader, Tail, Tails, ended
from dinp.errors import DinpError, InvalidInput, Unauthorized, Unavailable
from dinp.lifecycle import start_site
from dinp.log_archive import KEEP_LINES, Archive
from dinp.logs import LineQueue, LogLine, LogStats, Query

log = logging.getLogger(__name__)
MAX_FOLLOWERS = 16  # readers following at once; more get a 503
TICK_SECONDS = 5.0
RESCAN_SECONDS = 0.5  # how often a follower looks for the app's new containers
RETRY_LISTEN_SECONDS = 10.0
WRITE_CHUNK = 64 << 10


class AgentLogs:
    """The listener and the keeper of removed containers' lines, for one agent.

    `containers` gives the containers the agent holds for its own now (its last listing);
    `stats` counts what is served."""

    def __init__(self, config: AgentConfig, runtime: DockerRuntime,
                 containers: Callable[[], Sequence[Container]], stats: LogStats) -> None:
        self.config, self.runtime = config, runtime
        self.containers, self.stats = containers, stats
        self.reader: LogReader | None = None
        self.tails: Tails | None = None  # the followed containers' streams
        self.archive: Archive | None = None
        self.port: int | None = None
        self.closing = False
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="dinp-logs")
        self._runner: web.AppRunner | None = None
        self._retry: asyncio.Task[None] | None = None

    # -- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the engine, load what was kept, listen. Nothing here stops the
        agent: a port that cannot be taken is retried, a state directory that cannot be
        written means removed containers' lines are not kept (both logged)."""
        loop = asyncio.get_running_loop()
        try:
            await self._connect()
        except Unavailable as exc:  # asked again at the first request
            log.error("app logs cannot be read yet: %s", exc)
        directory = self.config.state_path() / "logs" / self.config.node_name
        try:
            self.archive = await loop.run_in_executor(
                self._pool, lambda: Archive(directory, node=self.config.node_name))
        except OSError as exc:
            log.error("the last lines of removed containers are not kept: %s (set "
                      "state_dir in [agent], DINP_STATE_DIR)", exc)
        self.runtime.before_remove = self.keep
        if not await self._listen(quiet=False):
            self._retry = asyncio.create_task(self._listen_later())

    async def _connect(self) -> LogReader:
        if self.reader is None:
            self.reader = await asyncio.get_running_loop().run_in_executor(
                self._pool, lambda: LogReader(self.config.docker_host))
            self.tails = Tails(self.reader)
        return self.reader

    async def _listen(self, *, quiet: bool) -> bool:
        host, port = self.config.logs_address()
        app = web.Application()
        app.router.add_get("/logs", self.handle)
        try:
            runner = await start_site(app, host, port)
        except Unavailable as exc:
            if not quiet:
                log.error("app logs are not served from this node: %s; retrying every "
                          "%.0f s (logs_listen in [agent], DINP_LOGS_LISTEN)", exc,
                          RETRY_LISTEN_SECONDS)
            return False
        self._runner = runner
        self.port = int(runner.addresses[0][1]) if runner.addresses else port
        log.info("app logs served on %s:%d", host, self.port)
        return True

    async def _listen_later(self) -> None:
        while not self.closing:
            await asyncio.sleep(RETRY_LISTEN_SECONDS)
            if await self._listen(quiet=True):
                return

    async def close(self) -> None:
        self.closing = True
        self.runtime.before_remove = None
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self._runner is not None:
            await self._runner.cleanup()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.reader is not None:
            self.reader.close()

    # -- keeping removed containers' lines -----------------------------------------------

    def keep(self, container_id: str, stopped: bool) -> None:
        """Before a container is removed (on the removing thread): keep its last lines
        and how it ended."""
        if self.reader is None or self.archive is None:
            return
        inspect = self.reader.inspect(container_id)
        if inspect is None:
            return
        lines: list[tuple[float, str, str]] = [
            (ns / 1e9, stream, text)
            for ns, stream, text in self.reader.backlog(container_id, since=None,
                                                        tail=KEEP_LINES) or []]
        end = ended(inspect, stopped=stopped)
        if end is not None:
            lines.append((end[0], "dinp", end[1]))
        labels = (inspect.get("Config") or {}).get("Labels") or {}
        self.archive.keep(container=container_id, labels=labels, lines=lines)
        log.debug("kept %d line(s) of %s", len(lines), container_id[:12])

    # -- serving -------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> None:
        token = tokens.bearer_token(request.headers.get("Authorization", ""))
        if token is None:
            raise Unauthorized("missing token: the server presents the node's credential")
        if not tokens.same_secret(token, self.config.cluster_token):
            raise Unauthorized("this is not the token this agent holds")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            self._authorized(request)
            query = parse_query(request.query)
            if query.follow and self.stats.following >= MAX_FOLLOWERS:
                raise Unavailable(f"this node already serves {MAX_FOLLOWERS} log followers")
            await self._connect()
        except DinpError as exc:
            return web.json_response(exc.to_json(), status=exc.http_status)
        resp = web.StreamResponse(headers={"Content-Type": logs.MEDIA_TYPE,
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        try:
            if query.follow:
                self.stats.following += 1
                try:
                    await self._follow(request, resp, query)
                finally:
                    self.stats.following -= 1
            else:
                lines, _ = await self._backlog(query, self._ours(query))
                await self._write(resp, lines)
        except ConnectionError:  # the reader left
            pass
        return resp

    def _ours(self, query: Query) -> list[Container]:
        return [c for c in self.containers() if c.app == query.app and c.instance
                and (query.instance is None or c.instance == query.instance)]

    def _cluster(self) -> str | None:
        """Whose removed containers' lines are served: this cluster's; None: any (a
        server older than cluster ids, whose containers are matched by node alone)."""
        return None if self.runtime.any_cluster else self.runtime.cluster

    async def _backlog(self, query: Query, containers: list[Container]) -> tuple[
            list[LogLine], dict[str, int]]:
        """The backlog, sorted, and the time (ns) of each container's last line in it."""
        if not self.runtime.cluster and not self.runtime.any_cluster:
            return [], {}  # this node does not know its cluster yet: nothing is ours
        loop = asyncio.get_running_loop()
        reader = self.reader
        assert reader is not None

        def read(c: Container) -> tuple[list[LogLine], int] | None:
            raw = reader.backlog(c.id, since=query.since, tail=query.tail)
            if raw is None:
                return None  # removed since it was listed: its kept lines, if any, serve
            lines = [LogLine(at=ns / 1e9, instance=c.instance, release=c.release,
                             stream=stream, line=text) for ns, stream, text in raw]
            for x in lines:
                _ = x.ndjson  # encoded here, off the event loop
            newest = max((ns for ns, _, _ in raw), default=0)
            if not c.running and query.tail > 0:
                end = ended(reader.inspect(c.id))
                if end is not None and (query.since is None or end[0] >= query.since):
                    lines.append(LogLine(at=end[0], instance=c.instance, release=c.release,
                                         stream="dinp", line=end[1]))
            return lines, newest

        results = await asyncio.gather(*(loop.run_in_executor(self._pool, read, c)
                                         for c in containers), return_exceptions=True)
        lines: list[LogLine] = []
        newest: dict[str, int] = {}
        for c, result in zip(containers, results, strict=True):
            if isinstance(result, BaseException):
                log.debug("cannot read the log of %s: %s", c.name, result)
            elif result is not None:
                lines += result[0]
                newest[c.id] = result[1]
        if self.archive is not None:
            archive = self.archive
            cluster = self._cluster()
            live = frozenset(newest)  # read live: their kept lines (if any) are the same
            lines += await loop.run_in_executor(self._pool, lambda: [
                x for x in archive.lines(query, cluster=cluster, skip=live) if x.ndjson])
        lines.sort(key=lambda x: x.at)
        return lines, newest

    async def _write(self, resp: web.StreamResponse, lines: Sequence[LogLine | dict[str, Any]],
                     ) -> None:
        """Write objects as NDJSON in chunks, counting what went out."""
        chunk = bytearray()
        count = 0
        for item in lines:
            chunk += item.ndjson if isinstance(item, LogLine) else logs.dumps(item)
            count += isinstance(item, LogLine)
            if len(chunk) >= WRITE_CHUNK:
                await self._send(resp, bytes(chunk), count)
                chunk.clear()
                count = 0
        if chunk:
            await self._send(resp, bytes(chunk), count)

    async def _send(self, resp: web.StreamResponse, data: bytes, lines: int) -> None:
        await resp.write(data)
        self.stats.bytes += len(data)
        self.stats.lines += lines
        # A write into free socket buffer does not yield: let the heartbeat (and the other
        # readers) have the loop between two chunks.
        await asyncio.sleep(0)

    async def _follow(self, request: web.Request, resp: web.StreamResponse,
                      query: Query) -> None:
        """The backlog, then every new line of the app's containers here until the reader
        leaves (or the agent stops)."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def notify() -> None:
            loop.call_soon_threadsafe(wake.set)

        queue = LineQueue(notify=notify)
        followed: dict[str, tuple[Tail, int]] = {}
        tails = self.tails
        assert tails is not None
        since_ns = int(query.since * 1e9) - 1 if query.since is not None else 0

        def follow(c: Container, *, after_ns: int) -> None:
            followed[c.id] = tails.subscribe(
                c.id, queue.put, after_ns=max(after_ns, since_ns), instance=c.instance,
                release=c.release, name=c.name)

        try:
            t0_ns = time.time_ns()
            first = self._ours(query)
            backlog, newest = await self._backlog(query, first)
            await self._write(resp, [*backlog, {"caught_up": True}])
            for c in first:
                if c.id in newest:
                    # After the last line sent (or after the backlog was asked for, if it
                    # had none): nothing written meanwhile is lost, nothing sent twice.
                    follow(c, after_ns=newest[c.id] or t0_ns - 1)
            last_tick = last_scan = time.monotonic()
            while not self.closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), RESCAN_SECONDS)
                wake.clear()
                lines, dropped = queue.take()
                lines.sort(key=lambda x: x.at)
                out: list[LogLine | dict[str, Any]] = []
                if dropped:
                    self.stats.dropped += dropped
                    out.append({"dropped": dropped, "at": time.time()})
                out.extend(lines)
                now = time.monotonic()
                if now - last_tick >= TICK_SECONDS:
                    out.append({"tick": time.time()})
                    last_tick = now
                if out:
                    await self._write(resp, out)
                if request.transport is None or request.transport.is_closing():
                    return
                if now - last_scan >= RESCAN_SECONDS:
                    last_scan = now
                    for c in self._ours(query):
                        if c.id not in followed:  # started since: all of its lines
                            follow(c, after_ns=0)
        finally:
            for tail, key in followed.values():
                tail.unsubscribe(key)


def parse_query(raw: Any) -> Query:
    """The query of GET /logs (the server's own checks are stricter: it asks only what
    it was asked, checked already)."""
    app = validation.app_name(raw.get("app"), allow_reserved=True, field="app")
    instance = raw.get("instance")
    if instance is not None and not logs.INSTANCE_ID.fullmatch(instance):
        raise InvalidInput("instance", "expected an instance id")
    since = None
    if raw.get("since") is not None:
        try:
            since = float(raw["since"])
        except ValueError:
            since = -1.0
        if not 0 <= since <= logs.MAX_SINCE:
            raise InvalidInput("since", "expected Unix seconds")
    tail_text = raw.get("tail", str(logs.DEFAULT_TAIL))
    tail = int(tail_text) if tail_text.isdigit() and len(tail_text) <= 6 else -1
    if not 0 <= tail <= logs.MAX_TAIL:
        raise InvalidInput("tail", f"expected 0 to {logs.MAX_TAIL} lines")
    follow = raw.get("follow", "0")
    if follow not in ("0", "1"):
        raise InvalidInput("follow", "expected 0 or 1")
    return Query(app=app, instance=instance, since=since, tail=tail, follow=follow == "1")
