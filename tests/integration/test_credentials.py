"""Tokens go only where they are meant to: weak cluster tokens are refused at start, and
neither the agent nor the CLI follows a redirect that would carry a token elsewhere."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from dinp.client import Client
from dinp.config import AgentConfig
from dinp.container import DockerRuntime
from dinp.errors import DinpError
from dinp.roles.agent import Agent
from tests.support import DINP, base_env, free_port


class Trap:
    """Two local HTTP servers: `redirector` answers every request with a redirect to
    `target`, which records the Authorization headers that reach it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.runners: list[web.AppRunner] = []
        self.redirector = self.target = ""

    async def start(self, status: int) -> None:
        async def record(request: web.Request) -> web.Response:
            self.seen.append(request.headers.get("Authorization", ""))
            return web.json_response({"instances": [], "rev": "x"})

        target_port, redirect_port = free_port(), free_port()
        self.target = f"http://127.0.0.1:{target_port}"
        self.redirector = f"http://127.0.0.1:{redirect_port}"

        async def redirect(request: web.Request) -> web.Response:
            return web.Response(status=status,
                                headers={"Location": self.target + request.path_qs})

        for handler, port in ((record, target_port), (redirect, redirect_port)):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners.append(runner)

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_the_agent_never_sends_its_token_where_a_redirect_points(
    status: int, node_name: str, docker_client: object
) -> None:
    async def main() -> None:
        trap = Trap()
        await trap.start(status)
        runtime = DockerRuntime(node=node_name, advertise="127.0.0.2")
        agent = Agent(AgentConfig(node_name=node_name, server=trap.redirector,
                                  cluster_token="ct-" + "x1y2z3" * 5, capacity_mb=64),
                      runtime)
        try:
            assert await agent.send_heartbeat() is False  # asks for its cluster first
            agent.state.cluster = runtime.cluster = "0123456789abcdef"
            assert await agent.send_heartbeat() is False  # a report proper
            assert agent.state.assignment is None
        finally:
            if agent._session is not None:
                await agent._session.close()
            runtime.close()
            await trap.stop()
        assert trap.seen == []

    asyncio.run(main())


def test_the_cli_never_sends_its_token_where_a_redirect_points() -> None:
    async def main() -> None:
        trap = Trap()
        await trap.start(307)
        try:
            client = Client(trap.redirector, "dinp_secret_admin_token")
            with pytest.raises(DinpError, match="redirect") as info:
                await asyncio.to_thread(client.get, "/apps")
            assert "DINP_SERVER" in (info.value.hint or "")
        finally:
            await trap.stop()
        assert trap.seen == []

    asyncio.run(main())


@pytest.mark.parametrize("token, says", [
    ("change-me", "example value"),
    ("CHANGE-ME", "example value"),
    ("secret", "example value"),
    ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "example value"),
    ("9f8e7d6c5b4a", "too short"),
    ("", "no cluster_token"),
])
@pytest.mark.parametrize("role", ["server", "agent"])
def test_a_guessable_cluster_token_is_refused_at_start(
    role: str, token: str, says: str, tmp_path: Path
) -> None:
    env = base_env(tmp_path, DINP_CLUSTER_TOKEN=token, DINP_NODE_NAME="n1",
                   DINP_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
                   DINP_API_LISTEN=f"127.0.0.1:{free_port()}")
    result = subprocess.run([DINP, role], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "openssl rand -hex 32" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "db.sqlite").exists()  # refused before touching anything
