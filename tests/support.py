"""Helpers shared by the integration and end-to-end tests: free ports, private Redis
servers, throwaway MariaDB databases, dinp processes and HTTP through the router."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

DINP = str(Path(sys.executable).parent / "dinp")
# Label for containers a test starts itself (not through dinp), so teardown finds them.
TEST_LABEL = "io.dinp.test"
# The user property of a test report that holds a row of the faults table.
FAULT_PROPERTY = "fault row"
# The app network of this test session (`app_network`): every runtime and dinp process the
# tests start uses it, not an operator's `dinp`, and it is removed when the session ends.
TEST_NETWORK = f"dinp-test-{secrets.token_hex(4)}"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy (an exception counts as not yet) or `timeout`
    passed; return its last answer (falsy on a timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = predicate()
        except Exception as exc:  # the thing polled may not be up yet
            last = None
            error: Exception | None = exc
        else:
            error = None
            if last:
                return last
        if time.monotonic() >= deadline:
            return error if error is not None and not last else last
        time.sleep(interval)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy; fail the test saying what did not happen."""
    last = wait_until(predicate, timeout, interval)
    if not last or isinstance(last, Exception):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
    return last


class RedisServer:
    """A private `redis-server` on 127.0.0.1:<port>, without persistence, that a test may
    stop and start again on the same port (it comes back empty, like a restarted cache)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        assert self.proc is None, "already running"
        exe = shutil.which("redis-server")
        if exe is None:
            import pytest

            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited at start")
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True

        wait_for(up, 10, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port: empty, as a restarted Redis is."""
        self.stop()
        self.start()

    def client(self) -> Any:
        """A synchronous client (decoded strings); the caller closes it (or uses `with`)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=True)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A private, disposable Redis on a free port, stopped afterwards."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def mysql_database() -> Iterator[str]:
    """A fresh, uniquely named MariaDB database (utf8mb4), dropped afterwards. Skips the
    test when MariaDB cannot be reached (a failure in CI, see tests/conftest.py)."""
    name = f"dinp_test_{secrets.token_hex(6)}"
    try:
        conn = pymysql.connect(**MYSQL, connect_timeout=5)  # type: ignore[arg-type]
    except pymysql.err.OperationalError as exc:
        import pytest

        pytest.skip(f"MariaDB at {MYSQL['host']}:{MYSQL['port']} is unreachable: {exc}")
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    try:
        yield f"mysql+pymysql://root@{MYSQL['host']}:{MYSQL['port']}/{name}"
    finally:
        # A new connection: a long test may have outlived the first.
        conn = pymysql.connect(**MYSQL, connect_timeout=5)  # type: ignore[arg-type]
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


def http_request(addr: str, host: str, path: str = "/",
                 timeout: float = 5) -> tuple[int, dict[str, str], str]:
    """GET through the router at `addr` (host:port) with a Host header, as a browser would."""
    h, _, p = addr.rpartition(":")
    conn = http.client.HTTPConnection(h, int(p), timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, headers, resp.read().decode(errors="replace")
    finally:
        conn.close()


def http_get(addr: str, host: str, path: str = "/", timeout: float = 5) -> tuple[int, str]:
    status, _, body = http_request(addr, host, path, timeout)
    return status, body


def delete_from_registry(registry: str, repo: str) -> None:
    """Remove every tag of `repo` from the registry (its blobs wait for garbage
    collection); nothing happens if the registry cannot be reached."""
    with contextlib.suppress(OSError):
        tags = json.load(urllib.request.urlopen(
            f"http://{registry}/v2/{repo}/tags/list", timeout=5)).get("tags") or []
        for tag in tags:
            head = urllib.request.Request(
                f"http://{registry}/v2/{repo}/manifests/{tag}", method="HEAD",
                headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
            digest = urllib.request.urlopen(head, timeout=5).headers["Docker-Content-Digest"]
            urllib.request.urlopen(urllib.request.Request(
                f"http://{registry}/v2/{repo}/manifests/{digest}", method="DELETE"), timeout=5)


# An app for the logs tests: serves $PORT (so it is healthy) and prints
# "<instance> <n>" every 0.1 s on stdout, every fifth n also "<instance> err <n>" on
# stderr; with CRASH_AFTER=N it says why on stderr and exits 3 after line N; with
# CHATTY=1 it also prints bursts of 5000 lines (for readers that fall behind).
TICKER_SCRIPT = r"""#!/bin/sh
httpd -f -p "${PORT:-8080}" -h /tmp &
trap 'echo "$DINP_INSTANCE stopping" >&2; exit 0' TERM INT
n=0
while :; do
    if [ -n "${CHATTY:-}" ]; then seq 1 5000; fi
    echo "$DINP_INSTANCE $n"
    if [ $((n % 5)) -eq 0 ]; then echo "$DINP_INSTANCE err $n" >&2; fi
    if [ -n "${CRASH_AFTER:-}" ] && [ "$n" -ge "$CRASH_AFTER" ]; then
        echo "$DINP_INSTANCE dying: boom" >&2
        exit 3
    fi
    n=$((n + 1))
    sleep 0.1
