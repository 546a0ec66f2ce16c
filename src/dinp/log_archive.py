"""The last lines of containers an agent removed, kept so a crash can be explained after
its container is gone.

Before the agent removes a container (the replacement of one that crashed, a stuck
instance, one a rollout or a scale-down stopped), it keeps that container's last
KEEP_LINES lines and how it ended. They are written to one small JSON file per container
under the agent's state directory, so a restarted agent still has them, and dropped after
KEEP_SECONDS. Disk and memory stay bounded: at most MAX_PER_INSTANCE containers of one
instance (a crash loop keeps its latest), MAX_ENTRIES in all and MAX_BYTES of files; the
oldest go first. The files may hold secrets an app printed: the directory is 0700, the
files 0600.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinp import const
from dinp.logs import MAX_LINE, STREAMS, LogLine, Query, cut, last

log = logging.getLogger(__name__)
KEEP_LINES = 200
KEEP_SECONDS = 3600.0
MAX_PER_INSTANCE = 5
MAX_ENTRIES = 1000
MAX_BYTES = 32 << 20
VERSION = 1


@dataclass(frozen=True)
class Entry:
    """One removed container: whose it was, when it went, its last lines."""

    container: str
    app: str
    instance: str
    release: int
    node: str
    cluster: str
    removed_at: float
    lines: tuple[tuple[float, str, str], ...]  # (at, stream, text), in time order
    size: int = 0  # bytes of its file

    def to_json(self) -> dict[str, Any]:
        return {"v": VERSION, "container": self.container, "app": self.app,
                "instance": self.instance, "release": self.release, "node": self.node,
                "cluster": self.cluster, "removed_at": self.removed_at,
                "lines": [list(x) for x in self.lines]}

    @classmethod
    def from_json(cls, data: Any, size: int = 0) -> Entry:
        if not isinstance(data, dict) or data.get("v") != VERSION:
            raise ValueError("not an entry of this version")
        lines = tuple((float(at), str(stream), cut(str(text)))
                      for at, stream, text in data["lines"] if stream in STREAMS)
        return cls(container=str(data["container"]), app=str(data["app"]),
                   instance=str(data["instance"]), release=int(data["release"]),
                   node=str(data["node"]), cluster=str(data["cluster"]),
                   removed_at=float(data["removed_at"]), lines=lines, size=size)

    def log_lines(self, query: Query) -> list[LogLine]:
        """Its lines a query asks for (marked gone): the last `tail` of the app's, and
        how it ended (as for a container that is still there)."""
        if query.tail <= 0:
            return []
        lines = [LogLine(at=at, instance=self.instance, release=self.release, stream=stream,
                         line=text, gone=True) for at, stream, text in self.lines]
        wanted = [x for x in lines if query.wants(x)]
        return [*last([x for x in wanted if x.stream != "dinp"], query.tail),
                *(x for x in wanted if x.stream == "dinp")]


class Archive:
    """The kept lines of one node's removed containers, on disk and in memory. Safe to
    call from several threads (the agent removes containers on worker threads)."""

    def __init__(self, directory: Path, *, node: str, keep_seconds: float = KEEP_SECONDS,
                 max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 max_per_instance: int = MAX_PER_INSTANCE) -> None:
        self.directory, self.node = directory, node
        self.keep_seconds, self.max_entries = keep_seconds, max_entries
        self.max_bytes, self.max_per_instance = max_bytes, max_per_instance
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
        self._load()

    def _path(self, container: str) -> Path:
        return self.directory / f"{container}.json"

    def _load(self) -> None:
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = Entry.from_json(json.loads(path.read_text()), path.stat().st_size)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring kept log lines %s: %s", path, exc)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if entry.node == self.node and path.stem == entry.container:
                self._entries[entry.container] = entry
        with self._lock:
            self._prune(time.time())
        if self._entries:
            log.info("kept log lines of %d removed container(s) in %s", len(self._entries),
                     self.directory)

    def keep(self, *, container: str, labels: dict[str, str],
             lines: list[tuple[float, str, str]], removed_at: float | None = None) -> Entry:
        """Keep a container's last lines (the caller read them, and how it ended, just
        before removing it)."""
        try:
            release = int(labels.get(const.LABEL_RELEASE, "0"))
        except ValueError:
            release = 0
        kept = sorted(((at, s, cut(t[:MAX_LINE])) for at, s, t in lines if s in STREAMS),
                      key=lambda x: x[0])[-KEEP_LINES - 1:]
        entry = Entry(container=container, app=labels.get(const.LABEL_APP, ""),
                      instance=labels.get(const.LABEL_INSTANCE, ""), release=release,
                      node=self.node, cluster=labels.get(const.LABEL_CLUSTER, ""),
                      removed_at=time.time() if removed_at is None else removed_at,
                      lines=tuple(kept))
        data = json.dumps(entry.to_json(), ensure_ascii=False).encode()
        path = self._path(container)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)
        entry = Entry(**{**entry.__dict__, "size": len(data)})
        with self._lock:
            self._entries[container] = entry
            self._prune(time.time())
        return entry

    def _prune(self, now: float) -> None:
        """Drop what is too old, then the oldest beyond each bound (lock held)."""
        by_age = sorted(self._entries.values(), key=lambda e: e.removed_at, reverse=True)
        keep: list[Entry] = []
        per_instance: dict[tuple[str, str], int] = {}
        total = 0
        for e in by_age:  # newest first
            key = (e.app, e.instance)
            if (now - e.removed_at > self.keep_seconds or len(keep) >= self.max_entries
                    or total + e.size > self.max_bytes
                    or per_instance.get(key, 0) >= self.max_per_instance):
                continue
            per_instance[key] = per_instance.get(key, 0) + 1
            total += e.size
            keep.append(e)
        for gone in set(self._entries) - {e.container for e in keep}:
            del self._entries[gone]
            with contextlib.suppress(OSError):
                self._path(gone).unlink()

    def lines(self, query: Query, *, cluster: str | None,
              skip: frozenset[str] = frozenset()) -> list[LogLine]:
        """The kept lines of the app's removed containers (of `cluster`, or made before
        clusters had ids, which the agent removed only once it had adopted them; None:
        any), except those of the containers in `skip` (still there: served live)."""
        with self._lock:
            self._prune(time.time())
            entries = [e for e in self._entries.values()
                       if e.app == query.app and e.container not in skip
                       and (cluster is None or e.cluster in (cluster, ""))
                       and (query.instance is None or e.instance == query.instance)]
        return [x for e in entries for x in e.log_lines(query)]

    def __len__(self) -> int:
        return len(self._entries)
