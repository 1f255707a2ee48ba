"""The configuration file: key=value lines, every value checked, errors naming file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from remus_netbuf import config
from remus_netbuf.config import Config, load_config, parse_config
from remus_netbuf.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "etc" / "xen" / "remus-netbuf.conf"


def config_error(text: str, source: str = "test.conf") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source)
    message = str(caught.value)
    assert "\n" not in message and message.isascii()
    return message


def test_empty_text_gives_defaults() -> None:
    assert parse_config("", "test.conf") == Config()
    assert Config() == Config(10_000_000, "all", True, "/var/run/xen-hotplug")


def test_comments_blank_lines_and_whitespace() -> None:
    text = """
# a comment
   # an indented comment

\tplug_limit = 5000   # trailing comment
protocols=ip#no space before the comment
"""
    assert parse_config(text, "test.conf") == Config(plug_limit=5000, protocols="ip")


def test_every_key_at_once() -> None:
    text = "plug_limit=1\nprotocols=ip\nifb_autocreate=no\nlock_dir=/run/lock/remus\n"
    assert parse_config(text, "test.conf") == Config(1, "ip", False, "/run/lock/remus")


def test_a_key_set_twice_is_an_error_naming_both_lines() -> None:
    with pytest.raises(
        ConfigError, match=r"^config f:3: plug_limit is set twice \(first on line 1\)"
    ):
        parse_config("plug_limit=1\n# again:\nplug_limit=2\n", "f")


def test_a_hash_inside_quotes_is_part_of_the_value() -> None:
    assert parse_config('lock_dir="/run/x#1"  # the lock\n', "f").lock_dir == "/run/x#1"
    assert parse_config("lock_dir='/run/y' # comment", "f").lock_dir == "/run/y"
    with pytest.raises(ConfigError, match="text after the closing quote"):
        parse_config('lock_dir="/run/x" trailing', "f")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('plug_limit="123"', Config(plug_limit=123)),
        ("plug_limit='123'", Config(plug_limit=123)),
        ('lock_dir="/var/lock/x" # comment', Config(lock_dir="/var/lock/x")),
        ("protocols = 'ip'  ", Config(protocols="ip")),
        ('ifb_autocreate="off"', Config(ifb_autocreate=False)),
    ],
)
def test_quotes_are_removed(line: str, expected: Config) -> None:
    assert parse_config(line, "f") == expected


@pytest.mark.parametrize("line", ["plug_limit=\"123'", "plug_limit='123", 'plug_limit="'])
def test_mismatched_quotes_are_rejected(line: str) -> None:
    assert "test.conf:1: unterminated quote" in config_error(line)


@pytest.mark.parametrize(
    ("value", "expected"), [("1", 1), ("10000000", 10_000_000), (str(2**32 - 1), 2**32 - 1)]
)
def test_plug_limit_valid(value: str, expected: int) -> None:
    assert parse_config(f"plug_limit={value}", "f").plug_limit == expected


@pytest.mark.parametrize(
    "value",
    ["0", "00", str(2**32), str(10**30), "-1", "+5", "1e6", "10k", "0x10", "1 000", "", "x"],
)
def test_plug_limit_invalid(value: str) -> None:
    message = config_error(f"plug_limit={value}")
    assert message.startswith("config test.conf:1: plug_limit must be bytes, 1..4294967295")


@pytest.mark.parametrize("value", ["\u0661\u0660", "\u00b2"])
def test_plug_limit_ascii_digits_only(value: str) -> None:
    assert "plug_limit must be bytes" in config_error(f"plug_limit={value}")


@pytest.mark.parametrize("value", ["all", "ip"])
def test_protocols_valid(value: str) -> None:
    assert parse_config(f"protocols={value}", "f").protocols == value


@pytest.mark.parametrize("value", ["", "ipv4", "ipv6", "ALL", "IP", "ip,ipv6", "arp"])
def test_protocols_invalid(value: str) -> None:
    assert "protocols must be one of all, ip" in config_error(f"protocols={value}")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes", True),
        ("true", True),
        ("1", True),
        ("on", True),
        ("YES", True),
        ("True", True),
        ("no", False),
        ("false", False),
        ("0", False),
        ("off", False),
        ("Off", False),
    ],
)
def test_ifb_autocreate_valid(value: str, expected: bool) -> None:
    assert parse_config(f"ifb_autocreate={value}", "f").ifb_autocreate is expected


@pytest.mark.parametrize("value", ["", "y", "n", "2", "enabled", "none", "yes please"])
def test_ifb_autocreate_invalid(value: str) -> None:
    assert "ifb_autocreate must be yes or no" in config_error(f"ifb_autocreate={value}")


@pytest.mark.parametrize("value", ["/var/run/xen-hotplug", "/", "/tmp/a.b-c_d"])
def test_lock_dir_valid(value: str) -> None:
    assert parse_config(f"lock_dir={value}", "f").lock_dir == value


@pytest.mark.parametrize(
    "value", ["", "var/run", "./run", "~/run", "/var/my lock", "/var/\u00e9", '" /var"']
)
def test_lock_dir_invalid(value: str) -> None:
    assert "lock_dir must be an absolute path" in config_error(f"lock_dir={value}")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("plug_limit", 1, "expected key=value"),
        ("# header\n\nprotocols ip", 3, "expected key=value"),
        ("plug_limit=5\nplug_limt=5", 2, "unknown key 'plug_limt'"),
        ("Plug_Limit=5", 1, "unknown key 'Plug_Limit'"),
        ("=5", 1, "unknown key ''"),
        ("protocols=ip\n\n\n# x\nifb_autocreate=maybe", 5, "ifb_autocreate must be"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, fragment: str) -> None:
    message = config_error(text, "/etc/xen/remus-netbuf.conf")
    assert message.startswith(f"config /etc/xen/remus-netbuf.conf:{line}: ")
    assert fragment in message


def test_unknown_key_lists_the_known_ones() -> None:
    assert "known: plug_limit, protocols, ifb_autocreate, lock_dir" in config_error("foo=1")


def test_error_escapes_untrusted_text() -> None:
    message = config_error("protocols=\u00e9\x1b[31m")
    assert "\x1b" not in message and "\\xe9" in message


# tolerate: teardown and gc read lock_dir alone


def tolerant(text: str, source: str = "t.conf") -> tuple[Config, list[str]]:
    """Parse as teardown does; the config and each tolerated problem as 'KEY: MESSAGE'."""
    seen: list[ConfigError] = []
    parsed = parse_config(text, source, seen.append)
    assert all("\n" not in str(err) and str(err).isascii() for err in seen)
    return parsed, [f"{err.fields['key']}: {err}" for err in seen]


def test_tolerate_skips_a_bad_value_of_another_key_naming_file_line_and_key() -> None:
    text = "lock_dir=/run/rnb\nplug_limit = 0\nprotocols=ip\n"
    parsed, problems = tolerant(text)
    assert parsed == Config(protocols="ip", lock_dir="/run/rnb")  # plug_limit: the default
    assert problems == [
        "'plug_limit': config t.conf:2: plug_limit must be bytes, 1..4294967295, not '0'"
    ]


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("plug_limt=5", "'plug_limt'", "t.conf:1: unknown key 'plug_limt'"),
        ("=5", "''", "t.conf:1: unknown key ''"),
        ("protocols=ipv6", "'protocols'", "t.conf:1: protocols must be one of all, ip"),
        ('protocols="ip', "'protocols'", "t.conf:1: unterminated quote"),
        ("ifb_autocreate=maybe", "'ifb_autocreate'", "t.conf:1: ifb_autocreate must be"),
        ("protocols=ip\nprotocols=all", "'protocols'", "t.conf:2: protocols is set twice"),
        ("protocols=\u00e9\x1b[31m", "'protocols'", "t.conf:1: protocols must be one of"),
        ("Lock_Dir=/x", "'Lock_Dir'", "unknown key 'Lock_Dir'"),  # case matters, as for setup
    ],
)
def test_tolerate_takes_every_problem_confined_to_another_key(
    text: str, key: str, fragment: str
) -> None:
    parsed, (problem,) = tolerant(f"{text}\nlock_dir=/run/rnb")
    assert parsed.lock_dir == "/run/rnb"
    assert problem.startswith(f"{key}: config t.conf:") and fragment in problem
    assert "\x1b" not in problem


def test_tolerate_keeps_the_first_value_of_a_key_set_twice_and_counts_a_bad_line() -> None:
    parsed, problems = tolerant("plug_limit=5\nplug_limit=6\nprotocols=x\nprotocols=ip\n")
    assert parsed == Config(plug_limit=5)  # protocols: line 3 was bad, line 4 is a duplicate
    assert [p.split(": ", 2)[1] for p in problems] == [
        "config t.conf:2",
        "config t.conf:3",
        "config t.conf:4",
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("lock_dir=relative/dir", "t.conf:1: lock_dir must be an absolute path"),
        ('lock_dir="/run/x', "t.conf:1: unterminated quote"),
        ("lock_dir=/a\nlock_dir=/a", "t.conf:2: lock_dir is set twice (first on line 1)"),
        ("plug_limit=0\nlock_dir=/a\n lock_dir = /b", "t.conf:3: lock_dir is set twice"),
        ("lock_dir /run/x", "t.conf:1: expected key=value"),  # which key? it may be lock_dir's
        ("plug_limit 5", "t.conf:1: expected key=value"),
    ],
)
def test_tolerate_never_takes_what_can_hide_or_spoil_lock_dir(text: str, fragment: str) -> None:
    seen: list[ConfigError] = []
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.conf", seen.append)
    assert fragment in str(caught.value)


def test_tolerate_changes_nothing_in_a_good_file() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    assert tolerant(text, str(SHIPPED)) == (parse_config(text, str(SHIPPED)), [])
    assert tolerant("lock_dir=/run/rnb\nplug_limit=1") == (Config(1, lock_dir="/run/rnb"), [])


def test_load_config_tolerates_as_parse_config_but_not_a_file_it_cannot_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "netbuf.conf"
    path.write_text("protocols=ip\nplug_limit=0\n", encoding="utf-8")
    seen: list[ConfigError] = []
    assert load_config({"REMUS_NETBUF_CONF": str(path)}, seen.append) == Config(protocols="ip")
    assert [str(err) for err in seen] == [
        f"config {path}:2: plug_limit must be bytes, 1..4294967295, not '0'"
    ]
    for environ in (
        {"REMUS_NETBUF_CONF": str(tmp_path / "absent.conf")},
        {"REMUS_NETBUF_CONF": ""},
    ):
        with pytest.raises(ConfigError):
            load_config(environ, seen.append)
    assert len(seen) == 1


# load_config


def test_env_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as caught:
        load_config({"REMUS_NETBUF_CONF": str(missing)})
    assert str(caught.value).startswith(f"config {missing}: cannot read: ")


def test_env_names_a_real_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    path = tmp_path / "netbuf.conf"
    path.write_text("protocols=ip\nifb_autocreate=no\n", encoding="utf-8")
    assert load_config({"REMUS_NETBUF_CONF": str(path)}) == Config(
        protocols="ip", ifb_autocreate=False
    )


def test_env_file_errors_name_it(tmp_path: Path) -> None:
    path = tmp_path / "netbuf.conf"
    path.write_text("protocols=ip\nplug_limit=0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^config {path}:2: plug_limit"):
        load_config({"REMUS_NETBUF_CONF": str(path)})


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "netbuf.conf"
    path.mkdir()  # a directory in place of the file
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({"REMUS_NETBUF_CONF": str(path)})


def test_a_stray_byte_in_a_comment_is_no_error_and_in_a_value_names_the_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "netbuf.conf"
    path.write_bytes(b"# caf\xe9 latin-1 comment\nplug_limit=5 # \xff\n")
    assert load_config({"REMUS_NETBUF_CONF": str(path)}).plug_limit == 5
    path.write_bytes(b"protocols=ip\nplug_limit=\xff\n")
    with pytest.raises(ConfigError, match=rf"^config {path}:2: plug_limit must be bytes.*\\udcff"):
        load_config({"REMUS_NETBUF_CONF": str(path)})


def test_an_empty_conf_variable_is_an_error_of_its_own() -> None:
    with pytest.raises(ConfigError, match=r"^config \$REMUS_NETBUF_CONF: is set but empty$"):
        load_config({"REMUS_NETBUF_CONF": ""})


def test_unset_and_no_default_file_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    assert load_config({}) == Config()


def test_unset_reads_the_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "remus-netbuf.conf"
    path.write_text("plug_limit=42\n", encoding="utf-8")
    monkeypatch.setattr(config, "DEFAULT_PATH", str(path))
    assert load_config({}) == Config(plug_limit=42)


# the shipped example


def test_shipped_file_parses_to_defaults() -> None:
    assert parse_config(SHIPPED.read_text(encoding="utf-8"), str(SHIPPED)) == Config()


def test_shipped_file_documents_the_defaults() -> None:
    """Uncommenting every ``#key=value`` line must still give the defaults."""
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    settings = [line[1:] for line in lines if re.fullmatch(r"#[a-z_]+=\S+", line)]
    assert len(settings) == 4
    assert parse_config("\n".join(settings), str(SHIPPED)) == Config()
