"""`dinp server` as a process, checked from outside the way a hostile client would: the
log it writes under a flood of broken requests, and its API against its own OpenAPI
document."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerProc, call, server_process
from tests.support import base_env, http_get, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with server_process(tmp_path_factory.mktemp("server")) as s:
        yield s


def token_of(server: ServerProc, who: str) -> str:
    """A token of each kind of caller: an admin, a member of team blue (which has app
    web), a CI token of app web, the cluster token, node n1's agent credential."""
    if who == "admin":
        return server.admin_token
    if who == "cluster":
        return server.cluster_token
    if who == "agent":
        return str(call(server, "POST", "/nodes/n1/credential", {})["credential"])
    call(server, "POST", "/teams", {"name": "blue"})
    made = call(server, "POST", "/users", {"name": "alice", "teams": ["blue"]})
    call(server, "POST", "/apps", {"name": "web", "image": "127.0.0.1:5000/hello:1",
                                   "instances": 0, "team": "blue"})
    if who == "member":
        return str(made["token"])
    return str(call(server, "POST", "/tokens", {"name": "ci", "app": "web",
                                                "user": "alice"})["token"])


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
# Long-polls that would wait for a change cut to a second (the document allows 60 s), and
# log follows made plain reads (in before_call, which every phase goes through): values
# outside the range, which must be refused, are left as generated. The token the
# run signs in with is never revoked by it.
SCHEMATHESIS_HOOKS = """
import schemathesis

@schemathesis.hook
def before_call(context, case, kwargs):
    # Token 1 is the admin's own, and user admin its user: revoking or disabling them
    # would leave the rest of the run unsigned (every phase comes through here).
    params = case.path_parameters or {}
    if str(params.get("id")) == "1":
        params["id"] = 2
    if params.get("user") == "admin":
        params["user"] = "not-admin"
    # Following an app's logs lasts until the client leaves: read them instead.
    query = case.query or {}
    if query.get("follow") == "true":
        query["follow"] = "false"

@schemathesis.hook
def map_query(context, query):
    wait = (query or {}).get("wait")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and 0 <= wait <= 60:
        query["wait"] = min(wait, 1)
    return query
"""


# Examples per operation: the admin reaches every handler; the others mostly meet the
# refusals of routes not theirs, which fewer examples cover (the suite's time counts).
EXAMPLES = {"admin": 50, "member": 15, "ci": 10, "cluster": 30, "agent": 15}


@pytest.mark.parametrize("who", list(EXAMPLES))
def test_the_api_does_what_its_openapi_document_says(who: str, tmp_path: Path) -> None:
    """schemathesis against the served document, every check, with every kind of
    caller's token (each on a server of its own, so what one does cannot spoil
    another's run): no server error, no undocumented status, every answer in the
    documented shape, every request the document allows accepted and every one it forbids
    refused. Agent routes with agents' credentials, the others with users' tokens."""
    (tmp_path / "server").mkdir()
    with server_process(tmp_path / "server") as server:
        run_schemathesis(server, who, tmp_path)


def run_schemathesis(server: ServerProc, who: str, tmp_path: Path) -> None:
    config, hooks = tmp_path / "schemathesis.toml", tmp_path / "hooks.py"
    config.write_text(SCHEMATHESIS_CONFIG)
    hooks.write_text(SCHEMATHESIS_HOOKS)
    token = token_of(server, who)
    agent = who in ("cluster", "agent")
    paths = "--include-path-regex" if agent else "--exclude-path-regex"
    result = subprocess.run(
        [SCHEMATHESIS, "--config-file", str(config), "run",
         f"{server.url}/api/v1/openapi.json", "-H", f"Authorization: Bearer {token}",
         paths, AGENT_PATHS, "--checks", "all", "--max-examples", str(EXAMPLES[who]),
         "--seed", "7",
         "--max-response-time", "10", "--generation-database", "none", "--no-color",
         "--output-truncate", "true"],
        env={**base_env(tmp_path), "SCHEMATHESIS_HOOKS": str(hooks)},
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    (tmp_path / "schemathesis.out").write_text(output)
    assert result.returncode == 0, output[-6000:]
    assert " passed" in output and not re.search(r"\b[0-9]+ failed\b", output), output
    assert "Traceback" not in server.proc.output()

