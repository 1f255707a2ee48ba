"""Xen 4.20 for the real-Xen tier: trixie's Xen in a Debian root of its own, cached.

Trixie's Xen userland needs trixie's libc, so dom0 cannot stack it over this host's ``/`` as
the 4.17 tier does (:mod:`tools.xenpkg`): dom0's ``/`` is a whole trixie root instead. In
``.cache/e2e/4.20/`` (:func:`ensure`, once):

- ``root/``: ``debootstrap --variant=minbase trixie`` with :data:`DOM0_PACKAGES` (xen-utils-4.20
  of V, xenstore-utils, iproute2, python3 3.13, libnl-utils for Xen's own script ...), trixie's
  kernel ``dpkg-deb -x``ed into it (``/boot/vmlinuz-K``, ``/usr/lib/modules/K``, depmod'ed: dom0
  boots it) and ``/opt/e2e-venv`` (trixie's python3 with pyxs, for the conformance scenario).
- ``buildroot/``: the same suite with :data:`BUILD_PACKAGES`: libxenlight, xl and
  libxl-save-helper are built there from V's source with libnl3 (trixie's gcc, libc and libnl),
  as :func:`tools.xenpkg.build_netbuf` builds 4.17's on the host; the products go to ``netbuf/``.
- ``xen-4.20-amd64`` (the hypervisor, unzipped), ``python-stdlib.tar`` (the root's standard
  library: dom0 unpacks it into RAM) and ``versions.json``.

V is trixie's xen-utils-4.20, whose source the private apt (``apt/``, trixie main only) must
fetch; the root's Xen packages must be that V. Commands inside a root run in a private mount
namespace (``unshare -m``: the root bound onto itself, a fresh ``/proc``, the host's ``/dev``),
so nothing mounted there outlives them (docs/real-xen-tier.md; platforms' pitfall: a plain
chroot with the host's ``/run`` left namespace mounts behind).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tools import xenpkg
from tools.xenpkg import Say, XenPkgError, XenTree

BRANCH = "4.20"
SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
SOURCES = f"""\
Types: deb deb-src
URIs: {MIRROR}
Suites: {SUITE}
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
# What dom0 runs: tools/e2e_dom0.sh, the scenarios, Xen's hotplug scripts and both netbuf scripts.
DOM0_PACKAGES = (
    f"xen-utils-{BRANCH}", f"xen-hypervisor-{BRANCH}-amd64", "xenstore-utils",
    "iproute2", "kmod", "procps", "hostname", "net-tools", "bridge-utils",
    "libnl-route-3-200", "libnl-utils",  # the netbuf libxenlight; Xen's remus-netbuf-setup
    "python3", "python3-venv", "python3-pytest", "ca-certificates",
)  # fmt: skip
TEST_PIP = ("pyxs==0.4.1",)  # the conformance tests' independent client (pyproject's test extra)
VENV = "/opt/e2e-venv"
BUILD_PACKAGES = (
    "build-essential", "pkgconf", "dpkg-dev", "xz-utils", "autoconf", "autotools-dev",
    "acpica-tools", "bison", "flex", "python3-dev", "libyajl-dev", "libzstd-dev",
    "libncurses-dev", "uuid-dev", "zlib1g-dev", "liblzma-dev", "libnl-route-3-dev",
)  # fmt: skip
NETBUF = xenpkg.netbuf_map(BRANCH)
CONFIGURE = xenpkg.configure_line(BRANCH)
STDLIB_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data")
ROOT_RECIPE = json.dumps([SUITE, DOM0_PACKAGES, TEST_PIP, "kernel", "depmod"])
BUILD_RECIPE = json.dumps([SUITE, BUILD_PACKAGES, CONFIGURE, xenpkg.MAKE_DIRS, sorted(NETBUF)])
# An unpacked Xen source tree to build libxenlight from when V's source cannot be fetched (this
# host's mirror 404s on it): a stand-in, said so in every report; never the default.
STANDIN = "REMUS_NETBUF_XEN_STANDIN_SOURCE"
CHROOT_ENV = {
    "PATH": xenpkg.BUILD_PATH,
    "HOME": "/root",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "PYTHON": "/usr/bin/python3",
}


