"""``make install`` / ``make uninstall`` for real, in the VM: pip, /opt, /usr/local/sbin, /etc/xen.

Only in the VM, whose overlays on /etc /usr /opt /var throw it all away: install writes the
machine's real paths. The VM has no network, so the wheels are built on the host before it boots
(tests/wheels.py) and installed offline. Xen's side is a stand-in package installed with dpkg
(unless the machine has Xen's own): it owns /etc/xen/xl.conf, a conffile, and Xen's bash
/etc/xen/scripts/remus-netbuf-setup, so ``dpkg --verify`` is the independent judge of what
install changed in a file another package owns (only the xl.conf line) and of uninstall putting
it back.

The round trip: install; the man pages where man finds them; the shipped check passes; a real
setup, and its teardown, through the script xl.conf names, run as libxl runs it, with the
installed config; the systemd unit's own metrics command; uninstall; every path as it was before.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import wheels
from tests.bed import Bed, netbuf_path
from tests.elfstub import NETBUF, write_stub
from tests.test_metrics import netbuf, parse
from tests.vmtier import scaled
from tools import vm
from tools.install import MAN_PAGES

pytestmark = pytest.mark.vm(weight=100)
REPO = Path(__file__).resolve().parents[1]
XL_CONF = Path("/etc/xen/xl.conf")
XEN_SCRIPT = Path("/etc/xen/scripts/remus-netbuf-setup")
STANDIN = "xen-utils-common-standin"
VIF, PATH5 = "vif5.0", netbuf_path(5)
OURS = "/usr/local/sbin/remus-netbuf-setup"
MANDIR = Path("/usr/local/share/man")  # make install's default MANDIR


@pytest.fixture
def offline_wheels() -> Path:
    """The wheels the host built for these sources (the name tells conftest to build them)."""
    found = wheels.ready()
    if isinstance(found, str):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no wheels to install offline: {found}", pytrace=False)
        pytest.skip(f"no wheels to install offline: {found}")
    return found


def run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run argv from the repo; its exit must be 0; its stdout."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=scaled(timeout), env=env, cwd=REPO
    )
    output = done.stdout + done.stderr
    print(f"$ {shlex.join(argv)}  (exit {done.returncode})\n{output}")  # shown if the test fails
    assert done.returncode == 0, f"{shlex.join(argv)}: exit {done.returncode}\n{output}"
    return done.stdout


def xen_package(tmp_path: Path) -> str:
    """The package that owns xl.conf: the machine's Xen, or a stand-in installed with dpkg."""
    owner = subprocess.run(["dpkg-query", "-S", str(XL_CONF)], capture_output=True, text=True)
    if owner.returncode == 0:
        return owner.stdout.split(":")[0]
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {STANDIN}\nVersion: 4.17.0-1\nArchitecture: all\n"
        "Maintainer: remus-netbuf tests <root@localhost>\n"
        "Description: stand-in for Xen's xen-utils-common: xl.conf, remus-netbuf-setup\n"
    )
    (root / "DEBIAN" / "conffiles").write_text(f"{XL_CONF}\n")
    (root / "etc/xen/scripts").mkdir(parents=True)
    (root / "etc/xen/xl.conf").write_text(
        '## Global XL config file ##\n\n#autoballoon="auto"\n\n'
        "# default Remus network buffering script\n"
        '#remus.default.netbufscript="/etc/xen/scripts/remus-netbuf-setup"\n'
    )
    script = root / "etc/xen/scripts/remus-netbuf-setup"
    script.write_text('#!/bin/bash\n# Xen\'s script\necho "Unable to find ifb kernel module" >&2\n')
    script.chmod(0o755)
    run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(tmp_path / "xen.deb")], 60)
    run(["dpkg", "-i", str(tmp_path / "xen.deb")], 120)
    return STANDIN


def snapshot() -> dict[str, str]:
    """What install may touch: /etc/xen, /usr/local/sbin, MANDIR, and the entries of /opt."""
    found = {}
    for top in (Path("/etc/xen"), Path("/usr/local/sbin"), MANDIR):
        for path in sorted([top, *top.rglob("*")]) if top.exists() else []:
            info = path.lstat()
            if path.is_symlink():
                found[str(path)] = f"-> {os.readlink(path)}"
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path)] = f"{info.st_mode:o} {info.st_uid}:{info.st_gid} {digest}"
            else:
                found[str(path)] = f"{info.st_mode:o} {info.st_uid}:{info.st_gid}"
    for entry in sorted(os.listdir("/opt")):
        found[f"/opt/{entry}"] = "present"
    return found


def verify(package: str) -> str:
    """dpkg's view of the package's files: a line for each one changed since it was installed."""
    done = subprocess.run(["dpkg", "--verify", package], capture_output=True, text=True)
    return done.stdout


