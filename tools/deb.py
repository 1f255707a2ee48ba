"""``make deb``: the Debian package remus-netbuf_<version>_all.deb, built from debian/.

    python3 tools/deb.py [--force]

With Debian's own tools: debhelper, pybuild's pyproject plugin, ``dpkg-buildpackage -b -us -uc``
(binary only, unsigned), then lintian. It first installs what is missing with apt-get:
debian/control's Build-Depends (``apt-get build-dep`` of the checkout) and lintian.

dpkg-buildpackage writes its results beside the source tree, so the files the package is made
of (SOURCES, as ``git ls-files`` lists them: tracked, and untracked ones not ignored, as they
are now in the work tree) are copied into ``.cache/deb/remus-netbuf-VERSION`` and built
there. The results go to ``dist/``: the .deb, the .changes and .buildinfo, and lintian's output
on the .changes (which checks the .deb too) in ``remus-netbuf_DEBVERSION.lintian``. Any error
from lintian fails the build.

A stamp of the sources (every copied file, with debian/) skips the build when the packages in
dist/ are of these sources already; ``--force`` builds anyway.

Standard library only, run with the system python3: a fresh Debian 12 has nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "deb"
DIST = REPO / "dist"
PACKAGE = "remus-netbuf"
STAMP = CACHE / "stamp"
ERROR = REPO / ".cache" / "deb.error"  # why the test session's build failed (tests/conftest.py)
# What the package is built from: not the tests, tools or docs, so editing them rebuilds nothing.
SOURCES = ("debian", "remus_netbuf", "scripts", "man", "etc", "pyproject.toml", "README.md")
FIXTURE = "built_deb"  # a test that asks for it has the session build the package first
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
# The build sees the system's python3 only, as in a Debian build chroot: not a pyenv or venv
# that PATH or PYTHON* name first (pybuild runs "python3.11 -m build" by PATH).
BUILD_ENV = {
    **{k: v for k, v in os.environ.items() if k.startswith("DEB_") or k in ("HOME", "TERM")},
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
}


class Failed(Exception):
    """The package could not be built, or lintian found an error; the message says why."""


@dataclass(frozen=True)
class Built:
    deb: Path
    changes: Path
    lintian: str  # lintian's output on the .changes and its .deb ("" when it found nothing)


def versions(repo: Path = REPO) -> tuple[str, str]:
    """(upstream, Debian) versions: pyproject.toml's, and debian/changelog's newest, which must
    be the same upstream version with a Debian revision."""
    upstream = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]
    first = (repo / "debian" / "changelog").read_text().splitlines()[0]
    found = re.match(rf"{PACKAGE} \(([^)\s]+)\)", first)
    if found is None:
        raise Failed(f"debian/changelog: no version in its first line: {first!r}")
    debian = found.group(1)
    if debian.rpartition("-")[0] != upstream:
        raise Failed(
            f"debian/changelog says {debian}, pyproject.toml {upstream}: "
            f"add a changelog entry for {upstream}-1 (dch -v {upstream}-1)"
        )
    return upstream, debian


def source_files(repo: Path = REPO) -> list[str]:
    """The files the package is made of (SOURCES) as the work tree has them: tracked (less
    those deleted) and new ones that .gitignore does not exclude."""
    done = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SOURCES],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise Failed(f"git ls-files: {done.stderr.strip()} (make deb builds from a git checkout)")
    names = sorted(set(filter(None, done.stdout.split("\0"))))
    return [name for name in names if (repo / name).is_file()]


def source_stamp(files: Sequence[str], repo: Path = REPO) -> str:
    """Changes whenever the package built from ``files`` would."""
    digest = hashlib.sha256()
    for name in files:
        path = repo / name
        mode = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"{name}\0{mode}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()


def run(
    argv: Sequence[str], cwd: Path = REPO, log: Path | None = None, env: dict[str, str] = APT_ENV
) -> str:
    """Run ``argv``; its output; Failed with the output's tail if it exits non-zero."""
    done = subprocess.run(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if log is not None:
        log.write_text(done.stdout)
    if done.returncode != 0:
        where = f" (whole log: {log})" if log is not None else ""
        tail = "\n".join(done.stdout.splitlines()[-40:])
        raise Failed(f"{' '.join(argv)}: exit {done.returncode}{where}\n{tail}")
    return done.stdout


def ensure_build_deps(say: Callable[[str], None]) -> None:
    """debian/control's Build-Depends and lintian, installed with apt-get if missing."""
    if shutil.which("dpkg-checkbuilddeps") is None:  # dpkg-dev: not on a minimal Debian
        apt_install(["dpkg-dev"], say)
    unmet = subprocess.run(["dpkg-checkbuilddeps"], cwd=REPO, capture_output=True, text=True)
    if unmet.returncode != 0:
        say(f"installing the build dependencies: {unmet.stderr.strip().rpartition(': ')[2]}")
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "build-dep", "-y", "-qq", "--no-install-recommends", f"{REPO}/"])
    if shutil.which("lintian") is None:
        apt_install(["lintian"], say)


