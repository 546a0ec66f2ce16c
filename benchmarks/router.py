"""dinp's router against Caddy and nginx, each on one core, driven by wrk: plain HTTP, and
HTTPS (keep-alive requests, and new TLS handshakes).

    .venv/bin/python benchmarks/router.py [--mode plain,tls] [--seconds 5]
        [--concurrency 16,64,256] [--tls-concurrency 16,64] [--tls-key ec|rsa]
        [--tls-tests keepalive,handshakes,full] [--rounds 5] [--baseline-src DIR]
        [--profile] [--update-doc]

(`make bench-router` runs it with --update-doc, which rewrites the tables in
docs/performance.md: plain HTTP, and HTTPS with the key type measured.)

The setup, the same for the three proxies:

- The backend is nginx with one worker serving a 13-byte static answer on two ports (two
  "instances" of one app), far faster than any of the proxies, so it is never what limits.
- Each proxy routes by Host to that app, balances round robin over its two instances over
  keep-alive connections, and rewrites headers (X-Forwarded-For/-Proto/-Host/-Port and
  X-Request-Id set): dinp's router from a 1001-host route table in a private Redis,
  Caddy 2 (`reverse_proxy`, GOMAXPROCS=1) and nginx (`worker_processes 1`), with access
  logs off and as many pooled upstream connections as the highest concurrency.
- Fairness on two cores: each proxy runs alone, pinned to its own core (--proxy-cpu);
  wrk (one thread) and the backend share the other (--load-cpu). The proxy measured is
  the only thing on its core, so its number is what one core of it does; if the load core
  saturates first (it does for nginx), that proxy's number is a floor, which the "proxy
  CPU" column shows (under 100%: the proxy was waiting for the load side).
- The proxies take turns within each round and concurrency (in a rotating order), after
  a warm-up each. The machine is shared and noisy, and other work only ever slows a run
  down, so each cell keeps the run with the most req/s out of the rounds (with that run's
  own latencies and CPU), the same rule for every proxy: compare within one run.
- HTTPS (`--mode tls`): the three terminate TLS with the same certificate and key (ECDSA
  P-256, or RSA-2048 with `--tls-key rsa`, made for the run), TLS 1.2 and 1.3 with
  Mozilla's "intermediate" ciphers, session tickets on, towards the same backend over
  plain HTTP. wrk connects to https://localhost (SNI `localhost`): (a) keep-alive
  requests; (b) `-H "Connection: close"`, a new connection and handshake per request:
  handshakes per second. wrk resumes: each connection offers the session ticket of the
  one before it on the same slot, so (b) is resumed handshakes (TLS 1.3 PSK with
  ECDHE: no certificate, no signature), a returning client's. (c) the same with wrk
  forgetting the session before each handshake (benchmarks/wrk_no_resumption.c, built
  with cc and loaded into wrk): full handshakes, a new visitor's, or any client's that
  keeps no sessions (curl, most HTTP libraries, health checks). Before measuring, wrk is
  tried against a TLS server of the benchmark's own, which checks that (b) resumes and
  (c) does not. In (c) with ECDSA the load core (wrk's side of the handshake) can
  saturate before the proxy: then compare the CPU per request.
- `--baseline-src DIR` adds another dinp (DIR is the `src` of another checkout, e.g. the
  commit before a change) to the rounds, taking turns like the others: a before/after on
  the same noisy machine. `--tls-tests handshakes` (or `keepalive`, `full`, or a
  comma-separated list) runs those HTTPS tests only.
- `--profile`: after the rounds, one more run of each proxy in each test under perf
  (benchmarks/cpu_split.py): its CPU per request split into OpenSSL, the C library, the
  kernel and its own code. What OpenSSL and the kernel take is what any proxy on them
  pays; what is left is the room a proxy's own code has.

Missing tools (wrk, nginx-light, caddy, redis-server, gcc; linux-perf for --profile) are
installed with apt-get (as root).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import cpu_split  # noqa: E402  (benchmarks/, beside this file)

from dinp.routes import RedisRouteStore, RouteTable  # noqa: E402

DINP = str(Path(sys.executable).parent / "dinp")
HOST = "bench.localhost"
# Over HTTPS the name is `localhost`: it resolves here without a hosts entry, and it is
# the SNI wrk sends (the name in the URL).
TLS_HOST = "localhost"
DOC = ROOT / "docs" / "performance.md"
MARKERS = {"plain": "bench-router", "tls-ec": "bench-router-tls",
           "tls-rsa": "bench-router-tls-rsa"}
PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "caddy": "caddy",
            "redis-server": "redis-server", "cc": "gcc"}
NO_RESUMPTION = ROOT / "benchmarks" / "wrk_no_resumption.c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_tools(extra: dict[str, str] | None = None) -> None:
    missing = [pkg for tool, pkg in {**PACKAGES, **(extra or {})}.items()
               if not (shutil.which(tool) or Path("/usr/sbin", tool).exists())]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: apt-get install them (needs root)")
    print(f"installing {' '.join(missing)} …", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def wait_http(url: str, host: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            req = urllib.request.Request(url, headers={"Host": host})
            with urllib.request.urlopen(req, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} (Host: {host}) does not answer 200")
        time.sleep(0.1)


@dataclass
class Proxy:
    name: str
    port: int  # plain HTTP, or HTTPS in the TLS rounds
    procs: list[subprocess.Popen[bytes]]
    tls: bool = False

    def pids(self) -> list[int]:
        """The proxy's processes and their children (nginx's worker)."""
        pids = []
        for proc in self.procs:
            pids.append(proc.pid)
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            with contextlib.suppress(OSError):
                pids += [int(p) for p in children.read_text().split()]
        return pids

    def cpu_seconds(self) -> float:
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, cpu: int, argv: list[str],
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("ab")
        proc = subprocess.Popen(["taskset", "-c", str(cpu), *argv], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=self.work)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- the parts ---------------------------------------------------------------------------

    def backend(self) -> list[str]:
        ports = [free_port(), free_port()]
        conf = self.work / "backend.conf"
        listens = "\n".join(f"    listen 127.0.0.1:{p} backlog=4096;" for p in ports)
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {self.work}/backend.pid;
error_log {self.work}/backend.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {self.work}/tmp;
  proxy_temp_path {self.work}/tmp;
  server {{
{listens}
    location / {{ default_type text/plain; return 200 "hello, world\\n"; }}
  }}
}}
""")
        (self.work / "tmp").mkdir(exist_ok=True)
        self.spawn("backend", self.args.load_cpu, [nginx_bin(), "-c", str(conf),
                                                    "-p", str(self.work)])
        addrs = [f"127.0.0.1:{p}" for p in ports]
        for addr in addrs:
            wait_http(f"http://{addr}/", HOST)
        return addrs

    def redis(self) -> str:
        port = free_port()
        self.spawn("redis", self.args.load_cpu, [
            shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        url = f"redis://127.0.0.1:{port}/0"
        store = RedisRouteStore(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                store.client.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.redis_store = store
        return url

    def dinp(self, backends: list[str], *, name: str = "dinp", src: str | None = None,
             tls: Path | None = None) -> Proxy:
        """`src`: run the dinp of another checkout (its `src` directory)."""
        url = self.redis()
        hosts = {f"app{i}.localhost": f"app{i}" for i in range(1000)}
        table = RouteTable(
            backends={**{h: (f"10.0.{i // 250}.{i % 250}:8080",)
                         for i, h in enumerate(hosts)}, HOST: tuple(backends),
                      TLS_HOST: tuple(backends)},
            hosts={**hosts, HOST: "bench", TLS_HOST: "bench"},
        )
        self.redis_store.publish(table)
        port, admin = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DINP_")}
        if src is not None:
            env["PYTHONPATH"] = src
        argv = [DINP, "router", "--workers", "1", "--listen", f"127.0.0.1:{port}",
                "--admin", f"127.0.0.1:{admin}", "--redis-url", url]
        tls_port = 0
        if tls is not None:
            tls_port = free_port()
            argv += ["--https-listen", f"127.0.0.1:{tls_port}", "--tls-cert",
                     str(tls / "cert.pem"), "--tls-key", str(tls / "key.pem")]
        proc = self.spawn(name, self.args.proxy_cpu, argv, env=env)
        wait_http(f"http://127.0.0.1:{port}/", HOST)
        if tls is not None:
            wait_https(tls_port, tls)
            return Proxy(name, tls_port, [proc], tls=True)
        return Proxy(name, port, [proc])

    def caddy(self, backends: list[str], *, tls: Path | None = None) -> Proxy:
        port = free_port()
        idle = max(self.args.concurrency + self.args.tls_concurrency)
        conf = self.work / f"Caddyfile{'-tls' if tls else ''}"
        site = f"http://{HOST}:{port}"
        tls_line = ""
        if tls is not None:
            site = f"https://{TLS_HOST}:{port}"
            tls_line = (f"tls {tls / 'cert.pem'} {tls / 'key.pem'} {{\n"
                        "    protocols tls1.2 tls1.3\n  }\n  ")
        conf.write_text(f"""{{
  admin off
  auto_https off
}}
{site} {{
  {tls_line}reverse_proxy {' '.join(backends)} {{
    lb_policy round_robin
    header_up X-Forwarded-Port {{http.request.port}}
    header_up X-Request-Id {{http.request.uuid}}
    transport http {{
      keepalive 60s
      keepalive_idle_conns {2 * idle}
      keepalive_idle_conns_per_host {idle}
    }}
  }}
}}
""")
        env = dict(os.environ, GOMAXPROCS="1", HOME=str(self.work),
                   XDG_DATA_HOME=str(self.work), XDG_CONFIG_HOME=str(self.work))
        proc = self.spawn(f"caddy{'-tls' if tls else ''}", self.args.proxy_cpu, [
            shutil.which("caddy") or "caddy", "run", "--config", str(conf),
            "--adapter", "caddyfile"], env=env)
        if tls is not None:
            wait_https(port, tls)
            return Proxy("caddy", port, [proc], tls=True)
        wait_http(f"http://127.0.0.1:{port}/", HOST)
        return Proxy("caddy", port, [proc])

    def nginx(self, backends: list[str], *, tls: Path | None = None) -> Proxy:
        port = free_port()
        suffix = "-tls" if tls else ""
        conf = self.work / f"proxy{suffix}.conf"
        servers = "\n".join(f"    server {b};" for b in backends)
        listen = f"listen 127.0.0.1:{port}"
        name = HOST
        tls_conf = ""
        if tls is not None:
            listen += " ssl"
            name = TLS_HOST
            tls_conf = f"""
    ssl_certificate {tls / 'cert.pem'};
    ssl_certificate_key {tls / 'key.pem'};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {TLS_CIPHERS};
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;"""
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {self.work}/proxy{suffix}.pid;
error_log {self.work}/proxy{suffix}.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {self.work}/tmp;
  proxy_temp_path {self.work}/tmp;
  upstream bench {{
{servers}
    keepalive {max(self.args.concurrency + self.args.tls_concurrency)};
  }}
  server {{
    {listen} default_server backlog=4096;{tls_conf}
    return 404;
  }}
  server {{
    {listen};
    server_name {name};{tls_conf}
    location / {{
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Request-Id $request_id;
    }}
  }}
}}
""")
        proc = self.spawn(f"nginx{suffix}", self.args.proxy_cpu,
                          [nginx_bin(), "-c", str(conf), "-p", str(self.work)])
        if tls is not None:
            wait_https(port, tls)
            return Proxy("nginx", port, [proc], tls=True)
        wait_http(f"http://127.0.0.1:{port}/", HOST)
        return Proxy("nginx", port, [proc])

    # -- measuring ---------------------------------------------------------------------------

    def wrk(self, proxy: Proxy, connections: int, seconds: int, *,
            close: bool = False, resume: bool = True) -> Result:
        """A wrk run; `close`: a new connection (and TLS handshake) per request;
        `resume=False`: wrk keeps no TLS sessions (every handshake is a full one)."""
        if proxy.tls:
            target = ["-H", "Connection: close"] if close else []
            target.append(f"https://{TLS_HOST}:{proxy.port}/")
        else:
            target = ["-H", f"Host: {HOST}", f"http://127.0.0.1:{proxy.port}/"]
        before = proxy.cpu_seconds()
        started = time.monotonic()
        out = self.run_wrk([f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout",
                            "5s", *target], resume=resume)
        cpu = (proxy.cpu_seconds() - before) / (time.monotonic() - started)
        return Result.parse(out, cpu)

    def test(self, proxy: Proxy, test: str, connections: int, seconds: int) -> Result:
        """A wrk run of one of TESTS."""
        return self.wrk(proxy, connections, seconds, close=test in HANDSHAKES,
                        resume=test != "full")

    def run_wrk(self, argv: list[str], *, resume: bool = True) -> str:
        """wrk's output (one thread, on the load core)."""
        env = None if resume else dict(os.environ, LD_PRELOAD=str(self.no_resumption()))
        return subprocess.run(
            ["taskset", "-c", str(self.args.load_cpu), shutil.which("wrk") or "wrk", "-t1",
             *argv], check=True, capture_output=True, text=True, env=env).stdout

    def no_resumption(self) -> Path:
        """wrk_no_resumption.c built for this run (once)."""
        lib = self.work / "wrk_no_resumption.so"
        if not lib.exists():
            subprocess.run([shutil.which("cc") or "cc", "-shared", "-fPIC", "-O2", "-o",
                            str(lib), str(NO_RESUMPTION), "-ldl"], check=True)
        return lib

    def check_resumption(self, tls: Path) -> None:
        """That wrk resumes its TLS sessions, and does not with wrk_no_resumption: against
        a TLS server of the benchmark's own that counts the handshakes it resumed."""
        import ssl
        import threading

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls / "cert.pem", tls / "key.pem")
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        counts = {True: 0, False: 0}
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    raw, _ = listener.accept()
                except TimeoutError:
                    continue
                raw.settimeout(2)
                with contextlib.suppress(OSError), \
                        ctx.wrap_socket(raw, server_side=True) as conn:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                 b"Connection: close\r\n\r\nok")
                    counts[bool(conn.session_reused)] += 1

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        url = f"https://{TLS_HOST}:{listener.getsockname()[1]}/"
        seen = {}
        try:
            for resume in (True, False):
                counts[True] = counts[False] = 0
                self.run_wrk(["-c1", "-d1s", "-H", "Connection: close", url], resume=resume)
                seen[resume] = dict(counts)
        finally:
            stop.set()
            thread.join()
            listener.close()
        resumed, full = seen[True], seen[False]
        if resumed[True] < 10 * max(resumed[False], 1) or full[True] or full[False] < 10:
            raise RuntimeError(
                "wrk's TLS sessions are not as this benchmark assumes (resumed, full): "
                f"with resumption {resumed[True]} resumed and {resumed[False]} full "
                f"handshakes, without {full[True]} and {full[False]}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


@dataclass
class Result:
    rps: float
    p50: float  # ms
    p99: float  # ms
    cpu: float  # share of one core the proxy used
    errors: int

    @classmethod
    def parse(cls, out: str, cpu: float) -> Result:
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        # In the Latency Distribution (wrk pads "1.03s " with a space).
        p50 = re.search(r"^\s+50%\s+(\S+)\s*$", out, re.M)
        p99 = re.search(r"^\s+99%\s+(\S+)\s*$", out, re.M)
        if not (rps and p50 and p99):
            raise RuntimeError(f"cannot read wrk's output:\n{out}")
        errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors += int(non2xx.group(1)) if non2xx else 0
        return cls(float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), cpu, errors)

    @classmethod
    def best(cls, results: list[Result]) -> Result:
        """The run with the most req/s (its own latencies), with the errors of all runs.
        Other work on the machine only ever slows a run down, so the best run is the
        closest to what the proxy does undisturbed; every proxy is treated alike."""
        top = max(results, key=lambda r: r.rps)
        return cls(top.rps, top.p50, top.p99, top.cpu, sum(r.errors for r in results))


