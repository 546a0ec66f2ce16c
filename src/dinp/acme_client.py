"""Talking to an ACME directory (RFC 8555): account, HTTP-01 orders, revocation.

certbot's `acme` package does the protocol (JWS signing, nonces and their retries,
polling, problem documents): hand-written JWS is where ACME clients go wrong, and that
package is the one Let's Encrypt's own client uses. It is blocking (requests), so the
server calls it from a thread of its own (roles/certificates.py), never from the event
loop nor the database thread.

An order is two calls, so the caller can publish the challenge answers through the
route table between them: `begin` (new order, the answers to publish) and `finish`
(tell the CA to validate, poll, finalize, download the chain).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwk import JWKRSA

from dinp.errors import DinpError

log = logging.getLogger(__name__)
USER_AGENT = "dinp (+https://github.com/dinp)"


class AcmeFailure(Exception):
    """An order or revocation failed; the message says why, in words for a person."""


@dataclass(frozen=True)
class Order:
    """An order under way: its HTTP-01 answers (token -> key authorization) must be
    served by the routers before `finish`. The key never reaches a repr."""

    domain: str
    resource: messages.OrderResource = field(repr=False)
    key_pem: str = field(repr=False)
    answers: dict[str, str] = field(repr=False)
    responses: tuple[tuple[messages.ChallengeBody, challenges.ChallengeResponse], ...] = \
        field(repr=False)


@dataclass(frozen=True)
class Issued:
    domain: str
    chain_pem: str = field(repr=False)
    key_pem: str = field(repr=False)
    not_before: float
    not_after: float
    serial: str  # hexadecimal, as CAs show it


def validity(chain_pem: str) -> tuple[float, float, str]:
    """(not before, not after, serial in hex) of a chain's first certificate."""
    cert = x509.load_pem_x509_certificate(chain_pem.encode())
    return (cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
            format(cert.serial_number, "x"))


def new_account_key() -> str:
    """An RSA-2048 account key (RS256: what every ACME CA takes), as PKCS#8 PEM."""
    key = rsa.generate_private_key(65537, 2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _new_cert_key() -> str:
    """A fresh ECDSA P-256 key for each certificate (renewals too)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def words(exc: BaseException) -> str:
    """An ACME library or network error as one line a person can act on (dinp's own
    errors say it already)."""
    if isinstance(exc, DinpError):
        return exc.message
    if isinstance(exc, AcmeFailure):
        return str(exc)
    if isinstance(exc, errors.ValidationError):
        parts = []
        for authzr in exc.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    detail = chall.error.detail or chall.error.description or chall.error.code
                    parts.append(f"{chall.chall.typ} challenge for "
                                 f"{authzr.body.identifier.value} failed: {detail}")
        return "; ".join(parts) or "the CA refused the authorization"
    if isinstance(exc, errors.TimeoutError):
        return "the CA did not validate or issue in time"
    if isinstance(exc, messages.Error):
        return f"the CA answered {exc.code or exc.typ}: {exc.detail or exc.description}"
    if isinstance(exc, errors.IssuanceError):
        return f"the CA did not issue: {exc.error.detail or exc.error.description}"
    if isinstance(exc, requests.exceptions.SSLError):
        return (f"the ACME directory's TLS certificate is not trusted ({exc}); set "
                "acme_ca_bundle for a private CA")
    if isinstance(exc, requests.RequestException):
        return f"the ACME directory is unreachable: {exc}"
    return f"{type(exc).__name__}: {exc}"


class AcmeDirectory:
    """One ACME directory and this cluster's account there. Not thread-safe: the server
    calls it from one thread."""

    def __init__(self, url: str, *, account_key_pem: str, email: str = "",
                 ca_bundle: str = "", timeout: float = 30.0) -> None:
        self.url = url
        self.email = email
        self.timeout = timeout
        key = serialization.load_pem_private_key(account_key_pem.encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise AcmeFailure("the stored ACME account key is not an RSA key")
        self._key = JWKRSA(key=key)
        # requests takes a CA bundle path where a bool is typed.
        self._net = client.ClientNetwork(
            self._key, user_agent=USER_AGENT, timeout=int(timeout),
            verify_ssl=ca_bundle or True)  # type: ignore[arg-type]
        self._client: client.ClientV2 | None = None
        self.account_uri = ""
        self.contact: tuple[str, ...] = ()  # as the CA holds it

    def connect(self) -> str:
        """Read the directory and register (or find) the account; its URL. Idempotent:
        the same key finds the same account."""
        if self._client is not None:
            return self.account_uri
        try:
            directory = client.ClientV2.get_directory(self.url, self._net)
            acme = client.ClientV2(directory, self._net)
            registration = messages.NewRegistration.from_data(
                email=self.email or None, terms_of_service_agreed=True)
            try:
                regr = acme.new_account(registration)
            except errors.ConflictError as exc:  # the key has an account already
                regr = acme.query_registration(
                    messages.RegistrationResource(uri=exc.location,
                                                  body=messages.Registration()))
                if tuple(regr.body.contact) != tuple(registration.contact):
                    # acme_email changed: the CA's notices go to the new address.
                    regr = acme.update_registration(
                        regr, regr.body.update(contact=registration.contact))
        except Exception as exc:
            raise AcmeFailure(words(exc)) from exc
        self._client, self.account_uri = acme, regr.uri or ""
        self.contact = tuple(regr.body.contact)
        return self.account_uri

    def begin(self, domain: str) -> Order:
        """A new order for `domain` with a fresh key; the HTTP-01 answers to publish."""
        acme = self._acme()
        key_pem = _new_cert_key()
        try:
            csr = crypto_util.make_csr(key_pem.encode(), [domain])
            resource = acme.new_order(csr)
        except Exception as exc:
            raise AcmeFailure(words(exc)) from exc
        answers: dict[str, str] = {}
        responses = []
        for authzr in resource.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue  # the CA reused an earlier authorization
            chall = next((c for c in authzr.body.challenges
                          if isinstance(c.chall, challenges.HTTP01)), None)
            if chall is None:
                raise AcmeFailure(f"the CA offers no HTTP-01 challenge for "
                                  f"{authzr.body.identifier.value}")
            response, validation = chall.response_and_validation(self._key)
            answers[chall.chall.encode("token")] = validation
            responses.append((chall, response))
        return Order(domain, resource, key_pem, answers, tuple(responses))

    def finish(self, order: Order) -> Issued:
        """Have the CA validate the published answers, then finalize and download."""
        acme = self._acme()
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.timeout)
        try:
            for chall, response in order.responses:
                acme.answer_challenge(chall, response)
            final = acme.poll_and_finalize(order.resource, deadline)
        except Exception as exc:
            raise AcmeFailure(words(exc)) from exc
        chain = final.fullchain_pem
        not_before, not_after, serial = validity(chain)
        return Issued(order.domain, chain, order.key_pem, not_before, not_after, serial)

    def revoke(self, chain_pem: str) -> None:
        """Revoke the chain's certificate (reason: unspecified)."""
        acme = self._acme()
        try:
            acme.revoke(x509.load_pem_x509_certificate(chain_pem.encode()), 0)
        except Exception as exc:
            raise AcmeFailure(words(exc)) from exc

    def _acme(self) -> client.ClientV2:
        self.connect()
        assert self._client is not None
        return self._client
