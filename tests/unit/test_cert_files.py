"""The operator's certificate files, watched (router/cert_files.py): when a change is
loaded, what happens to files that do not load (also when they come back), a pair handed
over by a supervisor, and the expiry warnings. Each look is made by hand here, on real
files (the watcher's interval is the integration test's business)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from dinp.errors import ConfigError
from dinp.router import cert_files
from dinp.router.tls import Certificate
from tests.support import CertAuthority

CA = CertAuthority.make()


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


@contextlib.contextmanager
def watching(cert: Path, key: Path) -> Iterator[tuple[cert_files.CertFiles, list[Certificate]]]:
    """The files loaded and watched (on the running loop), and what is served from them."""
    files = cert_files.CertFiles(str(cert), str(key))
    served: list[Certificate] = []
    files.start(served.append)
    try:
        yield files, served
    finally:
        files.stop()


async def settle(files: cert_files.CertFiles) -> None:
    """One look (the watcher's own come every CHECK_INTERVAL, longer than a test)."""
    await files.look()


def test_a_change_is_loaded_once_it_holds_still(tmp_path: Path) -> None:
    cert, key = CA.files(tmp_path, "site", "*.apps.test")

    async def scenario() -> None:
        with watching(cert, key) as (files, served):
            first = files.certificate
            await settle(files)  # nothing changed
            chain, pem = CA.issue("*.apps.test", "apps.test")
            cert.write_text(chain)
            await settle(files)  # the certificate changed: wait for it to hold still
            key.write_text(pem)
            await settle(files)  # its key too: still moving
            assert served == [] and files.certificate is first
            await settle(files)  # held still: loaded, and handed on
            assert [c.names for c in served] == [("*.apps.test", "apps.test")]
            assert files.certificate is served[0] and not files.stale
            await settle(files)
            assert len(served) == 1  # loaded once

    run(scenario())


def test_files_that_do_not_load_leave_the_certificate_in_use(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = CA.files(tmp_path, "site", "*.apps.test")
    original = cert.read_text(), key.read_text()

    async def scenario() -> None:
        with watching(cert, key) as (files, served):
            first = files.certificate
            _, other_key = CA.issue("*.apps.test")
            key.write_text(other_key)  # the key of another certificate
            await settle(files)
            await settle(files)
            assert files.stale and files.certificate is first and served == []
            refusals = [r for r in caplog.records if "serves on" in r.getMessage()]
            message = refusals[0].getMessage() if len(refusals) == 1 else str(refusals)
            assert "the key is not the certificate's" in message, message
            assert "BEGIN" not in message
            await settle(files)
            await settle(files)  # the same files: not tried, nor said, again
            assert len([r for r in caplog.records if "serves on" in r.getMessage()]) == 1
            os.remove(key)  # gone: another state, said once more
            await settle(files)
            await settle(files)
            assert files.stale and served == []
            # The pair in use back: nothing to load, and no longer stale.
            cert.write_text(original[0])
            key.write_text(original[1])
            await settle(files)
            assert not files.stale and served == [] and files.certificate is first
            os.remove(key)  # the files refused last, again: stale at once, said no more
            await settle(files)
            assert files.stale and served == []
            assert len([r for r in caplog.records if "serves on" in r.getMessage()]) == 2
            key.write_text(original[1])
            await settle(files)
            assert not files.stale
            # A pair that loads after files that did not: served.
            chain, pem = CA.issue("*.apps.test", "apps.test")
            key.write_text(other_key)
            await settle(files)
            await settle(files)
            assert files.stale
            cert.write_text(chain)
            key.write_text(pem)
            await settle(files)
            await settle(files)
            assert not files.stale and [c.names for c in served] == [("*.apps.test",
                                                                       "apps.test")]

    run(scenario())


def test_a_pair_handed_over_serves_while_the_files_do_not_load(tmp_path: Path) -> None:
    """A worker its supervisor restarts while the files are broken gets the pair in use."""
    cert, key = CA.files(tmp_path, "site", "*.apps.test")
    supervisor = cert_files.CertFiles(str(cert), str(key), tell=False)
    key.write_text("broken")

    async def scenario() -> None:
        worker = cert_files.CertFiles(str(cert), str(key), texts=supervisor.texts)
        assert worker.certificate.names == ("*.apps.test",)
        await settle(worker)
        await settle(worker)
        assert worker.stale and worker.certificate.names == ("*.apps.test",)
        chain, pem = CA.issue("*.apps.test", "apps.test")
        cert.write_text(chain)
        key.write_text(pem)
        await settle(worker)
        await settle(worker)
        assert not worker.stale and worker.certificate.names == ("*.apps.test", "apps.test")
        assert worker.texts == (chain, pem)

    run(scenario())
    with pytest.raises(ConfigError):  # without the pair, the files must load
        cert_files.CertFiles(str(cert), str(tmp_path / "none.key"))


def test_the_key_may_be_in_the_certificate_file(tmp_path: Path) -> None:
    chain, pem = CA.issue("*.apps.test")
    both = tmp_path / "both.pem"
    both.write_text(chain + pem)
    files = cert_files.CertFiles(str(both), "")
    assert files.certificate.names == ("*.apps.test",) and files.texts == (chain + pem,) * 2


def test_the_files_must_load_at_start(tmp_path: Path) -> None:
    cert, key = CA.files(tmp_path, "site", "*.apps.test")
    key.write_text("not a key")
    with pytest.raises(ConfigError, match=r"cannot use the TLS certificate .*: not PEM "
                       r"that OpenSSL can read"):
        cert_files.CertFiles(str(cert), str(key))


def test_expiry_warnings(tmp_path: Path) -> None:
    now = datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC)
    ctx = cert_files.CertFiles(*map(str, CA.files(tmp_path, "s", "a.test"))).certificate.context

    def warning(days: float | None) -> str | None:
        expires = None if days is None else now + datetime.timedelta(days=days)
        return cert_files.expiry_warning(Certificate(ctx, ("a.test",), expires), "site.pem",
                                         now)

    assert warning(None) is None
    assert warning(30) is None
    assert warning(10) == "the TLS certificate site.pem expires on 2026-12-13: renew it"
    assert warning(-1) == ("the TLS certificate site.pem expired on 2026-12-02: clients "
                           "refuse it")