def ensure(cache: Path, say: Say) -> XenTree:
    """The root, the build and the hypervisor in ``cache``; made only what is missing."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        recorded = xenpkg._read_versions(cache)
        timings: dict[str, float] = {}
        if not _complete(cache, recorded):
            recorded = _make(cache, recorded, timings, say)
        else:
            say(f"Xen {recorded['version']} ({SUITE}): everything cached in {cache}")
    return _tree(cache, recorded, timings)


def _key(recipe: str) -> str:
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _root_ok(cache: Path, recorded: Mapping[str, object]) -> bool:
    kernel = str(recorded.get("kernel") or "")
    return (
        recorded.get("root_recipe") == _key(ROOT_RECIPE)
        and bool(kernel)
        and (cache / "root" / "boot" / f"vmlinuz-{kernel}").is_file()
        and (cache / f"xen-{BRANCH}-amd64").is_file()
        and (cache / "python-stdlib.tar").is_file()
    )


def _build_id(version: str, standin: str) -> str:
    return _key(BUILD_RECIPE) + (f" stand-in {standin}" if standin else f" {version}")


def _build_ok(cache: Path, recorded: Mapping[str, object]) -> bool:
    built = _build_id(str(recorded.get("version")), str(recorded.get("standin") or ""))
    return recorded.get("build_recipe") == built and all(
        (cache / "netbuf" / name).is_file() for name, _ in NETBUF.values()
    )


def _complete(cache: Path, recorded: Mapping[str, object]) -> bool:
    """Cached: the root, and the build; or the source still missing, looked for again every
    hour, or at once when it is dropped into src/ by hand."""
    looked = float(str(recorded.get("looked") or 0))
    if str(recorded.get("standin") or "") != os.environ.get(STANDIN, ""):
        return False
    missing = (
        bool(recorded.get("netbuf_missing"))
        and not recorded.get("standin")
        and time.time() - looked < 3600
        and not _dsc(cache, str(recorded.get("version"))).is_file()
    )
    return (
        bool(recorded.get("version"))
        and _root_ok(cache, recorded)
        and (missing or _build_ok(cache, recorded))
    )


def _dsc(cache: Path, version: str) -> Path:
    return cache / "src" / f"xen_{xenpkg._noepoch(version)}.dsc"


def _make(
    cache: Path, recorded: dict[str, object], timings: dict[str, float], say: Say
) -> dict[str, object]:
    started = time.monotonic()
    apt = xenpkg.Apt(cache / "apt", SOURCES)
    apt.update()
    version = newest(apt)
    if recorded.get("version") != version:
        recorded = {"version": version}
    recorded["netbuf_missing"] = fetch_source(apt, cache / "src", version, say)
    recorded["looked"] = time.time()
    kernel_deb = _fetch_kernel(apt, cache / "debs", say)
    timings["download"] = time.monotonic() - started
    if not _root_ok(cache, recorded):
        started = time.monotonic()
        recorded["kernel"] = make_root(cache, kernel_deb, say)
        recorded["root_recipe"] = _key(ROOT_RECIPE)
        timings["root"] = time.monotonic() - started
        say(f"dom0 root ({SUITE}): {timings['root']:.1f} s")
    packages = root_packages(cache / "root")
    if packages.get(f"xen-utils-{BRANCH}") != version:
        raise XenPkgError(
            f"version skew: the root's xen-utils-{BRANCH} is "
            f"{packages.get(f'xen-utils-{BRANCH}')}, the source {version}: rm -r {cache}"
        )
    standin = os.environ.get(STANDIN, "") if recorded["netbuf_missing"] else ""
    recorded["standin"] = standin
    if recorded["netbuf_missing"] and not standin:
        say(f"no netbuf build: the source of {version} is missing ({recorded['netbuf_missing']})")
        shutil.rmtree(cache / "netbuf", ignore_errors=True)
    elif not _build_ok(cache, recorded):
        started = time.monotonic()
        if not (cache / "buildroot" / "usr" / "bin" / "gcc").exists():
            debootstrap(cache / "buildroot", BUILD_PACKAGES, say)
            timings["buildroot"] = time.monotonic() - started
            say(f"build root ({SUITE}): {timings['buildroot']:.1f} s")
        started = time.monotonic()
        build_netbuf(cache, version, say, Path(standin) if standin else None)
        recorded["build_recipe"] = _build_id(version, standin)
        timings["build"] = time.monotonic() - started
        say(f"netbuf build in the {SUITE} root: {timings['build']:.1f} s")
    check_loads(cache, say)
    recorded = {
        **recorded,
        "version": version,
        "debs": packages.get(f"xen-utils-{BRANCH}"),
        "source": _source_said(cache, version, recorded),
        "packages": packages,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    tmp = cache / "versions.json.tmp"
    tmp.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    tmp.rename(cache / "versions.json")
    return recorded


def _source_said(cache: Path, version: str, recorded: Mapping[str, object]) -> str:
    if recorded.get("standin"):
        return f"stand-in: {recorded['standin']}"
    return "" if recorded.get("netbuf_missing") else xenpkg.dsc_version(_dsc(cache, version))


def standin_note(recorded: Mapping[str, object]) -> str:
    """What the netbuf build is, when it is not V's: for every report of a run."""
    if not recorded.get("standin"):
        return ""
    return (
        f"libxenlight built from the stand-in source {recorded['standin']} ({STANDIN}), "
        f"not from {recorded['version']}'s, whose source is missing "
        f"({recorded.get('netbuf_missing')})"
    )


