"""App logs as dinp moves them: the line format, the query, merging and bounded buffers.

A line is one line an instance wrote (or one dinp wrote about its container: how it
ended), with the time Docker stamped it. Agents serve their containers' lines as NDJSON,
the server merges every node's by time, the CLI prints them. Everything here is pure (or
a plain thread-safe buffer) so the rules can be tested without Docker:

- **Bounded everywhere.** A reader that does not keep up never holds back a writer: each
  buffer has a size in lines and bytes, and what does not fit is dropped and counted, so
  the reader gets a marker saying how many (`{"dropped": n}`) instead of a slow agent, a
  slow server or unbounded memory.
- **Time order.** Each node's backlog comes sorted, so the server merges them as they
  stream (`merge`); lines that arrive while following wait a short window
  (`ReorderBuffer`) so those of different nodes and streams come out in order.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from dinp.errors import InvalidInput

# The streams of a line: the app's two, and "dinp" for what dinp says about a container
# (how it ended).
STREAMS = ("stdout", "stderr", "dinp")
# Characters of one line kept; a longer one is cut (a line without newline can be huge).
MAX_LINE = 8192
CUT = " …[cut]"
# Lines per container a request may ask for (--tail), and the defaults of the CLI.
MAX_TAIL = 10_000
DEFAULT_TAIL = 100
DEFAULT_FOLLOW_TAIL = 10
# Lines of followed output held back so that those of several nodes come out in order.
REORDER_SECONDS = 0.5
# An instance id as a query may name one (ids are 10 hex digits; foreign ones up to 16).
INSTANCE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")
# The most `since` may be: Unix seconds (year 5138), so a typo is refused, not overflowed.
MAX_SINCE = 1e11
# NDJSON, one object per line.
MEDIA_TYPE = "application/x-ndjson"


@dataclass(frozen=True)
class LogLine:
    """One line of one instance's container (immutable: one object is shared by every
    reader of it, and so is its encoding, `ndjson`)."""

    at: float  # Unix seconds, as Docker stamped it on its node
    instance: str
    release: int
    stream: str  # stdout, stderr or dinp
    line: str
    node: str = ""  # set by the server (an agent serves only its own node)
    gone: bool = False  # its container was removed; the agent kept its last lines

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"at": self.at, "instance": self.instance,
                                "release": self.release, "stream": self.stream,
                                "line": self.line}
        if self.node:
            body["node"] = self.node
        if self.gone:
            body["gone"] = True
        return body

    @cached_property
    def ndjson(self) -> bytes:
        """Its line of NDJSON, made once (on the thread that read it, not the loop)."""
        return dumps(self.to_json())

    @property
    def size(self) -> int:
        """About what it costs to hold (buffers are bounded by it)."""
        return len(self.line) + 96

    @classmethod
    def from_json(cls, data: object, *, node: str = "") -> LogLine:
        """Parse a line an agent sent, strictly: a malformed one is refused, not passed
        on to a user's terminal or script."""
        if not isinstance(data, dict):
            raise InvalidInput("line", "expected a JSON object")
        at, release = data.get("at"), data.get("release")
        instance, stream, text = data.get("instance"), data.get("stream"), data.get("line")
        if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at <= MAX_SINCE:
            raise InvalidInput("at", "expected Unix seconds")
        if isinstance(release, bool) or not isinstance(release, int) or release < 0:
            raise InvalidInput("release", "expected a whole number")
        if not isinstance(instance, str) or not INSTANCE_ID.fullmatch(instance):
            raise InvalidInput("instance", "expected an instance id")
        if stream not in STREAMS:
            raise InvalidInput("stream", f"expected one of {', '.join(STREAMS)}")
        if not isinstance(text, str):
            raise InvalidInput("line", "expected a string")
        return cls(at=float(at), instance=instance, release=release, stream=str(stream),
                   line=cut(text), node=node, gone=data.get("gone") is True)


def cut(text: str) -> str:
    """At most MAX_LINE characters of `text`, saying so when it was longer."""
    return text if len(text) <= MAX_LINE else text[:MAX_LINE - len(CUT)] + CUT


def dumps(obj: dict[str, Any]) -> bytes:
    """One NDJSON line."""
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


