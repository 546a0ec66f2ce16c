"""The router's access log.

It is written by the worker itself in whole lines (one `os.write` per batch, to a file
opened with O_APPEND), so several workers can share one file without mixing their lines.
It is buffered and flushed every tick, never on the request path.
"""

from __future__ import annotations

import os
import time


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
