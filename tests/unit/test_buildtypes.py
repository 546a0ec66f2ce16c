"""App types: detection from an app's top level, Procfile, start commands, templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinp.build import dockerfiles
from dinp.build import types as buildtypes
from dinp.build.types import cmd_instruction, detect, plan, procfile_web
from dinp.errors import InvalidInput

ELF = b"\x7fELF\x02\x01\x01" + bytes(100)


def app(tmp_path: Path, files: dict[str, str | bytes], executable: tuple[str, ...] = ()) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    for name, content in files.items():
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        if name in executable:
            path.chmod(0o755)
    return root


@pytest.mark.parametrize(
    ("files", "executable", "expected"),
    [
        ({"Dockerfile": "FROM x", "index.html": "", "app.py": ""}, (), "dockerfile"),
        ({"WEB-INF/web.xml": "", "index.jsp": ""}, (), "war"),
        ({"app.war": "", "Procfile": "web: x"}, (), "war"),
        ({"package.json": "{}", "index.html": ""}, (), "node"),
        ({"server.js": ""}, (), "node"),
        ({"requirements.txt": "", "static/": ""}, (), "python"),
        ({"pyproject.toml": ""}, (), "python"),
        ({"wsgi.py": "", "index.html": ""}, (), "python"),
        ({"index.php": ""}, (), "php"),
        ({"server": ELF, "Procfile": "web: ./server"}, ("server",), "binary"),
        ({"index.html": "", "style.css": ""}, (), "static"),
    ],
)
def test_detect(tmp_path: Path, files: dict[str, str | bytes], executable: tuple[str, ...],
                expected: str) -> None:
    assert detect(app(tmp_path, files, executable)) == expected


def test_an_elf_without_the_executable_bit_is_not_a_binary_app(tmp_path: Path) -> None:
    root = app(tmp_path, {"server": ELF, "index.html": ""})
    assert detect(root) == "static"


def test_two_wars_are_not_a_war_app(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot tell"):
        detect(app(tmp_path, {"a.war": "", "b.war": ""}))


def test_undetectable_says_what_it_found_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"README.*--type") as info:
        detect(app(tmp_path, {"README": "", "data.csv": ""}))
    assert info.value.exit_code == 2


def test_procfile_web_line(tmp_path: Path) -> None:
    root = app(tmp_path, {"Procfile": "# processes\nworker: ./w\n\nweb:  ./server --port $PORT \n"})
    assert procfile_web(root) == "./server --port $PORT"


def test_no_procfile(tmp_path: Path) -> None:
    assert procfile_web(app(tmp_path, {})) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("worker: ./w\n", "no `web:` line"),
        ("web ./server\n", "not `name: command`"),
        ("web:\n", "empty"),
    ],
)
def test_bad_procfile(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        procfile_web(app(tmp_path, {"Procfile": text}))


def test_a_procfile_that_is_not_text(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="UTF-8"):
        procfile_web(app(tmp_path, {"Procfile": b"web: \xff\xfe"}))


def test_cmd_flag_wins_over_procfile(tmp_path: Path) -> None:
    root = app(tmp_path, {"app.py": "", "Procfile": "web: python3 other.py"})
    assert plan(root, cmd="python3 -m http.server $PORT").command == \
        "python3 -m http.server $PORT"
    assert plan(root).command == "python3 other.py"


@pytest.mark.parametrize(
    ("files", "command"),
    [
        ({"app.py": ""}, "python3 app.py"),
        ({"main.py": ""}, "python3 main.py"),
        ({"package.json": '{"main": "lib/start.js"}', "lib/start.js": ""}, "node lib/start.js"),
        ({"package.json": "{}", "index.js": ""}, "node index.js"),
        ({"index.php": ""}, 'php -S "0.0.0.0:$PORT" -t /app'),
        ({"public/index.php": "", "composer.json": "", "x.php": ""},
         'php -S "0.0.0.0:$PORT" -t /app/public'),
        ({"index.html": ""}, 'httpd -f -p "$PORT" -h /app'),
        ({"WEB-INF/web.xml": ""}, "dinp-tomcat"),
    ],
)
def test_default_commands(tmp_path: Path, files: dict[str, str], command: str) -> None:
    assert plan(app(tmp_path, files)).command == command


@pytest.mark.parametrize(
    ("files", "executable"),
    [
        ({"server": ELF}, ("server",)),
        ({"requirements.txt": "", "wsgi.py": ""}, ()),
        ({"package.json": "{}"}, ()),
    ],
)
def test_missing_command_where_one_is_needed(tmp_path: Path, files: dict[str, str | bytes],
                                             executable: tuple[str, ...]) -> None:
    with pytest.raises(InvalidInput, match="needs a Procfile with a `web:` line or --cmd") as info:
        plan(app(tmp_path, files, executable))
    assert info.value.field == "cmd"


def test_dockerfile_apps_keep_their_own_command(tmp_path: Path) -> None:
    p = plan(app(tmp_path, {"Dockerfile": "FROM x"}), cmd="ignored")
    assert p.type == "dockerfile" and p.command is None and p.template == ""


def test_given_type_must_exist_and_fit(tmp_path: Path) -> None:
    root = app(tmp_path, {"index.html": ""})
    with pytest.raises(InvalidInput, match="not one of"):
        plan(root, app_type="rust")
    with pytest.raises(InvalidInput, match="needs a Dockerfile"):
        plan(root, app_type="dockerfile")
    assert plan(root, app_type="php").type == "php"


def test_python_template_depends_on_vendoring(tmp_path: Path) -> None:
    vendored = app(tmp_path, {"app.py": "", "requirements.txt": "x", "vendor/x.py": ""})
    assert plan(vendored).template == "python.Dockerfile"
    (vendored / "vendor" / "x.py").unlink()
    (vendored / "vendor").rmdir()
    assert plan(vendored).template == "python-pip.Dockerfile"


@pytest.mark.parametrize("cmd", ["", "   ", "a\nb", "x" * 5000])
def test_bad_commands(tmp_path: Path, cmd: str) -> None:
    with pytest.raises(InvalidInput, match="command"):
        plan(app(tmp_path, {"index.html": ""}), cmd=cmd)


@pytest.mark.parametrize(
    ("command", "script"),
    [
        ("./server --port $PORT", "exec ./server --port $PORT"),
        ("FOO=1 ./server", "FOO=1 ./server"),
        ("./migrate && ./server", "./migrate && ./server"),
        ("exec ./server", "exec ./server"),
        ("./server | tee log", "./server | tee log"),
    ],
)
def test_cmd_instruction_execs_simple_commands(command: str, script: str) -> None:
    assert json.loads(cmd_instruction(command)) == ["/bin/sh", "-c", script]


def test_every_type_has_its_templates() -> None:
    for t in buildtypes.BASE_TYPES:
        text = dockerfiles.read(f"app/{t}.Dockerfile")
        assert "FROM {{ base }}" in text and "CMD {{ cmd }}" in text
        assert "FROM {{ debian }}" in dockerfiles.read(f"base/{t}.Dockerfile")
    for t in ("python", "binary", "static", "node", "php", "war"):  # a build is a copy
        text = dockerfiles.read(f"app/{t}.Dockerfile")
        assert not any(line.startswith("RUN") for line in text.splitlines()), t


def test_render_fills_blanks_and_leaves_shell_variables() -> None:
    text = dockerfiles.render("FROM {{ base }}\nCMD {{cmd}} $PORT ${PORT}", base="b", cmd="c")
    assert text == "FROM b\nCMD c $PORT ${PORT}"
    with pytest.raises(KeyError, match="cmd"):
        dockerfiles.render("CMD {{ cmd }}")
