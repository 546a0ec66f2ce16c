"""The pure parts of the router's TLS: which names a certificate covers, reading them
from PEM, and contexts made from PEM text without leaving it on a disk."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

import pytest

from dinp.errors import ConfigError
from dinp.router import tls
from tests.support import CertAuthority

CA = CertAuthority.make()


@pytest.mark.parametrize(("names", "host", "covered"), [
    (("shop.example.com",), "shop.example.com", True),
    (("*.apps.test",), "web.apps.test", True),
    (("*.apps.test",), "apps.test", False),  # the parent is not covered
    (("*.apps.test",), "a.web.apps.test", False),  # exactly one label
    (("*.apps.test",), "*.apps.test", True),  # the table's own wildcard key
    (("*.apps.test",), "x.apps.test.evil", False),
    (("*.apps.test", "apps.test"), "apps.test", True),
    ((), "apps.test", False),
])
def test_covers(names: tuple[str, ...], host: str, covered: bool) -> None:
    assert tls.covers(names, host) is covered


def test_read_certificate_gives_its_dns_names_lowercase() -> None:
    chain, _ = CA.issue("Shop.Example.com", "*.shop.example.com")
    names, expires = tls.read_certificate(chain)
    assert names == ("shop.example.com", "*.shop.example.com")
    assert expires is not None
    with pytest.raises(ValueError, match="not a PEM certificate"):
        tls.read_certificate("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_the_settings_are_modern() -> None:
    ctx = tls.server_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    names = {c["name"] for c in ctx.get_ciphers()}
    tls12 = {n for n in names if not n.startswith("TLS_")}
    assert tls12 and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n)
                         for n in tls12), tls12
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.num_tickets == 1


@pytest.mark.parametrize("memfd", [True, False], ids=["memfd", "private-dir"])
def test_a_pair_loads_from_pem_text_and_leaves_nothing_behind(
        memfd: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    chain, key = CA.issue("shop.example.com")
    seen: list[tuple[str, int]] = []
    if not memfd:
        monkeypatch.delattr(os, "memfd_create")
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        real_open = os.open

        def spy(path: str, flags: int, mode: int = 0o777, **kwargs: object) -> int:
            fd = real_open(path, flags, mode)
            if flags & os.O_CREAT:  # the files it writes (not the directory's cleanup)
                seen.append((path, os.stat(path).st_mode & 0o777))
                assert os.stat(Path(path).parent).st_mode & 0o777 == 0o700
            return fd

        monkeypatch.setattr(os, "open", spy)
    ctx = tls.load_pair(chain, key)
    assert isinstance(ctx, ssl.SSLContext)
    assert list(tmp_path.iterdir()) == []  # the private directory is gone
    if not memfd:
        assert [mode for _, mode in seen] == [0o600, 0o600]
        assert all(Path(path).parent.parent == tmp_path for path, _ in seen)


def test_a_pair_that_does_not_belong_together_is_refused() -> None:
    chain, _ = CA.issue("shop.example.com")
    _, other = CA.issue("blog.example.org")
    with pytest.raises(ssl.SSLError):
        tls.load_pair(chain, other)


def test_an_operator_certificate_without_names_is_refused(tmp_path: Path) -> None:
    cert, key = CA.files(tmp_path, "ok", "*.apps.test")
    assert tls.load_files(str(cert), str(key)).names == ("*.apps.test",)
    with pytest.raises(ConfigError, match="cannot use"):
        tls.load_files(str(tmp_path / "none.pem"), str(key))
