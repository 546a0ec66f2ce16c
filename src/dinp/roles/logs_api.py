"""`GET /api/v1/apps/{name}/logs`: the lines of every instance of an app on every node,
merged in time order, streamed as NDJSON (access: `app-read`).

The server asks the agent of every node that may hold lines of the app (`targets`: each
node that reports, and has instances of the app or reported within the time removed
containers' lines are kept; agents answer with nothing when they hold none), presenting
the node's current credential (or the cluster token, for a node that has none), never
following a redirect. Each node's backlog comes sorted and is merged as it streams;
when following, new lines wait REORDER_SECONDS in a bounded buffer so that those of
several nodes come out in order, and a node whose stream breaks is asked again.

The reader learns what it cannot see: `{"warning": "node n2 unreachable: …"}` for a
node that did not answer (never a silent gap), `{"dropped": n}` where lines were lost
because the reader (or the server, for an agent's marker) fell behind. A slow reader
holds up only its own request: the nodes are read at their pace into the bounded buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from dinp import logs, tokens, validation
from dinp.errors import InvalidInput
from dinp.log_archive import KEEP_SECONDS
from dinp.logs import LogLine, LogStats, Query, ReorderBuffer
from dinp.roles.handlers import srv
from dinp.roles.server import Server

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 30.0  # between two reads of an agent's answer (agents tick every 5 s)
RETRY_SECONDS = 3.0  # before a followed node that was lost is asked again
RESCAN_SECONDS = 2.0  # how often a follower looks for nodes that started reporting
TICK_SECONDS = 10.0  # a silent follow says it is alive this often
STEP_SECONDS = 0.1
BACKLOG_QUEUE = 1000  # lines of one node's backlog held ahead of the merge
WRITE_CHUNK = 64 << 10
NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class Target:
    node: str
    url: str  # of its agent's GET /logs
    token: str  # what its agent holds: the node's credential, or the cluster token


def targets(server: Server, app: str) -> tuple[list[Target], list[str]]:
    """The nodes to ask for an app's lines, and a warning for each node that may hold
    some but cannot be asked."""
    now = time.monotonic()
    placed = {i.node for i in server.snapshot.by_app.get(app, [])}
    out: list[Target] = []
    warnings: list[str] = []
    for name in sorted(server.snapshot.nodes):
        hb, report = server.heartbeats.get(name), server.reports.get(name)
        if hb is None or report is None:
            if name in placed:
                warnings.append(f"node {name} has not reported since the server started: "
                                "its logs cannot be asked for")
            continue
        recent = now - report.received_at <= KEEP_SECONDS
        if hb.logs_port is None:
            if name in placed:
                warnings.append(f"node {name}'s agent serves no logs (it is older than "
                                "`dinp app logs`, or its logs_listen could not be taken)")
            continue
        if not recent and name not in placed:
            continue  # silent for longer than anything is kept
        host = f"[{hb.address}]" if ":" in hb.address else hb.address
        generation = server.snapshot.node_generations.get(name)
        token = (server.config.cluster_token if generation is None
                 else tokens.node_credential(server.config.cluster_token, name, generation))
        out.append(Target(name, f"http://{host}:{hb.logs_port}/logs", token))
    return out, warnings


def parse_query(request: web.Request, app: str) -> Query:
    raw = request.query
    since = None
    if "since" in raw:
        text = raw["since"]
        value = float(text) if len(text) <= 40 and NUMBER.fullmatch(text) else -1.0
        if not 0 <= value <= logs.MAX_SINCE:
            raise InvalidInput("since", f"expected Unix seconds, 0 to {logs.MAX_SINCE:g}")
        since = value
    tail_text = raw.get("tail", str(logs.DEFAULT_TAIL))
    tail = int(tail_text) if tail_text.isdigit() and len(tail_text) <= 6 else -1
    if not 0 <= tail <= logs.MAX_TAIL:
        raise InvalidInput("tail", f"expected a whole number from 0 to {logs.MAX_TAIL}")
    instance = raw.get("instance")
    if instance is not None and not logs.INSTANCE_ID.fullmatch(instance):
        raise InvalidInput("instance", "expected an instance id")
    follow = raw.get("follow", "false")
    if follow not in ("true", "false"):
        raise InvalidInput("follow", "expected true or false")
    return Query(app=app, instance=instance, since=since, tail=tail, follow=follow == "true")


class Writer:
    """NDJSON to the reader in chunks, counted."""

    def __init__(self, resp: web.StreamResponse, stats: LogStats) -> None:
        self.resp, self.stats = resp, stats
        self._chunk = bytearray()
        self._lines = 0

    async def add(self, obj: LogLine | dict[str, Any]) -> None:
        self._chunk += obj.ndjson if isinstance(obj, LogLine) else logs.dumps(obj)
        self._lines += isinstance(obj, LogLine)
        if len(self._chunk) >= WRITE_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        if not self._chunk:
            return
        data, lines = bytes(self._chunk), self._lines
        self._chunk.clear()
        self._lines = 0
        await self.resp.write(data)
        self.stats.bytes += len(data)
        self.stats.lines += lines
        await asyncio.sleep(0)  # a write into free socket buffer does not yield


_END = None


class NodeFeed:
    """One node's lines for one reader: its backlog through a small bounded queue (the
    merge takes them in order; a slow reader slows only this request's reading), then,
    when following, each new line into the reader's ReorderBuffer (bounded: never
    waiting for the reader). Problems become notices for the reader."""

    def __init__(self, target: Target, query: Query, session: aiohttp.ClientSession,
                 notices: list[dict[str, Any]], live: ReorderBuffer | None,
                 *, caught_up: bool = False) -> None:
        self.target, self.query, self.session = target, query, session
        self.notices, self.live = notices, live
        self.queue: asyncio.Queue[LogLine | None] = asyncio.Queue(BACKLOG_QUEUE)
        self.caught_up = caught_up
        self.last_at: float | None = None
        self.lost = ""
        self.malformed = False

    async def backlog(self) -> AsyncIterator[LogLine]:
        while (line := await self.queue.get()) is not _END:
            assert line is not None
            yield line

    async def _end_backlog(self) -> None:
        if not self.caught_up:
            self.caught_up = True
            await self.queue.put(_END)

    async def run(self) -> None:
        try:
            await self._run()
        except Exception:  # a bug must not leave the merge waiting for this node
            log.exception("reading the logs of node %s failed", self.target.node)
            self.notices.append({"warning": f"node {self.target.node}: its logs could "
                                 "not be read (the server logged why)"})
        await self._end_backlog()

    async def _run(self) -> None:
        query = self.query
        while True:
            try:
                await self._read(query)
                problem = "its agent ended the stream"
            except (aiohttp.ClientError, TimeoutError, ValueError, InvalidInput) as exc:
                problem = _describe(exc)
            else:
                if not query.follow:
                    return
            await self._end_backlog()
            if not query.follow:
                self.notices.append({"warning": f"node {self.target.node} unreachable: "
                                     f"{problem}"})
                return
            if not self.lost:
                self.notices.append({"warning": f"node {self.target.node} unreachable: "
                                     f"{problem}; asking again every {RETRY_SECONDS:g} s"})
            self.lost = problem
            await asyncio.sleep(RETRY_SECONDS)
            # From where it stopped (or from now, if nothing came): nothing twice.
            query = Query(app=query.app, instance=query.instance, tail=logs.MAX_TAIL,
                          since=self.last_at if self.last_at is not None else time.time(),
                          follow=True)

    async def _read(self, query: Query) -> None:
        timeout = aiohttp.ClientTimeout(total=None if query.follow else 120,
                                        connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        async with self.session.get(self.target.url, params=query.params(),
                                    headers={"Authorization": f"Bearer {self.target.token}"},
                                    allow_redirects=False, timeout=timeout) as resp:
            if resp.status != 200:
                text = await resp.text()
                with contextlib.suppress(ValueError, AttributeError):
                    text = json.loads(text).get("error") or text
                raise ValueError(f"its agent answered HTTP {resp.status}: {text[:200]}")
            if self.lost:
                self.notices.append({"warning": f"node {self.target.node} answers again"})
                self.lost = ""
            skip_to = self.last_at  # asked again: since its last line, which came already
            count = 0
            while raw := await resp.content.readline():
                count += 1
                if count % 256 == 0:
                    await asyncio.sleep(0)  # buffered lines do not yield: let others run
                if self.caught_up and self.live is not None and self.live.full:
                    self.live.dropped += 1  # the reader is behind: not worth parsing
                    continue
                obj = json.loads(raw)
                if not isinstance(obj, dict) or "tick" in obj:
                    continue
                if obj.get("caught_up"):
                    await self._end_backlog()
                    continue
                if "dropped" in obj:
                    self.notices.append({"dropped": obj["dropped"], "node": self.target.node,
                                         "at": obj.get("at") or time.time()})
                    continue
                try:
                    line = LogLine.from_json(obj, node=self.target.node)
                except InvalidInput as exc:  # skipped, said once: the others still count
                    if not self.malformed:
                        self.malformed = True
                        self.notices.append({"warning": f"node {self.target.node} sent a "
                                             f"malformed line ({exc}): skipped"})
                    continue
                if skip_to is not None and line.at <= skip_to:
                    continue
                self.last_at = line.at if self.last_at is None else max(self.last_at, line.at)
                if not self.caught_up:
                    await self.queue.put(line)
                elif self.live is not None:
                    self.live.push(line, time.monotonic())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc}"
    return str(exc) or type(exc).__name__


async def app_logs(request: web.Request) -> web.StreamResponse:
    """The app's lines, merged (see the module's docstring)."""
    server = srv(request)
    name = validation.app_name(request.match_info["name"], allow_reserved=True)
    if name not in server.snapshot.apps:
        await server.db(server.store.get_app, name)  # 404 if there is no such app
    query = parse_query(request, name)
    resp = web.StreamResponse(headers={"Content-Type": logs.MEDIA_TYPE,
                                       "Cache-Control": "no-store"})
    await resp.prepare(request)
    writer = Writer(resp, server.log_stats)
    found, warnings = targets(server, name)
    notices: list[dict[str, Any]] = [{"warning": w} for w in warnings]
    live = ReorderBuffer() if query.follow else None
    tasks: set[asyncio.Task[None]] = set()
    if query.follow:
        server.log_stats.following += 1
    try:
        async with aiohttp.ClientSession() as session:
            feeds = {t.node: NodeFeed(t, query, session, notices, live) for t in found}
            tasks.update(asyncio.create_task(f.run()) for f in feeds.values())
            async for line in logs.merge([f.backlog() for f in feeds.values()]):
                await _notices(writer, notices)
                await writer.add(line)
            await _notices(writer, notices)
            await writer.flush()
            if live is not None:
                await _follow(request, server, writer, live, feeds, notices, tasks,
                              query, session)
    except ConnectionError:  # the reader left
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if query.follow:
            server.log_stats.following -= 1
    return resp


async def _notices(writer: Writer, notices: list[dict[str, Any]]) -> None:
    while notices:
        await writer.add(notices.pop(0))


async def _follow(request: web.Request, server: Server, writer: Writer, live: ReorderBuffer,
                  feeds: dict[str, NodeFeed], notices: list[dict[str, Any]],
                  tasks: set[asyncio.Task[None]], query: Query,
                  session: aiohttp.ClientSession) -> None:
    """New lines as they come, in order, until the reader leaves or the server stops."""
    started = time.time()
    last_tick = last_scan = time.monotonic()
    while not server.closing:
        await asyncio.sleep(STEP_SECONDS)
        now = time.monotonic()
        dropped = live.take_dropped()
        if dropped:
            server.log_stats.dropped += dropped
            await writer.add({"dropped": dropped, "at": time.time()})
        await _notices(writer, notices)
        for line in live.ready(now):
            await writer.add(line)
        if now - last_tick >= TICK_SECONDS:
            await writer.add({"tick": time.time()})
            last_tick = now
        await writer.flush()
        if request.transport is None or request.transport.is_closing():
            return
        if now - last_scan >= RESCAN_SECONDS:  # a node that started reporting since
            last_scan = now
            for target in targets(server, query.app)[0]:
                if target.node not in feeds:
                    later = Query(app=query.app, instance=query.instance, tail=logs.MAX_TAIL,
                                  since=max(started, query.since or 0), follow=True)
                    feed = NodeFeed(target, later, session, notices, live, caught_up=True)
                    feeds[target.node] = feed
                    tasks.add(asyncio.create_task(feed.run()))
