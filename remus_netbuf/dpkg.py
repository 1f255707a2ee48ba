"""Which Debian package installed libxenlight, at what version, and whether it once had ours.

``make xen-netbuf-debs`` repacks Debian's ``libxenmisc<branch>`` as ``<V>+netbuf1``; Debian's next
Xen update replaces it with Debian's build again, which has no network buffering. ``check`` then
says which package, which version, and (from dpkg's log) that a ``+netbuf`` build was there
before: the library *lost* network buffering, and the command that rebuilds it.

Read from dpkg's own files (``info/<package>:<arch>.list``, ``status``, ``/var/log/dpkg.log``):
no dpkg-query run. Only ``libxenmisc*`` packages are looked at, the ones that hold libxenlight
on Debian and Ubuntu. On other distributions nothing is found and nothing is said.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

INFO = "/var/lib/dpkg/info"
STATUS = "/var/lib/dpkg/status"
LOG = "/var/log/dpkg.log"
MARK = "+netbuf"  # the suffix of make xen-netbuf-debs's versions: V+netbuf1
PREFIX = "libxenmisc"
_SUFFIX = re.compile(r"\+netbuf\d+$")


@dataclass(frozen=True)
class Provenance:
    """The package that installed a file, and the netbuf build it replaced, if any."""

    package: str  # libxenmisc4.17
    arch: str  # amd64
    version: str  # as installed now
    netbuf_before: str = ""  # the +netbuf version dpkg's log saw installed last ('' none)
    netbuf_installed: str = ""  # when dpkg's log last saw it installed

    @property
    def rebuilt_name(self) -> str:
        """What make xen-netbuf-debs makes for this version."""
        return f"{self.package}_{netbuf_version(self.version).split(':', 1)[-1]}_{self.arch}.deb"


# --- plain functions over the files' text ----------------------------------------------------


def base_version(version: str) -> str:
    """Debian's version: a +netbufN suffix dropped."""
    return _SUFFIX.sub("", version)


def netbuf_version(version: str) -> str:
    """The version make xen-netbuf-debs gives its build of Debian's ``version``."""
    return base_version(version) + MARK + "1"


def stanzas(status: str) -> Iterator[dict[str, str]]:
    """The fields of each package in dpkg's status file (continuation lines left out)."""
    for stanza in status.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            name, sep, value = line.partition(": ")
            if sep and not line[0].isspace():
                fields[name] = value
        yield fields


def installed(fields: dict[str, str]) -> bool:
    """Whether a status stanza's package is installed (held or not: ``hold ok installed``)."""
    return fields.get("Status", "").endswith(" installed")


def status_version(status: str, package: str, arch: str) -> str | None:
    """The installed version of ``package`` (of ``arch``) in dpkg's status file."""
    for fields in stanzas(status):
        if (
            fields.get("Package") == package
            and fields.get("Architecture") in (arch, "all")
            and installed(fields)
        ):
            return fields.get("Version")
    return None


def last_netbuf(log: str, package: str, arch: str) -> tuple[str, str]:
    """(version, when) of the last ``status installed`` of a +netbuf build of the package in
    dpkg's log; ('', '') if there was none."""
    found = ("", "")
    for line in log.splitlines():
        parts = line.split()
        # 2026-12-07 10:00:00 status installed libxenmisc4.17:amd64 4.17.5+72-...-1+netbuf1
        if (
            len(parts) == 6
            and parts[2:4] == ["status", "installed"]
            and parts[4] == f"{package}:{arch}"
            and MARK in parts[5]
        ):
            found = (parts[5], f"{parts[0]} {parts[1]}")
    return found


# --- reading them --------------------------------------------------------------------------------


def provenance(
    path: str, info: str = INFO, status: str = STATUS, log: str = LOG
) -> Provenance | None:
    """Who installed the file at ``path`` (a link is followed), or None (not a libxenmisc's)."""
    real = os.path.realpath(path)
    try:
        lists = sorted(n for n in os.listdir(info) if n.startswith(PREFIX) and n.endswith(".list"))
    except OSError:
        return None
    for name in lists:
        package, _, arch = name.removesuffix(".list").partition(":")
        if not _lists(os.path.join(info, name), real):
            continue
        version = status_version(_read(status), package, arch or "amd64")
        if version is None:
            return None
        before, when = last_netbuf(_read(log), package, arch or "amd64")
        return Provenance(package, arch or "amd64", version, before, when)
    return None


def _lists(list_file: str, real: str) -> bool:
    base = os.path.basename(real)
    return any(
        line.endswith("/" + base) and os.path.realpath(line) == real
        for line in _read(list_file).splitlines()
    )


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""
