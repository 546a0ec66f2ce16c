"""Reading the engine's build and push streams: the log a person sees, the failing step,
the image id and the digest. The streams are what Docker 20.10's legacy builder sends."""

from __future__ import annotations

from typing import Any

import pytest

from dinp.build.engine import _follow, _follow_build, registry_reachable
from dinp.docker_engine import split_ref
from dinp.errors import BuildFailed, Unavailable

OK_BUILD: list[dict[str, Any]] = [
    {"stream": "Step 1/3 : FROM 127.0.0.1:5000/dinp/python:bookworm"},
    {"stream": "\n"},
    {"stream": " ---> 5c0fbb424758\n"},
    {"stream": "Step 2/3 : COPY app/ /app/\n"},
    {"stream": " ---> 9a1b\nStep 3/3 : LABEL a=\"b\"\n ---> Running in 80\n"},
    {"stream": "Removing intermediate container 80\n ---> 2fea251dad62\n"},
    {"aux": {"ID": "sha256:2fea251dad62aaaa"}},
    {"stream": "Successfully built 2fea251dad62\n"},
]


def test_a_build_log_is_passed_on_line_by_line_and_gives_the_image_id() -> None:
    lines: list[str] = []
    assert _follow_build(OK_BUILD, lines.append) == "sha256:2fea251dad62aaaa"
    assert lines[0] == "Step 1/3 : FROM 127.0.0.1:5000/dinp/python:bookworm"
    assert "Step 3/3 : LABEL a=\"b\"" in lines
    assert lines[-1] == "Successfully built 2fea251dad62"


def test_the_id_from_the_last_line_when_there_is_no_aux() -> None:
    stream = [c for c in OK_BUILD if "aux" not in c]
    assert _follow_build(stream, lambda _: None) == "2fea251dad62"


def test_a_failed_step_is_named_with_its_output_and_without_colours() -> None:
    stream = [
        {"stream": "Step 1/4 : FROM x\n ---> 1\n"},
        {"stream": "Step 2/4 : RUN make\n"},
        {"stream": " ---> Running in 7f\n"},
        {"stream": "\x1b[91mcc: error: no such file\n\x1b[0m"},
        {"stream": "compilation terminated"},
        {"errorDetail": {"code": 2, "message": "The command '/bin/sh -c make' returned a "
                         "non-zero code: 2"},
         "error": "The command '/bin/sh -c make' returned a non-zero code: 2"},
    ]
    with pytest.raises(BuildFailed) as info:
        _follow_build(stream, lambda _: None)
    text = str(info.value)
    assert text.startswith("build failed at step 2/4: RUN make\n")
    assert "returned a non-zero code: 2" in text
    assert "  | cc: error: no such file" in text and "\x1b" not in text
    assert "  | compilation terminated" in text  # the line with no newline yet
    assert "Running in" not in text and "FROM x" not in text.split("\n", 1)[1]
    assert info.value.exit_code == 8


def test_a_missing_base_image_hints_at_base_images() -> None:
    stream = [{"stream": "Step 1/2 : FROM reg/dinp/war:bookworm\n"},
              {"error": "manifest for reg/dinp/war:bookworm not found: manifest unknown"}]
    with pytest.raises(BuildFailed) as info:
        _follow_build(stream, lambda _: None)
    assert "dinp build base-images" in (info.value.hint or "")


def test_a_build_without_an_image_id_fails() -> None:
    with pytest.raises(BuildFailed, match="without an image id"):
        _follow_build([{"stream": "Step 1/1 : FROM x\n"}], lambda _: None)


def test_push_progress_is_shown_once_per_layer_and_state() -> None:
    lines: list[str] = []
    stream = [
        {"status": "The push refers to repository [r/a]"},
        {"status": "Preparing", "progressDetail": {}, "id": "l1"},
        {"status": "Pushing", "progressDetail": {"current": 1, "total": 9}, "id": "l1"},
        {"status": "Pushing", "progressDetail": {"current": 5, "total": 9}, "id": "l1"},
        {"status": "Pushed", "progressDetail": {}, "id": "l1"},
        {"status": "1: digest: sha256:abc size: 950"},
        {"progressDetail": {}, "aux": {"Tag": "1", "Digest": "sha256:abc", "Size": 950}},
    ]
    assert _follow(stream, lines.append, action="push r/a:1")["Digest"] == "sha256:abc"
    assert lines == ["The push refers to repository [r/a]", "l1: Preparing", "l1: Pushed",
                     "1: digest: sha256:abc size: 950"]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ('Get "http://127.0.0.1:5999/v2/": dial tcp 127.0.0.1:5999: connect: connection '
         "refused", Unavailable),
        ("received unexpected HTTP status: 500 Internal Server Error", BuildFailed),
    ],
)
def test_push_errors(message: str, error: type[Exception]) -> None:
    with pytest.raises(error, match="push r/a:1"):
        _follow([{"errorDetail": {"message": message}, "error": message}], lambda _: None,
                action="push r/a:1")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("reg:5000/app:1", ("reg:5000/app", "1")), ("reg:5000/app", ("reg:5000/app", "latest")),
     ("app:v1.2", ("app", "v1.2")), ("reg/dinp/war:bookworm", ("reg/dinp/war", "bookworm"))],
)
def test_split_ref(ref: str, expected: tuple[str, str]) -> None:
    assert split_ref(ref) == expected


def test_an_unreachable_registry_is_found_before_any_work() -> None:
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:1 is unreachable"):
        registry_reachable("127.0.0.1:1", timeout=1)
