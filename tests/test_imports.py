"""What ``remus-netbuf-setup`` loads: start-up is part of every hotplug run (issue 11).

Each run is the real entry point in a bed, as libxl runs it, with ``PYTHONPROFILEIMPORTTIME``
(``-X importtime``): its stderr names every module the interpreter imported. A module on the
deny list, or a library loaded on a path that does not use it, fails the test with the chain of
imports that brought it in.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bed import SETUP, Bed, netbuf_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")

VIF, PATH = "vif5.0", netbuf_path(5, 0)
# Never on the hotplug path: pyroute2 (its __init__ alone loads ndb, ipdb, conntrack, nftables
# and asyncio: 150 ms), pyxs (with threading, queue, copy and platform, and a router thread: a
# fifth of a no-op teardown), what they would drag in, and what the product must not need.
DENY = (
    "pyroute2",
    "pyxs",
    "asyncio",
    "concurrent",
    "multiprocessing",
    "ssl",
    "unittest",
    "ctypes",
    "subprocess",
    "argparse",
    "json",
)
# Nor, on any hotplug path: re (with enum, ~6 ms: pip's console-script wrapper imported it, and
# the request was validated with it), typing (the NamedTuples the records were), and socket
# (with enum and selectors: the C _socket has all we use).
HOTPLUG_DENY = (*DENY, "re", "typing", "socket", "selectors", "enum")
_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| ( *)(\S+)$")


def imports(bed: Bed, *argv: str, **env: str) -> dict[str, list[str]]:
    """Run ``remus-netbuf-setup ARGV`` in the bed; each module it imported, with the chain of
    imports that brought it in (outermost first)."""
    environ = {k: v for k, v in bed.env(**env).items() if not k.startswith("COVERAGE_")}
    environ["PYTHONPROFILEIMPORTTIME"] = "1"  # and no coverage.py: it would import its own
    done = subprocess.run(
        ["ip", "netns", "exec", bed.ns, SETUP, *argv],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    assert "Traceback" not in done.stderr, done.stderr
    # importtime prints a module when its import ends, after the modules it imported, each
    # nested two spaces deeper: a module's parents are the next lines with less indentation.
    lines = [(len(m[1]) // 2, m[2]) for m in map(_LINE.match, done.stderr.splitlines()) if m]
    found: dict[str, list[str]] = {}
    parents: list[tuple[int, str]] = []
    for depth, name in reversed(lines):
        while parents and parents[-1][0] >= depth:
            parents.pop()
        found.setdefault(name, [p for _, p in parents] + [name])
        parents.append((depth, name))
    assert "remus_netbuf.hotplug" in found, done.stderr
    return found


def denied(found: dict[str, list[str]], deny: tuple[str, ...] = DENY) -> list[str]:
    return [
        " <- ".join(reversed(chain))
        for name, chain in sorted(found.items())
        if any(name == d or name.startswith(d + ".") for d in deny)
    ]


def test_setup_loads_nothing_on_the_deny_list(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    found = imports(bed, "setup", vifname=VIF, XENBUS_PATH=PATH)
    # Whether this kernel has sch_plug or not, the run got to the plug: netlink, xenstore and
    # the lock were all on its path.
    assert {"remus_netbuf.rtnl", "remus_netbuf.xswire", "remus_netbuf.lock"} <= set(found)
    assert denied(found, HOTPLUG_DENY) == []
    teardown = imports(bed, "teardown", vifname=VIF, XENBUS_PATH=PATH, REMUS_IFB="ifb0")
    assert denied(teardown, HOTPLUG_DENY) == []


def test_teardown_with_nothing_to_undo_takes_no_lock(bed: Bed) -> None:
    """No lock taken, and no filelock (the lock is fcntl.flock); no dataclasses (which loads
    inspect): the records on the hotplug path are record.py's; no logging: our programs write
    their log lines themselves; no threading: xenstore is spoken in this thread."""
    found = imports(bed, "teardown", vifname=VIF, XENBUS_PATH=PATH)
    deny = (*HOTPLUG_DENY, "filelock", "dataclasses", "inspect", "logging", "threading")
    assert denied(found, deny) == []


def test_teardown_with_nothing_to_undo_loads_only_what_it_uses(bed: Bed) -> None:
    """No vif, no claim, no REMUS_IFB: whether the vif exists is one ioctl (ifindex.py), and
    the rest three xenstore requests. So neither netlink nor the lock is imported, nor
    contextlib, functools and collections (type-only imports are under TYPE_CHECKING)."""
    found = imports(bed, "teardown", vifname=VIF, XENBUS_PATH=PATH)
    assert {"remus_netbuf.ifindex", "remus_netbuf.xswire", "remus_netbuf.config"} <= set(found)
    product = ("remus_netbuf.netlink", "remus_netbuf.rtnl", "remus_netbuf.lock")
    stdlib = ("contextlib", "functools", "collections")
    assert denied(found, (*HOTPLUG_DENY, *product, *stdlib)) == []


def test_version_and_help_load_nothing_of_the_product(bed: Bed) -> None:
    for flag in ("--version", "--help"):
        found = imports(bed, flag)
        product = {n for n in found if n.startswith("remus_netbuf.")}
        assert product == {"remus_netbuf.hotplug"}, flag
        assert denied(found, (*HOTPLUG_DENY, "logging", "filelock", "dataclasses")) == [], flag


def test_the_installed_program_is_our_script_not_a_generated_wrapper() -> None:
    """pip installs scripts/remus-netbuf-setup itself (pyproject's script-files), its first line
    pointed at the venv's python3; the console-script wrapper pip generates imports ``re``.
    Where the venv's path has a space, which a #! line cannot hold, three lines start it
    through sh instead, as pip's wrappers do (tools/ensure-deps)."""
    ours = (Path(__file__).resolve().parents[1] / "scripts" / "remus-netbuf-setup").read_text()
    installed = Path(SETUP).read_text().splitlines()
    if installed[0] == "#!/bin/sh":
        assert installed[2] == "' '''", installed[:3]
        head, python = 3, shlex.split(installed[1].removeprefix("'''exec' "))[0]
    else:
        head, python = 1, installed[0].removeprefix("#!")
    assert installed[head:] == ours.splitlines()[1:], "reinstall: tools/ensure-deps"
    assert Path(python).parent == Path(sys.executable).parent, python  # the venv's bin
