"""Reading containers' logs from the Docker engine: stdout and stderr told apart, each
line with the time the engine stamped it.

One request per container carries both streams, since the engine applies `tail` to them
together (asking for stdout's last 10 lines alone gives the stdout lines among the last
10 of both). The frames of the answer say which stream each entry is; the SDK's own
`logs()` drops that, so the frames are read here (`frames`), over the SDK's HTTP session.

Every call blocks: reads of a backlog run on a small pool of their own, followed streams
on threads of their own (a `Tail` per container, shared by all its readers), never on
the event loop's default executor, which the agent's heartbeat and converge need. It
uses its own engine connection (and pool), so a dozen open streams never hold up the
agent's calls.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import struct
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

import docker.errors
from docker.types import CancellableStream

from dinp.container import exit_words
from dinp.docker_engine import DockerEngine
from dinp.logs import Assembler, LogLine, cut, docker_time

log = logging.getLogger(__name__)
STREAM_NAMES = {1: "stdout", 2: "stderr"}
Frames: TypeAlias = "CancellableStream[tuple[int, bytes]]"  # generic in the stubs only
# Seconds to connect and, for a backlog, between two reads; a followed stream may be
# silent for as long as its app is.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0


class LogReader:
    """The log side of one engine: backlogs, followed streams, how containers ended."""

    def __init__(self, base_url: str = "", *, pool: int = 32) -> None:
        self.engine = DockerEngine(base_url, timeout=int(READ_TIMEOUT), section="agent",
                                   max_pool_size=pool)
        self.api = self.engine.api

    def close(self) -> None:
        self.engine.close()

    def open(self, container: str, *, since: float | None, tail: int | None,
             follow: bool) -> Frames:
        """A stream of (stream kind, frame) of a container's log; closing it (from any
        thread) ends it. Raises docker.errors.NotFound for a container that is gone."""
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "timestamps": 1,
                                  "follow": int(follow), "tail": "all" if tail is None
                                  else str(tail)}
        if since is not None and since > 0:
            params["since"] = f"{since:.9f}"
        url = (f"{self.api.base_url}/v{self.api.api_version}/containers/"
               f"{urllib.parse.quote(container, safe='')}/logs")
        with self.engine.errors():
            resp = self.api.get(url, params=params, stream=True, timeout=(
                CONNECT_TIMEOUT, None if follow else READ_TIMEOUT))
        if resp.status_code == 404:
            resp.close()
            raise docker.errors.NotFound(f"no container {container}")
        if resp.status_code != 200:
            message = resp.text[:300]
            resp.close()
            raise docker.errors.APIError(f"logs of {container}: HTTP {resp.status_code}: "
                                         f"{message}")
        return CancellableStream(frames(resp.raw), resp)

    def lines(self, stream: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, str, str]]:
        """(ns, stdout|stderr, text) of each line of a stream from `open`."""
        assembler = Assembler()
        for kind, frame in stream:
            for ns, k, text in assembler.feed(kind, frame):
                yield ns, STREAM_NAMES.get(k, "stdout"), text
        for ns, k, text in assembler.rest():
            yield ns, STREAM_NAMES.get(k, "stdout"), text

    def backlog(self, container: str, *, since: float | None,
                tail: int) -> list[tuple[int, str, str]] | None:
        """The last `tail` lines of a container (since `since`); None once it is gone."""
        try:
            stream = self.open(container, since=since, tail=max(tail, 0), follow=False)
        except docker.errors.NotFound:
            return None
        if tail <= 0:
            stream.close()
            return []
        try:
            return list(self.lines(stream))
        finally:
            stream.close()

    def inspect(self, container: str) -> dict[str, Any] | None:
        """The engine's inspect of a container; None once it is gone."""
        with self.engine.errors():
            try:
                data: dict[str, Any] = self.api.inspect_container(container)
            except docker.errors.NotFound:
                return None
        return data


def frames(raw: Any) -> Iterator[tuple[int, bytes]]:
    """The multiplexed frames of a log answer (an 8-byte header: the stream, then the
    length) as (stream kind, payload), until the answer ends. Read as it comes (`read1`),
    whatever arrived at once parsed together: a chatty container's stream costs the
    agent little."""
    buf = bytearray()
    while chunk := raw.read1(1 << 16):
        buf += chunk
        pos, size = 0, len(buf)
        while size - pos >= 8:
            kind, length = struct.unpack_from(">BxxxL", buf, pos)
            if size - pos - 8 < length:
                break
            yield kind, bytes(buf[pos + 8:pos + 8 + length])
            pos += 8 + length
        del buf[:pos]


