"""Xen's userland for the real-Xen end-to-end tier, from Debian's own packages, cached.

The e2e tier boots Debian's Xen 4.17 in QEMU with the host's ``/`` as dom0's root, read-only,
and the host has no Xen installed (only libxenstore4 and xenstore-utils). So the hypervisor and
the Xen userland come from here, a tree dom0 stacks over ``/`` (``lowerdir=ROOT:HOSTROOT``),
and the host is never modified (but for the build dependencies, below):

- ``root/``: the binary packages of one Xen version V, ``apt-get download``ed (exactly V) and
  ``dpkg-deb -x``ed, with the runtime dependencies the host lacks (libyajl2, bridge-utils,
  libnl-utils for Xen's own remus-netbuf-setup ...). Nothing for HVM or qemu.
- ``xen-4.17-amd64``: the hypervisor, unzipped: a multiboot ELF for ``qemu -kernel``.
- ``netbuf/``: libxenlight, xl and libxl-save-helper rebuilt from V's Debian source with libnl3
  (Debian builds libxl without network buffering: ``xl remus`` says "No support for network
  buffering"), and Xen's own bash remus-netbuf-setup from that source (Debian does not ship it:
  it is installed only with libnl). :attr:`XenTree.netbuf_files` says where each goes in dom0.
- ``versions.json``: V for the debs, for the source, and the host's libxenstore4.

V is the newest Xen 4.17 whose binary packages and source are both downloadable from
Debian's apt here (the private apt state in ``apt/``: the host's sources.list is never read or
edited). The debs and the source must be the same V: :func:`ensure` fails loudly otherwise.
The host's libxenstore4 may differ: in dom0 the tree's own libxenstore (of V) shadows it.

The build installs what it needs on the host with apt-get, only what is missing: this machine
is the build environment (as tools/ensure-deps installs QEMU for the kernel tier).

    python tools/xenpkg.py [--xen 4.17|4.20] [--cache DIR]

(--xen 4.20: trixie's Xen, in a debootstrapped root of its own, :mod:`tools.xenroot`.)

prints what it did (and the wall times of download and build); a second run finds everything
cached and does nothing.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: tools/ is on the path, the repo is not
    sys.path.insert(0, str(REPO))

from tools.privapt import PrivateApt, last_line  # noqa: E402

CACHE = REPO / ".cache" / "e2e"
BRANCH = "4.17"
MULTIARCH = "x86_64-linux-gnu"
# The Debian suites V may come from, binary and source alike (bookworm-security first: the
# host's libxenstore4 is from there).
SOURCES = """\
Types: deb deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
# Xen's packages, all of version V. Not qemu-system-xen, grub-xen-host, ovmf: HVM only.
XEN_PACKAGES = (
    f"xen-hypervisor-{BRANCH}-amd64",
    "xen-hypervisor-common",
    f"xen-utils-{BRANCH}",
    "xen-utils-common",
    f"libxenmisc{BRANCH}",
    "libxencall1",
    "libxendevicemodel1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenhypfs1",
    "libxentoollog1",
    "libxenstore4",
    "libxentoolcore1",
)
# Runtime dependencies outside Xen's source package, downloaded (any version: the suite's) only
# when the host lacks them; everything else xl, the daemons and the scripts use (libc, ncurses,
# zstd, iproute2, kmod, net-tools, util-linux, xenstore-utils ...) the host's / provides.
EXTRA_PACKAGES = {
    "libyajl2": "libxenlight, libxenmisc, xl: JSON",
    "bridge-utils": "vif-bridge: brctl, when installed (else ip link)",
    "libnl-3-200": "the netbuf libxenlight; libnl-utils",
    "libnl-route-3-200": "the netbuf libxenlight (sch_plug); libnl-utils",
    "libnl-utils": "Xen's remus-netbuf-setup: nl-qdisc-add, nl-qdisc-delete, nl-qdisc-list",
    "libnl-cli-3-200": "libnl-utils",
    "libnl-genl-3-200": "libnl-utils",
    "libnl-nf-3-200": "libnl-utils",
    "libnl-idiag-3-200": "libnl-utils",
}
# ELF files that must load in dom0 (checked with ldd against the tree and the host).
ELVES = (
    f"usr/lib/xen-{BRANCH}/bin/xl",
    f"usr/lib/xen-{BRANCH}/bin/xenstored",
    f"usr/lib/xen-{BRANCH}/bin/xen-init-dom0",
    f"usr/lib/xen-{BRANCH}/bin/xenconsoled",
    f"usr/lib/xen-{BRANCH}/bin/libxl-save-helper",
    "usr/bin/nl-qdisc-add",
    "sbin/brctl",
)
# Commands the hotplug scripts run (vif-bridge and what it sources, remus-netbuf-setup).
SCRIPT_COMMANDS = (
    "ip", "tc", "brctl", "flock", "stat", "logger", "awk", "egrep", "ifconfig", "modinfo",
    "nl-qdisc-add", "nl-qdisc-delete", "nl-qdisc-list",
    "xenstore-read", "xenstore-write", "xenstore-rm", "xenstore-exists", "xenstore-list",
)  # fmt: skip
COMMAND_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
# What the netbuf build needs installed on the host: package -> a file it provides.
BUILD_DEPS = {
    "build-essential": "/usr/bin/gcc",
    "make": "/usr/bin/make",
    "pkg-config": "/usr/bin/pkg-config",
    "dpkg-dev": "/usr/bin/dpkg-source",
    "xz-utils": "/usr/bin/xz",
    "autoconf": "/usr/bin/autoconf",
    "autotools-dev": "/usr/share/misc/config.sub",  # Debian's patches delete Xen's copies
    "acpica-tools": "/usr/bin/iasl",  # configure insists
    "bison": "/usr/bin/bison",
    "flex": "/usr/bin/flex",
    "python3-dev": "/usr/include/python3.11/Python.h",
    "libyajl-dev": "/usr/include/yajl/yajl_gen.h",
    "libzstd-dev": "/usr/include/zstd.h",
    "libncurses-dev": "/usr/include/ncurses.h",
    "uuid-dev": "/usr/include/uuid/uuid.h",
    "zlib1g-dev": "/usr/include/zlib.h",
    "liblzma-dev": "/usr/include/lzma.h",
    "libnl-route-3-dev": "/usr/include/libnl3/netlink/route/qdisc/plug.h",
}


