"""``make deb``: the Debian package, its contents, its metadata, lintian's verdict, and dpkg -i.

Self-installing: the session hook in tests/conftest.py builds the package (tools/deb.py) before
any VM boots, and that apt-gets debian/control's Build-Depends and lintian where they are
missing (about two minutes on a fresh Debian 12; then about 30 s a build, and nothing when
dist/ holds the package of these sources already).

On the host: the package is read with dpkg-deb and run from a ``dpkg -x`` root. In the kernel
tier's VM, whose overlays throw it all away: ``dpkg -i``, the programs, the man pages, a real
setup and teardown through the packaged script, ``dpkg --purge``, and nothing left.
"""

from __future__ import annotations

import gzip
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bed import Bed, netbuf_path
from tests.debs import contents, field, member, run
from tools import deb, vm

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
SITE = "usr/lib/python3/dist-packages"
MAN_PAGES = ("man8/remus-netbuf-setup.8", "man8/remus-netbuf.8", "man5/remus-netbuf.conf.5")
UNITS = ("remus-netbuf-metrics.service", "remus-netbuf-metrics.timer")
VIF, PATH7 = "vif7.0", netbuf_path(7)


@pytest.fixture(scope="module")
def built_deb() -> deb.Built:
    """The package of these sources, built by the session hook (the name tells conftest)."""
    found = deb.ready(check_sources=os.environ.get(vm.IN_VM) != "1")
    if isinstance(found, str):
        pytest.fail(found, pytrace=False)
    return found


