"""Checks for every value a user can hand dinp. Each raises InvalidInput naming the field.

Kept free of I/O so the API, the CLI and the tests all share the same rules.
"""

from __future__ import annotations

import json
import re
from typing import TypeGuard

from dinp import passwords
from dinp.errors import InvalidInput

# DNS label (RFC 1123), lowercase only; the app name becomes `<app>.<domain>`.
APP_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
RESERVED_NAMES = frozenset(
    {"api", "admin", "www", "dinp", "dashboard", "router", "registry", "static", "status",
     "health", "metrics", "default", "localhost", "mail", "ns", "ns1", "ns2"}
)
NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Reserved for dinp itself: an app cannot override what the platform sets.
RESERVED_ENV = frozenset({"PORT", "DINP_APP", "DINP_INSTANCE", "DINP_RELEASE"})
# docker/distribution reference grammar, simplified but strict enough to reject junk.
IMAGE = re.compile(
    r"^(?:(?P<registry>[a-zA-Z0-9.-]+(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS_MB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}

MIN_MEMORY_MB = 16
MAX_MEMORY_MB = 64 * 1024
MAX_INSTANCES = 100
MAX_ENV_VARS = 200
MAX_ENV_VALUE = 32 * 1024
# All of an app's env together: it is stored in one TEXT column (64 KiB on MySQL).
MAX_ENV_TOTAL = 60 * 1024


def app_name(value: object, *, allow_reserved: bool = False, field: str = "name") -> str:
    """An app name is a lowercase DNS label that is not reserved (names already in use,
    as reported by agents, may be reserved since: `allow_reserved`). Names that look an
    app up (in a URL, a filter) go through here too, so `PRCASE` or `prcase ` is refused
    rather than matched to `prcase` by a database that ignores case."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, "an app name is required")
    if len(value) > 63:
        raise InvalidInput(field, f"{value[:20]!r}… is longer than 63 characters")
    if not APP_NAME.fullmatch(value):
        raise InvalidInput(
            field,
            f"{value!r} is not a valid app name: use lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'",
        )
    if value in RESERVED_NAMES and not allow_reserved:
        raise InvalidInput(field, f"{value!r} is reserved; choose another name")
    return value


# A hostname of two labels or more (RFC 1123), any case (stored lowercase), 4-253 long.
DOMAIN = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]"
                    r"([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
DOMAIN_LENGTH = (4, 253)


def domain(value: object, *, platform: str = "") -> str:
    """A custom domain, lowercased; not one under the platform's own domain (those are
    the apps' own hosts)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("domain", "a domain is required, e.g. www.example.com")
    low, high = DOMAIN_LENGTH
    if not low <= len(value) <= high or not DOMAIN.fullmatch(value):
        raise InvalidInput("domain", f"{value!r} is not a domain name (e.g. www.example.com)")
    name = value.lower()
    if platform and (name == platform or name.endswith("." + platform)):
        raise InvalidInput("domain", f"{name} is under the platform's domain {platform}: "
                           "apps are served there already")
    return name


_CLUSTER_ID = re.compile(r"^[a-z0-9]{1,32}$")


def is_cluster_id(value: object) -> TypeGuard[str]:
    """A cluster id as the server makes them (hex); anything else is not acted on."""
    return isinstance(value, str) and bool(_CLUSTER_ID.fullmatch(value))


def node_name(value: object) -> str:
    if not isinstance(value, str) or not NODE_NAME.fullmatch(value):
        raise InvalidInput(
            "node", f"{value!r} is not a valid node name (lowercase letters, digits, '.', '-')"
        )
    return value


def whole_number(value: object) -> int | None:
    """A JSON number that is whole (`3`, and `3.0`, which JSON does not tell apart), as an
    int; None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def size_mb(value: object, field: str = "memory") -> int:
    """Parse `256m`, `1g`, `512MiB` or a bare number of megabytes into whole megabytes."""
    if isinstance(value, bool):
        raise InvalidInput(field, "expected a size such as 256m or 1g")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.fullmatch(value)
        if m and (m.group(2) or not m.group(3)):
            try:
                return int(float(m.group(1)) * _UNITS_MB[(m.group(2) or "m").lower()])
            except OverflowError:
                pass
        raise InvalidInput(field, f"{value!r} is not a size; use e.g. 256m or 1g")
    raise InvalidInput(field, "expected a size such as 256m or 1g")


def memory_mb(value: object) -> int:
    """An instance's memory: a size between MIN_MEMORY_MB and MAX_MEMORY_MB."""
    mb = size_mb(value)
    if not MIN_MEMORY_MB <= mb <= MAX_MEMORY_MB:
        raise InvalidInput(
            "memory", f"{value!r} is out of range: between {MIN_MEMORY_MB}m and "
            f"{MAX_MEMORY_MB // 1024}g"
        )
    return mb


def int_range_pattern(low: int, high: int) -> str:
    """A regular expression (no anchors) matching exactly the decimal numbers from `low`
    to `high` (0 <= low <= high), written without leading zeros: how the API document
    states a range inside a string such as `256m`."""

    def same_length(a: str, b: str) -> list[str]:
        if a == b:
            return [a]
        if len(a) == 1:
            return [f"[{a}-{b}]"]
        if a[0] == b[0]:
            return [a[0] + p for p in same_length(a[1:], b[1:])]
        rest = len(a) - 1
        first, last = int(a[0]), int(b[0])
        head: list[str] = []
        tail: list[str] = []
        if a[1:] != "0" * rest:
            head = [a[0] + p for p in same_length(a[1:], "9" * rest)]
            first += 1
        if b[1:] != "9" * rest:
            tail = [b[0] + p for p in same_length("0" * rest, b[1:])]
            last -= 1
        middle = ([f"[{first}-{last}][0-9]{{{rest}}}" if first < last
                   else f"{first}[0-9]{{{rest}}}"] if first <= last else [])
        return head + middle + tail

    parts: list[str] = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        a = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        b = min(high, 10 ** digits - 1)
        if a <= b:
            parts += same_length(str(a), str(b))
    return "(?:" + "|".join(parts) + ")"


# The memory of an app on the API: megabytes as a number, or text in whole m or g.
# (People may type more forms, `1.5g` or `512MiB`: the CLI turns them into megabytes.)
MEMORY_TEXT = re.compile(
    rf"^(?:{int_range_pattern(MIN_MEMORY_MB, MAX_MEMORY_MB)}[mM]"
    rf"|{int_range_pattern(-(-MIN_MEMORY_MB // 1024), MAX_MEMORY_MB // 1024)}[gG])$"
)


def memory_field(value: object) -> int:
    """The API's `memory`: whole megabytes in range, or `<n>m` / `<n>g` in range."""
    if isinstance(value, str):
        if not MEMORY_TEXT.fullmatch(value):
            raise InvalidInput("memory", f"{value!r} is not a memory size from "
                               f"{MIN_MEMORY_MB}m to {MAX_MEMORY_MB // 1024}g, such as "
                               "256m or 2g")
        return memory_mb(value)
    mb = whole_number(value)
    if mb is None:
        raise InvalidInput("memory", "expected megabytes (a whole number) or e.g. 256m")
    return memory_mb(mb)


def instances(value: object) -> int:
    count = whole_number(value)
    if count is None:
        raise InvalidInput("instances", f"{value!r} is not a whole number")
    if not 0 <= count <= MAX_INSTANCES:
        raise InvalidInput("instances", f"{count} is out of range: 0 to {MAX_INSTANCES}")
    return count


MAX_DEPLOY_TIMEOUT = 3600


def surge(value: object) -> int:
    """New instances a rollout starts at once; 0 means a quarter of the count."""
    number = whole_number(value)
    if number is None or not 0 <= number <= MAX_INSTANCES:
        raise InvalidInput("surge", f"{value!r} is not a whole number from 0 to "
                           f"{MAX_INSTANCES} (0: a quarter of the instances)")
    return number


def _seconds(field: str, value: object, low: float, high: float) -> float:
    """A number of seconds from `low` to `high` (not a bool, which is an int in Python)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            low <= value <= high):
        raise InvalidInput(field, f"{value!r} is not a number of seconds from {low:g} "
                           f"to {high:g}")
    return float(value)


def deploy_timeout(value: object) -> float:
    """Seconds a release may take to come up before its rollout is halted."""
    return _seconds("deploy_timeout", value, 1, MAX_DEPLOY_TIMEOUT)


MAX_STOP_GRACE = 3600


def stop_grace(value: object) -> float:
    """Seconds an instance has between SIGTERM and SIGKILL to finish its requests."""
    return _seconds("stop_grace", value, 0, MAX_STOP_GRACE)


# A year or two of HSTS is what browsers' preload lists ask; more is never needed.
MAX_HSTS = 2 * 366 * 86400


def https_redirect(value: object) -> bool:
    """Whether plain-HTTP requests to the app are redirected (308) to https."""
    if not isinstance(value, bool):
        raise InvalidInput("https_redirect", f"{value!r} is not true or false")
    return value


def hsts(value: object) -> int:
    """The max-age of the app's Strict-Transport-Security header, in seconds (0: none)."""
    number = whole_number(value)
    if number is None or not 0 <= number <= MAX_HSTS:
        raise InvalidInput("hsts", f"{value!r} is not a whole number of seconds from 0 to "
                           f"{MAX_HSTS} (0: no HSTS header)")
    return number


def port(value: object, field: str = "port") -> int:
    number = whole_number(value)
    if number is None or not 1 <= number <= 65535:
        raise InvalidInput(field, f"{value!r} is not a TCP port (1-65535)")
    return number


def image(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput("image", "an image reference is required, e.g. registry:5000/app:1")
    if len(value) > 255 or not IMAGE.fullmatch(value):
        raise InvalidInput("image", f"{value!r} is not a valid image reference")
    return value


def env(value: object) -> dict[str, str]:
    """Env vars: a mapping of valid names to strings; platform names are refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("env", "expected an object of NAME: value")
    if len(value) > MAX_ENV_VARS:
        raise InvalidInput("env", f"too many variables (at most {MAX_ENV_VARS})")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not ENV_KEY.fullmatch(k):
            raise InvalidInput("env", f"{k!r} is not a valid variable name")
        if k in RESERVED_ENV:
            raise InvalidInput("env", f"{k} is set by dinp and cannot be overridden")
        if not isinstance(v, str):
            raise InvalidInput("env", f"the value of {k} must be a string")
        if len(v) > MAX_ENV_VALUE or "\x00" in v:
            raise InvalidInput("env", f"the value of {k} is too long or contains NUL")
        out[k] = v
    if len(json.dumps(out)) > MAX_ENV_TOTAL:  # as stored: JSON escapes grow the text
        raise InvalidInput("env", f"the variables are too large together (at most "
                           f"{MAX_ENV_TOTAL // 1024} KiB)")
    return out


def env_pairs(pairs: list[str]) -> dict[str, str]:
    """Parse CLI `K=V` pairs into a mapping, then check it like any other env."""
    raw: dict[str, str] = {}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        if not sep:
            raise InvalidInput("env", f"{pair!r} is not KEY=VALUE")
        raw[key] = val
    return env(raw)


# Printable ASCII without spaces: what a URL path holds once percent-encoded.
HEALTH_PATH = re.compile(r"^/[!-~]{0,199}$")


def health_path(value: object, *, stored: bool = False) -> str | None:
    """A health path as the API takes it. `stored`: one read back from the server (an
    agent's assignment), checked by the older, looser rule it may have been created
    under (no spaces), so one app's odd path never makes a node refuse its assignment."""
    if value is None or value == "":
        return None
    if stored and isinstance(value, str) and value.startswith("/") and len(value) <= 200 \
            and not any(c.isspace() for c in value):
        return value
    if not isinstance(value, str) or not HEALTH_PATH.fullmatch(value):
        raise InvalidInput("health_path", f"{value!r} must be a URL path starting with '/'"
                           " (printable ASCII, no spaces, at most 200 characters)")
    return value


# -- accounts -----------------------------------------------------------------------------

# User names: lowercase, may be an e-mail address.
USER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._@+-]{0,98}[a-z0-9])?$")
TEAM_NAME = APP_NAME
TOKEN_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._ -]{0,61}[A-Za-z0-9])?$")
MAX_TOKEN_SECONDS = 5 * 365 * 86400  # five years
MAX_QUOTA_INSTANCES = 1_000_000
MAX_QUOTA_MEMORY_MB = 1 << 30  # a petabyte


