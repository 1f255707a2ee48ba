"""The unit and native tests, and the programs, under another Debian suite's Python.

Users run Pythons 3.12-3.14; the host is Debian 12 (3.11). A Debian root made once with
``debootstrap --variant=minbase`` (trixie: 3.13, sid: 3.14) holds that Python, the tools the
tests call (iproute2, the C xenstore clients, groff ...) and a venv, ``/venv``, with the test
dependencies and this checkout installed, so that ``remus-netbuf-setup`` and ``remus-netbuf``
sit next to ``sys.executable`` as the tests expect (tests/bed.py). Each run then, in a private
mount namespace (every mount made there, ``ip netns add``'s included, dies with it):

- binds the root onto itself, mounts a fresh ``/proc``, ``/sys``, a ``/run`` and ``/tmp`` of
  its own (tmpfs: ``ip netns`` there never touches the host's ``/run/netns``), binds ``/dev``
  and this checkout at the same path;
- installs the checkout into ``/venv`` (a copy of its sources, so no build files land in the
  checkout) when its sources changed since the last run;
- runs pytest over the checkout, ``-m "not vm"``, in the host's network namespace as the host's
  own native tests do. The kernel tier (QEMU) and lint stay on the host.

    python -m tools.pyroot --suite trixie|sid [--rebuild] [-- PYTEST_ARGS]

Exit status: pytest's. The root is cached in ``.cache/pyroot/SUITE/root`` with a stamp of its
recipe; ``--rebuild`` makes it again.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "pyroot"
MIRROR = "http://deb.debian.org/debian"  # the mirror the host's own sources name
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"  # bookworm's: verifies both suites
SUITES = ("trixie", "sid", "bookworm")  # bookworm: the host's own Python, as a control
# What the tests call, beside python3: ip and tc, the C xenstore clients (the stand-in's
# conformance tests), flock (util-linux), make -n (test_install), groff -ww, mandoc -T lint and
# lexgrog (test_manpages), systemd-analyze verify (test_metrics): what the host has.
PACKAGES = (
    "python3",
    "python3-venv",
    "ca-certificates",
    "iproute2",
    "xenstore-utils",
    "util-linux",
    "make",
    "groff-base",
    "mandoc",
    "man-db",
    "systemd",
)
VENV = "/venv"
# The test extra without the host-only tools: lint stays on the host, the kernel tier too.
HOST_ONLY = ("mypy", "ruff", "virtme-ng")
# Not run in the root, each with the reason the run prints (pytest's -p tools.pyroot, below).
XEN_CACHE_REASON = (
    "reads the real-Xen tier's cache (.cache/e2e, tools/xenpkg.py), which the session hook "
    "would otherwise build from inside the root with its apt; made on the host"
)
VM_PLUMBING = {
    "tests/test_vm_smoke.py::test_when_the_vm_does_not_boot_vm_tests_skip_once_booted",
    "tests/test_vm_smoke.py::test_on_ci_vm_tests_fail_when_the_vm_cannot_run",
}
DEB_REASON = (
    "checks the Debian package (tools/deb.py), which the session hook would build from inside the "
    "root, installing a Debian build toolchain there: packaging is checked on the host"
)
VM_PLUMBING_REASON = (
    "runs the kernel tier's session setup, which fetches Debian's kernel with apt-get and "
    "depmods it (tools/vm.py): the kernel tier stays on the host"
)
# Where the kernel tier's cache goes if anything in the root asks for it: never the
# checkout's .cache/vm, which the host's kernel tier uses.
VM_CACHE = "/var/cache/remus-netbuf-vm"
SOURCES = ("pyproject.toml", "README.md", "remus_netbuf", "scripts")
RECIPE_VERSION = "1"

# Runs as root in a fresh mount namespace whose mounts are all private (unshare --propagation
# private: nothing mounted here reaches the host): ROOT REPO COMMAND...
INSIDE = r"""
set -eu
root=$1 repo=$2
shift 2
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -p "$root/run/netns" "$root/run/lock"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root$repo"
mount --bind "$repo" "$root$repo"
exec chroot "$root" "$@"
"""


class PyrootError(Exception):
    """A step of making or entering the root failed; the message says which and why."""


def say(line: str) -> None:
    print(f"pyroot: {line}", file=sys.stderr, flush=True)


def run(
    argv: Sequence[str], what: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise PyrootError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done


def inside(root: Path, argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """The command line running ARGV chrooted in ROOT, in a private mount namespace."""
    chrooted = ["/usr/bin/env", "-i", "-C", str(REPO), *(f"{k}={v}" for k, v in env.items()), *argv]
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", INSIDE, "-"] + [
        str(root),
        str(REPO),
        *chrooted,
    ]


def base_env() -> dict[str, str]:
    env = {
        "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "REMUS_NETBUF_VM_CACHE": VM_CACHE,
    }
    env.update({k: os.environ[k] for k in ("TERM", "CI", "COLUMNS") if k in os.environ})
    return env


def test_requirements() -> list[str]:
    """pyproject's test extra, as pinned there, less the host-only tools."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["optional-dependencies"]["test"], "setuptools>=77"]
    return [r for r in wanted if re.split(r"[<>=!~ \[]", r)[0] not in HOST_ONLY]


