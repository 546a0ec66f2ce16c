"""`dinp router`: the HTTP(S) reverse proxy in front of every app.

It routes by Host (custom domains through the table's cnames) to the healthy instances of
an app, round robin, skipping for `fail_timeout` an instance that just failed, and answers
400, 404 (no such app), 405, 408, 414, 431, 502 (no instance accepted the request or it
failed before answering), 503 (no healthy instance) and 504 (no answer within
backend_timeout) with a short page saying what happened. It terminates TLS with the
certificate the client's SNI names (tls.py), redirects plain HTTP to https and adds HSTS
where an app asks for it, answers ACME HTTP-01 challenges itself, and reads PROXY
protocol headers from a load balancer (accept.py).

The modules, from the wire up:

- proxy_protocol.py, accept.py: the PROXY protocol, and what reads it at the start of
  each connection before handing the connection on;
- tls_stream.py: the router's own TLS layer between a socket and a client connection;
- tls.py, tickets.py: TLS settings, the certificate for each handshake, the contexts made
  from the table; session ticket keys shared by the workers;
- clients.py: the client side: connections from clients, request parsing and head
  rewriting, pipelining, error pages, the router's own answers (asyncio protocols +
  httptools);
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
  MemoryRouteStore, then `start_http` (and `start_https`), `start_admin` and finally
  `close`.
"""

from dinp.router.supervisor import serve
from dinp.router.worker import Router

__all__ = ["Router", "serve"]
