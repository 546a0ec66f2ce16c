"""TLS at the router: the settings, which certificate each handshake gets, and the
contexts made from the route table's PEM text.

The certificate is chosen by SNI, in this order: the table's certificate for exactly
that name, the table's wildcard for its parent (`*.shop.example.com` covers
`a.shop.example.com`: exactly one label), the operator's wildcard certificate
(`tls_cert_file`) when one of its names covers it. Anything else, a handshake without
SNI included, is refused with an `unrecognized_name` alert: the listening context itself
holds no certificate, so no handshake can ever end with another app's certificate or a
default one.

Settings are Mozilla's "intermediate": TLS 1.2 and 1.3 only, AEAD ciphers with forward
secrecy (TLS 1.3's in its order, AES-128 first), no compression or renegotiation, ALPN
`http/1.1`; session tickets and the session cache (both kept by the listening context)
let clients resume. OpenSSL reads some of these from the context a handshake switches to
(ALPN), others from the one it started with, so every context is made alike
(`server_context`).

Contexts are made in a thread when a table brings new or changed certificates (never on
a handshake), cached by the digest of their PEM, so an unchanged one is never made again.
A pair that does not load, or a certificate that does not cover the domain it is filed
under, is logged once (never its key) and left out; the others serve on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinp.errors import ConfigError
from dinp.router.metrics import Metrics
from dinp.router.openssl import openssl

log = logging.getLogger("dinp.router")

# Mozilla's "intermediate" TLS 1.2 ciphers, without the DHE ones (no DH parameters are
# loaded, so they could never be chosen). TLS 1.3 has its own list, all of it strong.
CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
# TLS 1.3's, in Mozilla's order (OpenSSL's puts AES-256 first): AES-128 has fewer rounds
# per record, and SHA-256, which its key schedule uses, runs on the CPU's SHA extensions
# where SHA-384 has none. The server's order decides (OP_CIPHER_SERVER_PREFERENCE).
TLS13_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
ALPN = ["http/1.1"]
# SNI names whose choice is remembered until the certificates change.
CHOICE_CACHE = 4096


def server_context() -> ssl.SSLContext:
    """A server context with the router's settings and no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(ALPN)
    # One TLS 1.3 ticket per handshake, as Go's TLS sends (OpenSSL's default is two): each
    # connection, resumed ones too, brings its client a new one, and each costs the
    # handshake an encryption and a record (5-10% of a handshake here).
    ctx.num_tickets = 1
    _prefer_tls13_ciphersuites(ctx)
    return ctx


_order_kept = False  # OpenSSL's TLS 1.3 order is kept (said once)


def _prefer_tls13_ciphersuites(ctx: ssl.SSLContext) -> None:
    """TLS13_CIPHERSUITES on the context (Python's ssl has no call for it), else
    OpenSSL's order, which holds the same suites: only a little speed is lost."""
    global _order_kept
    try:
        openssl().set_tls13_ciphersuites(ctx, TLS13_CIPHERSUITES)
    except OSError as exc:
        if not _order_kept:
            _order_kept = True
            log.info("TLS 1.3 cipher suites keep OpenSSL's order (%s)", exc)


def _no_password() -> bytes:
    raise ValueError("the private key is encrypted (it must be given in the clear)")