@dataclass(frozen=True)
class Query:
    """What a reader asks for: one app's lines (or one instance's), since a time, the
    last `tail` of each container, and whether to follow new ones."""

    app: str
    instance: str | None = None
    since: float | None = None
    tail: int = DEFAULT_TAIL
    follow: bool = False

    def params(self) -> dict[str, str]:
        """As the query string of an agent's GET /logs (and the API's)."""
        out = {"app": self.app, "tail": str(self.tail), "follow": "1" if self.follow else "0"}
        if self.instance:
            out["instance"] = self.instance
        if self.since is not None:
            out["since"] = repr(self.since)
        return out

    def wants(self, line: LogLine) -> bool:
        return (self.since is None or line.at >= self.since) and (
            self.instance is None or line.instance == self.instance)


def last(lines: Iterable[LogLine], tail: int) -> list[LogLine]:
    """The last `tail` of `lines` by time (stable for lines stamped alike)."""
    ordered = sorted(lines, key=lambda x: x.at)
    return ordered[-tail:] if tail > 0 else []


# -- time ----------------------------------------------------------------------------------

_DOCKER_TIME = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def docker_time(stamp: bytes | str) -> int:
    """Nanoseconds since the epoch of a Docker timestamp (RFC 3339 with up to 9 digits of
    fraction: `2026-12-01T21:55:09.231792561Z`). Kept whole: a float loses the
    nanoseconds that tell two lines of one burst apart."""
    raw = stamp.encode() if isinstance(stamp, str) else stamp
    m = _DOCKER_TIME.match(raw)
    if m is None:
        raise ValueError(f"not a Docker timestamp: {raw[:40]!r}")
    base, frac, zone = (g.decode() if g else "" for g in m.groups())
    moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return int(moment.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: a span back from now (30s, 10m, 2h, 1d) or an ISO time (local time
    unless it names its zone), as Unix seconds."""
    now = time.time() if now is None else now
    value = text.strip()
    span = _SPAN.fullmatch(value)
    if span:
        return max(0.0, now - float(span.group(1)) * _UNITS[span.group(2)])
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("since", "expected a span such as 30s, 10m, 2h or 1d, or an "
                           "ISO time such as 2026-12-01T12:00") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the local zone, as a person typed it
    return max(0.0, moment.timestamp())


def clock(at: float, *, today: float | None = None) -> str:
    """`12:01:02.123` for a line of today, `11-30 12:01:02.123` for an older one."""
    moment = datetime.fromtimestamp(at)
    now = datetime.fromtimestamp(time.time() if today is None else today)
    stamp = moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    if moment.date() != now.date() and abs(moment - now) > timedelta(hours=1):
        return moment.strftime("%m-%d ") + stamp
    return stamp


def text(obj: dict[str, Any], *, today: float | None = None) -> str:
    """How the CLI prints one object of the stream: a line, or a marker of lines dropped.
    (`12:01:02.123 3f2a9c01de n1 stderr | boom`; `(gone)` after the stream when its
    container was removed.)"""
    if "dropped" in obj:
        by = f"by node {obj['node']}" if obj.get("node") else "by the server"
        return (f"{clock(float(obj.get('at') or time.time()), today=today)} -- "
                f"{obj['dropped']} line(s) dropped {by}: the reader fell behind --")
    gone = " (gone)" if obj.get("gone") else ""
    node = f" {obj['node']}" if obj.get("node") else ""
    return (f"{clock(float(obj['at']), today=today)} {obj['instance']}{node} "
            f"{obj['stream']}{gone} | {obj['line']}")


# -- Docker's frames -----------------------------------------------------------------------

class Assembler:
    """Turns the frames of one Docker log stream into whole lines, with their time.

    With timestamps on, each frame is one log entry: `<time> <text>`, ending in a newline
    unless the engine split a long line into parts (16 KiB each), whose later parts each
    carry their own time. A line keeps the time of its first part and at most MAX_LINE
    characters."""

    def __init__(self) -> None:
        self._parts: dict[int, tuple[int, bytearray]] = {}  # by stream: (ns, text so far)

    def feed(self, kind: int, frame: bytes) -> list[tuple[int, int, str]]:
        """(ns, stream kind, text) of each line the frame completes."""
        stamp, _, data = frame.partition(b" ")
        try:
            ns = docker_time(stamp)
        except ValueError:
            ns, data = time.time_ns(), frame  # not stamped: keep the text, time it now
        out = []
        pieces = data.split(b"\n")
        for i, piece in enumerate(pieces):
            pending = self._parts.get(kind)
            if i == len(pieces) - 1:  # after the last newline: a part of a longer line
                if piece:
                    if pending is None:
                        self._parts[kind] = (ns, bytearray(piece[:MAX_LINE * 4 + 4]))
                    elif len(pending[1]) <= MAX_LINE * 4:
                        pending[1].extend(piece[:MAX_LINE * 4 + 4 - len(pending[1])])
                break
            if pending is not None:
                del self._parts[kind]
                start, buf = pending
                buf.extend(piece[:max(0, MAX_LINE * 4 + 4 - len(buf))])
                out.append((start, kind, _decode(bytes(buf))))
            else:
                out.append((ns, kind, _decode(piece)))
        return out

    def rest(self) -> list[tuple[int, int, str]]:
        """Parts left when the stream ended (its last line had no newline)."""
        out = [(ns, kind, _decode(bytes(buf))) for kind, (ns, buf) in self._parts.items()]
        self._parts.clear()
        return out


def _decode(raw: bytes) -> str:
    return cut(raw.decode("utf-8", errors="replace").rstrip("\r"))


# -- bounded buffers -----------------------------------------------------------------------

@dataclass
class LogStats:
    """What was served, as counters (for metrics: bytes and lines sent to readers, lines
    dropped for readers that fell behind, readers following now)."""

    bytes: int = 0
    lines: int = 0
    dropped: int = 0
    following: int = 0

    def to_json(self) -> dict[str, int]:
        return {"bytes": self.bytes, "lines": self.lines, "dropped": self.dropped,
                "following": self.following}


class LineQueue:
    """A bounded FIFO between threads that read Docker and the coroutine that writes to a
    reader: `put` never blocks (a line that does not fit is dropped and counted), `take`
    returns everything held and how many were dropped since the last take. `notify` is
    called (from the putting thread) when a line arrives in an empty queue."""

    def __init__(self, *, max_lines: int = 5000, max_bytes: int = 2 << 20,
                 notify: Callable[[], None] | None = None) -> None:
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self._notify = notify
        self._lock = threading.Lock()
        self._items: deque[LogLine] = deque()
        self._bytes = 0
        self._dropped = 0

    def put(self, line: LogLine) -> bool:
        with self._lock:
            if len(self._items) >= self.max_lines or self._bytes + line.size > self.max_bytes:
                self._dropped += 1
                return False
            wake = not self._items
            self._items.append(line)
            self._bytes += line.size
        if wake and self._notify is not None:
            self._notify()
        return True

    def take(self) -> tuple[list[LogLine], int]:
        with self._lock:
            items, dropped = list(self._items), self._dropped
            self._items.clear()
            self._bytes = self._dropped = 0
        return items, dropped

    def __len__(self) -> int:
        return len(self._items)


@dataclass(order=True)
class _Held:
    at: float
    seq: int
    arrived: float = field(compare=False)
    line: LogLine = field(compare=False)


class ReorderBuffer:
    """Followed lines of several nodes, held `window` seconds after they arrive and given
    out in time order; bounded like LineQueue (what does not fit is dropped and counted).
    A line is given out once it has waited its window and none held is older."""

    def __init__(self, *, window: float = REORDER_SECONDS, max_lines: int = 20_000,
                 max_bytes: int = 8 << 20) -> None:
        self.window, self.max_lines, self.max_bytes = window, max_lines, max_bytes
        self._heap: list[_Held] = []
        self._seq = itertools.count()
        self._bytes = 0
        self.dropped = 0

    @property
    def full(self) -> bool:
        return len(self._heap) >= self.max_lines or self._bytes >= self.max_bytes

    def push(self, line: LogLine, now: float) -> bool:
        if len(self._heap) >= self.max_lines or self._bytes + line.size > self.max_bytes:
            self.dropped += 1
            return False
        heapq.heappush(self._heap, _Held(line.at, next(self._seq), now, line))
        self._bytes += line.size
        return True

    def ready(self, now: float) -> list[LogLine]:
        out = []
        while self._heap and self._heap[0].arrived <= now - self.window:
            held = heapq.heappop(self._heap)
            self._bytes -= held.line.size
            out.append(held.line)
        return out

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped

    def __len__(self) -> int:
        return len(self._heap)


async def merge(sources: list[AsyncIterator[LogLine]]) -> AsyncIterator[LogLine]:
    """The lines of several time-ordered sources, in time order, holding one line of each
    at a time (a node's backlog streams in; the merge never holds it all)."""
    heap: list[tuple[float, int, LogLine]] = []
    for i, source in enumerate(sources):
        first = await anext(source, None)
        if first is not None:
            heap.append((first.at, i, first))
    heapq.heapify(heap)
    while heap:
        _, i, line = heapq.heappop(heap)
        yield line
        following = await anext(sources[i], None)
        if following is not None:
            heapq.heappush(heap, (following.at, i, following))