def ended(inspect: dict[str, Any] | None, *, stopped: bool = False) -> tuple[float, str] | None:
    """(when, how) a container ended, from its inspect; None while it runs."""
    state = (inspect or {}).get("State") or {}
    if not state or state.get("Running") or state.get("Status") in ("created", "running"):
        return None
    finished = str(state.get("FinishedAt") or "")
    try:
        at = docker_time(finished) / 1e9
    except ValueError:
        return None
    if at <= 0:  # "0001-01-01T00:00:00Z": never ran
        return None
    return at, exit_words(state, stopped=stopped)


Sink = Callable[[LogLine], object]  # must not block


class Tail:
    """One container's log followed once, on a thread of its own, for every reader that
    follows it: each line goes to each subscriber's sink (a bounded queue: never
    blocking), so ten readers of a chatty container cost one stream, not ten.

    It starts with the container's last RECENT lines and keeps the RECENT newest: a
    subscriber says up to when it has lines already (its backlog), and gets those after
    that from there, then each new one; nothing lost between its backlog and its follow,
    nothing twice. When the stream ends by itself (the container stopped), how it ended
    goes last. It stops once its last subscriber leaves."""

    RECENT = 1000

    def __init__(self, reader: LogReader, container: str, *, instance: str, release: int,
                 name: str = "", on_end: Callable[[Tail], None] | None = None) -> None:
        self.reader, self.container = reader, container
        self.instance, self.release = instance, release
        self.on_end = on_end
        self._lock = threading.Lock()
        self._recent: deque[tuple[int, LogLine]] = deque(maxlen=self.RECENT)
        self._subscribers: dict[int, tuple[Sink, int]] = {}
        self._ids = itertools.count()
        self._stream: Frames | None = None
        self.closed = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"dinp-logs-{name or container[:12]}")

    def start(self) -> Tail:
        self._thread.start()
        return self

    def subscribe(self, sink: Sink, *, after_ns: int) -> int:
        """Lines after `after_ns` to `sink`, from those it has already; an id for
        `unsubscribe`."""
        with self._lock:
            for ns, line in self._recent:
                if ns > after_ns:
                    sink(line)
            key = next(self._ids)
            self._subscribers[key] = (sink, after_ns)
        return key

    def unsubscribe(self, key: int) -> None:
        with self._lock:
            self._subscribers.pop(key, None)
            if self._subscribers:
                return
            self.closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _emit(self, ns: int, stream: str, text: str) -> None:
        line = LogLine(at=ns / 1e9, instance=self.instance, release=self.release,
                       stream=stream, line=text)
        _ = line.ndjson  # encoded here, once for every reader
        with self._lock:
            self._recent.append((ns, line))
            for sink, after_ns in self._subscribers.values():
                if ns > after_ns:
                    sink(line)

    def _run(self) -> None:
        try:
            self._follow()
        finally:
            with self._lock:
                self.closed = True
            if self.on_end is not None:
                self.on_end(self)

    def _follow(self) -> None:
        try:
            stream = self.reader.open(self.container, since=None, tail=self.RECENT,
                                      follow=True)
        except Exception as exc:  # gone already, or the engine refused: nothing to follow
            log.debug("cannot follow the log of %s: %s", self.container[:12], exc)
            return
        with self._lock:
            if self.closed:
                stream.close()
                return
            self._stream = stream
        try:
            for ns, name, text in self.reader.lines(stream):
                self._emit(ns, name, text)
        except Exception as exc:  # closed under it, or the engine went away
            log.debug("log stream of %s ended: %s", self.container[:12], exc)
        with self._lock:
            if self.closed:
                return
            self._stream = None
        with contextlib.suppress(Exception):
            end = ended(self.reader.inspect(self.container))
            if end is not None:
                self._emit(int(end[0] * 1e9), "dinp", cut(end[1]))


class Tails:
    """The Tail of each followed container of one engine (made on the first subscriber,
    gone after the last or when its container stopped)."""

    def __init__(self, reader: LogReader) -> None:
        self.reader = reader
        self._lock = threading.Lock()
        self._tails: dict[str, Tail] = {}

    def subscribe(self, container: str, sink: Sink, *, after_ns: int, instance: str,
                  release: int, name: str = "") -> tuple[Tail, int]:
        with self._lock:
            tail = self._tails.get(container)
            if tail is None or tail.closed:
                tail = Tail(self.reader, container, instance=instance, release=release,
                            name=name, on_end=self._ended)
                self._tails[container] = tail
                tail.start()
            return tail, tail.subscribe(sink, after_ns=after_ns)

    def _ended(self, tail: Tail) -> None:
        with self._lock:
            if self._tails.get(tail.container) is tail:
                del self._tails[tail.container]

    def __len__(self) -> int:
        return len(self._tails)
