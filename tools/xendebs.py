"""``make xen-netbuf-debs``: the dom0's own Xen packages, with network buffering.

    python3 tools/xendebs.py [--xen 4.17|4.20] [--out DIR]

Debian builds libxenlight without libnl3, so ``xl remus`` cannot buffer the network there. This
rebuilds libxenlight from Debian's source of exactly the Xen version in question, with libnl3
(:mod:`tools.xenpkg`: ``dpkg-source -x``, Debian's configure line, ``make`` of tools/libs and
tools/xl: about a minute here), and repacks Debian's own binary package that holds the library
(``libxenmisc4.17``) with that one file replaced, as ``<Debian's version>+netbuf1``: apt and
dpkg then prefer it to Debian's identical version. Nothing else changes:

- xl and libxl-save-helper stay Debian's: the new libxenlight exports every dynamic symbol
  Debian's does (checked here, the build fails otherwise), so whatever linked against Debian's
  loads against it; their packages depend on ``libxenmisc4.17 (>= V)``, which ``V+netbuf1``
  satisfies.
- The package gains ``Depends:`` on the libnl3 libraries the new library needs (from their
  shlibs files), a paragraph in its description, and an entry in its changelog.

Why a repack and not a whole ``dpkg-buildpackage`` with libnl3 in Build-Depends: the whole
source builds the hypervisor, every tool, OCaml bindings and the docs, and needs their build
dependencies (a few hundred packages) for one library. docs/install.md gives the times.

The version: the one installed (``dpkg``: ``libxenmisc<branch>``), or with ``--xen`` the newest
of that branch whose source Debian's mirror serves. The output is in ``dist/xen-netbuf/``.
Debian's next Xen update replaces the package with Debian's build again, which has no network
buffering: ``remus-netbuf check`` then fails naming libxenlight and this command.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from remus_netbuf import dpkg, libxenlight  # noqa: E402
from tools import xenpkg  # noqa: E402

OUT = REPO / "dist" / "xen-netbuf"
STATUS = Path("/var/lib/dpkg/status")
DPKG_INFO = Path("/var/lib/dpkg/info")
MULTIARCH = xenpkg.MULTIARCH
# the changelog entry's: our own package's maintainer
MAINTAINER = re.findall(r"^Maintainer: (.*)$", (REPO / "debian" / "control").read_text(), re.M)[0]
NOTE = (
    " .\n"
    " This build's libxenlight has Remus network buffering (built with libnl3,\n"
    " so xl remus can hold a guest's output until its checkpoint is safe):\n"
    " rebuilt from Debian's source of this version by remus-netbuf's\n"
    " make xen-netbuf-debs. Debian's own build of this version has none.\n"
)

Say = Callable[[str], None]


class Failed(Exception):
    """No package: the message says why."""


@dataclass(frozen=True)
class Installed:
    package: str  # libxenmisc4.17
    branch: str  # 4.17
    version: str  # Debian's version as installed


# --- plain functions over plain data ---------------------------------------------------------


def installed_xen(status: str) -> Installed | None:
    """The installed ``libxenmisc<branch>`` in dpkg's status file, if any (the newest branch)."""
    found = []
    for fields in dpkg.stanzas(status):
        match = re.fullmatch(r"libxenmisc(\d+\.\d+)", fields.get("Package", ""))
        if match and dpkg.installed(fields):  # held too
            found.append(Installed(match[0], match[1], fields.get("Version", "")))
    return max(found, key=lambda i: tuple(int(n) for n in i.branch.split("."))) if found else None


def control_for(control: str, version: str, depends: Sequence[str], installed_size: int) -> str:
    """Debian's control file with our version, the added dependencies, its new size and the
    description's note."""
    out = []
    for line in control.rstrip("\n").split("\n"):
        if line.startswith("Version: "):
            line = f"Version: {version}"
        elif line.startswith("Depends: ") and depends:
            line += ", " + ", ".join(depends)
        elif line.startswith("Installed-Size: "):
            line = f"Installed-Size: {installed_size}"
        out.append(line)
    return "\n".join(out) + "\n" + NOTE


