"""``make xen-netbuf-debs``: Debian's libxenmisc with libxenlight rebuilt with libnl3.

The plain parts (which Xen is installed, the version, the control file, the shlibs lookup) on
data; the repack itself on the real-Xen tier's cache (Debian's .deb and the rebuilt library),
judged by dpkg-deb and by the ELF reader the product's check uses.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from remus_netbuf import dpkg, libxenlight
from tests.debs import contents, field, member
from tools import xendebs

STATUS = """\
Package: libxenmisc4.17
Status: install ok installed
Version: 4.17.5+72-g01140da4e8-1
Description: Xen runtime libraries
 a continuation line: Package: libxenmisc9.9

Package: libxenmisc4.16
Status: deinstall ok config-files
Version: 4.16.2-1

Package: xen-utils-4.17
Status: install ok installed
Version: 4.17.5+72-g01140da4e8-1
"""


def test_the_installed_xen_is_the_installed_libxenmisc() -> None:
    found = xendebs.installed_xen(STATUS)
    assert found == xendebs.Installed("libxenmisc4.17", "4.17", "4.17.5+72-g01140da4e8-1")
    assert xendebs.installed_xen(STATUS.replace("install ok installed", "purge ok not")) is None
    held = STATUS.replace("install ok installed", "hold ok installed", 1)  # README: apt-mark hold
    assert xendebs.installed_xen(held) == found


def test_the_version_sorts_above_debians_and_is_not_suffixed_twice() -> None:
    base = "4.17.5+72-g01140da4e8-1"
    ours = dpkg.netbuf_version(base)
    assert ours == base + "+netbuf1" and dpkg.netbuf_version(ours) == ours
    newer = subprocess.run(["dpkg", "--compare-versions", ours, "gt", base]).returncode
    assert newer == 0  # apt takes ours over Debian's identical version
    update = subprocess.run(["dpkg", "--compare-versions", "4.17.5+72-g01140da4e8-2", "gt", ours])
    assert update.returncode == 0  # and Debian's next upload over ours (then check says so)


def test_the_control_file_gets_version_size_dependencies_and_the_note() -> None:
    control = "Package: libxenmisc4.17\nVersion: 1-1\nInstalled-Size: 7\nDepends: libc6\n"
    out = xendebs.control_for(control, "1-1+netbuf1", ["libnl-3-200"], 9)
    assert out.splitlines()[:4] == [
        "Package: libxenmisc4.17",
        "Version: 1-1+netbuf1",
        "Installed-Size: 9",
        "Depends: libc6, libnl-3-200",
    ]
    assert "network buffering" in out and all(line.startswith(" ") for line in out.splitlines()[4:])


def test_a_dependency_comes_from_the_shlibs_line_of_the_soname() -> None:
    shlibs = "libnl-3 200 libnl-3-200 (>= 3.2.7)\nudeb: libnl-3 200 libnl-3-200-udeb\n"
    assert xendebs.shlibs_dependency(shlibs, "libnl-3.so.200") == "libnl-3-200 (>= 3.2.7)"
    assert xendebs.shlibs_dependency(shlibs, "libnl-route-3.so.200") is None


@pytest.mark.host_tools(
    "repacks a Debian package with binutils (nm, strip) and lintian, as make xen-netbuf-debs "
    "does: packaging is checked on the host"
)
def test_the_repack_changes_only_libxenlight_and_gains_network_buffering(
    xen_cache: Path, tmp_path: Path
) -> None:
    [debian] = (xen_cache / "debs").glob("libxenmisc4.17_*.deb")
    ours = xendebs.repack(
        debian, xen_cache / "netbuf" / "libxenlight.so.4.17.0", "4.17", tmp_path / "out", print
    )
    base = field(debian, "Version")
    assert ours.name == f"libxenmisc4.17_{base}+netbuf1_amd64.deb"
    assert contents(ours) == contents(debian)  # the same files, modes and links
    fields = {name: field(ours, name) for name in ("Version", "Depends", "Multi-Arch")}
    assert fields["Version"] == base + "+netbuf1" and fields["Multi-Arch"] == "same"
    assert fields["Depends"].endswith(", libnl-3-200, libnl-route-3-200")
    other_libraries = []
    for deb, netbuf in ((debian, False), (ours, True)):
        root = tmp_path / deb.stem
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        lib = root / "usr/lib/x86_64-linux-gnu/libxenlight.so.4.17.0"
        assert libxenlight.inspect(str(lib)).netbuf is netbuf
        changelog = root / "usr/share/doc/libxenmisc4.17/changelog.Debian.gz"
        text = gzip.decompress(changelog.read_bytes()).decode()
        assert text.startswith(f"xen ({base}+netbuf1)") is netbuf
        files = sorted(p for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink())
        other_libraries.append([p.read_bytes() for p in files if p != lib])
    assert other_libraries[0] == other_libraries[1]  # libxenctrl, libxenguest ... are Debian's
    check = subprocess.run(["dpkg-deb", "--info", str(ours)], capture_output=True, text=True)
    assert check.returncode == 0
    md5 = member(ours, "md5sums")
    assert "usr/lib/x86_64-linux-gnu/libxenlight.so.4.17.0" in md5
    found = subprocess.run(["lintian", str(ours)], capture_output=True, text=True)
    assert [t for t in found.stdout.splitlines() if t[:2] in ("E:", "W:")] == [], found.stdout


@pytest.mark.host_tools(
    "reads symbols with binutils' nm, as make xen-netbuf-debs does: packaging is checked on the "
    "host"
)
def test_a_library_missing_one_of_debians_symbols_is_refused(
    xen_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [debian] = (xen_cache / "debs").glob("libxenmisc4.17_*.deb")
    real = xendebs.defined_symbols
    monkeypatch.setattr(
        xendebs,
        "defined_symbols",
        lambda path: (
            real(path) - ({"libxl_ctx_alloc@@VERS_4.17.0"} if "netbuf" in str(path) else set())
        ),
    )
    with pytest.raises(
        xendebs.Failed, match="lacks 1 of Debian's symbols: libxl_ctx_alloc@@VERS_4.17.0"
    ):
        xendebs.repack(
            debian, xen_cache / "netbuf" / "libxenlight.so.4.17.0", "4.17", tmp_path, print
        )
    assert list(tmp_path.iterdir()) == []


def test_without_xen_installed_or_named_it_says_what_to_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status = tmp_path / "status"
    status.write_text("Package: bash\nStatus: install ok installed\nVersion: 5.2\n")
    monkeypatch.setattr(xendebs, "STATUS", status)
    assert xendebs.main([]) == 2
    assert "make xen-netbuf-debs XEN=4.17|4.20" in capsys.readouterr().err
