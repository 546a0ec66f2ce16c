"""Debian's `pebble` (a test ACME CA) and `pebble-challtestsrv` (its mock DNS) started
by a test, on free ports: every name resolves to 127.0.0.1 unless the test says
otherwise, and Pebble validates HTTP-01 on the port the test names (a dinp router's).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import CertAuthority, free_port, wait_for


def need_pebble() -> tuple[str, str]:
    """The two executables; a skip (which fails under CI=true) when not installed."""
    import pytest

    pebble, dns = shutil.which("pebble"), shutil.which("pebble-challtestsrv")
    if pebble is None or dns is None:
        pytest.skip("pebble is not installed (apt-get install pebble)")
    return pebble, dns


@dataclass
class Pebble:
    """A running Pebble: its directory URL, the CA bundle of its own TLS listener (a
    throwaway CA of the test's), and the management API (roots, certificate status)."""

    directory: str
    ca_bundle: Path
    management: str
    dns_management: str
    procs: tuple[subprocess.Popen[bytes], ...]
    log: Path

    @classmethod
    def start(cls, workdir: Path, *, http_port: int, validity: int = 0) -> Pebble:
        """Start the mock DNS and Pebble. `validity`: seconds each certificate lasts
        (0: Pebble's default of five years)."""
        pebble_exe, dns_exe = need_pebble()
        workdir.mkdir(parents=True, exist_ok=True)
        ca = CertAuthority.make("pebble listener CA")
        cert, key = ca.files(workdir, "pebble-listener", "localhost")
        bundle = workdir / "pebble-listener-ca.pem"
        bundle.write_text(ca.cert_pem)
        acme_port, mgmt_port, dns_port, dns_mgmt = (free_port() for _ in range(4))
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(cert), "privateKey": str(key),
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }
        if validity:
            config["certificateValidityPeriod"] = validity
        (workdir / "pebble.json").write_text(json.dumps({"pebble": config}))
        log = workdir / "pebble.log"
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_VA_ALWAYS_VALID="0",
                   PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        with log.open("ab") as out:
            dns = subprocess.Popen(
                [dns_exe, "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "",
                 "-tlsalpn01", "", "-management", f"127.0.0.1:{dns_mgmt}",
                 "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                stdout=out, stderr=subprocess.STDOUT, env=env)
            pebble = subprocess.Popen(
                [pebble_exe, "-config", str(workdir / "pebble.json"),
                 "-dnsserver", f"127.0.0.1:{dns_port}"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self = cls(f"https://localhost:{acme_port}/dir", bundle,
                   f"https://localhost:{mgmt_port}", f"http://127.0.0.1:{dns_mgmt}",
                   (dns, pebble), log)
        try:
            wait_for(lambda: self._get(self.directory), 20, "pebble's ACME directory")
            wait_for(lambda: self._post_dns("/set-default-ipv4", {"ip": "127.0.0.1"}), 20,
                     "pebble-challtestsrv")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._context(), timeout=5) as resp:
            return bytes(resp.read())

    def _post_dns(self, path: str, body: dict[str, Any]) -> bool:
        req = urllib.request.Request(self.dns_management + path, data=json.dumps(body).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return bool(resp.status == 200)

    def resolve(self, host: str, address: str | None) -> None:
        """Make the mock DNS answer `address` for `host` (A records); None: the
        default again (127.0.0.1)."""
        name = host.rstrip(".") + "."
        assert self._post_dns("/clear-a", {"host": name})
        if address is not None:
            assert self._post_dns("/add-a", {"host": name, "addresses": [address]})

    def root(self) -> str:
        """The PEM root that Pebble's issued chains lead to (made at each start)."""
        return self._get(self.management + "/roots/0").decode()

    def cert_status(self, serial: str) -> dict[str, Any]:
        """What Pebble knows of a certificate it issued: `Status` Valid or Revoked."""
        value: dict[str, Any] = json.loads(
            self._get(f"{self.management}/cert-status-by-serial/{serial}"))
        return value