def changelog_entry(source: str, version: str, base: str, when: float) -> str:
    """A Debian changelog entry for the repack."""
    stamp = email.utils.formatdate(when, localtime=False).replace("-0000", "+0000")
    return (
        f"{source} ({version}) UNRELEASED; urgency=medium\n\n"
        f"  * libxenlight rebuilt from the source of xen {base}\n"
        "    with libnl3 (CONFIG_LIBNL=y): Remus network buffering for xl remus.\n"
        "    No other file changed (make xen-netbuf-debs, remus-netbuf).\n\n"
        f" -- {MAINTAINER}  {stamp}\n\n"
    )


def shlibs_dependency(shlibs: str, soname: str) -> str | None:
    """The dependency a shlibs file gives for ``soname`` (``libnl-3.so.200``)."""
    name, _, ver = soname.partition(".so.")
    for line in shlibs.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] == name and parts[1] == ver:
            return parts[2].strip()
    return None


def missing_symbols(debian: set[str], ours: set[str]) -> list[str]:
    return sorted(debian - ours)


# --- the build ---------------------------------------------------------------------------------


def _out(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise Failed(f"{argv[0]} {' '.join(argv[1:])}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def defined_symbols(path: Path) -> set[str]:
    lines = _out(["nm", "-D", "--defined-only", str(path)]).splitlines()
    return {line.split()[-1] for line in lines if line.strip()}


def new_dependencies(debian_lib: Path, our_lib: Path) -> list[str]:
    """What the sonames our library needs beyond Debian's are in, from their shlibs files."""
    added = sorted(
        set(libxenlight.read_dynamic(str(our_lib)).needed)
        - set(libxenlight.read_dynamic(str(debian_lib)).needed)
    )
    files = [p.read_text(errors="replace") for p in sorted(DPKG_INFO.glob("*.shlibs"))]
    depends = []
    for soname in added:
        dep = next(filter(None, (shlibs_dependency(text, soname) for text in files)), None)
        if not dep:
            raise Failed(f"{soname}: no installed package's shlibs file names it")
        depends.append(dep)
    return depends


def repack(debian_deb: Path, our_lib: Path, branch: str, out: Path, say: Say) -> Path:
    """Debian's ``libxenmisc<branch>`` with our libxenlight: the new .deb's path."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        subprocess.run(["dpkg-deb", "-R", str(debian_deb), str(root)], check=True)
        lib = root / "usr" / "lib" / MULTIARCH / f"libxenlight.so.{branch}.0"
        if not lib.is_file():
            raise Failed(f"{debian_deb.name} has no {lib.relative_to(root)}")
        missing = missing_symbols(defined_symbols(lib), defined_symbols(our_lib))
        if missing:
            raise Failed(
                f"the rebuilt libxenlight lacks {len(missing)} of Debian's symbols: "
                f"{', '.join(missing[:5])}"
            )
        depends = new_dependencies(lib, our_lib)
        shutil.copyfile(our_lib, lib)
        subprocess.run(
            [
                "strip",
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
                str(lib),
            ],
            check=True,
        )  # as dh_strip does
        lib.chmod(0o644)
        control = (root / "DEBIAN" / "control").read_text()
        fields = dict(re.findall(r"^(Package|Version|Source): (.*)$", control, re.M))
        package, base = fields["Package"], fields["Version"]
        version = dpkg.netbuf_version(base)
        changelog = root / "usr" / "share" / "doc" / package / "changelog.Debian.gz"
        entry = changelog_entry(fields.get("Source", "xen"), version, base, time.time())
        old = gzip.decompress(changelog.read_bytes()) if changelog.is_file() else b""
        changelog.write_bytes(gzip.compress(entry.encode() + old, 9, mtime=0))
        _md5sums(root)
        size = sum(
            (p.stat().st_size + 1023) // 1024
            for p in root.rglob("*")
            if p.is_file() and "DEBIAN" not in p.relative_to(root).parts
        )
        (root / "DEBIAN" / "control").write_text(control_for(control, version, depends, size))
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{package}_{version.split(':', 1)[-1]}_amd64.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(root), str(target)],
            check=True,
            capture_output=True,
        )
    say(
        f"{target.name}: Debian's {package} {base}, libxenlight rebuilt with libnl3 "
        f"(Depends: + {', '.join(depends) or 'nothing'})"
    )
    return target


def _md5sums(root: Path) -> None:
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root)
        if rel.parts[0] != "DEBIAN":
            lines.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}\n")
    (root / "DEBIAN" / "md5sums").write_text("".join(lines))


def build(branch: str, version: str, out: Path, say: Say) -> list[Path]:
    """The netbuf packages of Xen ``branch`` at ``version`` ('': the newest with a source)."""
    if branch != xenpkg.BRANCH:
        return [_build_other(branch, version, out, say)]
    cache = xenpkg.cache_for(branch)
    recorded = xenpkg._read_versions(cache)
    if version and recorded.get("version") not in (None, version):
        cache = xenpkg.CACHE / "pinned" / version
    tree = xenpkg.ensure(cache, say, branch, version)
    debian = tree.cache / "debs"
    [deb] = debian.glob(f"libxenmisc{branch}_*.deb")
    lib = tree.netbuf / f"libxenlight.so.{branch}.0"
    for stale in out.glob(f"libxenmisc{branch}_*.deb"):
        stale.unlink()
    return [repack(deb, lib, branch, out, say)]


def _build_other(branch: str, version: str, out: Path, say: Say) -> Path:
    """4.20 (trixie's): only when Debian's mirror serves that version's source."""
    from tools import xenroot

    if branch != xenroot.BRANCH:
        raise Failed(f"Xen {branch}: not one of {', '.join(xenpkg.RELEASES)}")
    cache = xenpkg.cache_for(branch)
    apt = xenpkg.Apt(cache / "apt", xenroot.SOURCES)
    apt.update()
    version = version or xenroot.newest(apt)
    (cache / "src").mkdir(parents=True, exist_ok=True)
    why = xenpkg.download_source(apt, cache / "src", version)
    if why:
        raise Failed(
            f"Debian's source of Xen {version} is not downloadable here ({why}): its libxenlight "
            "cannot be rebuilt from that version's own source"
        )
    # Past this point only where the mirror serves the source: never run here (it answers 404).
    tree = xenroot.ensure(cache, say)  # builds trixie's newest, which must be this version
    if tree.netbuf_missing or tree.netbuf_note or tree.version != version:
        why = tree.netbuf_missing or tree.netbuf_note or f"the build is of {tree.version}"
        raise Failed(f"no netbuf build of {version}: {why}")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    apt.run("apt-get", "download", f"libxenmisc{branch}={version}", cwd=debs)
    [deb] = debs.glob(f"libxenmisc{branch}_{version.split(':', 1)[-1]}_*.deb")
    return repack(deb, tree.netbuf / f"libxenlight.so.{branch}.0", branch, out, say)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--xen", choices=xenpkg.RELEASES, help="default: the installed Xen's")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"xen-netbuf-debs [{time.monotonic() - started:6.1f}s] {line}", flush=True)

    installed = installed_xen(STATUS.read_text(errors="replace")) if STATUS.is_file() else None
    if args.xen:
        branch = args.xen
        version = installed.version if installed and installed.branch == branch else ""
    elif installed:
        branch, version = installed.branch, installed.version
    else:
        print(
            "xen-netbuf-debs: no Xen installed here (no libxenmisc package): "
            "say which, make xen-netbuf-debs XEN=4.17|4.20",
            file=sys.stderr,
        )
        return 2
    version = dpkg.base_version(version)  # ours installed: rebuild Debian's V
    say(
        f"Xen {branch} {version or '(the newest with a source)'}"
        + (f": {installed.package} {installed.version} is installed" if installed else "")
    )
    try:
        made = build(branch, version, args.out, say)
    except (Failed, xenpkg.XenPkgError) as err:
        print(f"xen-netbuf-debs: {err}", file=sys.stderr)
        return 1
    for deb in made:
        say(f"made {deb.relative_to(REPO) if deb.is_relative_to(REPO) else deb}")
    say(
        f"total {time.monotonic() - started:.1f} s; install: apt install "
        + " ".join(f"./{d.relative_to(REPO) if d.is_relative_to(REPO) else d}" for d in made)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