def _tree(cache: Path, recorded: Mapping[str, object], timings: dict[str, float]) -> XenTree:
    kernel = str(recorded["kernel"])
    packages = recorded.get("packages")
    return XenTree(
        cache=cache,
        version=str(recorded["version"]),
        host_libxenstore="",
        root=cache / "root",
        hypervisor=cache / f"xen-{BRANCH}-amd64",
        netbuf=cache / "netbuf",
        netbuf_files={
            dest: cache / "netbuf" / name
            for name, dest in NETBUF.values()
            if not recorded.get("netbuf_missing") or recorded.get("standin")
        },
        packages=dict(packages) if isinstance(packages, dict) else {},
        versions=cache / "versions.json",
        timings=timings,
        branch=BRANCH,
        own_root=True,
        kernel=cache / "root" / "boot" / f"vmlinuz-{kernel}",
        modules=cache / "root" / "usr" / "lib" / "modules" / kernel,
        python="/usr/bin/python3",
        pytar=cache / "python-stdlib.tar",
        netbuf_missing="" if recorded.get("standin") else str(recorded.get("netbuf_missing") or ""),
        netbuf_note=standin_note(recorded),
    )


def newest(apt: xenpkg.Apt) -> str:
    """V: the suite's xen-utils-4.20 (what debootstrap installs)."""
    found = xenpkg._versions(apt.run("apt-cache", "madison", f"xen-utils-{BRANCH}"))
    if not found:
        raise XenPkgError(f"no xen-utils-{BRANCH} in {SUITE}")
    return found[0]


def fetch_source(apt: xenpkg.Apt, src: Path, version: str, say: Say) -> str:
    """V's source into src/ (once); '' when it is there, else why not: the build then waits
    for it (``apt-get source --download-only xen=V`` elsewhere, the files dropped in src/)."""
    if _dsc(src.parent, version).is_file():
        return ""
    src.mkdir(parents=True, exist_ok=True)
    why = xenpkg.download_source(apt, src, version)
    say(
        f"Xen {version}: source downloaded"
        if not why
        else f"Xen {version}: source not downloadable ({why})"
    )
    return why


# --- roots ------------------------------------------------------------------------------------


def debootstrap(root: Path, packages: Sequence[str], say: Say) -> None:
    """A minbase root of SUITE with ``packages``, made aside and renamed into place."""
    tmp = root.with_name(root.name + ".tmp")
    _wipe(tmp)
    say(f"debootstrap {SUITE} into {root} (+{len(packages)} packages)")
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}"]
    _run([*argv, SUITE, str(tmp), MIRROR], "debootstrap")
    _wipe(root)
    tmp.rename(root)


