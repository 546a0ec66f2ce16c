"""docs/cli.md, written from the typer app itself so the reference cannot drift.

`make docs` writes it (`markdown(dinp.cli.cli)`); a test fails when the committed page
differs from what this module writes.
"""

from __future__ import annotations

from typing import Any

import typer

HEADER = """# CLI reference

Every `dinp` command with its arguments and options, as `dinp COMMAND --help` prints
them. This page is generated from the code (`make docs`); do not edit it by hand.
"""


# Typer carries its own copy of click: parameters and commands are told apart by what
# they have, not by click's classes.


def _text(help_text: str | None) -> str:
    """Help text fit for a table cell (rich's `\\[` escapes undone)."""
    return (help_text or "").replace("\\[", "[").replace("|", "\\|").replace("\n", " ")


def _param_row(param: Any) -> str | None:
    if param.param_type_name == "option":
        if param.hidden:
            return None
        names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        default = ""
        if not param.is_flag and param.default not in (None, "", (), []) \
                and not callable(param.default):
            default = f" (default: `{param.default}`)"
        return f"| {names} | {_text(param.help)}{default} |"
    if param.param_type_name == "argument":
        name = param.metavar or param.name.upper()
        optional = "" if param.required else " (optional)"
        return f"| `{name}` | {_text(getattr(param, 'help', None))}{optional} |"
    return None


def _command(path: str, command: Any, out: list[str]) -> None:
    if hasattr(command, "commands"):
        children = sorted(command.commands.items())
        visible = [(n, c) for n, c in children if not c.hidden]
        hidden_default = [c for _, c in children if c.hidden]
        if path != "dinp":
            out.append(f"## `{path}`\n")
            out.append(f"{(command.help or '').strip()}\n")
            for default in hidden_default:  # `dinp build PATH`: the group's own form
                _options(default, out)
        for name, child in visible:
            _command(f"{path} {name}", child, out)
        return
    out.append(f"{'###' if path.count(' ') > 1 else '##'} `{path}`\n")
    out.append(f"{(command.help or '').strip()}\n")
    _options(command, out)


def _options(command: Any, out: list[str]) -> None:
    rows = [row for p in command.params if (row := _param_row(p))]
    rows.append("| `--help` | Show the help and exit. |")
    out.append("| argument or option | meaning |\n|---|---|")
    out.extend(rows)
    out.append("")


def markdown(app: typer.Typer) -> str:
    """The whole reference for `app`, as Markdown."""
    root = typer.main.get_command(app)
    out = [HEADER, "## `dinp`\n", f"{(root.help or '').strip()}\n",
           "Options that go before any command:\n"]
    _options(root, out)
    _command("dinp", root, out)
    return "\n".join(out).rstrip() + "\n"