def xl_runs() -> str:
    """The script xl.conf makes xl run, read without our code: the last uncommented setting."""
    found = re.findall(
        r'^\s*remus\.default\.netbufscript\s*=\s*"([^"]*)"', XL_CONF.read_text(), re.M
    )
    return found[-1] if found else "/etc/xen/scripts/remus-netbuf-setup"


def man_finds(page: str) -> str | None:
    """Where man-db's ``man -w`` finds ``page`` (``name.SECTION``), resolved; None if nowhere."""
    name, _, section = page.rpartition(".")
    done = subprocess.run(["man", "-w", section, name], capture_output=True, text=True)
    return os.path.realpath(done.stdout.strip()) if done.returncode == 0 else None


def test_make_install_check_setup_uninstall_round_trip(
    offline_wheels: Path, bed: Bed, tmp_path: Path
) -> None:
    if os.environ.get(vm.IN_VM) != "1":
        pytest.skip("make install writes /opt, /usr/local/sbin, /etc/xen: only in the VM")
    package = xen_package(tmp_path)
    xen_script = XEN_SCRIPT.read_bytes()
    before, verified = snapshot(), verify(package)
    assert xl_runs() == str(XEN_SCRIPT)  # xl would run Xen's bash script

    run(["make", "install", f"WHEELS={offline_wheels}"], 600)
    assert xl_runs() == OURS
    assert os.path.realpath(OURS) == "/opt/remus-netbuf/bin/remus-netbuf-setup"
    assert os.access(OURS, os.X_OK) and os.access("/usr/local/sbin/remus-netbuf", os.X_OK)
    assert os.path.realpath("/opt/remus-netbuf/bin/python3").startswith("/usr/bin/python3")
    assert XEN_SCRIPT.read_bytes() == xen_script  # Xen's own: never touched
    changed = set(verify(package).splitlines()) - set(verified.splitlines())
    assert changed == {f"??5?????? c {XL_CONF}"}, changed  # the conffile's one line, nothing else
    assert (
        Path("/etc/xen/remus-netbuf.conf").read_bytes()
        == (REPO / "etc/xen/remus-netbuf.conf").read_bytes()
    )
    has_man = shutil.which("man") is not None  # man-db: the judge of where the pages went
    for page in MAN_PAGES:
        installed = MANDIR / f"man{page.rpartition('.')[2]}" / page
        assert installed.read_bytes() == (REPO / "man" / page).read_bytes(), page
        assert installed.stat().st_mode & 0o777 == 0o644, page
        if has_man:
            assert man_finds(page) == str(installed), page

    bed.add_vif(VIF)
    bed.domain(5)
    libxl = {"PATH": os.environ["PATH"], "XENSTORED_PATH": bed.xs_socket}  # the installed config
    stub = write_stub(tmp_path / "libxenlight.so.4.17", **NETBUF)  # the VM has no Xen's
    check = ["ip", "netns", "exec", bed.ns, "/usr/local/sbin/remus-netbuf", "check"]
    checked = run([*check, "--libxenlight", str(stub)], 120, env=libxl)
    lines = checked.splitlines()
    assert lines[-1] == "check: 0 FAIL, 0 warn, 11 ok", checked
    assert lines[0].startswith("ok    config: /etc/xen/remus-netbuf.conf: plug_limit=10000000")
    ours = f"xl runs {OURS} (remus.default.netbufscript in {XL_CONF}): this installation"
    assert f"ok    xl-script: {ours}" in lines, checked

    hotplug = {**libxl, "vifname": VIF, "XENBUS_PATH": PATH5}
    run(["ip", "netns", "exec", bed.ns, xl_runs(), "setup"], 120, env=hotplug)
    bed.assert_installed(VIF, "ifb0", PATH5)
    assert bed.root_qdisc("ifb0") == "plug"

    service = (REPO / "etc/systemd/remus-netbuf-metrics.service").read_text()
    (command,) = [
        ln.removeprefix("ExecStart=") for ln in service.splitlines() if "ExecStart=" in ln
    ]
    prom = tmp_path / "remus-netbuf.prom"
    argv = [*shlex.split(command)[:-1], str(prom)]  # the unit's command, to a scratch file
    run(["ip", "netns", "exec", bed.ns, *argv], 120, env=libxl)
    _, samples = parse(prom.read_text())
    assert samples[("remus_netbuf_redirect_ok", netbuf(5, VIF, "ifb0"))] == 1
    assert samples[("remus_netbuf_drops_total", netbuf(5, VIF, "ifb0"))] == 0

    teardown = {**hotplug, "REMUS_IFB": "ifb0"}
    run(["ip", "netns", "exec", bed.ns, xl_runs(), "teardown"], 120, env=teardown)
    bed.assert_clean(VIF, "ifb0", PATH5)

    run(["make", "uninstall"], 300)
    assert snapshot() == before
    for page in MAN_PAGES:
        assert not (MANDIR / f"man{page.rpartition('.')[2]}" / page).exists(), page
        if has_man:
            assert man_finds(page) is None, page
    assert verify(package) == verified
    assert xl_runs() == str(XEN_SCRIPT)
