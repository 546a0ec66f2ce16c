"""Every name that crosses a process boundary: labels, Redis keys, defaults.

These are wire formats (see docs/architecture.md): extend them, never rename them.
"""

from __future__ import annotations

# Container labels: the truth about what runs on a node.
LABEL_MANAGED = "io.dinp.managed"
LABEL_APP = "io.dinp.app"
LABEL_INSTANCE = "io.dinp.instance"
LABEL_RELEASE = "io.dinp.release"
LABEL_NODE = "io.dinp.node"
# The id of the cluster that made the container (kept in its database): an agent never
# touches another cluster's containers, whatever their node label says.
LABEL_CLUSTER = "io.dinp.cluster"
# Seconds from SIGTERM to SIGKILL when the container stops: the app's stop grace as it
# was when the container started (its instance may be unassigned when it stops).
LABEL_STOP_GRACE = "io.dinp.stop-grace"

# Image labels that say what an app needs of its sandbox (see docs/building.md): the
# paths it writes besides /tmp (comma-separated; each becomes a size-limited tmpfs), and
# `false` to keep its root filesystem writable (an escape hatch for a Dockerfile of one's
# own). `dinp build` sets the first on every image it makes, empty when nothing is needed.
LABEL_WRITABLE = "io.dinp.writable"
LABEL_READ_ONLY = "io.dinp.read-only"
# Set by `dinp build` on every image: its app type.
LABEL_BUILD_TYPE = "io.dinp.build.type"


def container_name(app: str, instance: str) -> str:
    """The Docker name of an instance's container."""
    return f"dinp-{app}-{instance}"


# Redis route table, in the layout of the original DINP routers.
RS_PREFIX = "/rs/"
CNAME_PREFIX = "/cname/"
# dinp's own keys beside them. The original routers run `KEYS *`, split every key on `/`
# and switch on segment 1: a key without a `/` crashes them, so each of ours starts with
# `/dinp/` (segment 1 "dinp", which they skip).
# host -> app name for every app that exists, so a router can tell "no healthy instance"
# (503) from "no such app" (404); a Redis list cannot be empty.
HOSTS_KEY = "/dinp/hosts"
ROUTES_REV_KEY = "/dinp/rev"
# /dinp/routers/<router>: the route table revision a router serves (with a TTL).
ROUTER_KEY_PREFIX = "/dinp/routers/"
ROUTER_REPORT_TTL = 10  # seconds; a router repeats its report well within it
# HTTPS at the routers, written by the server with the rest of the table:
# /dinp/certs/<domain> (lowercase; may be a wildcard, `*.shop.example.com`): a hash with
# fields `cert` (the certificate chain, PEM) and `key` (its private key, PEM);
CERT_PREFIX = "/dinp/certs/"
CERT_FIELD = "cert"
KEY_FIELD = "key"
# /dinp/https: a hash, an app's host -> its HTTPS policy as compact JSON
# (`{"redirect":true,"hsts":31536000}`); custom domains follow their app's;
HTTPS_KEY = "/dinp/https"
# /dinp/acme/<token>: the key authorization a router answers ACME HTTP-01 with.
ACME_PREFIX = "/dinp/acme/"
# Keys older dinps wrote, removed by the server's first full write of the table.
LEGACY_KEYS = ("dinp:hosts", "dinp:routes:rev")
ROUTES_CHANNEL = "dinp:routes:changed"

API_PREFIX = "/api/v1"
DEFAULT_APP_PORT = 8080
