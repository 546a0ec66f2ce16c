"""Role configuration: defaults, then dinp.toml, then DINP_* env, then flags."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from dinp.config import (
    AgentConfig,
    BuildConfig,
    RouterConfig,
    ServerConfig,
    UpConfig,
    find_config_file,
    load,
    read_section,
    split_hostport,
)
from dinp.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dinp.toml"
    path.write_text(text)
    return path


SAMPLE = """
[server]
domain = "apps.example.com"
node_timeout = 9
api_listen = "0.0.0.0:7070"

[agent]
node_name = "node1"
capacity_mb = 4096

[router]
resync_interval = 5.5
"""


def test_defaults_without_file_env_or_flags() -> None:
    assert load(ServerConfig, "server", env={}) == ServerConfig()
    assert load(AgentConfig, "agent", env={}) == AgentConfig()
    assert load(RouterConfig, "router", env={}) == RouterConfig()


def test_file_section_sets_its_role_only(tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE)

    server = load(ServerConfig, "server", path=path, env={})
    agent = load(AgentConfig, "agent", path=path, env={})
    router = load(RouterConfig, "router", path=path, env={})

    assert server == ServerConfig(
        domain="apps.example.com", node_timeout=9.0, api_listen="0.0.0.0:7070"
    )
    assert isinstance(server.node_timeout, float)  # an integer in TOML, a float key
    assert agent == AgentConfig(node_name="node1", capacity_mb=4096)
    assert router == RouterConfig(resync_interval=5.5)


def test_missing_section_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nnode_name = "n"\n')
    assert load(ServerConfig, "server", path=path, env={}) == ServerConfig()


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE)
    env = {"DINP_DOMAIN": "env.example.com", "DINP_NODE_TIMEOUT": "12.5"}

    server = load(ServerConfig, "server", path=path, env=env)

    assert server.domain == "env.example.com"
    assert server.node_timeout == 12.5
    assert server.api_listen == "0.0.0.0:7070"  # from the file, not overridden


def test_env_values_are_converted_to_the_key_type() -> None:
    agent = load(AgentConfig, "agent", env={"DINP_CAPACITY_MB": "2048"})
    assert agent.capacity_mb == 2048


def test_one_env_variable_sets_a_shared_key_for_every_role() -> None:
    env = {"DINP_REDIS_URL": "redis://cache:6379/1", "DINP_CLUSTER_TOKEN": "s3cret"}

    assert load(ServerConfig, "server", env=env).redis_url == "redis://cache:6379/1"
    assert load(RouterConfig, "router", env=env).redis_url == "redis://cache:6379/1"
    assert load(ServerConfig, "server", env=env).cluster_token == "s3cret"
    assert load(AgentConfig, "agent", env=env).cluster_token == "s3cret"


def test_unknown_env_variables_are_ignored() -> None:
    assert load(ServerConfig, "server", env={"DINP_NO_SUCH_KEY": "x"}) == ServerConfig()


def test_flags_override_file_and_env(tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE)
    env = {"DINP_DOMAIN": "env.example.com", "DINP_NODE_TIMEOUT": "12.5"}
    flags = {"domain": "flag.example.com", "node_timeout": None, "reconcile_interval": 0.25}

    server = load(ServerConfig, "server", path=path, env=env, flags=flags)

    assert server.domain == "flag.example.com"
    assert server.node_timeout == 12.5  # a None flag was not given
    assert server.reconcile_interval == 0.25
    assert server.api_listen == "0.0.0.0:7070"


def test_flag_values_are_converted_to_the_key_type() -> None:
    agent = load(AgentConfig, "agent", env={}, flags={"capacity_mb": "1024"})
    assert agent.capacity_mb == 1024


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINP_DOMAIN", "from-os.example.com")
    assert load(ServerConfig, "server").domain == "from-os.example.com"


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\ndomain = "x"\nnode_timout = 3\n')

    with pytest.raises(ConfigError, match="node_timout") as info:
        load(ServerConfig, "server", path=path, env={})
    assert "node_timeout" in str(info.value)  # the known keys are listed
    assert info.value.exit_code == 2


def test_key_of_another_role_is_unknown_in_this_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[router]\ncapacity_mb = 3\n")
    with pytest.raises(ConfigError, match="capacity_mb"):
        load(RouterConfig, "router", path=path, env={})


@pytest.mark.parametrize(
    "line",
    [
        'node_timeout = "soon"',
        "node_timeout = true",  # a bool is not a number
        "node_timeout = [1]",
        "pids_limit = 0.5",  # an int key: no fraction, and no infinity
        "pids_limit = inf",
    ],
)
def test_bad_type_in_file_is_an_error(tmp_path: Path, line: str) -> None:
    key = line.split(" = ")[0]
    cls, section = (AgentConfig, "agent") if key == "pids_limit" else (ServerConfig, "server")
    path = write(tmp_path, f"[{section}]\n{line}\n")
    with pytest.raises(ConfigError, match=key):
        load(cls, section, path=path, env={})


def test_bad_type_in_env_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"\$DINP_CAPACITY_MB"):
        load(AgentConfig, "agent", env={"DINP_CAPACITY_MB": "lots"})


def test_bad_type_in_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--node-timeout"):
        load(ServerConfig, "server", env={}, flags={"node_timeout": "later"})


@pytest.mark.parametrize(
    ("cls", "section", "line", "says"),
    [
        (ServerConfig, "server", "reconcile_interval = 0",
         "reconcile_interval = 0.0 must be more than 0"),
        (ServerConfig, "server", "database_timeout = -2", "must be more than 0"),
        (ServerConfig, "server", "max_heartbeats_per_second = -1", "must not be negative"),
        (ServerConfig, "server", "acme_renew_after = 1.5", "between 0 and 1"),
        (ServerConfig, "server", "node_timeout = nan", "not a finite number"),
        (ServerConfig, "server", "lease_ttl = inf", "not a finite number"),
        (AgentConfig, "agent", "capacity_mb = -512", "must not be negative"),
        (AgentConfig, "agent", "pids_limit = 0", "must be more than 0"),
        (RouterConfig, "router", "workers = -1", "must not be negative"),
        (RouterConfig, "router", "header_timeout = 0", "must be more than 0"),
        (RouterConfig, "router", "https_port = 70000", "not a port"),
        (UpConfig, "up", "http_port = -80", "not a port"),
        (BuildConfig, "build", "max_builds = 0", "must be more than 0"),
    ],
)
def test_a_number_out_of_its_range_is_an_error(tmp_path: Path, cls: type, section: str,
                                               line: str, says: str) -> None:
    """0 or a negative value would make a loop spin, a timeout cut every call or a limit
    refuse everything: the role does not start, and says which key and where."""
    path = write(tmp_path, f"[{section}]\n{line}\n")
    with pytest.raises(ConfigError, match=says) as caught:
        load(cls, section, path=path, env={})
    assert str(path) in str(caught.value) and line.split(" = ")[0] in str(caught.value)


def test_a_number_out_of_range_names_its_variable_or_flag() -> None:
    with pytest.raises(ConfigError, match=r"\$DINP_HEARTBEAT_INTERVAL: heartbeat_interval"):
        load(AgentConfig, "agent", env={"DINP_HEARTBEAT_INTERVAL": "-1"})
    with pytest.raises(ConfigError, match="--client-timeout: client_timeout"):
        load(RouterConfig, "router", env={}, flags={"client_timeout": 0})


@pytest.mark.parametrize(
    ("cls", "section", "key"),
    [(RouterConfig, "router", "workers"), (RouterConfig, "router", "fail_timeout"),
     (AgentConfig, "agent", "capacity_mb"), (AgentConfig, "agent", "stop_timeout"),
     (ServerConfig, "server", "max_heartbeats_per_second"), (UpConfig, "up", "https_port")],
)
def test_zero_is_taken_where_it_means_something(cls: type, section: str, key: str) -> None:
    """0: one worker per core, never skip a failed instance, the machine's memory, stop at
    once, no heartbeat limit, no HTTPS."""
    assert getattr(load(cls, section, env={f"DINP_{key.upper()}": "0"}), key) == 0


def test_section_that_is_not_a_table_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "server = 3\n")
    with pytest.raises(ConfigError, match="must be a table"):
        read_section(path, "server")


def test_broken_toml_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\n")
    with pytest.raises(ConfigError, match="cannot read"):
        read_section(path, "server")


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_section(tmp_path / "absent.toml", "server")


def test_no_file_means_no_values() -> None:
    assert read_section(None, "server") == {}


def test_explicit_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE)
    assert find_config_file(str(path)) == path


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        find_config_file(str(tmp_path / "absent.toml"))


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, SAMPLE)
    monkeypatch.setenv("DINP_CONFIG", str(path))
    assert find_config_file() == path


def test_config_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DINP_CONFIG", raising=False)
    write(tmp_path, SAMPLE)
    monkeypatch.chdir(tmp_path)
    assert find_config_file() == Path("dinp.toml")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com:80", ("example.com", 80)),
        ("127.0.0.1:7070", ("127.0.0.1", 7070)),
        (":8080", ("0.0.0.0", 8080)),
        ("example.com", ("example.com", 9999)),
        ("[::1]:8081", ("::1", 8081)),
        ("[::]:80", ("::", 80)),
    ],
)
def test_split_hostport(value: str, expected: tuple[str, int]) -> None:
    assert split_hostport(value, default_port=9999) == expected


@pytest.mark.parametrize("value", ["example.com:http", "example.com:", "host:80x"])
def test_split_hostport_rejects_a_bad_port(value: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        split_hostport(value, default_port=80)


def test_example_config_documents_every_key_and_loads() -> None:
    """examples/dinp.toml is the reference of every key: it must stay in step."""
    example = Path(__file__).resolve().parents[2] / "examples" / "dinp.toml"
    data = tomllib.loads(example.read_text())
    for cls, section in [(ServerConfig, "server"), (AgentConfig, "agent"),
                         (RouterConfig, "router"), (UpConfig, "up"), (BuildConfig, "build")]:
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(data[section]) == names, section
        load(cls, section, path=example, env={})


# --- list keys (trusted_proxies) ---------------------------------------------------------


def test_a_list_key_from_a_toml_array(tmp_path: Path) -> None:
    path = write(tmp_path, '[router]\ntrusted_proxies = ["10.0.0.0/8", "2001:db8::/32"]\n')
    router = load(RouterConfig, "router", path=path, env={})
    assert router.trusted_proxies == ("10.0.0.0/8", "2001:db8::/32")


def test_a_list_key_from_comma_separated_env_and_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[router]\ntrusted_proxies = ["10.0.0.0/8"]\n')
    env = {"DINP_TRUSTED_PROXIES": " 192.0.2.1/32 , 198.51.100.0/24,"}

    assert load(RouterConfig, "router", path=path, env=env).trusted_proxies == (
        "192.0.2.1/32", "198.51.100.0/24")
    flags = {"trusted_proxies": "127.0.0.1/32"}
    assert load(RouterConfig, "router", path=path, env=env,
                flags=flags).trusted_proxies == ("127.0.0.1/32",)
    # An empty value is the empty list: how the environment turns a file's list off.
    assert load(RouterConfig, "router", path=path,
                env={"DINP_TRUSTED_PROXIES": ""}).trusted_proxies == ()


def test_a_list_key_defaults_to_empty_and_is_hashable() -> None:
    router = load(RouterConfig, "router", env={})
    assert router.trusted_proxies == ()
    hash(router)  # a frozen config stays a value


def test_a_list_key_given_as_a_toml_string_is_read_like_the_environment(
        tmp_path: Path) -> None:
    path = write(tmp_path, '[router]\ntrusted_proxies = "10.0.0.0/8, 192.0.2.7/32"\n')
    assert load(RouterConfig, "router", path=path, env={}).trusted_proxies == (
        "10.0.0.0/8", "192.0.2.7/32")


@pytest.mark.parametrize("line", ["trusted_proxies = [1, 2]", "trusted_proxies = 3",
                                  "trusted_proxies = true"])
def test_a_list_key_of_the_wrong_type_is_an_error(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, f"[router]\n{line}\n")
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load(RouterConfig, "router", path=path, env={})


def test_tls_keys_from_env() -> None:
    env = {"DINP_HTTPS_LISTEN": "0.0.0.0:8443", "DINP_HTTPS_PORT": "443",
           "DINP_HTTPS_PROXY_PROTOCOL": "yes", "DINP_TLS_CERT_FILE": "/etc/dinp/wild.pem"}
    router = load(RouterConfig, "router", env=env)
    assert (router.https_listen, router.https_port, router.https_proxy_protocol,
            router.http_proxy_protocol, router.tls_cert_file) == (
        "0.0.0.0:8443", 443, True, False, "/etc/dinp/wild.pem")


def test_the_agents_logs_listener_and_state_dir_default_to_where_they_belong(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert AgentConfig(advertise="10.0.0.11").logs_address() == ("10.0.0.11", 7072)
    assert AgentConfig(logs_listen="0.0.0.0:0").logs_address() == ("0.0.0.0", 0)
    with pytest.raises(ConfigError):
        AgentConfig(logs_listen="here:there").logs_address()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert AgentConfig().state_path() == Path("/var/lib/dinp/agent")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert AgentConfig().state_path() == tmp_path / ".local/share/dinp/agent"
    assert AgentConfig(state_dir="~/s").state_path() == tmp_path / "s"
