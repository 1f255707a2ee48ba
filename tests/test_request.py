"""The invocation: command, vifname, XENBUS_PATH and REMUS_IFB, validated and never evaluated."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remus_netbuf.errors import BadRequest
from remus_netbuf.request import (
    DOMID_FIRST_RESERVED,
    IFNAMSIZ,
    Request,
    check_ifname,
    parse_request,
    valid_xenbus_path,
    xenbus_ids,
)

PATH = "/libxl/3/remus/netbuf/0"
ENV = {"vifname": "vif3.0", "XENBUS_PATH": PATH, "REMUS_IFB": "ifb0"}


def assert_one_ascii_line(err: BadRequest) -> str:
    text = str(err)
    assert text.startswith("bad invocation: ")
    assert all(" " <= c <= "~" for c in text), text
    return text


def bad(argv: list[str], environ: Mapping[str, str]) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_request(argv, environ)
    return assert_one_ascii_line(caught.value)


# commands and the name=value arguments


@pytest.mark.parametrize("command", ["setup", "teardown"])
def test_commands_from_environment(command: str) -> None:
    request = parse_request([command], ENV)
    assert request == Request(command, "vif3.0", PATH, "ifb0")
    assert (request.domid, request.devid) == (3, 0)


def test_arguments_alone_suffice() -> None:
    argv = ["setup", "vifname=vif9.2", "XENBUS_PATH=/libxl/9/remus/netbuf/2"]
    request = parse_request(argv, {})
    assert request == Request("setup", "vif9.2", "/libxl/9/remus/netbuf/2", None)
    assert (request.domid, request.devid) == (9, 2)


def test_arguments_override_environment() -> None:
    argv = ["teardown", "vifname=vif7.1", "XENBUS_PATH=/libxl/7/remus/netbuf/1", "REMUS_IFB=ifb5"]
    request = parse_request(argv, ENV)
    assert request == Request("teardown", "vif7.1", "/libxl/7/remus/netbuf/1", "ifb5")


def test_last_argument_wins() -> None:
    assert parse_request(["setup", "vifname=a", "vifname=b"], ENV).vif == "b"


def test_other_environment_is_ignored() -> None:
    environ = {**ENV, "PATH": "/bin", "IFS": "$(x)", "vifName": "bad name"}
    assert parse_request(["setup"], environ).vif == "vif3.0"


@pytest.mark.parametrize("argv", [[], [""], ["add"], ["SETUP"], ["online"], ["setup "]])
def test_unknown_command_rejected(argv: list[str]) -> None:
    assert "command must be setup or teardown" in bad(argv, ENV)


@pytest.mark.parametrize("word", ["vifname", "vif3.0", "-x", ""])
def test_argument_without_equals_rejected(word: str) -> None:
    assert "want name=value" in bad(["setup", word], ENV)


@pytest.mark.parametrize(
    "word", ["script=/bin/sh", "PATH=/tmp", "xenbus_path=" + PATH, "VIFNAME=vif1.0", "=x"]
)
def test_only_the_three_variables_accepted(word: str) -> None:
    text = bad(["setup", word], ENV)
    assert "unknown variable" in text
    assert "vifname, XENBUS_PATH, REMUS_IFB" in text


@pytest.mark.parametrize("missing", ["vifname", "XENBUS_PATH"])
def test_missing_variable_rejected(missing: str) -> None:
    environ = {k: v for k, v in ENV.items() if k != missing}
    assert bad(["setup"], environ) == f"bad invocation: {missing} is not set"


def test_remus_ifb_is_optional() -> None:
    assert parse_request(["teardown"], {"vifname": "vif3.0", "XENBUS_PATH": PATH}).remus_ifb is None


def test_empty_remus_ifb_is_absent() -> None:
    assert parse_request(["teardown"], {**ENV, "REMUS_IFB": ""}).remus_ifb is None
    assert parse_request(["teardown", "REMUS_IFB="], ENV).remus_ifb is None


# interface names, for vifname and REMUS_IFB alike

GOOD_NAMES = ["vif3.0", "ifb0", "ifb10", "a" * 15, "vif32751.1234", "my_vif-1", "x"]
BAD_NAMES = [
    "a" * 16,
    "vif1.0" + "0" * 10,
    "vif/1",
    "vif 1",
    "vif\t1",
    "vif1\n",
    " vif1",
    "vif\u00e91",
    "vif\u0661",
    "\u0430bc",  # Cyrillic a
    "vif:1",
    "$(touch /tmp/x)",
    "`id`",
    "a;b",
    "a|b",
    "a&b",
    "a>b",
    "$IFS",
    "vif'1",
    'vif"1',
    "vif\\1",
    "vif\x001",
    "vif\udcff",  # a byte that is not UTF-8, as os.environ decodes it (surrogateescape)
    "vif*",
    ".",
    "..",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
@pytest.mark.parametrize("variable", ["vifname", "REMUS_IFB"])
def test_interface_name_accepted(variable: str, name: str) -> None:
    request = parse_request(["setup"], {**ENV, variable: name})
    assert (request.vif if variable == "vifname" else request.remus_ifb) == name


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("variable", ["vifname", "REMUS_IFB"])
def test_interface_name_rejected(variable: str, name: str) -> None:
    text = bad(["setup"], {**ENV, variable: name})
    assert variable in text


def test_empty_vifname_rejected() -> None:
    assert bad(["setup"], {**ENV, "vifname": ""}) == "bad invocation: vifname is empty"


def test_name_of_15_bytes_ok_16_rejected() -> None:
    assert parse_request(["setup", "vifname=" + "v" * 15], ENV).vif == "v" * 15
    assert "longer than 15 bytes" in bad(["setup", "vifname=" + "v" * 16], ENV)


def test_long_values_are_clipped_in_the_message() -> None:
    text = bad(["setup", "vifname=" + "v" * 5000], ENV)
    assert len(text) < 200


@pytest.mark.parametrize(
    "template",
    ["$(touch {f})", "`touch {f}`", "x; touch {f}", "x && touch {f}", "$(touch {f})0"],
)
def test_shell_metacharacters_never_evaluated(tmp_path: Path, template: str) -> None:
    marker = tmp_path / "x"
    value = template.format(f=marker)
    for variable in ("vifname", "REMUS_IFB", "XENBUS_PATH"):
        bad(["setup"], {**ENV, variable: value})
        bad(["setup", f"{variable}={value}"], ENV)
        assert valid_xenbus_path(["setup", f"{variable}={value}"], ENV) in (None, PATH)
    bad(["setup", f"{value}=1"], ENV)
    bad([value], ENV)
    assert not marker.exists()


# XENBUS_PATH


@pytest.mark.parametrize(
    ("path", "domid", "devid"),
    [
        ("/libxl/1/remus/netbuf/0", 1, 0),
        ("/libxl/32751/remus/netbuf/0", 32751, 0),
        ("/libxl/12/remus/netbuf/7", 12, 7),
        ("/libxl/12/remus/netbuf/123456789", 12, 123456789),
    ],
)
def test_xenbus_path_accepted(path: str, domid: int, devid: int) -> None:
    request = parse_request(["setup"], {**ENV, "XENBUS_PATH": path})
    assert (request.xenbus_path, request.domid, request.devid) == (path, domid, devid)
    assert valid_xenbus_path(["setup"], {**ENV, "XENBUS_PATH": path}) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/libxl/0/remus/netbuf/0",  # dom0 is not a guest
        "/libxl/32752/remus/netbuf/0",  # DOMID_FIRST_RESERVED
        "/libxl/32767/remus/netbuf/0",
        "/libxl/99999/remus/netbuf/0",
        "/libxl/123456/remus/netbuf/0",
        "/libxl/01/remus/netbuf/0",
        "/libxl/00/remus/netbuf/0",
        "/libxl/-1/remus/netbuf/0",
        "/libxl/+1/remus/netbuf/0",
        "/libxl/ 1/remus/netbuf/0",
        "/libxl/\u0661/remus/netbuf/0",  # Arabic-Indic one
        "/libxl/1/remus/netbuf/",
        "/libxl/1/remus/netbuf",
        "/libxl/1/remus/netbuf/0/",
        "/libxl/1/remus/netbuf/0/ifb",
        "/libxl/1/remus/netbuf/0/..",
        "/libxl/1/remus/netbuf/../netbuf/0",
        "/libxl/../libxl/1/remus/netbuf/0",
        "/libxl/1/remus/netbuf/x",
        "/libxl/1/remus/netbuf/0\n",
        "/libxl/1/remus/netbuf/0\udcff",
        "/libxl/1/remus/netbuf/0x1",
        "/libxl/1/remus/netbuf/1234567890",
        "//libxl/1/remus/netbuf/0",
        "libxl/1/remus/netbuf/0",
        "/local/domain/0/backend/vif/1/0",
        "/libxl/1/remus/dev/0",
        "/libxl/domid/remus/netbuf/0",
    ],
)
def test_xenbus_path_rejected(path: str) -> None:
    assert "XENBUS_PATH" in bad(["setup"], {**ENV, "XENBUS_PATH": path})
    assert "XENBUS_PATH" in bad(["setup", "XENBUS_PATH=" + path], ENV)
    assert valid_xenbus_path(["setup"], {**ENV, "XENBUS_PATH": path}) is None


def test_valid_xenbus_path_follows_arguments() -> None:
    other = "/libxl/8/remus/netbuf/1"
    assert valid_xenbus_path(["setup", f"XENBUS_PATH={other}"], ENV) == other
    assert valid_xenbus_path(["teardown", "XENBUS_PATH=/libxl/0/remus/netbuf/1"], ENV) is None


def test_valid_xenbus_path_absent_or_unparsable() -> None:
    assert valid_xenbus_path(["setup"], {}) is None
    assert valid_xenbus_path([], {}) is None
    assert valid_xenbus_path(["setup", "XENBUS_PATH=/libxl/x"], ENV) is None


def test_valid_xenbus_path_survives_bad_arguments() -> None:
    """An invocation rejected for an unknown argument still reports to its own netbuf."""
    assert valid_xenbus_path(["setup", "noequals"], ENV) == PATH
    assert valid_xenbus_path(["setup", "bogus=1"], ENV) == PATH
    other = "/libxl/4/remus/netbuf/1"
    assert valid_xenbus_path(["setup", "FOO=1", f"XENBUS_PATH={other}"], ENV) == other


def test_valid_xenbus_path_ignores_other_problems() -> None:
    """Where hotplug-error goes does not depend on the vifname or command being valid."""
    environ = {**ENV, "vifname": "$(x)"}
    assert valid_xenbus_path(["frobnicate"], environ) == PATH


# every input: a valid Request or a one-line BadRequest, never anything else

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_XENBUS = re.compile(r"/libxl/([1-9][0-9]*)/remus/netbuf/(0|[1-9][0-9]*)")


def good_ifname(value: str) -> bool:
    return bool(_IFNAME.fullmatch(value)) and value not in (".", "..")


def good_path(value: str) -> bool:
    match = _XENBUS.fullmatch(value)
    return match is not None and int(match.group(1)) <= 32751 and len(match.group(2)) <= 9


def sometimes_arbitrary(likely: st.SearchStrategy[str], size: int) -> st.SearchStrategy[str]:
    """Mostly plausible values, so that valid requests are common too; one in four arbitrary."""
    odd = st.sampled_from([False, False, False, True])
    return odd.flatmap(lambda arbitrary: st.text(max_size=size) if arbitrary else likely)


COMMANDS = sometimes_arbitrary(st.sampled_from(["setup", "teardown"]), 10)
NAMES = sometimes_arbitrary(
    st.one_of(
        st.sampled_from(GOOD_NAMES + BAD_NAMES), st.from_regex(r"[a-z0-9._]{1,17}", fullmatch=True)
    ),
    20,
)
ODD_NUMBERS = st.one_of(st.integers(-1, 2**40), st.from_regex(r"0[0-9]?", fullmatch=True))
DOMIDS = sometimes_arbitrary(st.integers(1, 32751).map(str), 6) | ODD_NUMBERS
DEVIDS = sometimes_arbitrary(st.integers(0, 99).map(str), 4) | ODD_NUMBERS
PATHS = sometimes_arbitrary(st.builds("/libxl/{}/remus/netbuf/{}".format, DOMIDS, DEVIDS), 40)
VALUES = {"vifname": NAMES, "XENBUS_PATH": PATHS, "REMUS_IFB": NAMES}


@st.composite
def invocations(draw: st.DrawFn) -> tuple[list[str], dict[str, str]]:
    argv, environ = [draw(COMMANDS)], {}
    for name, values in VALUES.items():
        where = draw(st.sampled_from(["env", "arg", "both", "absent"]))
        if where in ("env", "both"):
            environ[name] = draw(values)
        if where in ("arg", "both"):
            argv.append(f"{name}={draw(values)}")
    if draw(st.sampled_from([False, False, False, True])):
        argv.append(draw(st.text(max_size=15)))
    return argv, environ


@settings(max_examples=400, deadline=None)
@given(invocations())
def test_parse_request_never_fails_otherwise(
    invocation: tuple[list[str], dict[str, str]],
) -> None:
    argv, environ = invocation
    try:
        request = parse_request(argv, environ)
    except BadRequest as err:
        assert_one_ascii_line(err)
        return
    assert request.command in ("setup", "teardown")
    assert good_ifname(request.vif)
    assert good_path(request.xenbus_path)
    assert 1 <= request.domid <= 32751
    assert request.remus_ifb is None or good_ifname(request.remus_ifb)


# the checks written out agree with the regular expressions they replaced (issue 11: re was
# ~6 ms of each start), kept here as the reference

OLD_IFNAME = re.compile(r"[A-Za-z0-9_.-]+")
OLD_XENBUS = re.compile(r"/libxl/(0|[1-9][0-9]{0,4})/remus/netbuf/(0|[1-9][0-9]{0,8})")
# Near the edges: the accepted characters, their neighbours in ASCII, separators, digits and
# letters that are not ASCII (Arabic-Indic three, superscript two, fullwidth one, Kelvin), NUL.
EDGES = "aZz09_.-/: \t\n+$@[`{~\x00\u0663\u00b2\uff11\u212a\u00e9"
EDGE_TEXT = st.text(st.sampled_from(EDGES) | st.characters(), max_size=20)


def old_ifname_error(value: str) -> str | None:
    """check_ifname's verdict as it was: None, or why not."""
    if not value:
        return "is empty"
    if not value.isascii() or not OLD_IFNAME.fullmatch(value) or value in (".", ".."):
        return "is not an interface name"
    if len(value.encode()) >= IFNAMSIZ:
        return "is longer than"
    return None


