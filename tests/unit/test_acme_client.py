"""The ACME client's pure parts: certificate dates, errors in words, no key in a repr."""

from __future__ import annotations

import requests
from acme import errors, messages

from dinp.acme_client import Issued, new_account_key, validity, words
from dinp.errors import Unavailable
from tests.support import CertAuthority


def test_validity_reads_the_chain_s_first_certificate() -> None:
    chain, _ = CertAuthority.make().issue("shop.example.com", days=30)
    not_before, not_after, serial = validity(chain)
    assert 30 * 86400 < not_after - not_before <= 31 * 86400
    assert int(serial, 16) > 0


def test_errors_in_words() -> None:
    problem = messages.Error.with_code("rateLimited", detail="too many certificates")
    assert words(problem) == "the CA answered rateLimited: too many certificates"
    assert words(errors.TimeoutError()) == "the CA did not validate or issue in time"
    assert words(requests.exceptions.SSLError("bad cert")).startswith(
        "the ACME directory's TLS certificate is not trusted")
    assert "acme_ca_bundle" in words(requests.exceptions.SSLError("x"))
    assert words(requests.ConnectionError("refused")) == \
        "the ACME directory is unreachable: refused"
    assert words(Unavailable("database down", hint="check it")) == "database down"
    assert words(ValueError("odd")) == "ValueError: odd"


def test_no_key_in_a_repr() -> None:
    key = new_account_key()
    assert "PRIVATE KEY" in key
    issued = Issued("a.example.com", "CHAIN", key, 1.0, 2.0, "ab")
    assert "PRIVATE" not in repr(issued) and "CHAIN" not in repr(issued)
