"""`dinp build PATH --remote URL`: the same build, made by a `dinp build serve` elsewhere.

The archive is uploaded as it is (a directory is packed into a .tar.gz first); the
service's log and progress lines are handed to the same callbacks a local build uses, and
its result, or its error, comes back as if the build had run here.
"""

from __future__ import annotations

import http.client
import json
import tarfile
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from dinp.build.engine import Log
from dinp.const import API_PREFIX
from dinp.errors import DinpError, InvalidInput, Unavailable


def _pack(directory: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(directory, arcname=".")
    return dest


def remote_build(
    url: str, token: str, source: Path, *, app: str, version: str,
    app_type: str | None = None, cmd: str | None = None, push: bool | None = None,
    log: Log, progress: Log, timeout: float = 1800,
) -> dict[str, Any]:
    """Upload `source` to the build service at `url`; return its result (BuildResult JSON)."""
    if not source.exists():
        raise InvalidInput("path", f"{source} does not exist")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("remote", f"{url!r} is not an http(s) URL")
    with tempfile.TemporaryDirectory(prefix="dinp-remote-") as tmp:
        upload = _pack(source, Path(tmp) / f"{app}.tar.gz") if source.is_dir() else source
        query = {"app": app, "version": version, "filename": upload.name}
        if app_type:
            query["type"] = app_type
        if cmd:
            query["cmd"] = cmd
        if push is not None:
            query["push"] = "true" if push else "false"
        conn_cls = (http.client.HTTPSConnection if parts.scheme == "https"
                    else http.client.HTTPConnection)
        conn = conn_cls(parts.hostname, parts.port, timeout=timeout)
        path = f"{parts.path.rstrip('/')}{API_PREFIX}/builds?{urllib.parse.urlencode(query)}"
        try:
            with upload.open("rb") as body:
                conn.request("POST", path, body=body, headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(upload.stat().st_size),
                })
            resp = conn.getresponse()
            if resp.status != 200:
                try:
                    raise DinpError.from_json(None, json.loads(resp.read() or b"{}"))
                except ValueError:
                    raise DinpError(f"the build service answered HTTP {resp.status}") from None
            return _follow(resp, log, progress)
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(f"the build service at {url} is unreachable: {exc}",
                              hint="Is `dinp build serve` running there?") from None
        finally:
            conn.close()


def _follow(resp: http.client.HTTPResponse, log: Log, progress: Log) -> dict[str, Any]:
    for raw in resp:
        line = json.loads(raw)
        if "log" in line:
            log(line["log"])
        elif "progress" in line:
            progress(line["progress"])
        elif "result" in line:
            result: dict[str, Any] = line["result"]
            return result
        elif "error" in line:
            raise DinpError.from_json(None, line)
    raise Unavailable("the build service closed the connection before the build ended")