@contextlib.contextmanager
def _pem_files(cert: str, key: str) -> Iterator[tuple[str, str]]:
    """Paths OpenSSL can read the PEM texts from, gone when the block ends: anonymous
    memory files where the system has them (the key never touches a disk), else files in
    a private directory (0700, files 0600) deleted at once."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fds = []
        try:
            for text in (cert, key):
                fd = os.memfd_create("dinp-pem", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, text.encode())
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="dinp-tls-") as private:  # mode 0700
        paths = []
        for name, text in (("cert.pem", cert), ("key.pem", key)):
            path = os.path.join(private, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            paths.append(path)
        yield paths[0], paths[1]


def load_pair(cert: str, key: str) -> ssl.SSLContext:
    """A context serving this certificate chain and key (PEM texts). ssl.SSLError or
    ValueError when they do not load or do not belong together."""
    ctx = server_context()
    with _pem_files(cert, key) as (cert_path, key_path):
        ctx.load_cert_chain(cert_path, key_path, password=_no_password)
    return ctx


@dataclass(frozen=True)
class Certificate:
    """A loaded certificate: the context that serves it, and the DNS names it covers."""

    context: ssl.SSLContext
    names: tuple[str, ...]
    expires: datetime.datetime | None = None


def read_certificate(cert: str) -> tuple[tuple[str, ...], datetime.datetime | None]:
    """The DNS names (subjectAltName, lowercase) of the first certificate of a PEM chain,
    and when it expires. ValueError when it is not a certificate."""
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificates(cert.encode())[0]
    except ValueError as exc:
        raise ValueError("not a PEM certificate chain") from exc
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        names: tuple[str, ...] = ()
    else:
        names = tuple(n.lower().rstrip(".") for n in san.value.get_values_for_type(x509.DNSName))
    return names, leaf.not_valid_after_utc


def covers(names: tuple[str, ...], host: str) -> bool:
    """Whether a certificate with these DNS names is valid for `host` (RFC 6125: a
    wildcard stands for exactly one whole label, and only as the first one)."""
    if host in names:
        return True
    label, _, parent = host.partition(".")
    return bool(label) and bool(parent) and label != "*" and f"*.{parent}" in names


def read_files(cert_file: str, key_file: str) -> tuple[str, str]:
    """The operator's (certificate, key) PEM texts (the key from the certificate's file
    when `key_file` is empty); ConfigError saying why they cannot be read."""
    try:
        cert = Path(cert_file).read_text()
        return cert, Path(key_file).read_text() if key_file else cert
    except (OSError, ValueError) as exc:
        raise _unusable(cert_file, key_file, exc) from exc


def load_files(cert_file: str, key_file: str, texts: tuple[str, str] | None = None,
               ) -> Certificate:
    """The operator's certificate from its files, or from `texts`, their PEM texts read
    before (read_files); ConfigError saying what is wrong, never the key."""
    if texts is None:
        texts = read_files(cert_file, key_file)
    try:
        names, expires = read_certificate(texts[0])
        ctx = load_pair(*texts)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise _unusable(cert_file, key_file, exc) from exc
    if not names:
        raise ConfigError(f"the TLS certificate {cert_file} names no DNS name "
                          "(subjectAltName): no handshake could use it")
    return Certificate(ctx, names, expires)


def _unusable(cert_file: str, key_file: str, exc: BaseException) -> ConfigError:
    return ConfigError(f"cannot use the TLS certificate {cert_file}"
                       f"{f' with key {key_file}' if key_file else ''}: {_why(exc)}",
                       hint="tls_cert_file is the PEM chain (the certificate first), "
                            "tls_key_file its unencrypted private key.")


# OpenSSL's reasons, said for the operator who has to fix the files.
_REASONS = {
    "KEY_VALUES_MISMATCH": "the key is not the certificate's (KEY_VALUES_MISMATCH)",
    None: "not PEM that OpenSSL can read, or empty (PEM lib)",
}


def _why(exc: BaseException) -> str:
    """What went wrong, in a line that cannot hold key material."""
    if isinstance(exc, ssl.SSLError):
        return _REASONS.get(exc.reason) or exc.reason
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__


def _digest(cert: str, key: str) -> str:
    return hashlib.sha256(f"{cert}\0{key}".encode()).hexdigest()


@dataclass(frozen=True)
class _Built:
    """One round of making contexts: the context of each domain served, and what the
    next round starts from."""

    by_domain: dict[str, ssl.SSLContext]
    loaded: dict[str, Certificate]  # digest of the PEM pair -> what it loaded as
    failed: dict[str, str]  # digest -> why the pair does not load
    refused: frozenset[tuple[str, str]]  # (domain, digest) left out (logged once)


def _build(certs: dict[str, tuple[str, str]], before: _Built) -> _Built:
    """Make the context of each certificate not made before (this runs in a thread)."""
    by_domain: dict[str, ssl.SSLContext] = {}
    loaded: dict[str, Certificate] = {}
    failed: dict[str, str] = {}
    refused: set[tuple[str, str]] = set()
    now = datetime.datetime.now(datetime.UTC)
    for domain, (cert, key) in sorted(certs.items()):
        digest = _digest(cert, key)
        found = loaded.get(digest) or before.loaded.get(digest)
        why = failed.get(digest) or before.failed.get(digest)
        if found is None and why is None:
            try:
                names, expires = read_certificate(cert)
                found = Certificate(load_pair(cert, key), names, expires)
            except (ValueError, ssl.SSLError) as exc:
                why = _why(exc)
            else:
                if expires is not None and expires < now:
                    log.warning("the TLS certificate for %s expired on %s", domain,
                                expires.date().isoformat())
        if found is not None:
            loaded[digest] = found
            if not covers(found.names, domain):
                # Filed under a name it is not for: it must not answer for that name.
                why = f"it is for {', '.join(found.names) or 'no DNS name'}"
        elif why is not None:
            failed[digest] = why
        if why is not None:
            if (domain, digest) not in before.refused:
                log.error("the TLS certificate for %s cannot be used (%s): handshakes for "
                          "it are refused", domain, why)
            refused.add((domain, digest))
            continue
        assert found is not None
        by_domain[domain] = found.context
    return _Built(by_domain, loaded, failed, frozenset(refused))


_NOT_CHOSEN = object()


class CertStore:
    """One worker's certificates: the listening context, whose SNI callback picks each
    handshake's certificate, and the contexts made from the route table.

    `update` hands it the table's certificates; they are made in a thread and swapped in
    whole. `ready` is set once the first table's are in (the TLS listener waits for it)."""

    def __init__(self, metrics: Metrics, wildcard: Certificate | None = None) -> None:
        self.metrics = metrics
        self.wildcard = wildcard
        self.context = server_context()
        self.context.sni_callback = self._on_sni
        self.ready = asyncio.Event()
        # Told when the certificates in use change (the route cache depends on them).
        self.listeners: list[Callable[[], None]] = []
        self._built = _Built({}, {}, {}, frozenset())
        self._chosen: dict[str, Any] = {}
        self._wanted: Mapping[str, tuple[str, str]] | None = None
        self._applied: Mapping[str, tuple[str, str]] | None = None
        self._task: asyncio.Task[None] | None = None

    # --- the handshake ---

    def _on_sni(self, sslobj: Any, name: str | None, initial: ssl.SSLContext) -> int | None:
        """OpenSSL's SNI callback: switch the handshake to the name's certificate, or
        refuse it. It must not raise (that would end the handshake without an alert)."""
        try:
            ctx = self.choose(name) if name else None
            if ctx is None:
                self.metrics.tls_refused += 1
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sslobj.context = ctx
            return None
        except Exception:
            log.exception("router bug while choosing a TLS certificate")
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR

    def choose(self, name: str) -> ssl.SSLContext | None:
        """The context whose certificate serves `name` (an SNI name), or None."""
        ctx = self._chosen.get(name, _NOT_CHOSEN)
        if ctx is _NOT_CHOSEN:
            ctx = self._choose(name.lower().rstrip("."))
            if len(self._chosen) >= CHOICE_CACHE:
                self._chosen = {}
            self._chosen[name] = ctx
        return ctx  # type: ignore[no-any-return]

    def _choose(self, host: str) -> ssl.SSLContext | None:
        if not host or "*" in host or ".." in host or host.startswith("."):
            return None
        by_domain = self._built.by_domain
        ctx = by_domain.get(host)
        if ctx is None:
            parent = host.partition(".")[2]
            if parent:
                ctx = by_domain.get(f"*.{parent}")
        if ctx is None and self.wildcard is not None and covers(self.wildcard.names, host):
            ctx = self.wildcard.context
        return ctx

    def serves(self, host: str) -> bool:
        """Whether a handshake for `host` gets a certificate."""
        return self.choose(host) is not None

    # --- certificates from the table ---

    @property
    def loaded(self) -> int:
        """Domains of the table whose certificate is in use."""
        return len(self._built.by_domain)

    @property
    def refused(self) -> int:
        """Domains of the table whose certificate is left out (see the log)."""
        return len(self._built.refused)

    def update(self, certs: Mapping[str, tuple[str, str]]) -> None:
        """Serve `certs` (a table's) once they are made; one round runs at a time, and
        the last round makes the latest certificates given."""
        self._wanted = certs
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="dinp-tls-certs")

    async def settled(self) -> None:
        """Until the latest certificates given are the ones in use."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while self._wanted is not None and self._wanted is not self._applied:
            certs = self._wanted
            if self._applied is None or certs != self._applied:
                try:
                    built = await asyncio.to_thread(_build, dict(certs), self._built)
                except Exception:  # a bug must not keep TLS from ever being ready
                    log.exception("router bug while loading TLS certificates")
                    built = _Built({}, {}, {}, frozenset())
                self._apply(built)
            self._applied = certs

    def _apply(self, built: _Built) -> None:
        self._built = built
        self.ready.set()
        self._changed()

    def set_wildcard(self, wildcard: Certificate) -> None:
        """Serve the operator's certificate `wildcard` (reloaded from its files) from the
        next handshake on; connections already made keep theirs."""
        self.wildcard = wildcard
        self._changed()

    def _changed(self) -> None:
        self._chosen = {}
        for listener in self.listeners:
            listener()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