def configure_line(branch: str) -> tuple[str, ...]:
    """Debian's own configure line (debian/rules), less what a libxl build does not need."""
    return (
        "./configure", "--disable-stubdom", "--prefix=/usr", "--includedir=/usr/include",
        f"--libdir=/usr/lib/{MULTIARCH}", f"--with-libexec-libdir-suffix=/{MULTIARCH}",
        "--sysconfdir=/etc", "--localstatedir=/var", f"--with-libexec-leaf-dir=xen-{branch}",
        "--disable-qemu-traditional", "--disable-rombios",
        "--with-system-qemu=/usr/libexec/xen-qemu-system-i386", "--disable-ocamltools",
        "--disable-docs", "--disable-seabios", "--disable-ipxe", "--disable-pvshim",
        "--disable-xsmpolicy", "--disable-golang",
    )  # fmt: skip


def netbuf_map(branch: str) -> dict[str, tuple[str, str]]:
    """What the build yields: build tree path -> (name in netbuf/, where it goes in dom0)."""
    return {
        f"tools/libs/light/libxenlight.so.{branch}.0": (
            f"libxenlight.so.{branch}.0",
            f"/usr/lib/{MULTIARCH}/libxenlight.so.{branch}.0",
        ),
        "tools/xl/xl": ("xl", f"/usr/lib/xen-{branch}/bin/xl"),
        "tools/libs/light/libxl-save-helper": (
            "libxl-save-helper",
            f"/usr/lib/xen-{branch}/bin/libxl-save-helper",
        ),
        "tools/hotplug/Linux/remus-netbuf-setup": (
            "remus-netbuf-setup",
            "/etc/xen/scripts/remus-netbuf-setup",
        ),
    }


