"""`dinp build serve`: builds for people and pipelines without a Docker engine of their own.

`POST /api/v1/builds?app=…&version=…[&type=…&cmd=…&push=…&filename=…]` takes the archive
as the request body (token-authenticated), runs the very same `builder.build()` a local
`dinp build` runs, and streams newline-delimited JSON back while it works:

    {"progress": "unpacking web.tar.gz"}
    {"log": "Step 1/6 : FROM 127.0.0.1:5000/dinp/python:bookworm"}
    {"result": {"image": "…", "digest": "sha256:…", …}}      # or, on failure:
    {"error": "…", "hint": "…", "kind": "BuildFailed", "field": null}

The upload goes to the build's own temporary file (size-limited while it streams in) and
is removed afterwards. Builds beyond `max_builds` wait their turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from dinp.build import builder
from dinp.build.engine import Log
from dinp.config import BuildConfig, require_secret, split_hostport
from dinp.const import API_PREFIX
from dinp.errors import DinpError, Forbidden, InvalidInput, Unauthorized, Unavailable
from dinp.lifecycle import run_until_stopped, start_site
from dinp.tokens import bearer_token, same_secret

log = logging.getLogger(__name__)
CONFIG_KEY = web.AppKey("config", BuildConfig)
SLOTS_KEY = web.AppKey("slots", asyncio.Semaphore)
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
CHUNK = 1 << 16


async def _check_token(request: web.Request, config: BuildConfig, app: str) -> None:
    """The service's own build token; or, with `server` set, a dinp API token the server
    says may deploy `app` (asked at once, per build: a revoked token builds nothing)."""
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is not None and same_secret(token, config.build_token):
        return
    if token is None or not config.server:
        raise Unauthorized("invalid or missing build token",
                           hint="Set DINP_BUILD_TOKEN to the build service's build_token"
                           + (", or DINP_TOKEN to an API token that may deploy the app."
                              if config.server else "."))
    builder.check_app(app)
    url = f"{config.server.rstrip('/')}{API_PREFIX}/apps/{app}/access"
    try:
        async with aiohttp.ClientSession() as http, http.get(
                url, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=10)) as resp:
            body = await resp.json(content_type=None)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise Unavailable(f"the dinp server at {config.server} is unreachable: {exc}",
                          hint="Check server in [build].") from None
    if status != 200:
        raise DinpError.from_json(status, body)
    if not body.get("deploy"):
        raise Forbidden(f"{body.get('user')}'s token may not deploy app {app}, so may not "
                        "build it")


def _params(request: web.Request) -> dict[str, Any]:
    q = request.query
    filename = q.get("filename", "app.tar.gz")
    if not _FILENAME.fullmatch(filename):
        raise InvalidInput("filename", f"{filename!r} is not a plain file name")
    push = q.get("push")
    if push not in (None, "true", "false"):
        raise InvalidInput("push", "expected true or false")
    return {"app": q.get("app", ""), "version": q.get("version", ""),
            "app_type": q.get("type") or None, "cmd": q.get("cmd") or None,
            "push": None if push is None else push == "true", "filename": filename}


async def _receive(request: web.Request, dest: Path, limit: int) -> None:
    """Stream the body to `dest`, refusing it as soon as it passes `limit` bytes."""
    size = 0
    with dest.open("wb") as out:
        async for chunk in request.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > limit:
                raise InvalidInput("archive", f"the upload is larger than {limit >> 20} MB "
                                   "(max_upload_mb in [build])")
            out.write(chunk)
    if size == 0:
        raise InvalidInput("archive", "the upload is empty")


async def create_build(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG_KEY]
    try:
        params = _params(request)
        await _check_token(request, config, params["app"])
        builder.check_app(params["app"])
        builder.check_version(params["version"])
    except DinpError as exc:
        return web.json_response(exc.to_stream(), status=exc.http_status)

    tmp = Path(tempfile.mkdtemp(prefix="dinp-upload-", dir=config.tmp_dir or None))
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    try:
        source = tmp / params.pop("filename")
        try:
            await _receive(request, source, config.max_upload_mb << 20)
        except DinpError as exc:
            return web.json_response(exc.to_stream(), status=exc.http_status)
        await response.prepare(request)
        await _stream_build(request, response, source, params)
        await response.write_eof()
        return response
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _stream_build(request: web.Request, response: web.StreamResponse, source: Path,
                        params: dict[str, Any]) -> None:
    """Run the build in a thread, once a build slot is free, writing its progress, its log
    and then its result or error to `response` as they come."""
    config = request.app[CONFIG_KEY]
    lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def emit(kind: str) -> Log:
        def put(text: str) -> None:  # called from the build's thread
            loop.call_soon_threadsafe(lines.put_nowait, {kind: text})
        return put

    async def run() -> None:
        async with request.app[SLOTS_KEY]:
            try:
                result = await asyncio.to_thread(
                    builder.build, source, config=config, log=emit("log"),
                    progress=emit("progress"), **params,
                )
                log.info("built %s for %s", result.image, request.remote)
                await lines.put({"result": result.to_json()})
            except DinpError as exc:
                log.info("build of %s:%s failed: %s", params["app"], params["version"],
                         exc.message)
                await lines.put(exc.to_stream())
            finally:
                await lines.put(None)

    task = asyncio.create_task(run())
    if request.app[SLOTS_KEY].locked():
        await response.write(b'{"progress": "waiting for a free build slot"}\n')
    try:
        while (line := await lines.get()) is not None:
            await response.write(json.dumps(line).encode() + b"\n")
    finally:
        # Even when this handler is cancelled, the build thread must be done with the
        # upload before it is removed.
        await asyncio.shield(task)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(config: BuildConfig) -> web.Application:
    app = web.Application(client_max_size=config.max_upload_mb << 20)
    app[CONFIG_KEY] = config
    app[SLOTS_KEY] = asyncio.Semaphore(config.max_builds)
    app.router.add_get(f"{API_PREFIX}/health", health)
    app.router.add_post(f"{API_PREFIX}/builds", create_build)
    return app


async def start(config: BuildConfig) -> web.AppRunner:
    # With a server to ask, the service may take API tokens alone.
    require_secret(config.build_token, key="build_token", section="build",
                   needed=not config.server)
    host, port = split_hostport(config.serve_listen, default_port=7071)
    runner = await start_site(make_app(config), host, port)
    log.info("build service on http://%s:%d%s/builds (registry %s, %d build(s) at a time)",
             host, port, API_PREFIX, config.registry, config.max_builds)
    return runner


async def serve(config: BuildConfig) -> None:
    """`dinp build serve` until a signal."""
    runner = await start(config)
    try:
        await run_until_stopped(asyncio.Event().wait())
    finally:
        await runner.cleanup()