def old_xenbus_ids(path: str) -> tuple[int, int] | None:
    match = OLD_XENBUS.fullmatch(path) if path.isascii() else None
    if match is None or not 0 < int(match.group(1)) < DOMID_FIRST_RESERVED:
        return None
    return int(match.group(1)), int(match.group(2))


@settings(max_examples=2000, deadline=None)
@given(st.one_of(EDGE_TEXT, NAMES, st.sampled_from(["", ".", "..", "...", "-", "a" * 16])))
def test_ifname_check_agrees_with_the_old_regex(value: str) -> None:
    try:
        assert check_ifname(value, "vifname") == value
        verdict = None
    except BadRequest as err:
        verdict = str(err)
    expected = old_ifname_error(value)
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None and expected in verdict, (verdict, expected)


NUMBERS = st.one_of(
    st.integers(0, 10**10).map(str),
    st.from_regex(r"[0-9]{0,11}", fullmatch=True),
    st.sampled_from(["", "-1", "+1", " 1", "1 ", "1\n", "0x1", "\u0663", "1\u00b2", "\uff11"]),
    EDGE_TEXT,
)
WORDS = st.sampled_from(["", "libxl", "remus", "netbuf", "Libxl", "libxl ", "netbuf\n"])


@st.composite
def xenbus_paths(draw: st.DrawFn) -> str:
    """Mostly the path's own shape, with any one part off; sometimes a part missing, doubled
    or added, or any text at all."""
    parts = ["", "libxl", draw(NUMBERS), "remus", "netbuf", draw(NUMBERS)]
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(parts) - 1))
        parts[at] = draw(st.one_of(WORDS, NUMBERS))
    shape = draw(st.sampled_from(["same", "same", "same", "drop", "add", "text"]))
    if shape == "drop":
        del parts[draw(st.integers(0, len(parts) - 1))]
    elif shape == "add":
        parts.insert(draw(st.integers(0, len(parts))), draw(st.one_of(WORDS, NUMBERS)))
    elif shape == "text":
        return draw(EDGE_TEXT)
    return "/".join(parts)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(xenbus_paths(), st.from_regex(OLD_XENBUS, fullmatch=True), PATHS))
def test_xenbus_path_check_agrees_with_the_old_regex(path: str) -> None:
    try:
        found: tuple[int, int] | None = xenbus_ids(path)
    except BadRequest:
        found = None
    assert found == old_xenbus_ids(path)