CONFIGURE = configure_line(BRANCH)
MAKE_DIRS = ("tools/include", "tools/libs", "tools/xl")
NETBUF = netbuf_map(BRANCH)
RECIPE = json.dumps([BUILD_DEPS, CONFIGURE, MAKE_DIRS, sorted(NETBUF), "autogen,config.sub"])
BUILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # no pyenv shims


class XenPkgError(Exception):
    """Something ensure() could not do; the message says what and why."""


@dataclass(frozen=True)
class XenTree:
    """What :func:`ensure` made, all under ``cache``."""

    cache: Path
    version: str  # V: the debs and the source
    host_libxenstore: str  # the host's libxenstore4, "" if none (the tree's shadows it)
    root: Path  # the extracted packages: overlay it over / in dom0
    hypervisor: Path  # multiboot ELF for qemu -kernel
    netbuf: Path  # the netbuf build's files
    netbuf_files: dict[str, Path]  # dom0 path -> file in netbuf/ to put there
    packages: dict[str, str]  # every package in root/ -> its version
    versions: Path  # versions.json
    timings: dict[str, float] = field(default_factory=dict)  # this run's wall times (s)
    branch: str = BRANCH
    # Xen 4.20 (tools/xenroot.py): root/ is a whole Debian root, dom0's / itself (not a layer
    # over the host's), with dom0's kernel, its modules and the Python that runs our checkout.
    own_root: bool = False
    kernel: Path | None = None  # dom0's vmlinuz (None: the kernel tier's, tools/vm.py)
    modules: Path | None = None  # its /usr/lib/modules/VERSION
    python: str = ""  # the root's python3 in dom0 ("": the host's venv)
    pytar: Path | None = None  # the root's standard library, unpacked into RAM in dom0
    netbuf_missing: str = ""  # why there is no netbuf build (its source could not be fetched)
    netbuf_note: str = ""  # what the netbuf build is when not V's own (a stand-in source)


Say = Callable[[str], None]


RELEASES = ("4.17", "4.20")  # 4.17: bookworm's, over the host's /; 4.20: trixie's own root


def cache_for(release: str) -> Path:
    """4.17 keeps the cache's top level (the tests read .cache/e2e/root and netbuf/)."""
    return CACHE if release == BRANCH else CACHE / release


def ensure(
    cache: Path = CACHE, say: Say = lambda _: None, release: str = BRANCH, version: str = ""
) -> XenTree:
    """Everything in the cache, fetched and built only what is missing (idempotent). ``version``
    pins V (4.17 only: make xen-netbuf-debs for the version a dom0 has installed)."""
    if release not in RELEASES:
        raise XenPkgError(f"Xen {release}: not one of {', '.join(RELEASES)}")
    if release != BRANCH:
        from tools import xenroot  # trixie's Xen: a debootstrapped root, built inside it

        return xenroot.ensure(cache, say)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one maker at a time (make e2e and a test run, say)
        recorded = _read_versions(cache)
        timings: dict[str, float] = {}
        if version and recorded.get("version") != version:
            recorded = {"version": version, "pinned": True}
        if _complete(cache, recorded):
            say(f"Xen {recorded['version']}: everything cached in {cache}")
        else:
            recorded = _make(cache, recorded, timings, say)
    _check_skew(recorded)
    return _tree(cache, recorded, timings)


def cached(cache: Path = CACHE) -> bool:
    """Whether everything is in the cache already (:func:`ensure` would only look)."""
    return _complete(cache, _read_versions(cache))


def _complete(cache: Path, recorded: dict[str, object]) -> bool:
    return (
        bool(recorded.get("version"))
        and recorded.get("recipe") == recipe_key(str(recorded["version"]))
        and all((cache / "netbuf" / name).is_file() for name, _ in NETBUF.values())
        and (cache / "root" / "usr").is_dir()
        and (cache / f"xen-{BRANCH}-amd64").is_file()
    )