def _wipe(path: Path) -> None:
    if path.exists():
        _run(["rm", "-rf", "--one-file-system", str(path)], f"rm -r {path}")


def run_in(
    root: Path,
    argv: Sequence[str],
    what: str,
    binds: Mapping[Path, str] | None = None,
    cwd: str = "/",
) -> str:
    """``argv`` chrooted into ``root``, in a mount namespace of its own; its stdout."""
    q = shlex.quote
    steps = [
        f"mount --bind {q(str(root))} {q(str(root))}",
        f"mount -t proc proc {q(str(root))}/proc",
    ]
    steps.append(f"mount --bind /dev {q(str(root))}/dev")
    for source, inside in (binds or {}).items():
        target = q(str(root / inside.lstrip("/")))
        steps += [f"mkdir -p {target}", f"mount --bind {q(str(source))} {target}"]
    inner = q("cd " + q(cwd) + ' && exec "$@"')
    steps.append(f"exec chroot {q(str(root))} sh -c {inner} - {shlex.join(argv)}")
    return _run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", "\n".join(steps)],
        what,
        env=CHROOT_ENV,
    )


def _fetch_kernel(apt: xenpkg.Apt, debs: Path, say: Say) -> Path:
    """Trixie's linux-image-K-amd64 (what linux-image-amd64 depends on), downloaded once."""
    depends = apt.run("apt-cache", "depends", "linux-image-amd64")
    found = re.search(r"Depends: (linux-image-\S+-amd64)\b", depends)
    if not found:
        raise XenPkgError(f"linux-image-amd64 in {SUITE}: no linux-image-K-amd64 dependency")
    debs.mkdir(parents=True, exist_ok=True)
    have = sorted(debs.glob(f"{found.group(1)}_*.deb"))
    if not have:
        apt.run("apt-get", "download", found.group(1), cwd=debs)
        have = sorted(debs.glob(f"{found.group(1)}_*.deb"))
        say(f"downloaded {have[0].name}")
    return have[0]


def make_root(cache: Path, kernel_deb: Path, say: Say) -> str:
    """dom0's root: debootstrap, the kernel (depmod'ed), the test venv; the hypervisor
    unzipped and the standard library's tarball beside it. Returns the kernel's version K."""
    root = cache / "root"
    debootstrap(root, DOM0_PACKAGES, say)
    _run(["dpkg-deb", "-x", str(kernel_deb), str(root)], "dpkg-deb -x (kernel)")
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise XenPkgError(f"{kernel_deb.name} has no /boot/vmlinuz-*")
    kernel = kernels[-1].name.removeprefix("vmlinuz-")
    run_in(root, ["depmod", kernel], "depmod")
    for conf in ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt"):
        if os.path.isfile(conf):  # pip in the root reaches PyPI as the host's does
            (root / conf.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(conf, root / conf.lstrip("/"))
    run_in(root, ["python3", "-m", "venv", "--system-site-packages", VENV], "venv")
    run_in(root, [f"{VENV}/bin/pip", "install", "-q", *TEST_PIP], "pip install")
    with gzip.open(root / "boot" / f"xen-{BRANCH}-amd64.gz") as f:
        (cache / f"xen-{BRANCH}-amd64.tmp").write_bytes(f.read())
    (cache / f"xen-{BRANCH}-amd64.tmp").rename(cache / f"xen-{BRANCH}-amd64")
    stdlib = next((root / "usr" / "lib").glob("python3.[0-9]*"))
    skip = [f"--exclude=usr/lib/{stdlib.name}/{name}" for name in STDLIB_SKIP]
    tar = cache / "python-stdlib.tar"
    argv = ["tar", "-C", str(root), "-cf", f"{tar}.tmp", *skip, f"usr/lib/{stdlib.name}"]
    _run(argv, "tar")
    Path(f"{tar}.tmp").rename(tar)
    say(f"root: {SUITE} + kernel {kernel} + {VENV}; {stdlib.name} packed for dom0's RAM")
    return kernel


def root_packages(root: Path) -> dict[str, str]:
    """The root's Xen packages (and python3, its kernel) with their versions."""
    done = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={root / 'var/lib/dpkg'}",
            "-W",
            "-f",
            "${Package} ${Version}\n",
        ],
        capture_output=True,
        text=True,
    )
    found = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    keep = re.compile(r"^(xen|libxen|python3$|python3\.\d+$|libnl|libc6$)")
    return {name: version for name, version in sorted(found.items()) if keep.match(name)}


