"""`dinp router`: the HTTP reverse proxy in front of every app.

It routes by Host (custom domains through the table's cnames) to the healthy instances of
an app, round robin, skipping for `fail_timeout` an instance that just failed, and answers
400, 404 (no such app), 405, 408, 414, 431, 502 (no instance accepted the request or it
failed before answering), 503 (no healthy instance) and 504 (no answer within
backend_timeout) with a short page saying what happened.

The modules, from the wire up:

- clients.py: the client side: connections from clients, request parsing and head
  rewriting, pipelining, error pages (asyncio protocols + httptools);
- backends.py: the backend side: connections to instances, their keep-alive pool,
  connecting and retrying; it sees the client side only through two small Protocols;
- balancer.py: round robin and the memory of failing backends;
- routing.py: the table being served and what each Host resolves to in it;
- proxy.py: what one worker's connections share, and the tick that checks timeouts;
- metrics.py, accesslog.py: the counters (Prometheus text) and the access log;
- worker.py: a Router (listeners, admin port, graceful stop), and one following Redis;
- follower.py: following the route table in Redis;
- admin.py: /health and /metrics;
- supervisor.py: `serve`, in this process or in worker processes sharing the port.

Two ways to feed a Router a table:

- `serve(config)`: `dinp router`, following Redis with a RedisRouteFollower; when Redis
  goes away it keeps serving the last table it read and /health says `"redis": false`.
- in-process (`dinp up`): build a Router, `store.subscribe(router.set_table)` on a
  MemoryRouteStore, then `start_http`, `start_admin` and finally `close`.
"""

from dinp.router.supervisor import serve
from dinp.router.worker import Router

__all__ = ["Router", "serve"]
