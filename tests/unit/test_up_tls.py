"""`dinp up`'s local CA: made once and kept (its key 0600), made again when it expires,
is unreadable or was made for another domain; what it signs passes a real TLS client's
checks for app hosts under its domain (where a `*.localhost` wildcard would not), and
nothing outside it."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from dinp.errors import ConfigError
from dinp.roles import up_tls
from dinp.roles.up_tls import HostCertificates, LocalCA
from dinp.router.tls import load_pair
from dinp.routes import RouteTable


def handshake(chain: str, key: str, name: str, ca_file: Path) -> None:
    """A TLS handshake between a server serving (chain, key) and a client trusting only
    `ca_file` and checking `name`, as curl --cacert does; raises ssl.SSLError if refused."""
    server_ctx = load_pair(chain, key)
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    a, b = socket.socketpair()
    got: list[bytes] = []

    def serve() -> None:
        # The server side fails too when the client refuses: only the client's error
        # is the test's; a byte received says the handshake went through both ways.
        with contextlib.suppress(ssl.SSLError, OSError), \
                server_ctx.wrap_socket(a, server_side=True) as s:
            got.append(s.recv(1))

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=name) as c:
            c.sendall(b"x")
    finally:
        b.close()
        t.join(5)
        a.close()
    assert got == [b"x"]


def test_the_ca_is_made_once_with_a_private_key_and_kept(tmp_path: Path) -> None:
    ca = LocalCA.load_or_make(tmp_path / "tls", "localhost")
    assert (tmp_path / "tls" / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    assert ca.path == tmp_path / "tls" / "ca.pem"
    assert ca.constrained_to() == "localhost"
    again = LocalCA.load_or_make(tmp_path / "tls", "localhost")
    assert again.cert_pem == ca.cert_pem == (tmp_path / "tls" / "ca.pem").read_text()


def test_a_kept_key_other_users_could_read_is_made_private(tmp_path: Path) -> None:
    ca = LocalCA.load_or_make(tmp_path, "localhost")
    (tmp_path / "ca-key.pem").chmod(0o644)
    assert LocalCA.load_or_make(tmp_path, "localhost").cert_pem == ca.cert_pem
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600


def test_what_it_signs_passes_a_tls_client_for_app_hosts_only(tmp_path: Path) -> None:
    ca = LocalCA.load_or_make(tmp_path, "localhost")
    chain, key = ca.issue("hello.localhost")
    handshake(chain, key, "hello.localhost", ca.path)
    with pytest.raises(ssl.SSLError, match=r"Hostname mismatch"):
        handshake(chain, key, "other.localhost", ca.path)
    # The name constraint: even a certificate it signed for a name elsewhere is refused,
    # so trusting the CA exposes no other site.
    chain, key = ca.issue("bank.example.com")
    with pytest.raises(ssl.SSLError, match=r"permitted subtree violation"):
        handshake(chain, key, "bank.example.com", ca.path)


def test_the_wildcard_comes_with_every_table_and_serves_a_two_label_domain(
        tmp_path: Path) -> None:
    ca = LocalCA.load_or_make(tmp_path, "apps.test")
    served = HostCertificates(ca).add_to(RouteTable())
    assert set(served.certs) == {"apps.test", "*.apps.test"}
    assert set(load_files_from(served.certs["*.apps.test"])) == {"apps.test", "*.apps.test"}
    handshake(*served.certs["*.apps.test"], "web.apps.test", ca.path)


def load_files_from(pair: tuple[str, str]) -> tuple[str, ...]:
    from dinp.router.tls import read_certificate

    return read_certificate(pair[0])[0]


def test_it_signs_for_no_ip_address(tmp_path: Path) -> None:
    """A DNS name constraint alone leaves IP addresses free: a copy of the key could
    sign for any address, and a client trusting the CA would take it."""
    ca = LocalCA.load_or_make(tmp_path, "localhost")
    chain, key = ca.issue("hello.localhost")
    leaf = x509.load_pem_x509_certificate(chain.encode())
    builder = (x509.CertificateBuilder().subject_name(leaf.subject)
               .issuer_name(leaf.issuer).public_key(leaf.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(leaf.not_valid_before_utc)
               .not_valid_after(leaf.not_valid_after_utc)
               .add_extension(x509.SubjectAlternativeName(
                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False))
    forged = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ssl.SSLError, match=r"excluded subtree violation"):
        handshake(forged.decode() + ca.cert_pem, key, "127.0.0.1", ca.path)


def test_a_ca_without_the_ip_exclusion_is_made_again(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    first = LocalCA.load_or_make(tmp_path, "localhost")
    builder = (x509.CertificateBuilder().subject_name(first.cert.subject)
               .issuer_name(first.cert.subject).public_key(first.cert.public_key())
               .serial_number(1).not_valid_before(first.cert.not_valid_before_utc)
               .not_valid_after(first.cert.not_valid_after_utc)
               .add_extension(x509.NameConstraints([x509.DNSName("localhost")], None),
                              critical=True))
    (tmp_path / "ca.pem").write_bytes(
        builder.sign(first.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    again = LocalCA.load_or_make(tmp_path, "localhost")
    assert again.cert.serial_number != 1 and again.constrained_to() == "localhost"
    assert "name constraint is not dinp up's" in caplog.text


def test_it_is_made_again_for_another_domain_when_expiring_or_unreadable(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = LocalCA.load_or_make(tmp_path, "localhost")
    other = LocalCA.load_or_make(tmp_path, "dinp.test")
    assert other.cert_pem != first.cert_pem and other.constrained_to() == "dinp.test"
    assert "made for domain 'localhost'" in caplog.text

    # One that ends within RENEW_BEFORE: re-signed here with the same key, to expire soon.
    cert = x509.load_pem_x509_certificate(other.cert_pem.encode())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .public_key(cert.public_key()).serial_number(cert.serial_number)
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=2)))
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    (tmp_path / "ca.pem").write_bytes(
        builder.sign(other.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    renewed = LocalCA.load_or_make(tmp_path, "dinp.test")
    assert renewed.cert.not_valid_after_utc > now + datetime.timedelta(days=365)

    (tmp_path / "ca-key.pem").write_text("not a key")
    remade = LocalCA.load_or_make(tmp_path, "dinp.test")
    assert remade.cert_pem != renewed.cert_pem
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600


def test_each_routed_host_gets_a_certificate_made_once_and_acme_ones_win(
        tmp_path: Path) -> None:
    ca = LocalCA.load_or_make(tmp_path, "localhost")
    hosts = HostCertificates(ca)
    acme = ("ACME CHAIN", "ACME KEY")
    table = RouteTable(hosts={"hello.localhost": "hello", "web.localhost": "web"},
                       cnames={"shop.example.com": "web.localhost"},
                       certs={"shop.example.com": acme})
    served = hosts.add_to(table)
    assert set(served.certs) == {"hello.localhost", "web.localhost", "shop.example.com",
                                 "localhost", "*.localhost"}
    assert served.certs["shop.example.com"] == acme
    handshake(*served.certs["web.localhost"], "web.localhost", ca.path)
    assert hosts.add_to(table).certs == served.certs  # made once: the router loads it once
    assert "PRIVATE KEY" not in repr(served) and "PRIVATE KEY" not in repr(hosts.ca)


def test_a_removed_apps_certificate_is_dropped(tmp_path: Path) -> None:
    hosts = HostCertificates(LocalCA.load_or_make(tmp_path, "localhost"))
    one = RouteTable(hosts={"hello.localhost": "hello"})
    first = hosts.add_to(one).certs["hello.localhost"]
    for n in range(50):  # apps come and go: what is kept stays the last table's
        hosts.add_to(RouteTable(hosts={f"app{n}.localhost": f"app{n}"}))
    assert len(hosts._made) == 2  # app49 and the wildcard
    assert hosts.add_to(one).certs["hello.localhost"] != first  # made again, not kept


def test_certificates_are_made_again_before_they_expire(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = HostCertificates(LocalCA.load_or_make(tmp_path, "localhost"))
    table = RouteTable(hosts={"hello.localhost": "hello"})
    before = hosts.add_to(table).certs
    assert not hosts.due()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
        days=up_tls.LEAF_DAYS * up_tls.REISSUE_AFTER + 1)
    monkeypatch.setattr(up_tls, "_now", lambda: later)
    assert hosts.due()
    after = hosts.add_to(table).certs
    for name in ("hello.localhost", "localhost", "*.localhost"):
        assert after[name] != before[name]
        cert = x509.load_pem_x509_certificate(after[name][0].encode())
        assert cert.not_valid_after_utc > later + datetime.timedelta(days=30)
    assert not hosts.due()


@pytest.mark.parametrize("domain", ["", "*.localhost", ".localhost", "a..b", "a b",
                                    "shop_x.example", "-a.example", "a-.example",
                                    "é.example", "a" * 64 + ".example"])
def test_a_domain_that_cannot_be_a_name_constraint_is_refused(domain: str) -> None:
    with pytest.raises(ConfigError, match="is not a DNS name"):
        up_tls.check_domain(domain)


@pytest.mark.parametrize(("domain", "held"), [("localhost", "localhost"),
                                              ("Apps.Example.COM.", "apps.example.com"),
                                              (" dev-1.local ", "dev-1.local")])
def test_a_domain_is_held_as_its_name_constraint(domain: str, held: str) -> None:
    assert up_tls.check_domain(domain) == held


def test_a_state_directory_it_cannot_write_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write dinp up's certificates"):
        LocalCA.load_or_make(tmp_path / "file" / "tls", "localhost")