def _make(
    cache: Path, recorded: dict[str, object], timings: dict[str, float], say: Say
) -> dict[str, object]:
    apt = Apt(cache / "apt")
    started = time.monotonic()
    apt.update()
    version = str(recorded.get("version") or "")
    if recorded.get("pinned") and not (cache / "src" / f"xen_{_noepoch(version)}.dsc").is_file():
        (cache / "src").mkdir(parents=True, exist_ok=True)
        why = download_source(apt, cache / "src", version)
        if why:
            raise XenPkgError(f"Debian's source of Xen {version} is not downloadable here ({why})")
    elif not (version and (cache / "src" / f"xen_{_noepoch(version)}.dsc").is_file()):
        version, skipped = choose_version(apt, cache / "src", say)
        recorded = {"version": version, "skipped": skipped}
    source = dsc_version(cache / "src" / f"xen_{_noepoch(version)}.dsc")
    packages = fetch_debs(apt, version, cache / "debs", say)
    timings["download"] = time.monotonic() - started
    say(f"download (apt update, source, {len(packages)} debs): {timings['download']:.1f} s")
    started = time.monotonic()
    extract(cache, packages, say)
    timings["extract"] = time.monotonic() - started
    key = recipe_key(version)
    if recorded.get("recipe") != key or not all(
        (cache / "netbuf" / name).is_file() for name, _ in NETBUF.values()
    ):
        started = time.monotonic()
        build_netbuf(cache, version, say)
        timings["build"] = time.monotonic() - started
        say(f"netbuf build: {timings['build']:.1f} s")
    check_loads(cache, say)
    recorded = {
        **recorded,
        "version": version,
        "debs": _deb_version(cache, packages),
        "source": source,
        "host_libxenstore4": host_version("libxenstore4"),
        "recipe": key,
        "packages": {name: ver for name, (ver, _) in sorted(packages.items())},
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    tmp = cache / "versions.json.tmp"
    tmp.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    tmp.rename(cache / "versions.json")
    return recorded


def _tree(cache: Path, recorded: dict[str, object], timings: dict[str, float]) -> XenTree:
    packages = recorded.get("packages")
    return XenTree(
        cache=cache,
        version=str(recorded["version"]),
        host_libxenstore=str(recorded.get("host_libxenstore4") or ""),
        root=cache / "root",
        hypervisor=cache / f"xen-{BRANCH}-amd64",
        netbuf=cache / "netbuf",
        netbuf_files={dest: cache / "netbuf" / name for name, dest in NETBUF.values()},
        packages=dict(packages) if isinstance(packages, dict) else {},
        versions=cache / "versions.json",
        timings=timings,
    )


def _check_skew(recorded: dict[str, object]) -> None:
    """The debs and the source must be one V: libxl's private ABI (libxenctrl, libxenguest are
    4.17.x sonames but not stable across x) is only promised within one build."""
    debs, source = recorded.get("debs"), recorded.get("source")
    if not (debs == source == recorded.get("version")):
        raise XenPkgError(
            f"version skew: debs {debs}, source {source}, chosen {recorded.get('version')}: "
            "rm -r the cache and run again"
        )


def _read_versions(cache: Path) -> dict[str, object]:
    try:
        found = json.loads((cache / "versions.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def recipe_key(version: str) -> str:
    return f"{version}+{hashlib.sha256(RECIPE.encode()).hexdigest()[:12]}"


# --- apt, privately --------------------------------------------------------------------------


class Apt(PrivateApt):
    """The private apt state of the Xen packages (bookworm, its updates and security)."""

    error = XenPkgError

    def __init__(self, state: Path, sources: str = SOURCES) -> None:
        super().__init__(state, sources, "xen.sources")


def download_source(apt: Apt, src: Path, version: str) -> str:
    """``apt-get source --download-only xen=VERSION`` into src: '' when it came, else why not."""
    done = subprocess.run(
        ["apt-get", *apt.options, "source", "--download-only", f"xen={version}"],
        cwd=src,
        capture_output=True,
        text=True,
    )
    return "" if done.returncode == 0 else _fetch_error(done.stderr)


def choose_version(
    apt: Apt, src: Path, say: Say, branch: str = BRANCH
) -> tuple[str, dict[str, str]]:
    """The newest Xen of ``branch`` with binaries and source both downloadable; its source is
    fetched into ``src`` (once: the build extracts it from there). Returns V and why newer ones
    were not."""
    binaries = set(_versions(apt.run("apt-cache", "madison", f"xen-utils-{branch}")))
    sources = _versions(apt.run("apt-cache", "showsrc", "--only-source", "xen"), "Version:")
    candidates = sorted(
        (v for v in set(sources) & binaries if v.startswith(branch + ".")),
        key=functools.cmp_to_key(_compare),
        reverse=True,
    )
    skipped: dict[str, str] = {}
    src.mkdir(parents=True, exist_ok=True)
    for version in candidates:
        why = download_source(apt, src, version)
        if not why:
            say(f"Xen {version}: binaries and source downloadable" + _skipped(skipped))
            return version, skipped
        skipped[version] = why
        say(f"Xen {version}: source not downloadable ({why})")
    raise XenPkgError(f"no Xen {branch} with binaries and source both downloadable: {skipped}")


def _fetch_error(stderr: str) -> str:
    """apt's reason, e.g. ``404  Not Found``, from its ``E: Failed to fetch URL  REASON``."""
    for line in stderr.splitlines():
        if line.startswith("E: Failed to fetch ") and "  " in line:
            url, reason = line.removeprefix("E: Failed to fetch ").split("  ", 1)
            name = urllib.parse.unquote(url.rsplit("/", 1)[-1])
            return f"{name}: {' '.join(reason.split('[IP:')[0].split())}"
    return last_line(stderr)


def _skipped(skipped: dict[str, str]) -> str:
    return f" (newer, source missing: {', '.join(skipped)})" if skipped else ""


def _versions(text: str, prefix: str = "") -> list[str]:
    """Versions from apt-cache madison (``pkg | version | source``) or showsrc lines."""
    found = []
    for line in text.splitlines():
        if prefix and line.startswith(prefix):
            found.append(line.removeprefix(prefix).strip())
        elif not prefix and line.count("|") == 2:
            found.append(line.split("|")[1].strip())
    return found


def _compare(a: str, b: str) -> int:
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    return -1 if lt else 1


def _noepoch(version: str) -> str:
    return version.split(":", 1)[-1]


def dsc_version(dsc: Path) -> str:
    for line in dsc.read_text(errors="replace").splitlines():
        if line.startswith("Version:"):
            return line.removeprefix("Version:").strip()
    raise XenPkgError(f"{dsc}: no Version field")


def host_version(package: str) -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", package],
        capture_output=True,
        text=True,
    )
    status, _, version = done.stdout.partition(" ")
    return version if done.returncode == 0 and status == "installed" else ""


def fetch_debs(apt: Apt, version: str, debs: Path, say: Say) -> dict[str, tuple[str, Path]]:
    """Xen's packages of V and the extra ones the host lacks: package -> (version, .deb)."""
    wanted = {name: version for name in XEN_PACKAGES}
    for name, why in EXTRA_PACKAGES.items():
        if not host_version(name):
            wanted[name] = ""
            say(f"  {name}: not on the host ({why})")
    debs.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_")[0]: p for p in debs.glob("*.deb")}
    missing = [
        f"{name}={ver}" if ver else name
        for name, ver in wanted.items()
        if name not in have or (ver and _deb_field(have[name], "Version") != ver)
    ]
    if missing:
        for name in missing:
            for stale in debs.glob(f"{name.split('=')[0]}_*.deb"):
                stale.unlink()
        apt.run("apt-get", "download", *missing, cwd=debs)
        say(f"downloaded {len(missing)} packages into {debs}")
    found = {p.name.split("_")[0]: p for p in debs.glob("*.deb")}
    return {name: (_deb_field(found[name], "Version"), found[name]) for name in wanted}


# What a Debian dom0 has beside Xen that this host may lack, for ``dpkg -i`` of Xen's packages in
# the tier's dom0 (not extracted into root/): xen-utils-common depends on udev, which must be of
# the host's libudev1's version.
DOM0_EXTRA = {"udev": "libudev1"}


def dom0_debs(tree: XenTree, say: Say) -> list[Path]:
    """The .debs the real-Xen tier's dom0 installs with dpkg to be a Debian dom0 running
    Debian's Xen V: Xen's packages, the extra ones the host lacks, and DOM0_EXTRA's (each
    downloaded once, pinned to the version of the host's library it must match)."""
    debs = tree.cache / "debs"
    found = [_deb_name(debs, name) for name in tree.packages]
    for name, library in DOM0_EXTRA.items():
        if host_version(name):
            continue
        version = host_version(library)
        have = sorted(debs.glob(f"{name}_*.deb"))
        if not have or (version and _deb_field(have[0], "Version") != version):
            for stale in have:
                stale.unlink()
            apt = Apt(tree.cache / "apt")
            spec = f"{name}={version}" if version else name
            apt.run("apt-get", "download", spec, cwd=debs, check=False)
            if not any(debs.glob(f"{name}_*.deb")):  # not in the lists of the last update
                apt.update()
                apt.run("apt-get", "download", spec, cwd=debs)
            say(f"downloaded {spec} (the host has none; Xen's packages depend on it)")
        found += sorted(debs.glob(f"{name}_*.deb"))
    return found


def _deb_name(debs: Path, name: str) -> Path:
    [deb] = debs.glob(f"{name}_*.deb")
    return deb


def _deb_field(deb: Path, name: str) -> str:
    done = subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True)
    return done.stdout.strip()


def _deb_version(cache: Path, packages: dict[str, tuple[str, Path]]) -> str:
    """V, when every Xen package is V; else the versions found (which _check_skew refuses)."""
    found = {packages[name][0] for name in XEN_PACKAGES}
    return found.pop() if len(found) == 1 else ",".join(sorted(found))


# --- the tree ----------------------------------------------------------------------------------


def extract(cache: Path, packages: dict[str, tuple[str, Path]], say: Say) -> None:
    """root/ afresh from the debs (into a new directory, then renamed over), and the
    hypervisor unzipped."""
    tmp = cache / "root.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for _, deb in packages.values():
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], "dpkg-deb -x")
    shutil.rmtree(cache / "root", ignore_errors=True)
    tmp.rename(cache / "root")
    image = cache / "root" / "boot" / f"xen-{BRANCH}-amd64.gz"
    with gzip.open(image) as f:
        (cache / f"xen-{BRANCH}-amd64.tmp").write_bytes(f.read())
    (cache / f"xen-{BRANCH}-amd64.tmp").rename(cache / f"xen-{BRANCH}-amd64")
    say(f"extracted {len(packages)} packages into {cache / 'root'}; hypervisor unzipped")


