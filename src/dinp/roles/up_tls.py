"""`dinp up`'s own certificates when the operator brings none: a local CA, as Caddy's
`tls internal` and mkcert make, under the state directory.

Why a CA and not one self-signed wildcard: `*.localhost` (the default domain has one
label) matches no host name in OpenSSL, curl or browsers, which refuse wildcards right
under a top-level name. So the CA (`tls/ca.pem`, the one file a user trusts; its key
`tls/ca-key.pem`, mode 0600) signs, in memory, a certificate for `<domain>` and
`*.<domain>` (enough for a domain of two labels or more) and one for each app host the
route table routes, handed to the router with each table and made again before they
expire. The CA is made on the first start and kept, so
trusting it once lasts; it is made again when it expires (or will within
RENEW_BEFORE), cannot be read, or was made for another domain: it carries a name
constraint, so it can sign for names under `<domain>` only (no IP address), and trusting
it exposes nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dinp.errors import ConfigError
from dinp.routes import RouteTable

log = logging.getLogger(__name__)

CA_DAYS = 3650
LEAF_DAYS = 90
# A CA this close to its end is made again (and must be trusted again).
RENEW_BEFORE = datetime.timedelta(days=30)
CA_NAME = "dinp up local CA"
# A name constraint on DNS names alone leaves IP addresses unconstrained (RFC 5280: a
# constraint binds only names of its own type), so a copy of the key could sign for any
# address; excluding them all keeps the CA to names under its domain.
NO_IPS = [x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
          x509.IPAddress(ipaddress.ip_network("::/0"))]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file whole (replaced, never half written); a key (0600) so that no other
    user can ever read it, not even for an instant."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def _cannot_write(directory: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot write dinp up's certificates in {directory}: "
                       f"{exc.strerror or exc}",
                       hint="Give a --state-dir this user may write, or --tls-cert/--tls-key.")


@dataclasses.dataclass(frozen=True)
class LocalCA:
    """The CA's certificate (PEM, and parsed), its key, and the domain it signs for."""

    cert_pem: str
    cert: x509.Certificate
    key: Any
    domain: str
    path: Path  # the certificate's file: what a user trusts

    @classmethod
    def load_or_make(cls, directory: Path, domain: str) -> LocalCA:
        """The CA kept in `directory`, or a new one when there is none usable."""
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise _cannot_write(directory, exc) from exc
        cert_file, key_file = directory / "ca.pem", directory / "ca-key.pem"
        why = "none yet"
        if cert_file.exists() or key_file.exists():
            try:
                ca = cls._load(cert_file, key_file, domain)
            except (OSError, ValueError) as exc:
                why = f"{cert_file} is not usable ({exc})"
            else:
                if ca.cert.not_valid_after_utc - RENEW_BEFORE <= _now():
                    why = f"it expires on {ca.cert.not_valid_after_utc.date()}"
                elif (constrained := ca.constrained_to()) != domain:
                    why = (f"it was made for domain {constrained!r}" if constrained
                           else "its name constraint is not dinp up's")
                else:
                    return ca
        try:
            ca = cls._make(cert_file, key_file, domain)
        except OSError as exc:
            raise _cannot_write(directory, exc) from exc
        log.warning("dinp up: made a local CA for *.%s (%s); trust %s to use https "
                    "without warnings (curl --cacert %s)", domain, why, cert_file, cert_file)
        return ca

    @classmethod
    def _load(cls, cert_file: Path, key_file: Path, domain: str) -> LocalCA:
        text = cert_file.read_text()
        cert = x509.load_pem_x509_certificate(text.encode())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if key.public_key() != cert.public_key():
            raise ValueError("the key is not the certificate's")
        if key_file.stat().st_mode & 0o077:  # say, restored from a backup as 0644
            log.warning("dinp up: %s could be read by other users; made 0600", key_file)
            key_file.chmod(0o600)
        return cls(text, cert, key, domain, cert_file)

    @classmethod
    def _make(cls, cert_file: Path, key_file: Path, domain: str) -> LocalCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{CA_NAME} ({domain})"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dinp")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, encipher_only=False,
                    decipher_only=False), critical=True)
                .add_extension(x509.NameConstraints(
                    permitted_subtrees=[x509.DNSName(domain)], excluded_subtrees=NO_IPS),
                    critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        text = cert.public_bytes(serialization.Encoding.PEM).decode()
        _write(key_file, _pem_key(key))
        _write(cert_file, text, 0o644)
        return cls(text, cert, key, domain, cert_file)

    def constrained_to(self) -> str | None:
        """The one DNS name the CA may sign under (None: not one of ours)."""
        try:
            ext = self.cert.extensions.get_extension_for_class(x509.NameConstraints)
        except x509.ExtensionNotFound:
            return None
        names = [n.value for n in ext.value.permitted_subtrees or []
                 if isinstance(n, x509.DNSName)]
        if set(ext.value.excluded_subtrees or []) != set(NO_IPS):
            return None  # it could sign for any IP address: made again
        return names[0] if len(names) == 1 else None

    def issue(self, *names: str) -> tuple[str, str]:
        """(chain PEM, key PEM) of a new certificate for `names`, signed by the CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        issuer_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(min(now + datetime.timedelta(days=LEAF_DAYS),
                                     self.cert.not_valid_after_utc))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    issuer_ski.value), critical=False)
                .sign(self.key, hashes.SHA256()))
        chain = cert.public_bytes(serialization.Encoding.PEM).decode() + self.cert_pem
        return chain, _pem_key(key)


class HostCertificates:
    """Adds to each route table the CA's certificates: one for `<domain>` and
    `*.<domain>`, and one for every app host under the domain that the table has none
    for, each made once (the router loads a certificate once, by its digest). Only the
    last table's hosts are kept, so a removed app's certificate is dropped and a long run
    does not pile them up; one past REISSUE_AFTER of its lifetime is made again, so a
    `dinp up` running for months never serves an expired one (`due` says when a table
    should be handed again for that)."""

    def __init__(self, ca: LocalCA) -> None:
        self.ca = ca
        self._made: dict[str, tuple[str, str, datetime.datetime]] = {}
        self._lock = threading.Lock()  # tables are published from worker threads

    def add_to(self, table: RouteTable) -> RouteTable:
        domain = self.ca.domain
        hosts = [h for h in table.hosts if h.endswith("." + domain) and h not in table.certs]
        now = _now()
        with self._lock:
            made = {h: self._made[h] for h in (WILDCARD, *hosts)
                    if h in self._made and self._made[h][2] > now}
            for host in (WILDCARD, *hosts):
                if host not in made:
                    names = (domain, f"*.{domain}") if host == WILDCARD else (host,)
                    chain, key = self.ca.issue(*names)
                    made[host] = (chain, key, _reissue_at(chain))
            self._made = made
        wildcard = made[WILDCARD][:2]
        local = {h: (c, k) for h, (c, k, _) in made.items() if h != WILDCARD}
        return dataclasses.replace(table, certs={
            domain: wildcard, f"*.{domain}": wildcard, **local, **table.certs})

    def due(self) -> bool:
        """Whether a kept certificate is due to be made again (the next add_to does)."""
        now = _now()
        with self._lock:
            return any(at <= now for _, _, at in self._made.values())


# A local certificate is made again once this part of its lifetime has passed.
REISSUE_AFTER = 2 / 3
# The key under which HostCertificates keeps the `<domain>`, `*.<domain>` certificate.
WILDCARD = "*"


def _reissue_at(chain: str) -> datetime.datetime:
    cert = x509.load_pem_x509_certificate(chain.encode())
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * REISSUE_AFTER


# One label of a DNS name (RFC 1123); dinp up's domain may be one label ("localhost").
DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_domain(domain: str) -> str:
    """The domain as the CA's name constraint holds it; refused when it cannot be one
    (a name constraint holds a DNS name: labels of letters, digits and '-')."""
    value = domain.strip().lower().rstrip(".")
    if not value or len(value) > 253 or \
            not all(DNS_LABEL.fullmatch(label) for label in value.split(".")):
        raise ConfigError(f"domain {domain!r} is not a DNS name dinp up can make a "
                          "certificate for (labels of letters, digits and '-', joined "
                          "by '.')")
    return value