def user_name(value: object, field: str = "user") -> str:
    if not isinstance(value, str) or not USER_NAME.fullmatch(value):
        raise InvalidInput(field, f"{value!r} is not a valid user name (lowercase letters, "
                           "digits and . _ @ + -, at most 100; e.g. alice or "
                           "alice@example.com)")
    return value


def team_name(value: object, field: str = "team") -> str:
    if not isinstance(value, str) or not TEAM_NAME.fullmatch(value):
        raise InvalidInput(field, f"{value!r} is not a valid team name (a lowercase DNS "
                           "label: letters, digits, '-', at most 63)")
    return value


def token_name(value: object) -> str:
    if not isinstance(value, str) or not TOKEN_NAME.fullmatch(value):
        raise InvalidInput("name", f"{value!r} is not a valid token name (letters, digits, "
                           "space . _ -, at most 63)")
    return value


def password(value: object) -> str:
    low, high = passwords.MIN_LENGTH, passwords.MAX_LENGTH
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise InvalidInput("password", f"expected {low} to {high} characters")
    if "\x00" in value:
        raise InvalidInput("password", "must not contain NUL")
    return value


def seconds(value: object, field: str, *, low: float = 1,
            high: float = MAX_TOKEN_SECONDS) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            low <= value <= high):
        raise InvalidInput(field, f"{value!r} is not a number of seconds from {low:g} to "
                           f"{high:g}")
    return float(value)