def check_loads(cache: Path, say: Say) -> None:
    """Every ELF dom0 runs finds its libraries (ldd, the tree's before the host's), and every
    command the hotplug scripts run exists in the tree or on the host."""
    root = cache / "root"
    libs = [root / "usr/lib" / MULTIARCH, root / "lib" / MULTIARCH, root / "usr/lib"]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(map(str, libs))}
    elves = [root / elf if (root / elf).exists() else Path("/", elf) for elf in ELVES] + [
        cache / "netbuf" / name for name, _ in NETBUF.values() if name != "remus-netbuf-setup"
    ]  # a dependency the host has (bridge-utils, libnl-utils) is not in the tree: the host's
    for elf in elves:
        if not elf.exists():
            raise XenPkgError(f"{elf} is missing")
        done = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, env=env)
        lost = [line.strip() for line in done.stdout.splitlines() if "not found" in line]
        if done.returncode != 0 or lost:
            raise XenPkgError(f"{elf} does not load in dom0: {lost or last_line(done.stderr)}")
    absent = [
        cmd
        for cmd in SCRIPT_COMMANDS
        if not any((base / d / cmd).exists() for base in (root, Path("/")) for d in COMMAND_DIRS)
    ]
    if absent:
        raise XenPkgError(f"the hotplug scripts need {', '.join(absent)}: in no package here")
    say(f"ldd: {len(elves)} ELF files load; the scripts' {len(SCRIPT_COMMANDS)} commands exist")


