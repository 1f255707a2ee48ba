"""``make install`` / ``make uninstall`` (tools/install.py) on a scratch tree, without pip.

Everything install does outside its venv (links, man pages, config, the xl.conf edit, its
record) and all of uninstall, with PREFIX, SBINDIR, XENDIR and MANDIR under a temporary directory
and a stand-in venv.
The real thing, pip and the real paths included, is tests/test_install_vm.py in the VM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from remus_netbuf.xlconf import KEY, netbufscript
from tools import install
from tools.install import Paths, Record, Refused

XL_CONF = """\
## Global XL config file ##
#autoballoon="auto"
remus.default.netbufscript="/etc/xen/scripts/remus-netbuf-setup"
"""
XEN_SCRIPT = "#!/bin/bash\n# Xen's remus-netbuf-setup\n"


def tree(root: Path) -> dict[str, str]:
    """Every path under root: a link's target, a file's mode and digest, a directory's mode."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        info = path.lstat()
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[key] = f"dir {info.st_mode:o}"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            found[key] = f"{info.st_mode:o} {digest}"
    return found


def scratch_paths(root: Path) -> Paths:
    return Paths(
        root / "opt/remus-netbuf",
        root / "usr/local/sbin",
        root / "etc/xen",
        root / "usr/local/share/man",
    )


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    """A dom0 in miniature: Xen's xl.conf and script; our venv, as pip would leave it."""
    root = tmp_path / "root"
    found = scratch_paths(root)
    (found.xendir / "scripts").mkdir(parents=True)
    found.xl_conf.write_text(XL_CONF)
    (found.xendir / "scripts" / "remus-netbuf-setup").write_text(XEN_SCRIPT)
    found.sbindir.mkdir(parents=True)
    return found


def fake_venv(paths: Paths) -> Record:
    """What install's venv step leaves: the programs and a fresh record."""
    record = Record(created_dirs=install.missing_dirs(paths.prefix.parent))
    (paths.prefix / "bin").mkdir(parents=True)
    for program in install.PROGRAMS:
        paths.target(program).write_text("#!/bin/sh\n")
        paths.target(program).chmod(0o755)
    install.write_record(paths, record)
    return record


def test_round_trip_leaves_the_tree_as_it_was(paths: Paths) -> None:
    root = paths.prefix.parents[1]
    before = tree(root)
    install.place(paths, fake_venv(paths))

    for program in install.PROGRAMS:
        assert os.readlink(paths.link(program)) == str(paths.target(program))
    assert paths.conf.read_bytes() == install.SHIPPED_CONF.read_bytes()
    assert netbufscript(paths.xl_conf.read_text()) == str(paths.sbindir / "remus-netbuf-setup")
    assert paths.backup.read_text() == XL_CONF
    assert (paths.xendir / "scripts" / "remus-netbuf-setup").read_text() == XEN_SCRIPT
    record = install.read_record(paths)
    assert record is not None
    for page in install.MAN_PAGES:
        installed_page = paths.man_page(page)
        assert installed_page.read_bytes() == (install.MAN_SOURCES / page).read_bytes()
        assert installed_page.stat().st_mode & 0o777 == 0o644
        assert record.man_pages[str(installed_page)] == install.sha256(installed_page)
    assert paths.man_page("remus-netbuf.8") == paths.mandir / "man8" / "remus-netbuf.8"
    assert paths.man_page("remus-netbuf.conf.5") == paths.mandir / "man5" / "remus-netbuf.conf.5"
    installed = tree(root)

    install.place(paths, install.read_record(paths) or Record())  # make install again
    assert tree(root) == installed  # idempotent: not a byte changed

    install.uninstall(paths)
    assert tree(root) == before  # the pages and man8, man5, share/man that install made: gone
    assert not paths.mandir.exists()


def test_install_refuses_to_replace_what_is_not_ours(paths: Paths) -> None:
    paths.link("remus-netbuf").write_text("#!/bin/sh\n# someone else's\n")
    before = tree(paths.prefix.parents[1])
    with pytest.raises(Refused, match="remus-netbuf exists and is not ours"):
        install.install(paths, None)
    assert tree(paths.prefix.parents[1]) == before


def test_install_refuses_to_replace_a_man_page_that_is_not_ours(paths: Paths) -> None:
    page = paths.man_page("remus-netbuf.8")
    page.parent.mkdir(parents=True)
    page.write_text(".TH SOMEONE-ELSES 8\n")
    before = tree(paths.prefix.parents[1])
    with pytest.raises(Refused, match="remus-netbuf.8 exists and is not ours.*MANDIR"):
        install.install(paths, None)
    assert tree(paths.prefix.parents[1]) == before