done
"""


@contextlib.contextmanager
def local_image(workdir: Path, name: str, files: dict[str, str]) -> Iterator[str]:
    """Build an image from `files` (a Dockerfile among them) written into `workdir`, tagged
    `dinp-test/<name>:<random>` and removed afterwards; agents on this engine start it
    without a registry."""
    for filename, text in files.items():
        (workdir / filename).write_text(text)
    tag = f"dinp-test/{name}:{secrets.token_hex(3)}"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(workdir)], check=True,
                   capture_output=True)
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], check=False, capture_output=True)


def ticker_image(workdir: Path) -> contextlib.AbstractContextManager[str]:
    """The ticker app (TICKER_SCRIPT) on dinp/busybox:1 as a local image."""
    return local_image(workdir, "ticker", {
        "ticker.sh": TICKER_SCRIPT,
        "Dockerfile": 'FROM dinp/busybox:1\nCOPY ticker.sh /ticker.sh\n'
                      'CMD ["/bin/sh", "/ticker.sh"]\n'})


def docker_ids(*labels: str) -> list[str]:
    args = ["docker", "ps", "-q", "--no-trunc"]
    for label in labels:
        args += ["--filter", f"label={label}"]
    return sorted(subprocess.run(args, check=True, capture_output=True, text=True).stdout.split())


def remove_test_network() -> None:
    """Remove this session's app network, if it was made and no container uses it any more
    (never raises: it runs at the end of the session)."""
    with contextlib.suppress(Exception):
        import docker

        client = docker.from_env(timeout=30)
        try:
            for net in client.api.networks(names=[TEST_NETWORK]):
                if net.get("Name") == TEST_NETWORK:
                    with contextlib.suppress(docker.errors.DockerException):
                        client.api.remove_network(net["Id"])
        finally:
            client.close()


def remove_node_containers(node: str) -> None:
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.dinp.node={node}"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], check=False, capture_output=True)


@dataclass
class Proc:
    """A dinp process with its log file; `stop()` is SIGTERM, `kill()` is SIGKILL."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen([DINP, *self.args], env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15) -> bool:
        """SIGTERM; True if the process exited by itself, False if it had to be killed."""
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return False
        return True

    def kill(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Dinp:
    """Runs `dinp` user verbs with a private HOME, as a user or a CI step would."""

    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([DINP, *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"dinp {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINP_")}
    # Metrics ports are shared defaults: a test that wants them gives each process its own.
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), COLUMNS="200",
               PYTHONUNBUFFERED="1", DINP_APP_NETWORK=TEST_NETWORK, DINP_METRICS_LISTEN="")
    env.update(extra)
    return env


