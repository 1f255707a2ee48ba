"""xl.conf: which script ``xl remus`` runs, and the marked one-line edit and its undoing."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from remus_netbuf.xlconf import (
    ADDED,
    KEY,
    MARK,
    REPLACED,
    XEN_DEFAULT_SCRIPT,
    netbufscript,
    point_at,
    restore,
    script_xl_runs,
)

OURS = "/usr/local/sbin/remus-netbuf-setup"
# Xen's tools/examples/xl.conf, shortened, with the line xl.conf(5) documents.
XEN_SAMPLE = """\
## Global XL config file ##

# full path of the lockfile used by xl during domain creation
#lockfile="/var/lock/xl"

# default vif script to use if none is specified in the guest config
#vif.default.script="vif-bridge"

#remus.default.netbufscript="/etc/xen/scripts/remus-netbuf-setup"
"""


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("", None),
        (XEN_SAMPLE, None),  # commented out: the default
        (f'{KEY}="/a"\n', "/a"),
        (f"{KEY} = '/a'  # comment\n", "/a"),
        (f'{KEY}="/a"\n{KEY}="/b"\n', "/b"),  # libxlu: the last setting wins
        (f'{KEY}="/a"\n{KEY} += "/b"\n', "/a/b"),  # += appends to a string
        (f'x=1; {KEY}="/a"; y="#"\n', "/a"),  # several per line, # inside quotes
        (f'{KEY}="/a \\"q\\""\n', '/a "q"'),  # escapes as libxlu reads them
        (f'{KEY}=["/a"]\n', None),  # not a string: xl ignores it with a warning
        (f'"{KEY}=/a"\n', None),  # a string, not a setting
        (f'other.{KEY}="/a"\n', None),
    ],
)
def test_netbufscript_reads_the_setting_as_xl_does(text: str, script: str | None) -> None:
    assert netbufscript(text) == script


def test_without_a_setting_or_a_file_xl_runs_the_default_script() -> None:
    assert script_xl_runs(None) == XEN_DEFAULT_SCRIPT == "/etc/xen/scripts/remus-netbuf-setup"
    assert script_xl_runs(XEN_SAMPLE) == XEN_DEFAULT_SCRIPT
    assert script_xl_runs(f'{KEY}="/x"\n') == "/x"


def test_point_at_appends_a_marked_line_and_restore_removes_it() -> None:
    edited = point_at(XEN_SAMPLE, OURS)
    assert edited == XEN_SAMPLE + f'{ADDED}\n{KEY}="{OURS}"\n'
    assert netbufscript(edited) == OURS
    assert point_at(edited, OURS) == edited  # idempotent
    assert restore(edited, OURS) == (XEN_SAMPLE, f"removed {KEY} (it was not set before)")


def test_point_at_replaces_the_effective_line_and_restore_puts_it_back() -> None:
    original = f'# mine\n{KEY}="/old1"\nx=1\n{KEY} = "/old2"   # the one xl uses\ny=2\n'
    edited = point_at(original, OURS)
    lines = edited.splitlines()
    assert lines[3] == f'{REPLACED}{KEY} = "/old2"   # the one xl uses'
    assert lines[4] == f'{KEY}="{OURS}"'
    assert lines[:3] + lines[5:] == original.splitlines()[:3] + original.splitlines()[4:]
    assert netbufscript(edited) == OURS
    restored, what = restore(edited, OURS)
    assert restored == original
    assert what == f"restored '{KEY} = \"/old2\"   # the one xl uses'"


def test_a_file_already_running_our_script_is_left_alone() -> None:
    text = f'{KEY}="{OURS}"\n'
    assert point_at(text, OURS) == text
    assert restore(text, OURS) == (text, f"no {KEY} set by make install: left alone")


def test_a_line_the_admin_changed_since_is_kept_by_restore() -> None:
    edited = point_at(XEN_SAMPLE, OURS).replace(f'"{OURS}"', '"/admin/choice"')
    restored, what = restore(edited, OURS)
    assert restored == XEN_SAMPLE + f'{KEY}="/admin/choice"\n'  # only our mark went
    assert "changed since make install" in what


def test_point_at_again_repoints_a_marked_line_and_keeps_the_first_original() -> None:
    original = f'{KEY}="/xen"\n'
    twice = point_at(point_at(original, "/old/prefix"), OURS)
    assert netbufscript(twice) == OURS
    assert restore(twice, OURS)[0] == original


@pytest.mark.parametrize(
    "text", [f'{KEY}="/a"; x=1\n', f'{KEY}="/a"\n{KEY} += "/b"\n'], ids=["shared", "append"]
)
def test_point_at_refuses_a_setting_it_cannot_replace_alone(text: str) -> None:
    with pytest.raises(ValueError, match="not a plain setting alone on its line"):
        point_at(text, OURS)


_LINE = st.one_of(
    st.text(st.characters(blacklist_characters="\n", blacklist_categories=["Cs"]), max_size=30),
    st.sampled_from([f'{KEY}="/xen/script"', f"#{KEY}='/x'", 'a="b"', "x = 1 # c", ""]),
)


@given(st.lists(_LINE, max_size=8), st.booleans())
def test_restore_undoes_point_at_byte_for_byte(lines: list[str], eol: bool) -> None:
    text = "\n".join(lines) + ("\n" if eol and lines else "")
    assume(MARK not in text)
    try:
        edited = point_at(text, OURS)
    except ValueError:
        return  # refused, nothing written
    assert netbufscript(edited) == OURS
    assert point_at(edited, OURS) == edited
    assert restore(edited, OURS)[0] == text