def recipe(suite: str) -> str:
    return json.dumps(
        {"suite": suite, "packages": PACKAGES, "venv": test_requirements(), "v": RECIPE_VERSION}
    )


def ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    say("installing debootstrap on this host")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"]
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        run(["apt-get", "update", "-qq"], "apt-get update", env=env)
        run(install, "apt-get install debootstrap", env=env)


def copy_pip_config(root: Path) -> None:
    """The host's pip.conf and the CA bundle it names: pip in the root reaches PyPI the same
    way as here. resolv.conf for the name of the index."""
    for name in ("/etc/resolv.conf", "/etc/pip.conf"):
        if os.path.isfile(name):
            shutil.copyfile(name, root / name.lstrip("/"))
    conf = Path("/etc/pip.conf")
    text = conf.read_text() if conf.is_file() else ""
    for bundle in re.findall(r"^\s*cert\s*=\s*(\S+)", text, re.MULTILINE):
        target = root / bundle.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # a link into /usr/share/ca-certificates, maybe
        shutil.copyfile(bundle, target)


def build(suite: str, dest: Path) -> None:
    """debootstrap SUITE into DEST, then the venv with the test dependencies."""
    ensure_debootstrap()
    started = time.monotonic()
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
    argv += [f"--keyring={KEYRING}", suite, str(dest), MIRROR]
    # In a mount namespace of its own: the /proc and /sys it mounts in DEST go with it.
    run(["unshare", "--mount", "--propagation", "private", "--", *argv], f"debootstrap {suite}")
    say(f"debootstrap {suite}: {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    copy_pip_config(dest)
    env = base_env()
    run(inside(dest, ["python3", "-m", "venv", VENV], env), "python3 -m venv")
    pip = [f"{VENV}/bin/pip", "install", "-q", "--disable-pip-version-check"]
    run(inside(dest, [*pip, *test_requirements()], env), "pip install (test dependencies)")
    say(f"venv with {' '.join(test_requirements())}: {time.monotonic() - started:.0f} s")


def ensure_root(suite: str, rebuild: bool) -> Path:
    """The cached root of SUITE, made when missing, stale or asked for (one maker at a time)."""
    home = CACHE / suite
    home.mkdir(parents=True, exist_ok=True)
    root, stamp = home / "root", home / "stamp"
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not rebuild and stamp.is_file() and stamp.read_text() == recipe(suite):
            return root
        say(f"making the {suite} root in {root} (a few minutes, once)")
        started = time.monotonic()
        stamp.unlink(missing_ok=True)
        new = home / "root.new"
        for old in (new, root):
            if old.exists():  # only ever mounted in namespaces that are gone
                shutil.rmtree(old)
        build(suite, new)
        new.rename(root)
        stamp.write_text(recipe(suite))
        say(f"the {suite} root is ready: {time.monotonic() - started:.0f} s")
    return root


def source_stamp() -> str:
    """Changes whenever what pip would install from this checkout does."""
    digest = hashlib.sha256()
    for top in SOURCES:
        path = REPO / top
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if "__pycache__" not in f.parts:
                digest.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def install_checkout(root: Path) -> None:
    """pip install (not editable) a copy of the checkout's sources into the root's venv, when
    they changed: setuptools writes build/ and egg-info beside the sources it builds, and the
    checkout's own remus_netbuf.egg-info is the host's editable install."""
    stamp = root / VENV.lstrip("/") / ".remus-netbuf-source"
    wanted = source_stamp()
    if stamp.is_file() and stamp.read_text() == wanted:
        return
    src = root / "var/tmp/remus-netbuf-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for top in SOURCES:
        path = REPO / top
        if path.is_dir():
            shutil.copytree(path, src / top, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(path, src / top)
    pip = [f"{VENV}/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    pip += ["--no-build-isolation", "--force-reinstall", "/var/tmp/remus-netbuf-src"]
    run(inside(root, pip, base_env()), "pip install of the checkout")
    stamp.write_text(wanted)


def inner_pytest(extra: Sequence[str]) -> list[str]:
    """pytest over the checkout, all but the kernel tier, with this module as a plugin (what
    cannot run in the root is deselected, saying why); the cache provider off, so the host's
    .pytest_cache (last failures) is not the root's."""
    argv = [f"{VENV}/bin/python", "-m", "pytest", "-m", "not vm", "-p", "tools.pyroot"]
    return [*argv, "-p", "no:cacheprovider", *extra]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the root (pytest -p tools.pyroot): deselect what cannot run there, saying why; before
    the session hook (tests/conftest.py) would fetch the caches the deselected tests need."""
    from tools import deb, xenpkg

    xen_cached = xenpkg.cached()
    reasons: dict[str, str] = {}
    for item in items:
        host = item.get_closest_marker("host_tools")
        if item.nodeid in VM_PLUMBING:
            reasons[item.nodeid] = VM_PLUMBING_REASON
        elif host:
            reasons[item.nodeid] = str(host.args[0])
        elif "xen_cache" in getattr(item, "fixturenames", ()) and not xen_cached:
            reasons[item.nodeid] = XEN_CACHE_REASON
        elif deb.FIXTURE in getattr(item, "fixturenames", ()):
            reasons[item.nodeid] = DEB_REASON
    if not reasons:
        return
    config.hook.pytest_deselected(items=[i for i in items if i.nodeid in reasons])
    items[:] = [i for i in items if i.nodeid not in reasons]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for nodeid, reason in reasons.items():
        if reporter is not None:
            reporter.write_line(f"pyroot: deselected {nodeid}: {reason}")


def host_traces(root: Path) -> tuple[set[str], list[str]]:
    """The host's /run/netns entries, and any mount of the host's under the root: a run must
    leave neither (its mounts, ip netns add's included, are in its own namespace)."""
    netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    with open("/proc/self/mountinfo") as table:
        points = [line.split()[4] for line in table]
    return netns, [p for p in points if p == str(root) or p.startswith(f"{root}/")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--suite", choices=SUITES, required=True)
    parser.add_argument("--rebuild", action="store_true", help="make the root again")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (debootstrap, mount namespaces, the native tests)")
    try:
        root = ensure_root(args.suite, args.rebuild)
        started = time.monotonic()
        install_checkout(root)
        env = base_env()
        version = [f"{VENV}/bin/python", "-c", "import sys; print('Python', sys.version)"]
        say(run(inside(root, version, env), "python --version").stdout.strip())
        setup = run(inside(root, [f"{VENV}/bin/remus-netbuf-setup", "--version"], env), "setup")
        say(f"{VENV}/bin/{setup.stdout.strip()} (install: {time.monotonic() - started:.1f} s)")
    except PyrootError as err:
        say(str(err))
        return 2
    netns, _ = host_traces(root)
    done = subprocess.run(inside(root, inner_pytest(args.pytest_args), env))
    after, mounts = host_traces(root)
    if mounts or after - netns:  # quiet otherwise: the last line is pytest's summary
        new = sorted(after - netns)
        say(f"host: mounts left under the root: {mounts}; new in /run/netns: {new}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