# --- the netbuf build -------------------------------------------------------------------------


def ensure_build_deps(say: Say) -> None:
    missing = sorted(pkg for pkg, path in BUILD_DEPS.items() if not os.path.exists(path))
    if not missing:
        return
    say(f"installing the build dependencies on this host: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
        _run(install, "apt-get install", env=env)


def build_netbuf(cache: Path, version: str, say: Say) -> None:
    """libxenlight, xl, libxl-save-helper from V's source with libnl3, into netbuf/."""
    ensure_build_deps(say)
    build = cache / "build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    tree = build / "xen"
    dsc = cache / "src" / f"xen_{_noepoch(version)}.dsc"
    _run(["dpkg-source", "--no-check", "-x", str(dsc), str(tree)], "dpkg-source -x")
    env = {**os.environ, "PATH": BUILD_PATH, "PYTHON": "/usr/bin/python3"}
    env.pop("MAKEFLAGS", None)
    _run(["./autogen.sh"], "autogen.sh", cwd=tree, env=env)
    for name in ("config.sub", "config.guess"):
        shutil.copy(f"/usr/share/misc/{name}", tree / name)
    _run(list(CONFIGURE), "configure", cwd=tree, env=env)
    tools_mk = (tree / "config" / "Tools.mk").read_text()
    if not re.search(r"^CONFIG_LIBNL\s*:=\s*y\s*$", tools_mk, re.M):
        raise XenPkgError("configure did not find libnl3: config/Tools.mk has no CONFIG_LIBNL=y")
    jobs = f"-j{os.cpu_count() or 1}"
    for sub in MAKE_DIRS:
        say(f"  make -C {sub} {jobs}")
        _run(["make", "-C", sub, jobs], f"make -C {sub}", cwd=tree, env=env)
    out = cache / "netbuf"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for built, (name, _) in NETBUF.items():
        shutil.copy2(tree / built, out / name)
    shutil.rmtree(build)  # the cache keeps the source tarballs and the products only
    say(f"built with libnl3 into {out}: {', '.join(n for n, _ in NETBUF.values())}")


def _run(
    argv: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise XenPkgError(f"{what} failed (exit {done.returncode}):\n{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--xen", choices=RELEASES, default=BRANCH, help=f"default {BRANCH}")
    parser.add_argument("--cache", type=Path, help=f"default {CACHE} (4.20: {CACHE}/4.20)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"xenpkg [{time.monotonic() - started:6.1f}s] {line}", flush=True)

    try:
        tree = ensure(args.cache or cache_for(args.xen), say, args.xen)
    except XenPkgError as err:
        print(f"xenpkg: {err}", file=sys.stderr)
        return 1
    host = tree.host_libxenstore or "not installed"
    if tree.netbuf_note:
        say(f"NOTE: {tree.netbuf_note}")
    if tree.netbuf_missing:
        say(f"Xen {tree.version}: no netbuf build, its source is missing: {tree.netbuf_missing}")
    elif tree.own_root and not tree.netbuf_note:
        say(f"Xen {tree.version}: the root's packages and the source agree")
    else:
        say(f"Xen {tree.version}: debs and source agree; host libxenstore4 {host}")
    if tree.host_libxenstore and tree.host_libxenstore != tree.version:
        say(f"  in dom0 the tree's libxenstore {tree.version} shadows the host's {host}")
    say(f"hypervisor {tree.hypervisor}; tree {tree.root}; netbuf {tree.netbuf}")
    for dest, src in tree.netbuf_files.items():
        say(f"  {dest} <- {src}")
    say(f"total {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # --xen 4.20 imports tools.xenroot
    sys.exit(main())
