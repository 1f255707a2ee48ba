"""The error hierarchy: templates filled from keyword arguments, always one printable line."""

from __future__ import annotations

import string

import pytest

from remus_netbuf.errors import (
    BadRequest,
    ConfigError,
    KernelError,
    KernelLacks,
    LockError,
    NetbufError,
    NoFreeIfb,
    StepFailed,
    XenstoreError,
    one_line,
)


def all_subclasses(cls: type[NetbufError]) -> list[type[NetbufError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *all_subclasses(sub)]
    return found


ERRORS = [NetbufError, *all_subclasses(NetbufError)]


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (NetbufError(detail="boom"), "boom"),
        (BadRequest(detail="vifname is not set"), "bad invocation: vifname is not set"),
        (ConfigError(source="/etc/x.conf:3", detail="bad"), "config /etc/x.conf:3: bad"),
        (KernelError(detail="RTNETLINK answers: busy"), "RTNETLINK answers: busy"),
        (
            KernelLacks(feature="plug qdisc", config="CONFIG_NET_SCH_PLUG"),
            "kernel has no plug qdisc (CONFIG_NET_SCH_PLUG)",
        ),
        (XenstoreError(detail="no daemon"), "xenstore: no daemon"),
        (
            LockError(path="/run/x/pickifb", detail="is a symlink"),
            "lock /run/x/pickifb: is a symlink",
        ),
        (NoFreeIfb(detail="all busy"), "no free IFB: all busy"),
        (
            StepFailed(vif="vif3.0", command="setup", step="add redirect", ifb="ifb0", detail="x"),
            "vif3.0: setup failed at step 'add redirect' (ifb ifb0): x",
        ),
    ],
)
def test_template_fills(error: NetbufError, message: str) -> None:
    assert str(error) == message


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_is_a_netbuf_error_with_its_fields(cls: type[NetbufError]) -> None:
    names = [field for _, field, _, _ in string.Formatter().parse(cls.template) if field]
    fields = {name: f"<{name}>\n" for name in names}
    error = cls(**fields)
    assert isinstance(error, NetbufError)
    assert error.fields == fields
    for name in names:
        assert f"<{name}>" in str(error)
    assert "\n" not in str(error)


def test_kernel_lacks_is_a_kernel_error() -> None:
    assert issubclass(KernelLacks, KernelError)


def test_missing_field_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        StepFailed(vif="vif1.0", detail="x")


def test_message_is_folded_to_one_line() -> None:
    error = BadRequest(detail="first\nsecond\r\n\tthird  \u00e9")
    assert str(error) == "bad invocation: first second third \\xe9"
    assert error.fields == {"detail": "first\nsecond\r\n\tthird  \u00e9"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\nb", "a b"),
        ("a\r\nb", "a b"),
        ("a\tb", "a b"),
        ("  lead and trail \n", "lead and trail"),
        ("many   \n\n\t spaces", "many spaces"),
        ("a\x0bb\x0cc", "a b c"),
        ("a\u2028b\x85c", "a b c"),
        ("caf\u00e9", "caf\\xe9"),
        ("\u20ac5", "\\u20ac5"),
        ("\U0001f600", "\\U0001f600"),
        ("vif\udcff", "vif\\udcff"),
        ("", ""),
    ],
)
def test_one_line(text: str, expected: str) -> None:
    assert one_line(text) == expected


@pytest.mark.parametrize("control", ["\x00", "\x07", "\x1b", "\x7f"])
def test_one_line_escapes_control_characters(control: str) -> None:
    assert all(" " <= c <= "~" for c in one_line(f"a{control}[2Jb"))
