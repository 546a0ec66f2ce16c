"""`dinp up`: server, one agent and a router in one process on one machine.

SQLite under the state directory, the route table handed from server to router in memory
(and also to Redis when redis_url is set), domain `localhost` so `http://<app>.localhost:8080/`
opens in a browser. It writes the user's CLI credentials, so `dinp app create …` works
right after without a login step.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

from dinp import routes
from dinp.client import save_credentials
from dinp.config import AgentConfig, ServerConfig, UpConfig
from dinp.container import DockerRuntime
from dinp.lifecycle import run_until_stopped
from dinp.roles import api
from dinp.roles.agent import Agent
from dinp.router import Router
from dinp.sandbox import Policy

log = logging.getLogger(__name__)


class TeeRouteStore:
    """Publish to the in-process table and to Redis: `dinp up` with routers elsewhere."""

    def __init__(self, memory: routes.MemoryRouteStore, redis: routes.RedisRouteStore) -> None:
        self.memory, self.redis = memory, redis

    def publish(self, table: routes.RouteTable) -> int:
        self.memory.publish(table)
        return self.redis.publish(table)

    def current(self) -> routes.RouteTable:
        return self.redis.current()

    def router_revisions(self) -> dict[str, int]:
        return self.redis.router_revisions()


def _secret(path: Path) -> str:
    """A token kept in the state directory, made on first use."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return value


async def serve(conf: UpConfig) -> None:
    state = Path(conf.state_dir).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{conf.api_port}"
    admin_token = _secret(state / "admin.token")
    server_conf = ServerConfig(
        api_listen=f"127.0.0.1:{conf.api_port}",
        database_url=f"sqlite:///{state / 'dinp.db'}",
        redis_url=conf.redis_url, domain=conf.domain,
        router_url=f"http://127.0.0.1:{conf.http_port}",
        cluster_token=_secret(state / "cluster.token"), admin_token=admin_token,
    )
    memory = routes.MemoryRouteStore()
    store: routes.RouteStore = memory
    if conf.redis_url:
        store = TeeRouteStore(memory, routes.RedisRouteStore(conf.redis_url))

    runtime = await asyncio.to_thread(
        lambda: DockerRuntime(node=conf.node_name, advertise="127.0.0.1",
                              policy=Policy(network=conf.app_network))
    )
    server, runner = await api.start(server_conf, store)
    router = Router()  # RouterConfig's defaults
    try:
        # The server publishes from a worker thread; the router lives on this loop.
        loop = asyncio.get_running_loop()

        def to_router(table: routes.RouteTable) -> None:
            loop.call_soon_threadsafe(router.set_table, table)

        memory.subscribe(to_router)
        await router.start_http("127.0.0.1", conf.http_port)
        await router.start_admin("127.0.0.1", conf.admin_port)
        # Its logs listener takes any free port: the server, in this process, learns it
        # from the heartbeat, and two `dinp up` on one machine never compete for one.
        agent = Agent(AgentConfig(node_name=conf.node_name, advertise="127.0.0.1",
                                  server=api_url, cluster_token=server_conf.cluster_token,
                                  capacity_mb=conf.capacity_mb, logs_listen="127.0.0.1:0",
                                  state_dir=str(state / "agent")), runtime)
        path = save_credentials(api_url, admin_token)
        log.info("dinp is up: API %s, apps at http://<app>.%s:%d/ (CLI configured in %s)",
                 api_url, conf.domain, conf.http_port, path)
        await run_until_stopped(server.run(), agent.run())
    finally:
        server.release_waiters()
        await router.close()
        await runner.cleanup()
        server.close()