@pytest.fixture(scope="module")
def unpacked(built_deb: deb.Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deb-root")
    assert run(["dpkg-deb", "-x", str(built_deb.deb), str(root)]).returncode == 0
    return root


# --- on the host: what the package is ---------------------------------------------------------


def test_file_list(built_deb: deb.Built) -> None:
    files = {path for path, mode in contents(built_deb.deb).items() if not mode.startswith("d")}
    modules = {f"/{SITE}/remus_netbuf/{p.name}" for p in (REPO / "remus_netbuf").glob("*.py")}
    info = f"/{SITE}/remus_netbuf-{VERSION}.dist-info"
    dist_info = {f"{info}/{name}" for name in ("METADATA", "RECORD", "WHEEL")}
    dist_info |= {f"{info}/entry_points.txt", f"{info}/top_level.txt"}
    assert files == {
        "/usr/sbin/remus-netbuf-setup",
        "/usr/sbin/remus-netbuf",
        *modules,
        *dist_info,
        *(f"/usr/share/man/{page}.gz" for page in MAN_PAGES),
        "/etc/xen/remus-netbuf.conf",
        *(f"/lib/systemd/system/{unit}" for unit in UNITS),
        "/usr/share/doc/remus-netbuf/changelog.Debian.gz",
        "/usr/share/doc/remus-netbuf/copyright",
        "/usr/share/lintian/overrides/remus-netbuf",
    }
    modes = contents(built_deb.deb)
    assert modes["/usr/sbin/remus-netbuf-setup"] == "-rwxr-xr-x"
    assert modes["/usr/sbin/remus-netbuf"] == "-rwxr-xr-x"
    assert not any("__pycache__" in path or path.endswith(".pyc") for path in modes)


def test_control_fields(built_deb: deb.Built) -> None:
    package = built_deb.deb
    assert field(package, "Package") == "remus-netbuf"
    assert field(package, "Architecture") == "all"
    assert field(package, "Version") == f"{VERSION}-1"
    assert built_deb.deb.name == f"remus-netbuf_{VERSION}-1_all.deb"
    # dh_python3 adds python3:any and nothing else: the product needs only the standard library
    assert field(package, "Depends") == "python3 (>= 3.11), python3:any"
    assert field(package, "Recommends") == "python3-prometheus-client"
    assert field(package, "Suggests") == ""


def test_the_config_is_a_conffile_and_no_unit_is_enabled(built_deb: deb.Built) -> None:
    assert member(built_deb.deb, "conffiles") == "/etc/xen/remus-netbuf.conf\n"
    postinst = member(built_deb.deb, "postinst").splitlines()
    for at, line in enumerate(postinst):  # enabled again only where the admin had enabled it
        if "deb-systemd-helper enable" in line:
            assert any("was-enabled" in before for before in postinst[at - 3 : at]), line
    text = "\n".join(postinst)
    assert "systemctl" not in text and "deb-systemd-invoke" not in text  # never started
    assert "xl.conf" not in text + member(built_deb.deb, "preinst")  # xl.conf: the admin's


@pytest.mark.parametrize("named", [True, False])
def test_removal_says_when_xl_conf_still_names_the_script_and_leaves_it(
    built_deb: deb.Built, tmp_path: Path, named: bool
) -> None:
    conf = tmp_path / "xl.conf"
    line = 'remus.default.netbufscript="/usr/sbin/remus-netbuf-setup"\n'
    conf.write_text("#autoballoon=off\n" + (line if named else "#" + line))
    postrm = tmp_path / "postrm"
    ours = member(built_deb.deb, "postrm").split("# Automatically added by dh_")[0]
    assert "deb-systemd-helper" not in ours  # debhelper's part (for the units) is not run here
    postrm.write_text(ours.replace("/etc/xen/xl.conf", str(conf)) + "exit 0\n")
    said = []
    for action in ("remove", "purge"):  # what apt purge runs, in that order
        done = run(["sh", str(postrm), action])
        assert done.returncode == 0, done.stderr
        said += done.stderr.splitlines()
    assert said == (
        [
            "remus-netbuf: /etc/xen/xl.conf still sets remus.default.netbufscript to "
            "/usr/sbin/remus-netbuf-setup, which is gone: remove that line (xl remus would fail "
            "to run the script)".replace("/etc/xen/xl.conf", str(conf))
        ]
        if named
        else []
    )
    assert conf.read_text().endswith(line)  # untouched


def test_the_files_are_the_checkouts(unpacked: Path) -> None:
    script = (unpacked / "usr/sbin/remus-netbuf-setup").read_text().splitlines(keepends=True)
    ours = (REPO / "scripts/remus-netbuf-setup").read_text().splitlines(keepends=True)
    assert script[0] == "#!/usr/bin/python3\n"  # our script, not a console-script wrapper
    assert script[1:] == ours[1:]
    for path in (REPO / "remus_netbuf").glob("*.py"):
        assert (unpacked / SITE / "remus_netbuf" / path.name).read_bytes() == path.read_bytes()
    conf = unpacked / "etc/xen/remus-netbuf.conf"
    assert conf.read_bytes() == (REPO / "etc/xen/remus-netbuf.conf").read_bytes()
    for page in MAN_PAGES:
        shipped = gzip.decompress((unpacked / f"usr/share/man/{page}.gz").read_bytes())
        assert shipped == (REPO / "man" / page.split("/")[1]).read_bytes(), page


def test_the_admin_cli_is_the_wrapper_pip_makes(unpacked: Path) -> None:
    """What pip generates for [project.scripts] in make install's venv: re, sys, cli.main."""
    lines = (unpacked / "usr/sbin/remus-netbuf").read_text().splitlines()
    assert lines[0] == "#!/usr/bin/python3"
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    assert imports == ["import re", "import sys", "from remus_netbuf.cli import main"]


def test_the_units_name_the_packaged_program(unpacked: Path) -> None:
    units = unpacked / "lib/systemd/system"
    service = (units / UNITS[0]).read_text()
    assert service == (REPO / "etc/systemd" / UNITS[0]).read_text().replace(
        "ExecStart=/usr/local/sbin/remus-netbuf ", "ExecStart=/usr/sbin/remus-netbuf "
    )
    assert "/usr/local" not in service
    assert (units / UNITS[1]).read_bytes() == (REPO / "etc/systemd" / UNITS[1]).read_bytes()


def test_built_with_debian_12s_setuptools(unpacked: Path) -> None:
    """debian/patches/setuptools-66.patch: the license as setuptools 66 reads it."""
    metadata = (unpacked / SITE / f"remus_netbuf-{VERSION}.dist-info/METADATA").read_text()
    assert f"\nVersion: {VERSION}\n" in metadata
    assert "\nLicense: GPL-2.0-only\n" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and all("; extra == " in line for line in requires)  # none at run time


def test_lintian_finds_no_error(built_deb: deb.Built) -> None:
    print(built_deb.lintian)
    assert not [line for line in built_deb.lintian.splitlines() if line.startswith("E: ")]
    assert built_deb.changes.name.startswith(f"remus-netbuf_{VERSION}-1_")


def test_the_unpacked_programs_start(unpacked: Path) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(unpacked / SITE)}
    setup, cli = (
        str(unpacked / "usr/sbin/remus-netbuf-setup"),
        str(unpacked / "usr/sbin/remus-netbuf"),
    )
    where = run(
        ["/usr/bin/python3", "-P", "-c", "import remus_netbuf; print(remus_netbuf.__file__)"],
        env=env,
    )
    assert where.stdout.strip() == str(unpacked / SITE / "remus_netbuf/__init__.py")
    assert run([setup, "--version"], env=env).stdout == f"remus-netbuf-setup {VERSION}\n"
    assert run([cli, "--version"], env=env).stdout == f"remus-netbuf {VERSION}\n"
    bad = run([setup, "frobnicate"], env=env)
    assert bad.returncode == 1
    assert len(bad.stderr.splitlines()) == 1 and "frobnicate" in bad.stderr, bad.stderr


