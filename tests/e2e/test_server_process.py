"""`dinp server` as a process, checked from outside the way a hostile client would: the
log it writes under a flood of broken requests, and its API against its own OpenAPI
document."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import Proc, base_env, free_port, http_get, redis_server, wait_for


@dataclass
class ServerProc:
    proc: Proc
    url: str
    admin_token: str
    port: int


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    work = tmp_path_factory.mktemp("server")
    port = free_port()
    admin = secrets.token_hex(16)
    with redis_server() as (redis_url, _, _):
        env = base_env(work, DINP_DATABASE_URL=f"sqlite:///{work / 'dinp.db'}",
                       DINP_REDIS_URL=redis_url, DINP_CLUSTER_TOKEN=secrets.token_hex(16),
                       DINP_ADMIN_TOKEN=admin, DINP_API_LISTEN=f"127.0.0.1:{port}")
        proc = Proc("server", ["server"], env, work / "server.log").start()
        try:
            wait_for(lambda: http_get(f"127.0.0.1:{port}", "127.0.0.1",
                                      "/api/v1/health")[0] == 200, 20, "the server")
            yield ServerProc(proc, f"http://127.0.0.1:{port}", admin, port)
        finally:
            assert proc.stop(), "dinp server must exit by itself on SIGTERM"


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return sock.recv(200)


def test_a_flood_of_broken_requests_logs_a_line_not_tracebacks(server: ServerProc) -> None:
    before = server.proc.output()
    long_line = b"GET /api/v1/apps?" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    bad_header = b"GET /api/v1/apps HTTP/1.1\r\nHost: a\r\n" + b"X" * 10_000 + b"\r\n\r\n"
    not_http = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64
    answers = [send_raw(server.port, data) for data in [long_line, bad_header, not_http] * 100]
    assert all(a[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4") or a == b"" for a in answers), answers[:3]
    wait_for(lambda: http_get(f"127.0.0.1:{server.port}", "a", "/api/v1/health")[0] == 200,
             5, "the server to go on answering")
    logged = server.proc.output()[len(before):]
    assert "Traceback" not in logged
    assert "ERROR" not in logged
    lines = [line for line in logged.splitlines() if "bad HTTP request" in line]
    assert 1 <= len(lines) <= 2, logged[-2000:]
    assert len(logged) < 2000, logged[-2000:]