def apt_install(packages: Sequence[str], say: Callable[[str], None]) -> None:
    say(f"installing {' '.join(packages)}")
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages])


def results(debian_version: str) -> tuple[Path, Path, Path]:
    """Where the .deb, the .changes and lintian's output are in dist/."""
    stem = f"{PACKAGE}_{debian_version}"
    changes = sorted(DIST.glob(f"{stem}_*.changes"))
    return (
        DIST / f"{stem}_all.deb",
        changes[0] if changes else DIST / f"{stem}_all.changes",
        DIST / f"{stem}.lintian",
    )


def ensure(force: bool = False, say: Callable[[str], None] = print) -> Built:
    """The package of the checkout as it is now, in dist/: built unless it is there already."""
    upstream, debian_version = versions()
    files = source_files()
    stamp = source_stamp(files)
    deb, changes, lintian = results(debian_version)
    fresh = STAMP.exists() and STAMP.read_text() == stamp
    if fresh and not force and deb.exists() and changes.exists() and lintian.exists():
        say(f"{deb.relative_to(REPO)} is of these sources already (--force builds it again)")
        return Built(deb, changes, lintian.read_text())
    ensure_build_deps(say)
    build(files, upstream, debian_version, say)
    deb, changes, lintian = results(debian_version)
    say(f"lintian {changes.relative_to(REPO)}")
    found = subprocess.run(
        ["lintian", "--fail-on", "error", str(changes)],
        capture_output=True,
        text=True,
        env=BUILD_ENV,
    )
    lintian.write_text(found.stdout + found.stderr)
    STAMP.write_text(stamp)
    say(found.stdout + found.stderr if found.stdout or found.stderr else "lintian: no tags")
    errors = [line for line in found.stdout.splitlines() if line.startswith("E: ")]
    if errors or found.returncode != 0:
        raise Failed(f"lintian: exit {found.returncode}, {len(errors)} error(s)")
    return Built(deb, changes, lintian.read_text())


def ready(check_sources: bool = True) -> Built | str:
    """The package of the checkout as it is now, in dist/, or why there is none; builds
    nothing. ``check_sources=False`` trusts the stamp: in the kernel tier's VM, which may not
    see the checkout's git directory, the session has just built the package on the host."""
    if ERROR.exists():
        return ERROR.read_text()
    _, debian_version = versions()
    deb, changes, lintian = results(debian_version)
    if not (STAMP.exists() and deb.exists() and changes.exists() and lintian.exists()):
        return f"no package in {DIST} (make deb)"
    if check_sources and STAMP.read_text() != source_stamp(source_files()):
        return f"the package in {DIST} is not of these sources (make deb)"
    return Built(deb, changes, lintian.read_text())


def build_for_session(say: Callable[[str], None]) -> None:
    """:func:`ensure`, its failure kept in ERROR for the tests to report (never raises)."""
    ERROR.unlink(missing_ok=True)
    try:
        ensure(say=say)
    except Failed as err:
        ERROR.parent.mkdir(parents=True, exist_ok=True)
        ERROR.write_text(f"make deb failed: {err}")


def build(
    files: Sequence[str], upstream: str, debian_version: str, say: Callable[[str], None]
) -> None:
    """dpkg-buildpackage in a copy of ``files``; its results moved to dist/."""
    tree = CACHE / f"{PACKAGE}-{upstream}"
    if CACHE.exists():
        shutil.rmtree(CACHE)
    tree.mkdir(parents=True)
    for name in files:
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    say(f"dpkg-buildpackage -b -us -uc in {tree.relative_to(REPO)}")
    run(["dpkg-buildpackage", "-b", "-us", "-uc"], tree, CACHE / "build.log", BUILD_ENV)
    DIST.mkdir(exist_ok=True)
    for old in DIST.glob(f"{PACKAGE}_*"):
        old.unlink()
    made = sorted(CACHE.glob(f"{PACKAGE}_{debian_version}_*"))
    for path in made:
        shutil.move(path, DIST / path.name)
    say(f"built: {', '.join(str((DIST / p.name).relative_to(REPO)) for p in made)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/deb.py", description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="build even if dist/ is up to date")
    args = parser.parse_args(argv)
    try:
        ensure(args.force, say=lambda line: print(f"make deb: {line}", flush=True))
    except Failed as err:
        print(f"make deb: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