def test_a_newer_checkout_replaces_the_pages_an_earlier_install_left(paths: Paths) -> None:
    install.place(paths, fake_venv(paths))
    page = paths.man_page("remus-netbuf.8")
    page.write_text(".TH REMUS-NETBUF 8 old\n")  # as an older checkout's install left it
    record = install.read_record(paths)
    assert record is not None
    record.man_pages[str(page)] = install.sha256(page)
    install.write_record(paths, record)
    install.refuse_foreign(paths, record)  # ours: no refusal
    install.place(paths, record)
    assert page.read_bytes() == (install.MAN_SOURCES / "remus-netbuf.8").read_bytes()
    install.uninstall(paths)
    assert not page.exists()


def test_a_man_page_the_admin_changed_survives(paths: Paths) -> None:
    install.place(paths, fake_venv(paths))
    page = paths.man_page("remus-netbuf-setup.8")
    changed = page.read_text() + '.\\" local note\n'
    page.write_text(changed)
    install.place(paths, install.read_record(paths) or Record())  # make install again
    assert page.read_text() == changed
    install.uninstall(paths)
    assert page.read_text() == changed  # kept, and so is its directory
    assert not paths.man_page("remus-netbuf.8").exists()


def test_a_record_from_before_man_pages_gains_them(paths: Paths) -> None:
    old = {k: v for k, v in asdict(fake_venv(paths)).items() if k != "man_pages"}
    paths.record.write_text(json.dumps(old))  # as an install from before man pages wrote it
    install.place(paths, install.read_record(paths) or Record())
    assert paths.man_page("remus-netbuf.conf.5").exists()
    install.uninstall(paths)
    assert not paths.man_page("remus-netbuf.conf.5").exists()


def test_install_refuses_a_prefix_it_did_not_make(paths: Paths) -> None:
    paths.prefix.mkdir(parents=True)
    (paths.prefix / "data").write_text("precious")
    with pytest.raises(Refused, match="make install did not make it"):
        install.install(paths, None)
    install.uninstall(paths)  # and uninstall leaves it alone too
    assert (paths.prefix / "data").read_text() == "precious"


def test_an_existing_config_is_neither_replaced_nor_removed(paths: Paths) -> None:
    paths.conf.write_text("plug_limit=1\n")
    install.place(paths, fake_venv(paths))
    assert paths.conf.read_text() == "plug_limit=1\n"  # installed only if absent
    install.uninstall(paths)
    assert paths.conf.read_text() == "plug_limit=1\n"  # not install's: kept


def test_a_config_the_admin_changed_survives_uninstall(paths: Paths) -> None:
    install.place(paths, fake_venv(paths))
    changed = paths.conf.read_text() + "plug_limit=20000000\n"
    paths.conf.write_text(changed)
    install.uninstall(paths)
    assert paths.conf.read_text() == changed


def test_uninstall_keeps_an_xl_conf_line_the_admin_changed(paths: Paths) -> None:
    install.place(paths, fake_venv(paths))
    text = paths.xl_conf.read_text().replace(str(paths.script), "/srv/my-netbuf")
    paths.xl_conf.write_text(text)
    install.uninstall(paths)
    assert netbufscript(paths.xl_conf.read_text()) == "/srv/my-netbuf"
    assert "remus-netbuf:" not in paths.xl_conf.read_text()  # only our mark went
    assert paths.backup.read_text() == XL_CONF  # kept: xl.conf differs from it now


def test_without_xen_dir_install_creates_it_and_uninstall_removes_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    paths = scratch_paths(root)
    install.place(paths, fake_venv(paths))
    assert paths.xl_conf.read_text().endswith(f'{KEY}="{paths.script}"\n')
    assert not paths.backup.exists()  # nothing to back up
    install.uninstall(paths)
    assert tree(root) == {}  # every directory install made is gone again


def test_install_refuses_an_xl_conf_line_it_cannot_replace_alone(paths: Paths) -> None:
    paths.xl_conf.write_text(f'{KEY}="/a"; autoballoon="off"\n')
    with pytest.raises(Refused, match="set remus.default.netbufscript by hand"):
        install.point_xl(paths, Record())
    assert paths.xl_conf.read_text() == f'{KEY}="/a"; autoballoon="off"\n'


def test_make_passes_mandir_to_install_and_uninstall() -> None:
    argv = ["make", "-n", "-C", str(install.REPO), "install", "uninstall", "MANDIR=/srv/my man"]
    commands = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    lines = [line for line in commands.splitlines() if "tools/install.py" in line]
    assert len(lines) == 2, commands
    for line in lines:  # as the shell will split it: quoted, a path with a space is one word
        words = shlex.split(line)
        assert words[words.index("--mandir") + 1] == "/srv/my man", line
