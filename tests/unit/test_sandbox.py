"""The sandbox rules (`dinp.sandbox`), driven directly: what an image says and the node's
policy in, Docker's options out. The real engine enforcing them is tested in
tests/integration/test_sandbox_docker.py."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dinp import const, sandbox
from dinp.app_network import _created
from dinp.build import dockerfiles
from dinp.config import AgentConfig
from dinp.errors import ConfigError, InvalidInput
from dinp.sandbox import ImageFacts, Policy, confine, resolve_user

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
toor:x:0:0:another root:/root:/bin/sh
tomcat:x:997:996::/var/lib/tomcat:/usr/sbin/nologin
app:x:1000:1000::/home/app:/bin/sh
broken line
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = """root:x:0:
staff:x:50:app
tomcat:x:996:
"""


def image(user: str = "", labels: dict[str, str] | None = None,
          volumes: tuple[str, ...] = ()) -> ImageFacts:
    uid, gid = resolve_user(user, passwd=PASSWD, group=GROUP)
    return ImageFacts(id="sha256:1", user=user, uid=uid, gid=gid, labels=labels or {},
                      volumes=volumes)


# -- the options Docker gets --------------------------------------------------------------

def test_a_root_image_gets_every_rule() -> None:
    box = confine(image(), memory_mb=256, policy=Policy(), network="net-id")
    tmp = "rw,nosuid,nodev,exec,size=64m,mode=1777,uid=65534,gid=65534"
    assert box.docker_options() == {
        "user": "65534:65534", "privileged": False, "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"], "read_only": True, "tmpfs": {"/tmp": tmp},
        "pids_limit": 512, "mem_limit": "256m", "memswap_limit": "256m",
        "cpu_shares": 256, "network": "net-id", "ipc_mode": "private", "init": True,
    }


def test_the_policy_sets_user_pids_tmp_size_and_shares() -> None:
    policy = Policy(network="apps", user="4000:4001", pids_limit=64, tmp_size_mb=8,
                    cpu_shares_per_gb=2048)
    box = confine(image(labels={const.LABEL_WRITABLE: "/data"}), memory_mb=1024,
                  policy=policy, network="x")
    tmp = "rw,nosuid,nodev,exec,size=8m,mode=1777,uid=4000,gid=4001"
    assert (box.user, box.pids_limit, box.cpu_shares) == ("4000:4001", 64, 2048)
    assert box.tmpfs == {"/tmp": tmp, "/data": tmp}


def test_policy_of_the_agent_config() -> None:
    assert Policy.of(AgentConfig()) == Policy()
    conf = AgentConfig(app_network="n1", app_user="7:8", pids_limit=99, tmp_size_mb=3,
                       cpu_shares_per_gb=0)
    assert Policy.of(conf) == Policy(network="n1", user="7:8", pids_limit=99,
                                     tmp_size_mb=3, cpu_shares_per_gb=0)


@pytest.mark.parametrize(("field", "value"), [
    ("network", ""), ("network", "host"), ("network", "bridge"), ("network", "none"),
    ("network", "has space"), ("network", "-dash"), ("network", "x" * 64),
    ("user", "0:0"), ("user", "1000:0"), ("user", "0:1000"), ("user", "nobody"),
    ("user", "1000"), ("user", "-1:5"), ("pids_limit", 0), ("pids_limit", 7),
    ("pids_limit", -1), ("tmp_size_mb", 0), ("cpu_shares_per_gb", -1),
    ("cpu_shares_per_gb", 262145),
])
def test_a_policy_that_would_not_confine_is_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError):
        Policy(**{field: value})  # type: ignore[arg-type]


# -- the user --------------------------------------------------------------------------------

@pytest.mark.parametrize("user", ["", "root", "0", "0:0", "root:staff", "0:1000", "toor",
                                  "toor:staff", "ghost", "ghost:staff"])
def test_root_and_unknown_users_run_as_the_policy_user(user: str) -> None:
    box = confine(image(user), memory_mb=64, policy=Policy(), network="n")
    assert (box.user, box.uid, box.gid) == ("65534:65534", 65534, 65534)


@pytest.mark.parametrize(("user", "uid", "gid"), [
    ("tomcat", 997, 996), ("app", 1000, 1000), ("app:staff", 1000, 50),
    ("1000:1000", 1000, 1000), ("1000:staff", 1000, 50), ("65534:65534", 65534, 65534),
    ("daemon", 1, 1), ("4242:4242", 4242, 4242), ("app:root", 1000, 0),
])
def test_a_non_root_user_is_kept_and_owns_the_tmpfs(user: str, uid: int, gid: int) -> None:
    box = confine(image(user, labels={const.LABEL_WRITABLE: "/var/x"}), memory_mb=64,
                  policy=Policy(), network="n")
    assert (box.user, box.uid, box.gid) == (user, uid, gid)
    assert all(f",uid={uid},gid={gid}" in options for options in box.tmpfs.values())


def test_a_number_without_a_group_takes_the_passwd_gid_as_the_engine_does() -> None:
    assert resolve_user("1000", passwd=PASSWD) == (1000, 1000)
    assert resolve_user("1234", passwd=PASSWD) == (1234, 0)  # not in passwd: gid 0
    assert resolve_user("1234") == (1234, None)  # passwd not read: unknown
    box = confine(ImageFacts(id="i", user="1234", uid=1234, gid=None), memory_mb=64,
                  policy=Policy(), network="n")
    assert box.user == "1234" and box.tmpfs["/tmp"].endswith("mode=1777,uid=1234")


@pytest.mark.parametrize(("user", "needed"), [
    ("", False), ("root", False), ("0", False), ("1000:1000", False), ("root:root", False),
    ("tomcat", True), ("1000:staff", True), ("app:1000", True),
])
def test_only_names_need_the_images_accounts(user: str, needed: bool) -> None:
    assert sandbox.needs_accounts(user) is needed


def test_facts_from_an_image_inspect() -> None:
    attrs = {"Id": "sha256:abc", "Config": {
        "User": "tomcat", "Labels": {const.LABEL_WRITABLE: "/w"},
        "Volumes": {"/data": {}, "/cache/": {}}}}
    facts = ImageFacts.from_inspect(attrs, passwd=PASSWD, group=GROUP)
    assert facts == ImageFacts(id="sha256:abc", user="tomcat", uid=997, gid=996,
                               labels={const.LABEL_WRITABLE: "/w"},
                               volumes=("/cache/", "/data"))
    bare = ImageFacts.from_inspect({"Id": "sha256:d", "Config": {"Labels": None}})
    assert (bare.user, bare.uid, bare.gid, bare.labels, bare.volumes) == ("", 0, 0, {}, ())


# -- the filesystem --------------------------------------------------------------------------

def test_writable_paths_from_the_label_and_the_volumes() -> None:
    facts = image(labels={const.LABEL_WRITABLE: " /var/b , /var/a,,/tmp,/var/a "},
                  volumes=("/data/", "/var/b"))
    assert sandbox.writable_paths(facts) == ("/data", "/var/a", "/var/b")
    box = confine(facts, memory_mb=64, policy=Policy(), network="n")
    assert sorted(box.tmpfs) == ["/data", "/tmp", "/var/a", "/var/b"]


def test_images_of_an_older_dinp_build_get_their_types_paths() -> None:
    war = image(labels={const.LABEL_BUILD_TYPE: "war"})
    assert sandbox.writable_paths(war) == tuple(sorted(sandbox.LEGACY_WRITABLE["war"]))
    php = image(labels={const.LABEL_BUILD_TYPE: "php"})
    assert sandbox.writable_paths(php) == ("/var/lib/php/sessions",)
    # A label, even empty, is what the image says: no guess then.
    said = image(labels={const.LABEL_BUILD_TYPE: "war", const.LABEL_WRITABLE: ""})
    assert sandbox.writable_paths(said) == ()
    assert sandbox.writable_paths(image(labels={const.LABEL_BUILD_TYPE: "python"})) == ()
    assert sandbox.writable_paths(image()) == ()


@pytest.mark.parametrize("template", ["war", "php"])
def test_the_templates_label_what_older_images_are_given(template: str) -> None:
    text = dockerfiles.read(f"app/{template}.Dockerfile")
    m = re.search(rf'^LABEL {re.escape(const.LABEL_WRITABLE)}="([^"]*)"$', text, re.M)
    assert m is not None, f"{template}.Dockerfile does not label {const.LABEL_WRITABLE}"
    assert tuple(m.group(1).split(",")) == sandbox.LEGACY_WRITABLE[template]


@pytest.mark.parametrize("path", [
    "relative/x", "/", "/a/../etc", "/a/./b", "//a", "/a/", "/proc", "/proc/sys",
    "/sys/fs", "/dev/shm", "/etc/hosts", "/etc/resolv.conf", "/a b", "/a:b", "/a\nb",
    "/" + "x" * 300, "/é",
])
def test_a_writable_path_that_cannot_be_a_tmpfs_fails_the_start(path: str) -> None:
    with pytest.raises(InvalidInput) as info:
        sandbox.writable_paths(image(labels={const.LABEL_WRITABLE: path}))
    assert const.LABEL_WRITABLE in str(info.value)


def test_too_many_writable_paths_fail_the_start() -> None:
    many = ",".join(f"/p{i}" for i in range(sandbox.MAX_WRITABLE_PATHS + 1))
    with pytest.raises(InvalidInput, match="at most"):
        sandbox.writable_paths(image(labels={const.LABEL_WRITABLE: many}))


def test_a_volume_under_proc_fails_the_start() -> None:
    with pytest.raises(InvalidInput, match="VOLUME"):
        sandbox.writable_paths(image(volumes=("/proc/x",)))


@pytest.mark.parametrize(("value", "expected"), [
    (None, True), ("true", True), ("TRUE", True), ("false", False), (" False ", False),
])
def test_the_read_only_label(value: str | None, expected: bool) -> None:
    labels = {} if value is None else {const.LABEL_READ_ONLY: value}
    facts = image("app", labels=labels)
    assert sandbox.read_only(facts) is expected
    box = confine(facts, memory_mb=64, policy=Policy(), network="n")
    assert box.read_only is expected
    # The rest holds either way.
    assert box.docker_options()["cap_drop"] == ["ALL"] and "/tmp" in box.tmpfs


@pytest.mark.parametrize("value", ["no", "0", "", "yes please"])
def test_a_read_only_label_that_says_neither_fails_the_start(value: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(const.LABEL_READ_ONLY)):
        sandbox.read_only(image(labels={const.LABEL_READ_ONLY: value}))


# -- CPU -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("memory_mb", "per_gb", "shares"), [
    (64, 1024, 128), (128, 1024, 128), (512, 1024, 512), (1024, 1024, 1024),
    (4096, 1024, 4096), (1024, 512, 512), (64, 512, 128), (10 << 20, 1024, 262144),
    (1024, 0, None),
])
def test_cpu_shares_follow_memory(memory_mb: int, per_gb: int, shares: int | None) -> None:
    assert sandbox.cpu_shares(memory_mb, Policy(cpu_shares_per_gb=per_gb)) == shares
    box = confine(image(), memory_mb=memory_mb, policy=Policy(cpu_shares_per_gb=per_gb),
                  network="n")
    assert box.docker_options().get("cpu_shares") == shares


# -- whatever the image says -----------------------------------------------------------------

users = st.sampled_from(["", "root", "0", "0:0", "toor", "ghost", "tomcat", "app",
                         "app:staff", "1000", "1000:1000", "0:50", "65534", "daemon:root"])
labels = st.dictionaries(
    st.sampled_from([const.LABEL_WRITABLE, const.LABEL_READ_ONLY, const.LABEL_BUILD_TYPE,
                     "other"]),
    st.sampled_from(["", "/tmp", "/var/x", "/var/x,/srv", "false", "true", "war", "php",
                     "/proc/x", "nonsense"]))


@settings(max_examples=400, deadline=None)
@given(users, labels, st.lists(st.sampled_from(["/data", "/var/x", "/tmp", "/proc/y"]),
                               max_size=3), st.integers(1, 1 << 16))
def test_no_image_escapes_the_rules(user: str, label_values: dict[str, str],
                                    volumes: list[str], memory_mb: int) -> None:
    facts = image(user, labels=label_values, volumes=tuple(volumes))
    policy = Policy(pids_limit=100, tmp_size_mb=16)
    try:
        box = confine(facts, memory_mb=memory_mb, policy=policy, network="n")
    except InvalidInput:
        return  # a wrong label: the container is not started at all
    options = box.docker_options()
    assert box.uid not in (0, None)
    uid_field = str(options["user"]).split(":")[0]
    assert uid_field not in {"", "0", "root", "toor", "ghost"}
    assert options["cap_drop"] == ["ALL"] and "cap_add" not in options
    assert options["privileged"] is False
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["pids_limit"] == 100
    assert options["mem_limit"] == options["memswap_limit"] == f"{memory_mb}m"
    assert options["network"] == "n" and options["ipc_mode"] == "private"
    assert "/tmp" in options["tmpfs"]
    for path, tmpfs in options["tmpfs"].items():
        assert path.startswith("/") and not path.startswith(("/proc", "/sys", "/dev"))
        assert "nosuid" in tmpfs and "nodev" in tmpfs and "size=16m" in tmpfs
    assert options["read_only"] is (label_values.get(const.LABEL_READ_ONLY) != "false")
    assert not {"volumes", "mounts", "binds", "pid_mode", "userns_mode", "devices",
                "cap_add", "sysctls"} & set(options)


# -- the app network -------------------------------------------------------------------------

def test_network_creation_times_sort_by_their_value() -> None:
    times = ["2026-12-01T20:21:14.5Z", "2026-12-01T20:21:14.123456789Z",
             "2026-12-01T20:21:14Z", "2026-12-01T21:21:13.9+01:00", "garbage", ""]
    assert sorted(times, key=_created) == [
        "2026-12-01T21:21:13.9+01:00", "2026-12-01T20:21:14Z",
        "2026-12-01T20:21:14.123456789Z", "2026-12-01T20:21:14.5Z", "garbage", ""]
