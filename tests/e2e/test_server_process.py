"""`dinp server` as a process, checked from outside the way a hostile client would: the
log it writes under a flood of broken requests, and its API against its own OpenAPI
document."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
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
    cluster_token: str
    port: int


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    work = tmp_path_factory.mktemp("server")
    port = free_port()
    admin, cluster = secrets.token_hex(16), secrets.token_hex(16)
    with redis_server() as redis:
        env = base_env(work, DINP_DATABASE_URL=f"sqlite:///{work / 'dinp.db'}",
                       DINP_REDIS_URL=redis.url, DINP_CLUSTER_TOKEN=cluster,
                       DINP_ADMIN_TOKEN=admin, DINP_API_LISTEN=f"127.0.0.1:{port}")
        proc = Proc("server", ["server"], env, work / "server.log").start()
        try:
            wait_for(lambda: http_get(f"127.0.0.1:{port}", "127.0.0.1",
                                      "/api/v1/health")[0] == 200, 20, "the server")
            yield ServerProc(proc, f"http://127.0.0.1:{port}", admin, cluster, port)
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


SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
AGENT_PATHS = "^/nodes/[^/]+/(heartbeat|assignments|cluster)$"  # the cluster token's
# A body over the server's 1 MiB limit is refused with 413: a rejection like any other.
SCHEMATHESIS_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429", "5xx"]
"""
# Long-polls that would wait for a change cut to a second (the document allows 60 s):
# values outside the range, which must be refused, are left as generated.
SCHEMATHESIS_HOOKS = """
import schemathesis

@schemathesis.hook
def map_query(context, query):
    wait = (query or {}).get("wait")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and 0 <= wait <= 60:
        query["wait"] = min(wait, 1)
    return query
"""


@pytest.mark.parametrize("who", ["user", "agent"])
def test_the_api_does_what_its_openapi_document_says(
    server: ServerProc, who: str, tmp_path: Path
) -> None:
    """schemathesis against the served document, every check: no server error, no
    undocumented status, every answer in the documented shape, every request the document
    allows accepted and every one it forbids refused. Agent routes with the cluster
    token, the others with an API token."""
    config, hooks = tmp_path / "schemathesis.toml", tmp_path / "hooks.py"
    config.write_text(SCHEMATHESIS_CONFIG)
    hooks.write_text(SCHEMATHESIS_HOOKS)
    token = server.cluster_token if who == "agent" else server.admin_token
    paths = "--include-path-regex" if who == "agent" else "--exclude-path-regex"
    result = subprocess.run(
        [SCHEMATHESIS, "--config-file", str(config), "run",
         f"{server.url}/api/v1/openapi.json", "-H", f"Authorization: Bearer {token}",
         paths, AGENT_PATHS, "--checks", "all", "--max-examples", "50", "--seed", "7",
         "--max-response-time", "10", "--generation-database", "none", "--no-color",
         "--output-truncate", "true"],
        env={**base_env(tmp_path), "SCHEMATHESIS_HOOKS": str(hooks)},
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert " passed" in output and "failed" not in output
    assert "Traceback" not in server.proc.output()

