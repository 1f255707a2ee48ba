"""Which package installed libxenlight, and whether a netbuf build of it was there before: from
dpkg's status file, its .list files and its log (remus_netbuf.dpkg), on copies laid out here."""

from __future__ import annotations

from pathlib import Path

from remus_netbuf import dpkg

V = "4.17.5+72-g01140da4e8-1"
STATUS = f"""\
Package: libxenmisc4.17
Status: install ok installed
Architecture: amd64
Version: {V}
Description: Xen runtime libraries
 Version: 9.9 (a continuation line)

Package: libxenmisc4.16
Status: deinstall ok config-files
Architecture: amd64
Version: 4.16.2-1
"""
LOG = f"""\
2026-12-01 09:00:00 status installed libxenmisc4.17:amd64 {V}
2026-12-02 09:00:00 status installed libxenmisc4.17:amd64 {V}+netbuf1
2026-12-02 09:00:01 status installed libxenmisc4.17:i386 {V}+netbuf2
2026-12-03 09:00:00 upgrade libxenmisc4.17:amd64 {V}+netbuf1 {V[:-1]}2
2026-12-03 09:00:01 status installed libxenmisc4.17:amd64 {V[:-1]}2
"""


def test_the_status_file_gives_the_installed_version_only() -> None:
    assert dpkg.status_version(STATUS, "libxenmisc4.17", "amd64") == V
    assert dpkg.status_version(STATUS, "libxenmisc4.16", "amd64") is None  # config-files
    assert dpkg.status_version(STATUS, "libxenmisc4.17", "i386") is None


def test_the_log_gives_the_last_netbuf_build_of_that_architecture() -> None:
    assert dpkg.last_netbuf(LOG, "libxenmisc4.17", "amd64") == (
        f"{V}+netbuf1",
        "2026-12-02 09:00:00",
    )
    assert dpkg.last_netbuf(LOG.replace("+netbuf", ""), "libxenmisc4.17", "amd64") == ("", "")


def test_the_rebuilt_name_is_of_the_installed_debian_version() -> None:
    assert dpkg.Provenance("libxenmisc4.17", "amd64", V).rebuilt_name == (
        f"libxenmisc4.17_{V}+netbuf1_amd64.deb"
    )
    ours = dpkg.Provenance("libxenmisc4.17", "amd64", f"1:{V}+netbuf1")
    assert ours.rebuilt_name == f"libxenmisc4.17_{V}+netbuf1_amd64.deb"  # no epoch, one suffix


def lay_out(tmp_path: Path, status: str, log: str) -> tuple[Path, Path]:
    """A library, its soname link, and dpkg's files saying libxenmisc4.17 installed it."""
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    lib = lib_dir / "libxenlight.so.4.17.0"
    lib.write_bytes(b"")
    (lib_dir / "libxenlight.so.4.17").symlink_to(lib.name)
    info = tmp_path / "info"
    info.mkdir()
    (info / "libxenmisc4.17:amd64.list").write_text(f"/.\n{lib_dir}\n{lib}\n")
    (info / "bash.list").write_text(f"{lib}\n")  # only libxenmisc* are read
    (tmp_path / "status").write_text(status)
    (tmp_path / "dpkg.log").write_text(log)
    return lib_dir / "libxenlight.so.4.17", info


def test_provenance_follows_the_soname_link_to_the_package_and_its_past(tmp_path: Path) -> None:
    link, info = lay_out(tmp_path, STATUS.replace(V, V[:-1] + "2", 1), LOG)
    found = dpkg.provenance(
        str(link), str(info), str(tmp_path / "status"), str(tmp_path / "dpkg.log")
    )
    assert found == dpkg.Provenance(
        "libxenmisc4.17", "amd64", V[:-1] + "2", f"{V}+netbuf1", "2026-12-02 09:00:00"
    )


def test_no_provenance_for_a_file_no_libxenmisc_lists(tmp_path: Path) -> None:
    link, info = lay_out(tmp_path, STATUS, "")
    other = tmp_path / "libxenlight.so.4.17.0"
    other.write_bytes(b"")
    args = (str(info), str(tmp_path / "status"), str(tmp_path / "dpkg.log"))
    assert dpkg.provenance(str(other), *args) is None
    assert dpkg.provenance(str(link), str(tmp_path / "none"), *args[1:]) is None
    assert dpkg.provenance(str(link), *args) == dpkg.Provenance("libxenmisc4.17", "amd64", V)
