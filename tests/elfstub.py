"""A minimal ELF64 shared object for the libxenlight probe: .dynstr, .dynsym, .dynamic.

Only what remus_netbuf.libxenlight reads (section headers, the dynamic symbol table and the
DT_NEEDED entries), so that the check can be tested, and the check's end-to-end tests can
point ``--libxenlight`` at a library with or without network buffering, on any host.
"""

from __future__ import annotations

import struct
from pathlib import Path

from remus_netbuf.libxenlight import PLUG_SYMBOLS

NETBUF = {"needed": ("libnl-route-3.so.200", "libnl-3.so.200", "libc.so.6"),
          "symbols": ("libxl_domain_remus_start", *PLUG_SYMBOLS)}  # fmt: skip
PLAIN = {"needed": ("libc.so.6",), "symbols": ("libxl_domain_remus_start",)}


def write_stub(path: Path, needed: tuple[str, ...], symbols: tuple[str, ...]) -> Path:
    dynstr = bytearray(b"\0")

    def add(name: str) -> int:
        at = len(dynstr)
        dynstr.extend(name.encode() + b"\0")
        return at

    needed_at = [add(n) for n in needed]
    # st_name, st_info (GLOBAL FUNC), st_other, st_shndx (UND: imported), st_value, st_size
    dynsym = bytes(24) + b"".join(struct.pack("<IBBHQQ", add(s), 0x12, 0, 0, 0, 0) for s in symbols)
    dynamic = b"".join(struct.pack("<qQ", 1, at) for at in needed_at) + struct.pack("<qQ", 0, 0)
    shstrtab = b"\0.dynstr\0.dynsym\0.dynamic\0.shstrtab\0"
    body = [bytes(dynstr), dynsym, dynamic, shstrtab]
    offsets, at = [], 64
    for part in body:
        offsets.append(at)
        at += len(part)
    shoff = at
    # name, type, flags, addr, offset, size, link, info, addralign, entsize
    headers = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    layout = [(1, 3, 0, 0), (9, 11, 1, 24), (17, 6, 1, 16), (26, 3, 0, 0)]
    for (name, kind, link, entsize), offset, part in zip(layout, offsets, body, strict=True):
        info = 1 if kind == 11 else 0  # .dynsym: the first global symbol
        fields = (name, kind, 0, 0, offset, len(part), link, info, 8, entsize)
        headers.append(struct.pack("<IIQQQQIIQQ", *fields))
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 5, 4)
    path.write_bytes(header + b"".join(body) + b"".join(headers))
    return path