# --- in the VM: dpkg -i, run, dpkg --purge ----------------------------------------------------

# Where the package puts something, or dpkg, dh_python3 and deb-systemd-helper do for it: their
# entries, by name (hashing all of dist-packages and /usr/share/doc took minutes under TCG).
WATCHED = (
    "/etc/xen",
    "/usr/sbin",
    f"/{SITE}",
    "/lib/systemd/system",
    "/usr/share/man/man5",
    "/usr/share/man/man8",
    "/usr/share/doc",
    "/usr/share/lintian/overrides",
)
WATCHED_TREES = ("/etc/systemd/system", "/var/lib/systemd")  # small: every path in them


def snapshot() -> set[str]:
    """Every entry of WATCHED and every path under WATCHED_TREES."""
    found = set()
    for top in WATCHED:
        found |= {f"{top}/{name}" for name in os.listdir(top)} if os.path.isdir(top) else set()
    for tree in map(Path, WATCHED_TREES):
        found |= {str(path) for path in tree.rglob("*")} if tree.is_dir() else set()
    return found


@pytest.fixture
def man_db_not_rebuilt() -> Iterator[None]:
    """No man-db index rebuild in dpkg's trigger: mandb reads every man page of this host's
    root (23,000; 8 s here, minutes in a TCG VM). ``man -w`` finds the pages without it."""
    flag = Path("/var/lib/man-db/auto-update")  # man-db's postinst builds only if it exists
    if os.environ.get(vm.IN_VM) != "1":  # not on a real dom0, where the vm test is skipped
        yield
        return
    was = flag.exists()
    flag.unlink(missing_ok=True)
    yield
    if was:
        flag.touch()


@pytest.mark.vm(weight=40)
def test_dpkg_install_run_purge_in_the_vm(
    built_deb: deb.Built, bed: Bed, man_db_not_rebuilt: None
) -> None:
    if os.environ.get(vm.IN_VM) != "1":
        pytest.skip("dpkg -i writes /usr, /etc, /var/lib/dpkg: only in the VM")
    before = snapshot()
    files = [path for path, mode in contents(built_deb.deb).items() if not mode.startswith("d")]
    existed = [path for path in files if os.path.lexists(path)]
    assert run(["dpkg-query", "-W", "remus-netbuf"]).returncode != 0  # not installed before

    assert run(["dpkg", "-i", str(built_deb.deb)], 300).returncode == 0
    status = run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "remus-netbuf"]).stdout
    assert status == f"install ok installed {VERSION}-1"
    where = run(
        ["/usr/bin/python3", "-I", "-c", "import remus_netbuf; print(remus_netbuf.__file__)"]
    )
    assert where.stdout.strip() == f"/{SITE}/remus_netbuf/__init__.py"
    assert (
        run(["/usr/sbin/remus-netbuf-setup", "--version"]).stdout
        == f"remus-netbuf-setup {VERSION}\n"
    )
    assert run(["/usr/sbin/remus-netbuf", "--version"]).stdout == f"remus-netbuf {VERSION}\n"
    bad = run(["/usr/sbin/remus-netbuf-setup"], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1, bad.stderr
    for page in MAN_PAGES:
        section, name = page.removeprefix("man").split("/")
        found = run(["man", "-w", section[0], name.rpartition(".")[0]])
        assert found.stdout.strip() == f"/usr/share/man/{page}.gz", page
    assert not list(Path("/etc/systemd/system").rglob("remus-netbuf*"))  # not enabled

    # libxl's way, through the packaged script and its conffile
    bed.add_vif(VIF)
    bed.domain(7)
    libxl = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "XENSTORED_PATH": bed.xs_socket}
    hotplug = {**libxl, "vifname": VIF, "XENBUS_PATH": PATH7}
    netns = ["ip", "netns", "exec", bed.ns, "/usr/sbin/remus-netbuf-setup"]
    assert run([*netns, "setup"], 120, env=hotplug).returncode == 0
    bed.assert_installed(VIF, "ifb0", PATH7)
    assert run([*netns, "teardown"], 120, env={**hotplug, "REMUS_IFB": "ifb0"}).returncode == 0
    bed.assert_clean(VIF, "ifb0", PATH7)
    assert Path(f"/{SITE}/remus_netbuf/__pycache__").is_dir()  # py3compile's, purged with it

    assert run(["dpkg", "--purge", "remus-netbuf"], 300).returncode == 0
    assert run(["dpkg-query", "-W", "-f", "${Status}", "remus-netbuf"]).stdout in (
        "",
        "unknown ok not-installed",
    )
    after = snapshot()
    assert after - before == set(), "left behind"
    assert before - after == set(), "removed"
    assert [path for path in files if os.path.lexists(path)] == existed  # each file of ours
