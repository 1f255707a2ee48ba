"""Was libxenlight built with network buffering? On Debian's real library and on one rebuilt
with libnl3 (both from the e2e tier's cache, tools/xenpkg.py), and on synthetic ELF files.

The real ones need the cache, which the session hook (tests/conftest.py) fills when one of them
is selected, as ``python tools/xenpkg.py`` does: about a minute once. They fail, saying why,
when it could not be filled.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remus_netbuf.check import FAIL, OK, WARN, check_libxenlight, libxenlight_verdict
from remus_netbuf.dpkg import Provenance
from remus_netbuf.libxenlight import NotElf, find, inspect, read_dynamic
from tests.elfstub import NETBUF, PLAIN, write_stub
from tools import xenpkg

LIB = "libxenlight.so.4.17.0"


def cached(cache: Path, *parts: str) -> Path:
    path = cache.joinpath(*parts)
    assert path.is_file(), f"{cache / 'versions.json'} exists but {path} does not"
    return path


def debians(cache: Path) -> Path:
    return cached(cache, "root", "usr", "lib", xenpkg.MULTIARCH, LIB)


def rebuilt(cache: Path) -> Path:
    return cached(cache, "netbuf", LIB)


def test_debians_libxenlight_has_no_network_buffering(xen_cache: Path) -> None:
    lib = inspect(str(debians(xen_cache)))
    assert not lib.netbuf
    assert lib.evidence == "built without libnl (no rtnl_qdisc_plug_* symbols)"
    dynamic = read_dynamic(str(debians(xen_cache)))
    assert "libxenctrl.so.4.17" in dynamic.needed  # the parser reads the real thing
    assert not [n for n in dynamic.needed if n.startswith("libnl")]
    assert "libxl_domain_remus_start" in dynamic.symbols  # Remus itself is there


def test_the_rebuilt_libxenlight_buffers_and_says_why(xen_cache: Path) -> None:
    lib = inspect(str(rebuilt(xen_cache)))
    assert lib.netbuf
    assert lib.evidence == (
        "needs libnl-route-3.so.200, calls rtnl_qdisc_plug_buffer and rtnl_qdisc_plug_release_one"
    )


def test_both_real_libraries_are_of_one_xen_version(xen_cache: Path) -> None:
    recorded = json.loads(cached(xen_cache, "versions.json").read_text())
    assert recorded["debs"] == recorded["source"] == recorded["version"]


def test_the_check_fails_on_debians_naming_both_ways_out(xen_cache: Path) -> None:
    result = check_libxenlight(str(debians(xen_cache)))
    assert result.level == FAIL
    assert "no network buffering" in result.detail
    assert '"Remus: No support for network buffering"' in result.detail
    assert "with libnl3" in result.fix and "xl remus -n" in result.fix and "unsafe" in result.fix


def test_the_check_is_ok_on_the_rebuilt_one_through_its_soname_link(
    xen_cache: Path, tmp_path: Path
) -> None:
    link = tmp_path / "libxenlight.so.4.17"
    link.symlink_to(rebuilt(xen_cache))
    result = check_libxenlight(find([str(tmp_path)]))
    assert result.level == OK, result
    assert result.detail.startswith(f"{link} (-> {LIB}): network buffering built in: needs ")


# --- synthetic ---------------------------------------------------------------------------


def test_stubs_decide_as_the_real_libraries_do(tmp_path: Path) -> None:
    assert inspect(str(write_stub(tmp_path / "a.so", **NETBUF))).netbuf
    assert not inspect(str(write_stub(tmp_path / "b.so", **PLAIN))).netbuf
    plug_only = write_stub(tmp_path / "c.so", needed=(), symbols=NETBUF["symbols"])
    assert inspect(str(plug_only)).evidence.startswith("calls rtnl_qdisc_plug_buffer")


def test_find_takes_the_first_directory_and_the_soname_link(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for name in ("libxenlight.so.4.17.0", "libxenlight.so.4.17", "libxenlight.so"):
        (second / name).write_bytes(b"")
    (first / "libxenlight.so").write_bytes(b"")  # the -dev link: not what xl loads
    assert find([str(tmp_path / "none"), str(first), str(second)]) == str(
        second / "libxenlight.so.4.17"
    )
    assert find([str(first)]) is None


def test_a_missing_library_warns_that_xl_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("remus_netbuf.libxenlight.search_dirs", lambda: [str(tmp_path)])
    result = check_libxenlight()
    assert result.level == WARN
    assert result.detail == f"no libxenlight in {tmp_path}: xl is not installed here"


@pytest.mark.parametrize(
    "content", [b"", b"#!/bin/sh\n", b"\x7fELF\x02\x01\x01" + bytes(40), b"\x7fELF\x02\x01"]
)
def test_what_is_no_readable_elf_warns_that_it_cannot_tell(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "libxenlight.so.4.17"
    path.write_bytes(content)
    with pytest.raises(NotElf):
        read_dynamic(str(path))
    result = check_libxenlight(str(path))
    assert result.level == WARN and result.detail.startswith("cannot tell whether it buffers: ")


def test_verdict_names_the_file_and_the_evidence(tmp_path: Path) -> None:
    lib = inspect(str(write_stub(tmp_path / "x.so", **PLAIN)))
    result = libxenlight_verdict(lib)
    assert result.detail.startswith(f"{tmp_path}/x.so: no network buffering, built without libnl")


DEBIANS = "4.17.5+72-g01140da4e8-1"


def test_on_debian_the_fix_is_make_xen_netbuf_debs_for_the_installed_version(
    tmp_path: Path,
) -> None:
    lib = inspect(str(write_stub(tmp_path / "x.so", **PLAIN)))
    result = libxenlight_verdict(lib, Provenance("libxenmisc4.17", "amd64", DEBIANS))
    assert result.level == FAIL
    assert result.detail.startswith(f"{tmp_path}/x.so (libxenmisc4.17 {DEBIANS}): no network ")
    assert result.fix.startswith(
        "make xen-netbuf-debs in remus-netbuf's source tree, then apt install "
        f"./dist/xen-netbuf/libxenmisc4.17_{DEBIANS}+netbuf1_amd64.deb"
    )
    assert "xl remus -n" in result.fix


def test_after_debians_update_it_says_the_library_lost_network_buffering(tmp_path: Path) -> None:
    lib = inspect(str(write_stub(tmp_path / "x.so", **PLAIN)))
    update = "4.17.5+72-g01140da4e8-2"
    package = Provenance(
        "libxenmisc4.17", "amd64", update, DEBIANS + "+netbuf1", "2026-12-07 10:00:00"
    )
    result = libxenlight_verdict(lib, package)
    assert result.level == FAIL
    assert result.detail.startswith(
        f"{tmp_path}/x.so: lost network buffering: libxenmisc4.17 {DEBIANS}+netbuf1 (installed "
        f"2026-12-07 10:00:00) was replaced by {update} (a Xen update from Debian?), "
        "built without libnl"
    )
    assert f"apt install ./dist/xen-netbuf/libxenmisc4.17_{update}+netbuf1_amd64.deb" in result.fix


def test_ours_installed_is_ok_and_named(tmp_path: Path) -> None:
    lib = inspect(str(write_stub(tmp_path / "x.so", **NETBUF)))
    result = libxenlight_verdict(lib, Provenance("libxenmisc4.17", "amd64", DEBIANS + "+netbuf1"))
    assert result.level == OK
    assert f"(libxenmisc4.17 {DEBIANS}+netbuf1): network buffering built in" in result.detail