def versions() -> str:
    def out(*argv: str) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "?"
        return (proc.stdout + proc.stderr).strip().splitlines()[0]

    import httptools
    import uvloop

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}; "
            f"Python {platform.python_version()}, uvloop {uvloop.__version__}, "
            f"httptools {httptools.__version__}; "
            f"{out(nginx_bin(), '-v').replace('nginx version: ', '')}; "
            f"Caddy {out('caddy', 'version').split()[0]}; {out('wrk', '--version').split()[1]} wrk")


Cell = tuple[str, str, int]  # (test, proxy, connections)
TESTS = {"plain": "plain HTTP", "keepalive": "HTTPS keep-alive",
         "handshakes": "TLS handshakes, resumed", "full": "TLS handshakes, full"}
HANDSHAKES = ("handshakes", "full")  # the tests with a new connection per request


def table(results: dict[Cell, Result], names: list[str], tests: list[tuple[str, int]]) -> str:
    lines = ["| test | connections | proxy | req/s | p50 ms | p99 ms | proxy CPU | "
             "µs of CPU per request | req/s ÷ dinp | p99 ÷ dinp | errors |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for test, c in tests:
        ours = results[(test, "dinp", c)]
        for name in names:
            r = results.get((test, name, c))
            if r is None:
                continue
            lines.append(f"| {TESTS[test]} | {c} | {name} | {r.rps:,.0f} | {r.p50:.2f} | "
                         f"{r.p99:.2f} | {r.cpu:.0%} | {r.cpu * 1e6 / r.rps:.0f} | "
                         f"{r.rps / ours.rps:.2f} | {r.p99 / ours.p99:.2f} | {r.errors} |")
    return "\n".join(lines)


def verdict(results: dict[Cell, Result], tests: list[tuple[str, int]]) -> str:
    """The goals, per test and concurrency: more req/s than Caddy and a lower p99 than
    Caddy's (and the CPU each used per request); over plain HTTP also at least 60% of
    nginx's req/s; and the dinp before a change (--baseline-src) as a ratio."""
    lines = []
    for test, c in tests:
        ours = results[(test, "dinp", c)]
        caddy, nginx = results.get((test, "caddy", c)), results.get((test, "nginx", c))
        base = results.get((test, "dinp-base", c))
        parts = [f"{TESTS[test]}, {c} connections:"]
        if caddy:
            faster = "met" if ours.rps >= caddy.rps else "NOT met"
            lower = "met" if ours.p99 < caddy.p99 else "NOT met"
            parts.append(f"{ours.rps / caddy.rps:.2f} times Caddy's req/s ({faster}), "
                         f"p99 {ours.p99:.2f} ms vs Caddy's {caddy.p99:.2f} ms ({lower}),")
            # What decides where the load core saturates first (the proxy CPU under 100%).
            parts.append(f"CPU per request {ours.cpu * 1e6 / ours.rps:.0f} µs vs Caddy's "
                         f"{caddy.cpu * 1e6 / caddy.rps:.0f} µs;")
        if nginx:
            if test == "plain":
                share = "met" if ours.rps >= 0.6 * nginx.rps else "NOT met"
                parts.append(f"{ours.rps / nginx.rps:.0%} of nginx's req/s (60%: {share})")
            else:
                parts.append(f"{ours.rps / nginx.rps:.0%} of nginx's req/s")
        if base:
            if len(parts) > 1 and not parts[-1].endswith(";"):
                parts[-1] += ";"
            parts.append(f"{ours.rps / base.rps:.2f} times the baseline's req/s, p99 "
                         f"{ours.p99:.2f} vs {base.p99:.2f} ms")
        lines.append("- " + " ".join(parts))
    return "\n".join(lines)


def update_doc(marker: str, text: str) -> None:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    doc = DOC.read_text() if DOC.exists() else "# Performance\n"
    if begin not in doc or end not in doc:
        doc += f"\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
    print(f"updated {DOC.relative_to(ROOT)} ({marker})")


TLS_CIPHERS = ":".join([  # Mozilla "intermediate" (without DHE), as dinp's router has
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


def make_certificate(work: Path, kind: str) -> Path:
    """A self-signed certificate for localhost (ECDSA P-256 or RSA-2048) in `work`/tls:
    cert.pem and key.pem, the same files for every proxy."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        rsa.generate_private_key(65537, 2048) if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1()))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_HOST)]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    directory = work / "tls"
    directory.mkdir()
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return directory


def wait_https(port: int, tls: Path, timeout: float = 20) -> None:
    """Until https://localhost:<port>/ answers 200 with the run's certificate."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(tls / "cert.pem"))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"https://{TLS_HOST}:{port}/", timeout=1,
                                        context=ctx) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"https://{TLS_HOST}:{port}/ does not answer 200")
        time.sleep(0.1)


def negotiated(port: int, tls: Path) -> str:
    """The protocol and cipher a default OpenSSL client (as wrk's) gets."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(tls / "cert.pem"))
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname=TLS_HOST) as conn:
        cipher = conn.cipher()
        return f"{conn.version()} {cipher[0] if cipher else '?'}"


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dinp-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def measure(bench: Bench, proxies: list[Proxy], tests: list[tuple[str, int]],
            rounds: int, seconds: int) -> dict[Cell, Result]:
    """Every proxy on every (test, connections), taking turns, `rounds` times."""
    for proxy in proxies:  # warm up: pools filled, caches hot
        bench.wrk(proxy, max(c for _, c in tests), 1,
                  close=any(t in HANDSHAKES for t, _ in tests))
    runs: dict[Cell, list[Result]] = {}
    for round_ in range(rounds):
        for test, c in tests:
            shift = (round_ + c) % len(proxies)
            for proxy in proxies[shift:] + proxies[:shift]:
                result = bench.test(proxy, test, c, seconds)
                runs.setdefault((test, proxy.name, c), []).append(result)
                print(f"round {round_ + 1}/{rounds} {TESTS[test]:<23} c={c:<4} "
                      f"{proxy.name:<9} {result.rps:>9,.0f} req/s  p50 {result.p50:6.2f} ms"
                      f"  p99 {result.p99:6.2f} ms  cpu {result.cpu:4.0%}"
                      f"{f'  errors {result.errors}' if result.errors else ''}", flush=True)
    return {key: Result.best(rs) for key, rs in runs.items()}


def profile(bench: Bench, proxies: list[Proxy], tests: list[tuple[str, int]],
            seconds: int) -> str:
    """One more run of each proxy in each test (at its first concurrency) under perf: its
    CPU per request, split into OpenSSL, the C library, the kernel and its own code."""
    lines = ["| test | connections | proxy | µs of CPU per request | "
             + " | ".join(cpu_split.COLUMNS) + " |",
             "|---|---:|---|---:|" + "---:|" * len(cpu_split.COLUMNS)]
    firsts: dict[str, int] = {}
    for test, c in tests:
        firsts.setdefault(test, c)
    for test, c in firsts.items():
        for proxy in proxies:
            data = bench.work / f"perf-{proxy.name}-{test}.data"
            perf = cpu_split.record(proxy.pids(), seconds, data)
            result = bench.test(proxy, test, c, seconds)
            perf.wait()
            split = cpu_split.shares(data)
            per_request = result.cpu * 1e6 / result.rps
            cells = " | ".join(f"{per_request * split[k]:.0f} ({split[k]:.0%})"
                               for k in cpu_split.COLUMNS)
            lines.append(f"| {TESTS[test]} | {c} | {proxy.name} | {per_request:.0f} | "
                         f"{cells} |")
            print(f"profiled {TESTS[test]:<23} c={c:<4} {proxy.name:<9} "
                  f"{per_request:.0f} µs per request", flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="plain,tls", help="plain, tls or both")
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--concurrency", default="16,64,256",
                        help="wrk connections over plain HTTP, comma-separated")
    parser.add_argument("--tls-concurrency", default="16,64",
                        help="wrk connections over HTTPS, comma-separated")
    parser.add_argument("--tls-tests", default="keepalive,handshakes,full",
                        help="the HTTPS tests to run (comma-separated): keepalive, "
                        "handshakes (resumed), full (full handshakes)")
    parser.add_argument("--tls-key", choices=["ec", "rsa"], default="ec",
                        help="the certificate's key: ECDSA P-256 or RSA-2048")
    parser.add_argument("--rounds", type=int, default=5, help="runs per cell (best kept)")
    parser.add_argument("--proxy-cpu", type=int, default=1)
    parser.add_argument("--load-cpu", type=int, default=0)
    parser.add_argument("--only", default="dinp,caddy,nginx", help="proxies to run")
    parser.add_argument("--baseline-src", default="",
                        help="the src directory of another dinp checkout, measured beside "
                        "this one (a before/after)")
    parser.add_argument("--profile", action="store_true",
                        help="then one more run per proxy and test under perf: where its "
                        "CPU goes (OpenSSL, C library, kernel, its own code)")
    parser.add_argument("--update-doc", action="store_true",
                        help=f"write the tables into {DOC.relative_to(ROOT)}")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.tls_concurrency = [int(c) for c in args.tls_concurrency.split(",")]
    modes = [m for m in ("plain", "tls") if m in args.mode.split(",")]
    tls_tests = [t for t in ("keepalive", *HANDSHAKES) if t in args.tls_tests.split(",")]
    names = [n for n in ("dinp", "caddy", "nginx") if n in args.only.split(",")]
    if "dinp" not in names:
        sys.exit("--only must include dinp: the ratios are to it")
    ensure_tools({"perf": "linux-perf"} if args.profile else None)
    extra = [a for a in sys.argv[1:] if a != "--update-doc"]
    command = " ".join(["benchmarks/router.py", *sys.argv[1:]])
    if os.environ.get("MAKELEVEL"):
        command = "make bench-router" + (f" BENCH_ARGS='{' '.join(extra)}'" if extra else "")
    reports: list[tuple[str, str]] = []
    with workdir() as work:
        bench = Bench(args, work)
        try:
            for mode in modes:
                addrs = bench.backend()
                tls = make_certificate(work, args.tls_key) if mode == "tls" else None
                if tls is not None and set(HANDSHAKES) & set(tls_tests):
                    bench.check_resumption(tls)
                proxies = [getattr(bench, name)(addrs, tls=tls) for name in names]
                shown = list(names)
                if args.baseline_src:
                    proxies.append(bench.dinp(addrs, name="dinp-base", tls=tls,
                                              src=str(Path(args.baseline_src).resolve())))
                    shown.append("dinp-base")
                tests = ([("plain", c) for c in args.concurrency] if mode == "plain" else
                         [(t, c) for t in tls_tests for c in args.tls_concurrency])
                ciphers = ""
                if tls is not None:
                    ciphers = "; negotiated with an OpenSSL client: " + ", ".join(
                        f"{p.name} {negotiated(p.port, tls)}" for p in proxies)
                results = measure(bench, proxies, tests, args.rounds, args.seconds)
                split = profile(bench, proxies, tests, args.seconds) if args.profile else ""
                bench.stop_all()  # the next mode starts afresh, the same way
                bench.procs.clear()
                when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
                key = ("" if tls is None else
                       f", {'RSA-2048' if args.tls_key == 'rsa' else 'ECDSA P-256'} certificate")
                report = (f"Measured {when} with `{command}` (wrk -t1, {args.seconds:g} s per "
                          f"run, best of {args.rounds} rounds; proxies on CPU {args.proxy_cpu},"
                          f" wrk and the backend on CPU {args.load_cpu}{key}).\n{versions()}"
                          f"{ciphers}.\n\n{table(results, shown, tests)}\n\n"
                          f"{verdict(results, tests)}")
                marker = MARKERS["plain" if tls is None else f"tls-{args.tls_key}"]
                reports.append((marker, report))
                if split:
                    report += f"\n\nWhere the CPU went, µs per request (share):\n\n{split}"
                    reports.append((f"{marker}-profile", f"Measured {when} with `{command}`"
                                    f" (perf record -e cpu-clock, {args.seconds:g} s per "
                                    f"proxy and test).\n\n{split}"))
                print()
                print(report)
                print()
        except BaseException:
            bench.stop_all()
            for log in sorted(work.glob("*.log")):
                print(f"--- {log.name} (last lines)\n"
                      + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
            raise
        finally:
            bench.stop_all()
    if args.update_doc:
        for marker, report in reports:
            update_doc(marker, report)


if __name__ == "__main__":
    main()
