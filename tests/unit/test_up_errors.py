"""`dinp up`'s refusals name what a `dinp up` user changes (its flags and [up]), not the
router's or the server's keys (https_listen, [server]) it is built from."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from dinp.config import UpConfig
from dinp.errors import DinpError
from dinp.roles import up


def refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **conf: Any) -> DinpError:
    monkeypatch.setattr(up, "DockerRuntime", lambda **_: object())  # never reached
    with pytest.raises(DinpError) as caught:
        asyncio.run(up.serve(UpConfig(state_dir=str(tmp_path), http_port=0, admin_port=0,
                                      **conf)))
    return caught.value


def test_a_taken_https_port_names_the_https_port_flag(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said = str(refusal(tmp_path, monkeypatch, https_port=port))
    assert f"cannot listen on 127.0.0.1:{port}" in said
    assert "--https-port (https_port in [up])" in said and "https_listen" not in said


def test_a_bad_acme_setting_names_up_and_its_flag(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said = str(refusal(tmp_path, monkeypatch, acme_ca_bundle=str(tmp_path / "nope.pem")))
    assert "--acme-ca-bundle, [up] in dinp.toml" in said and "[server]" not in said


def test_a_bad_certificate_file_names_the_tls_flags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.pem").write_text("not PEM")
    said = str(refusal(tmp_path, monkeypatch, https_port=1,
                       tls_cert_file=str(tmp_path / "c.pem")))
    assert "cannot use the TLS certificate" in said
    assert "--tls-cert" in said and "tls_key_file its" not in said


def test_a_second_dinp_up_on_one_state_directory_is_refused_before_it_touches_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It would share the SQLite database and could replace the running one's local CA:
    refused at once, naming the running one's pid; free again once that one stops."""
    import os

    held = up.lock_state(tmp_path)
    try:
        before = sorted(p.name for p in tmp_path.iterdir())
        error = refusal(tmp_path, monkeypatch, https_port=1)
        assert f"another dinp up (pid {os.getpid()})" in error.message
        assert "--state-dir" in (error.hint or "")
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made
    finally:
        os.close(held)
    os.close(up.lock_state(tmp_path))  # the first one stopped: free