# --- the netbuf build, inside the build root ---------------------------------------------------


def build_netbuf(cache: Path, version: str, say: Say, standin: Path | None = None) -> None:
    """libxenlight, xl, libxl-save-helper of V with libnl3, built in buildroot/, into netbuf/.
    From ``standin`` (an unpacked Xen source tree) instead, when V's source is missing: then
    upstream's configure needs ``--libexecdir=/usr/lib``, which Debian's patches make the
    default (xl finds libxl-save-helper in /usr/lib/xen-4.20/bin)."""
    root, build = cache / "buildroot", cache / "build"
    _wipe(build)
    build.mkdir()
    binds = {cache / "src": "/src", build: "/build"}
    tree = build / "xen"
    configure = list(CONFIGURE)
    if standin:
        _run(["cp", "-a", f"{standin}/.", str(tree)], f"cp -a {standin}")
        configure.append("--libexecdir=/usr/lib")
    else:
        dsc = f"/src/xen_{xenpkg._noepoch(version)}.dsc"
        argv = ["dpkg-source", "--no-check", "-x", dsc, "/build/xen"]
        run_in(root, argv, "dpkg-source -x", binds)
    run_in(root, ["./autogen.sh"], "autogen.sh", binds, "/build/xen")
    for name in ("config.sub", "config.guess"):
        shutil.copy(root / "usr/share/misc" / name, tree / name)
    run_in(root, configure, "configure", binds, "/build/xen")
    tools_mk = (tree / "config" / "Tools.mk").read_text()
    if not re.search(r"^CONFIG_LIBNL\s*:=\s*y\s*$", tools_mk, re.M):
        raise XenPkgError("configure did not find libnl3: config/Tools.mk has no CONFIG_LIBNL=y")
    jobs = f"-j{os.cpu_count() or 1}"
    for sub in xenpkg.MAKE_DIRS:
        say(f"  make -C {sub} {jobs} (in the {SUITE} build root)")
        run_in(root, ["make", "-C", sub, jobs], f"make -C {sub}", binds, "/build/xen")
    out = cache / "netbuf"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for built, (name, _) in NETBUF.items():
        shutil.copy2(tree / built, out / name)
    _wipe(build)
    say(f"built with {SUITE}'s libnl3 into {out}: {', '.join(n for n, _ in NETBUF.values())}")


def check_loads(cache: Path, say: Say) -> None:
    """Every ELF dom0 runs finds its libraries in the root (the netbuf build's too)."""
    elves = [f"/usr/lib/xen-{BRANCH}/bin/{name}" for name in ("xl", "xenstored", "xenconsoled")]
    if (cache / "netbuf").is_dir():
        elves += [f"/netbuf/{n}" for n, _ in NETBUF.values() if n != "remus-netbuf-setup"]
    elves += ["/usr/bin/nl-qdisc-add", "/usr/sbin/brctl"]
    out = run_in(
        cache / "root",
        ["sh", "-c", 'for f; do echo "== $f"; ldd "$f"; done', "-", *elves],
        "ldd",
        {cache / "netbuf": "/netbuf"} if (cache / "netbuf").is_dir() else {},
    )
    lost = [line.strip() for line in out.splitlines() if "not found" in line]
    if lost:
        raise XenPkgError(f"in the {SUITE} root, not every ELF file loads: {lost}")
    say(f"ldd in the {SUITE} root: {len(elves)} ELF files load")


def _run(argv: list[str], what: str, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, errors="replace")
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise XenPkgError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout
