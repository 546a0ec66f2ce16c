"""One error protocol: a DinpError carries its exit code and HTTP status, and an API
answer turns back into the same error on the client."""

from __future__ import annotations

import pytest

from dinp import errors
from dinp.errors import InvalidInput


@pytest.mark.parametrize("error", [
    InvalidInput("memory", "'lots' is not a size", hint="use e.g. 256m"),
    errors.NotFound("no app named 'web'", hint="`dinp app list` shows the apps."),
    errors.Conflict("an app named 'web' already exists"),
    errors.Unauthorized("invalid API token"),
    errors.Unavailable("database is unreachable", hint="check it"),
    errors.WrongCluster("another cluster", cluster="0123456789abcdef"),
    errors.NodeTaken("node n1 is run by another agent", hint="stop it"),
    errors.Timeout("web is not serving after 8 s"),
])
def test_an_error_survives_the_api_round_trip(error: errors.DinpError) -> None:
    back = errors.DinpError.from_json(error.http_status, error.to_json())
    assert type(back) is type(error)
    assert (back.message, back.hint, back.exit_code) == (error.message, error.hint,
                                                          error.exit_code)
    if isinstance(error, InvalidInput):
        assert isinstance(back, InvalidInput)
        assert (back.field, back.reason) == (error.field, error.reason)
    if isinstance(error, errors.WrongCluster):
        assert isinstance(back, errors.WrongCluster) and back.cluster == error.cluster


def test_an_answer_that_is_not_ours_still_becomes_an_error() -> None:
    back = errors.DinpError.from_json(502, "<html>Bad Gateway</html>")
    assert type(back) is errors.DinpError and back.message == "HTTP 502"
    assert errors.DinpError.from_json(400, {}).field == "request"  # type: ignore[attr-defined]
