"""The domains table of `dinp app show` and `dinp app domains list`: a CA's error text
and a domain are printed as they are, never read as Rich markup."""

from __future__ import annotations

from typing import Any

from dinp import output
from dinp.commands.domain_table import print_domains


def row(summary: str, attention: str) -> dict[str, Any]:
    return {"domain": "shop.example.com", "created_at": 0.0, "tls": True,
            "certificate": {"state": "failed", "not_after": None, "summary": summary,
                            "attention": attention}}


def test_a_cas_error_with_brackets_is_printed_as_it_is() -> None:
    said = "urn:ietf:params:acme:error:dns [/] no [bold]record[/bold]"
    with output.console.capture() as captured:
        print_domains([row(f"failed 1 time(s): {said}", f"no certificate: {said}")])
    text = " ".join(captured.get().split())
    assert "[/]" in text and "[bold]record[/bold]" in text
