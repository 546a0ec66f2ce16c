"""The docs say what the code does: every config key and every CLI command is in docs/,
the CLI reference is the one the code writes, and the docs stand alone (no link to a file
outside the repository)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dinp import config
from dinp.cli import cli
from dinp.commands import reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
ROLES = [config.ServerConfig, config.AgentConfig, config.RouterConfig, config.UpConfig,
         config.BuildConfig]


def docs_text() -> str:
    return "\n".join(p.read_text() for p in DOCS)


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.__name__)
def test_every_config_key_is_documented(role: type) -> None:
    text = docs_text()
    missing = [f.name for f in dataclasses.fields(role) if f"`{f.name}`" not in text]
    assert missing == [], f"{role.__name__} keys not in docs/: {missing}"


def test_the_cli_reference_is_the_one_the_code_writes() -> None:
    written = (ROOT / "docs" / "cli.md").read_text()
    assert written == reference.markdown(cli), "docs/cli.md is stale: run `make docs`"


def test_every_cli_command_is_in_the_reference() -> None:
    import typer

    written = (ROOT / "docs" / "cli.md").read_text()
    root = typer.main.get_command(cli)
    paths = []

    def walk(path: str, command: object) -> None:
        for name, child in getattr(command, "commands", {}).items():
            if not getattr(child, "hidden", False):
                paths.append(f"{path} {name}")
                walk(f"{path} {name}", child)

    walk("dinp", root)
    assert len(paths) > 10
    assert [p for p in paths if f"`{p}`" not in written] == []


def test_the_docs_stand_alone() -> None:
    for page in [*DOCS, ROOT / "README.md"]:
        text = page.read_text()
        for word in ("DESIGN.md", "MACHINE-NOTES", "STYLE.md", "../shared"):
            assert word not in text, f"{page.name} points at {word}, which users do not have"
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{page.name}: {target} leaves the repo"
            assert resolved.exists(), f"{page.name}: {target} does not exist"