_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdwy]?)\s*$")
_DURATION_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400,
                     "y": 365 * 86400}


def duration(value: str, field: str = "expires") -> float:
    """`90d`, `12h`, `1y`, `3600` (seconds) as seconds: for a person typing at the CLI."""
    m = _DURATION.fullmatch(value.lower())
    if m is None:
        raise InvalidInput(field, f"{value!r} is not a duration; use e.g. 30d, 12h or 1y")
    return seconds(int(m.group(1)) * _DURATION_SECONDS[m.group(2)], field)


QUOTA_TEXT = re.compile(
    rf"^(?:{int_range_pattern(0, MAX_QUOTA_MEMORY_MB)}[mM]"
    rf"|{int_range_pattern(0, MAX_QUOTA_MEMORY_MB // 1024)}[gG])$")


def quota_memory(value: object) -> int | None:
    """A team's memory quota: megabytes, or a text such as `64g`; None for no limit."""
    if value is None:
        return None
    if isinstance(value, str) and QUOTA_TEXT.fullmatch(value):
        return int(value[:-1]) * (1024 if value[-1] in "gG" else 1)
    mb = whole_number(value)
    if mb is None or not 0 <= mb <= MAX_QUOTA_MEMORY_MB:
        raise InvalidInput("memory", f"{value!r} is not a size from 0m to "
                           f"{MAX_QUOTA_MEMORY_MB // 1024}g (e.g. 64g), or null")
    return mb


def quota_instances(value: object) -> int | None:
    if value is None:
        return None
    count = whole_number(value)
    if count is None or not 0 <= count <= MAX_QUOTA_INSTANCES:
        raise InvalidInput("instances", f"{value!r} is not a whole number from 0 to "
                           f"{MAX_QUOTA_INSTANCES}")
    return count
