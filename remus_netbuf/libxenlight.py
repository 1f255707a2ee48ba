"""Was the libxenlight xl loads built with Remus network buffering?

libxl's Makefile compiles ``libxl_netbuffer.c`` when configure found libnl3 (``CONFIG_LIBNL=y``)
and ``libxl_nonetbuffer.c`` otherwise, whose setup always fails: ``xl remus`` then says "Remus:
No support for network buffering" (that string is in libxl_remus.c, so in both builds). Only the
netbuf build calls libnl-route's sch_plug verbs, at every checkpoint:
``rtnl_qdisc_plug_buffer`` and ``rtnl_qdisc_plug_release_one``. They are the signal, read from
the ELF's dynamic symbol table (imported from libnl-route-3.so.200, or defined, were libnl ever
linked in statically); the DT_NEEDED entry for libnl-route is reported beside them. Debian's
libxenlight (built without libnl) has neither.

The ELF is parsed here with :mod:`struct` (section headers, .dynsym and .dynamic), no readelf.
"""

from __future__ import annotations

import os
import struct
import sysconfig
from dataclasses import dataclass

PLUG_SYMBOLS = ("rtnl_qdisc_plug_buffer", "rtnl_qdisc_plug_release_one")
LIBNL_ROUTE = "libnl-route-3.so"
SONAME_PREFIX = "libxenlight.so."
_SHT_DYNAMIC, _SHT_DYNSYM = 6, 11
_DT_NEEDED = 1


class NotElf(Exception):
    """The file is not an ELF shared object this module can read."""


@dataclass(frozen=True)
class Dynamic:
    """What an ELF file's dynamic section and symbol table say."""

    needed: tuple[str, ...]  # DT_NEEDED
    symbols: frozenset[str]  # .dynsym names, imported or defined


@dataclass(frozen=True)
class Libxenlight:
    path: str
    netbuf: bool
    evidence: str  # what decided it, in words


def search_dirs() -> list[str]:
    """Where the dynamic loader finds libxenlight on Debian, in its order (ld.so.conf.d puts
    /usr/local first, then the multiarch directories; the built-in /lib and /usr/lib last)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return [
        "/usr/local/lib",
        f"/usr/local/lib/{multiarch}",
        f"/lib/{multiarch}",
        f"/usr/lib/{multiarch}",
        "/lib",
        "/usr/lib",
    ]


def find(dirs: list[str] | None = None) -> str | None:
    """The libxenlight xl loads: the first directory holding one, its soname link
    (``libxenlight.so.4.17``, what xl's DT_NEEDED names) before the file itself."""
    for d in search_dirs() if dirs is None else dirs:
        try:
            names = sorted(n for n in os.listdir(d) if n.startswith(SONAME_PREFIX))
        except OSError:
            continue
        if names:
            return os.path.join(d, min(names, key=len))
    return None


def inspect(path: str) -> Libxenlight:
    """Decide from the library at ``path`` (OSError, NotElf when it cannot be read)."""
    dynamic = read_dynamic(path)
    plug = [s for s in PLUG_SYMBOLS if s in dynamic.symbols]
    libnl = [n for n in dynamic.needed if n.startswith(LIBNL_ROUTE)]
    if plug:
        via = f"needs {libnl[0]}, " if libnl else ""
        return Libxenlight(path, True, f"{via}calls {' and '.join(plug)}")
    return Libxenlight(path, False, "built without libnl (no rtnl_qdisc_plug_* symbols)")


def read_dynamic(path: str) -> Dynamic:
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise NotElf(f"{path}: not an ELF file")
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    try:
        sections = _sections(data, wide, order)
        needed: list[str] = []
        symbols: set[str] = set()
        for kind, offset, size, link, entsize in sections:
            if kind not in (_SHT_DYNAMIC, _SHT_DYNSYM) or not entsize:
                continue
            strtab = sections[link]
            strings = data[strtab[1] : strtab[1] + strtab[2]]
            for at in range(offset, offset + size - entsize + 1, entsize):
                if kind == _SHT_DYNAMIC:
                    tag, value = struct.unpack_from(order + ("qQ" if wide else "iI"), data, at)
                    if tag == _DT_NEEDED:
                        needed.append(_string(strings, value))
                else:
                    symbols.add(_string(strings, struct.unpack_from(order + "I", data, at)[0]))
    except (struct.error, IndexError, UnicodeDecodeError) as err:
        raise NotElf(f"{path}: a malformed ELF file ({err})") from err
    symbols.discard("")
    if not symbols:
        raise NotElf(f"{path}: no dynamic symbol table")
    return Dynamic(tuple(needed), frozenset(symbols))


def _sections(data: bytes, wide: bool, order: str) -> list[tuple[int, int, int, int, int]]:
    """(type, offset, size, link, entsize) of each section header."""
    if wide:
        (shoff,) = struct.unpack_from(order + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 0x3A)
        layout = order + "IIQQQQIIQQ"
    else:
        (shoff,) = struct.unpack_from(order + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 0x2E)
        layout = order + "IIIIIIIIII"
    found = []
    for i in range(shnum):
        _, kind, _, _, offset, size, link, _, _, entsize = struct.unpack_from(
            layout, data, shoff + i * shentsize
        )
        found.append((kind, offset, size, link, entsize))
    return found


def _string(table: bytes, at: int) -> str:
    end = table.index(b"\0", at)
    return table[at:end].decode()