class TcpProxy:
    """A TCP forwarder on a free local port, to put a network fault between a dinp
    process and a real service: `cut()` drops every connection and refuses new ones at
    once, `hang()` accepts and never answers (a hung server), `heal()` forwards again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import asyncio
        import threading

        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = "pass"
        self.loop = asyncio.new_event_loop()
        self._writers: set[Any] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tcp-proxy")
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the TCP proxy did not start")

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: Any, writer: Any) -> None:
        import asyncio

        if self.mode == "cut":
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            if self.mode == "hang":
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)

            async def pipe(src: Any, dst: Any) -> None:
                try:
                    while data := await src.read(65536):
                        if self.mode != "pass":
                            if self.mode == "hang":
                                continue  # swallowed: the server seems to hang
                            break
                        dst.write(data)
                        await dst.drain()
                except (ConnectionError, OSError):
                    pass
                finally:
                    dst.transport.abort() if self.mode == "cut" else dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, OSError):
            writer.transport.abort()
        finally:
            self._writers.discard(writer)

    def _set(self, mode: str) -> None:
        def apply() -> None:
            self.mode = mode
            if mode == "cut":
                for w in list(self._writers):
                    w.transport.abort()
                self._writers.clear()

        self.loop.call_soon_threadsafe(apply)
        time.sleep(0.05)

    def cut(self) -> None:
        self._set("cut")

    def hang(self) -> None:
        self._set("hang")

    def heal(self) -> None:
        self._set("pass")

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass
class Prober:
    """Sends GET / for `host` through the router every `interval` seconds on a keep-alive
    connection (a new one after any error), and keeps (time, status) of every answer;
    status 0 for a connection error or timeout."""

    addr: str
    host: str
    interval: float = 0.02
    answers: list[tuple[float, int]] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)  # the first line of each 200
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        host, _, port = self.addr.rpartition(":")
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            status = 0
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=5)
                conn.request("GET", "/", headers={"Host": self.host})
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
                if status == 200:
                    self.bodies.append(body.decode(errors="replace").split("\n", 1)[0])
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            self.answers.append((time.monotonic(), status))
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()

    def failed_since(self, t0: float) -> list[tuple[float, int]]:
        return [(t, s) for t, s in self.answers if t >= t0 and s != 200]

    def sent_since(self, t0: float) -> int:
        return sum(1 for t, _ in self.answers if t >= t0)


class SecondEngine:
    """A Docker engine of the test's own, in a network namespace of its own (its own
    loopback, bridge and iptables), reached from this machine through a veth pair at
    ADDRESS: a test can restart a node's engine without touching anyone else's
    containers or networks. (An engine beside the machine's in the same namespace
    deletes its `docker0`.) It cannot reach the registry on the machine's loopback, so
    images are loaded into it."""

    ROOT = Path("/var/lib/dinp-test-engine")
    RUN = Path("/run/dinp-test-engine")
    NETNS = "dinp-test-engine"
    ADDRESS = "10.197.0.2"  # the namespace's end; this machine's is 10.197.0.1

    def __init__(self) -> None:
        self.socket = self.RUN / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def _network(cls) -> None:
        if subprocess.run(["ip", "netns", "exec", cls.NETNS, "true"],
                          capture_output=True).returncode == 0:
            return
        for cmd in (
                ["ip", "netns", "add", cls.NETNS],
                ["ip", "link", "add", "dinptest-h", "type", "veth", "peer", "name",
                 "dinptest-n"],
                ["ip", "link", "set", "dinptest-n", "netns", cls.NETNS],
                ["ip", "addr", "add", "10.197.0.1/30", "dev", "dinptest-h"],
                ["ip", "link", "set", "dinptest-h", "up"],
                ["ip", "netns", "exec", cls.NETNS, "ip", "addr", "add",
                 f"{cls.ADDRESS}/30", "dev", "dinptest-n"],
                ["ip", "netns", "exec", cls.NETNS, "ip", "link", "set", "dinptest-n", "up"],
                ["ip", "netns", "exec", cls.NETNS, "ip", "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True, capture_output=True)

    def start(self) -> SecondEngine:
        self._network()
        self.RUN.mkdir(parents=True, exist_ok=True)
        log = (self.RUN / "dockerd.log").open("ab")
        self.proc = subprocess.Popen(
            # nsenter, not `ip netns exec`: that one also remounts /sys, without cgroups.
            ["nsenter", f"--net=/run/netns/{self.NETNS}", "dockerd", "--data-root",
             str(self.ROOT),
             "--exec-root", str(self.RUN / "exec"), "-H", self.url,
             "--pidfile", str(self.RUN / "docker.pid")],
            stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: self.docker("info").returncode == 0, 30, "the second engine")
        return self

    def load(self, image: str) -> None:
        """Copy `image` from the machine's engine (no registry is reachable from here)."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", self.url, "load", "-q"], stdin=save.stdout,
                       check=True, capture_output=True, timeout=120)
        save.wait(60)

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "-H", self.url, *args], capture_output=True,
                              text=True, timeout=60)

    def stop(self) -> None:
        """SIGTERM, as `systemctl restart docker` does: the engine stops its containers."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            ids = self.docker("ps", "-aq").stdout.split()
            if ids:
                self.docker("rm", "-f", *ids)
        self.stop()


# -- PROXY protocol headers, written independently of the router's parser ------------------

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(source: str, source_port: int, dest: str = "192.0.2.80",
             dest_port: int = 80) -> bytes:
    """A PROXY v1 header (TCP4 or TCP6 by the source's address)."""
    family = "TCP6" if ":" in source else "TCP4"
    if family == "TCP6" and ":" not in dest:
        dest = "2001:db8::80"
    return f"PROXY {family} {source} {dest} {source_port} {dest_port}\r\n".encode()


def proxy_v2(source: str | None, source_port: int = 0, *, dest: str | None = None,
             dest_port: int = 443, local: bool = False, tlvs: bytes = b"") -> bytes:
    """A PROXY v2 header: PROXY over TCP4/TCP6 by the source's address, or LOCAL (a health
    check from the balancer itself, `source` None), with optional raw TLV bytes."""
    import ipaddress
    import struct

    if local or source is None:
        return PROXY_V2_SIGNATURE + b"\x20\x00" + struct.pack("!H", len(tlvs)) + tlvs
    src = ipaddress.ip_address(source)
    dst = ipaddress.ip_address(dest or ("2001:db8::443" if src.version == 6 else "192.0.2.43"))
    family = b"\x11" if src.version == 4 else b"\x21"
    body = src.packed + dst.packed + struct.pack("!HH", source_port, dest_port) + tlvs
    return PROXY_V2_SIGNATURE + b"\x21" + family + struct.pack("!H", len(body)) + body


# -- a throwaway certificate authority (the `cryptography` package) -------------------------

@dataclass
class CertAuthority:
    """A CA made for one test run, and the leaf certificates it signs: PEM texts, as the
    route table carries them, and files, as an operator gives them."""

    cert_pem: str
    _key: Any = field(repr=False)

    @classmethod
    def make(cls, name: str = "dinp test CA") -> CertAuthority:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .sign(key, hashes.SHA256()))
        return cls(cert.public_bytes(serialization.Encoding.PEM).decode(), key)

    def issue(self, *names: str, rsa: bool = False, days: int = 30) -> tuple[str, str]:
        """(certificate chain PEM, private key PEM) for `names` (DNS SANs), ECDSA P-256
        or RSA-2048; `days` < 0 makes one that has expired."""
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key: Any = (rsa_keys.generate_private_key(65537, 2048) if rsa
                    else ec.generate_private_key(ec.SECP256R1()))
        ca = x509.load_pem_x509_certificate(self.cert_pem.encode())
        now = datetime.datetime.now(datetime.UTC)
        start, end = ((now - datetime.timedelta(days=1), now + datetime.timedelta(days=days))
                      if days > 0 else (now - datetime.timedelta(days=2 - days),
                                        now - datetime.timedelta(days=1)))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                               critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(self._key, hashes.SHA256()))
        chain = cert.public_bytes(serialization.Encoding.PEM).decode() + self.cert_pem
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        return chain, pem

    def files(self, directory: Path, stem: str, *names: str, rsa: bool = False
              ) -> tuple[Path, Path]:
        """A certificate for `names` as two files (chain, key), the key file 0600."""
        chain, key = self.issue(*names, rsa=rsa)
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_text(chain)
        key_path.write_text(key)
        key_path.chmod(0o600)
        return cert_path, key_path

    def client_context(self) -> Any:
        """A TLS client context that trusts this CA only and checks host names."""
        import ssl

        ctx = ssl.create_default_context(cadata=self.cert_pem)
        return ctx
