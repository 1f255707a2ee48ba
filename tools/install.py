"""``make install`` / ``make uninstall``: remus-netbuf on a Debian dom0.

    python3 tools/install.py install|uninstall [--prefix DIR] [--sbindir DIR] [--xendir DIR]
                                               [--mandir DIR] [--wheels DIR]

install: a venv at PREFIX (/opt/remus-netbuf) with the package and its metrics extra (from PyPI,
or offline from the wheels in DIR); ``remus-netbuf`` and ``remus-netbuf-setup`` linked into
SBINDIR (/usr/local/sbin); the man pages of man/ copied into MANDIR/man8 and MANDIR/man5
(/usr/local/share/man); XENDIR/remus-netbuf.conf (/etc/xen) installed only if absent; xl
pointed at our script by ``remus.default.netbufscript`` in XENDIR/xl.conf. Xen's own
XENDIR/scripts/remus-netbuf-setup, which a package may own, is never touched: xl.conf routes
around it. No existing file is replaced: a link or man page path holding something else, or a
PREFIX that install did not make, stops it before anything changes. The xl.conf edit is one
marked line (remus_netbuf.xlconf), idempotent, with the file first copied to
xl.conf.remus-netbuf.orig; on Debian xl.conf is a conffile of xen-utils-common, which dpkg keeps
as the admin's change.

uninstall removes only what install added, per the record install keeps in PREFIX
(remus-netbuf-install.json) and the mark in xl.conf: it puts the xl.conf line back (a line the
admin has changed since is kept), removes the config and each man page only if it is as
installed, the links only if they point into PREFIX, then PREFIX, and the directories install
created if they are empty.

Standard library only: it runs with the system python3 before the venv exists. It must run as
root, and only on the dom0 it installs on: never run it on a development host (the tests run it
in the kernel tier's VM, whose overlays throw it all away).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from remus_netbuf import xlconf  # noqa: E402  (standard library only)

PROGRAMS = ("remus-netbuf", "remus-netbuf-setup")
RECORD = "remus-netbuf-install.json"
BACKUP = ".remus-netbuf.orig"  # xl.conf.remus-netbuf.orig
SHIPPED_CONF = REPO / "etc" / "xen" / "remus-netbuf.conf"
MAN_SOURCES = REPO / "man"
MAN_PAGES = ("remus-netbuf-setup.8", "remus-netbuf.8", "remus-netbuf.conf.5")  # name.SECTION


@dataclass
class Record:
    """What install did that uninstall must undo (kept as JSON in PREFIX)."""

    created_dirs: list[str] = field(default_factory=list)
    conf_sha256: str | None = None  # the config as install put it, if install put it
    xl_conf_created: bool = False
    man_pages: dict[str, str] = field(default_factory=dict)  # path -> sha256 as installed


class Refused(Exception):
    """Install or uninstall stopped before changing anything; the message says why."""


@dataclass(frozen=True)
class Paths:
    prefix: Path  # the venv
    sbindir: Path
    xendir: Path
    mandir: Path  # the man pages go into its man8 and man5

    @property
    def record(self) -> Path:
        return self.prefix / RECORD

    @property
    def conf(self) -> Path:
        return self.xendir / "remus-netbuf.conf"

    @property
    def xl_conf(self) -> Path:
        return self.xendir / "xl.conf"

    @property
    def backup(self) -> Path:
        return self.xendir / ("xl.conf" + BACKUP)

    @property
    def script(self) -> str:
        """What xl.conf names: the link in SBINDIR, so the path survives a new venv."""
        return str(self.sbindir / "remus-netbuf-setup")

    def link(self, program: str) -> Path:
        return self.sbindir / program

    def target(self, program: str) -> Path:
        return self.prefix / "bin" / program

    def man_page(self, page: str) -> Path:
        """Where ``page`` (``name.SECTION``) is installed: MANDIR/manSECTION/page."""
        return self.mandir / f"man{page.rsplit('.', 1)[1]}" / page


def say(message: str) -> None:
    print(f"remus-netbuf: {message}", flush=True)


# --- install ----------------------------------------------------------------------------------


def install(paths: Paths, wheels: Path | None) -> None:
    record = read_record(paths)
    refuse_foreign(paths, record)
    if record is None:
        ensure_venv_module()
        record = Record(created_dirs=missing_dirs(paths.prefix.parent))
        say(f"creating the venv {paths.prefix}")
        run([sys.executable, "-I", "-m", "venv", str(paths.prefix)])
        write_record(paths, record)  # from now on PREFIX is ours, even if pip fails
        pip_install(paths, wheels, again=False)
    else:
        pip_install(paths, wheels, again=True)
    place(paths, record)


def refuse_foreign(paths: Paths, record: Record | None) -> None:
    """Stop before any change if install would replace something that is not ours."""
    if os.path.lexists(paths.prefix) and record is None:
        raise Refused(f"{paths.prefix} exists and make install did not make it: remove it first")
    for program in PROGRAMS:
        link = paths.link(program)
        if os.path.lexists(link) and not ours(paths, program):
            raise Refused(f"{link} exists and is not ours: remove it, or pick another SBINDIR")
    for page in MAN_PAGES:
        installed = paths.man_page(page)
        if os.path.lexists(installed) and str(installed) not in (record or Record()).man_pages:
            raise Refused(f"{installed} exists and is not ours: remove it, or pick another MANDIR")


def pip_install(paths: Paths, wheels: Path | None, again: bool) -> None:
    """The package with its metrics extra into the venv; ``again``: over an earlier install."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    # -I: isolated from PYTHONPATH and the user's site, where pip would find (say, a checkout's
    # remus_netbuf.egg-info) a remus-netbuf "already installed" and install no programs.
    pip = [str(paths.prefix / "bin" / "python3"), "-I", "-m", "pip", "install", "--quiet"]
    pip.append("--disable-pip-version-check")
    if wheels is not None:  # offline: everything from the wheel directory
        pip += ["--no-index", "--find-links", str(wheels)]
        package = f"remus-netbuf[metrics]=={version}"
    else:
        package = f"{REPO}[metrics]"
    say(f"installing remus-netbuf {version} from {wheels or REPO}")
    run([*pip, package])
    if again:  # the same version from a newer checkout: pip calls it satisfied; replace it
        run([*pip, "--force-reinstall", "--no-deps", package.replace("[metrics]", "")])


def ensure_venv_module() -> None:
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        say("installing python3-venv (python3 -m venv needs it)")
        run(["apt-get", "install", "-y", "-q", "python3-venv"])


def place(paths: Paths, rec: Record) -> None:
    """Everything outside the venv: links, man pages, config, xl.conf; then the record of what
    was done."""
    man_dirs = dict.fromkeys(paths.man_page(page).parent for page in MAN_PAGES)
    for directory in (paths.sbindir, paths.xendir, *man_dirs):
        for missing in missing_dirs(directory):
            Path(missing).mkdir(mode=0o755)
            rec.created_dirs.append(missing)
    for program in PROGRAMS:
        if not ours(paths, program):
            paths.link(program).symlink_to(paths.target(program))
            say(f"linked {paths.link(program)} -> {paths.target(program)}")
    for page in MAN_PAGES:
        place_man_page(paths, rec, page)
    if not os.path.lexists(paths.conf):
        shutil.copyfile(SHIPPED_CONF, paths.conf)
        paths.conf.chmod(0o644)
        rec.conf_sha256 = sha256(paths.conf)
        say(f"installed {paths.conf}")
    elif rec.conf_sha256 is None:
        say(f"kept {paths.conf} as it was")
    point_xl(paths, rec)
    write_record(paths, rec)
    say(f"done: run remus-netbuf check (xl remus now runs {paths.script})")


def place_man_page(paths: Paths, rec: Record, page: str) -> None:
    """Install ``page``, or replace the one an earlier install left as it left it (a newer
    checkout's); one changed since, or not ours, is kept."""
    source, installed = MAN_SOURCES / page, paths.man_page(page)
    if os.path.lexists(installed):
        as_left = rec.man_pages.get(str(installed))
        foreign = as_left is None or installed.is_symlink() or not installed.is_file()
        if foreign or sha256(installed) != as_left:
            say(f"kept {installed}: not as make install left it")
            return
        if installed.read_bytes() == source.read_bytes():
            return
    write_atomic(installed, source.read_text())
    rec.man_pages[str(installed)] = sha256(installed)
    say(f"installed {installed}")


def point_xl(paths: Paths, rec: Record) -> None:
    exists = paths.xl_conf.exists()
    text = paths.xl_conf.read_text() if exists else ""
    try:
        new = xlconf.point_at(text, paths.script)
    except ValueError as err:
        raise Refused(f"{paths.xl_conf}: {err}: set {xlconf.KEY} by hand") from None
    if new == text:
        say(f"{paths.xl_conf}: {xlconf.KEY} already names {paths.script}")
        return
    if exists and not os.path.lexists(paths.backup):
        shutil.copy2(paths.xl_conf, paths.backup)
        say(f"backed up {paths.xl_conf} to {paths.backup}")
    if not exists:
        rec.xl_conf_created = True
    write_atomic(paths.xl_conf, new)
    say(f'{paths.xl_conf}: set {xlconf.KEY}="{paths.script}"')


# --- uninstall --------------------------------------------------------------------------------


def uninstall(paths: Paths) -> None:
    rec = read_record(paths)
    if rec is None:
        say(f"no record of make install in {paths.prefix}: only xl.conf's mark and our links go")
    restore_xl(paths, rec or Record())
    if rec is not None and rec.conf_sha256 and paths.conf.exists():
        if sha256(paths.conf) == rec.conf_sha256:
            paths.conf.unlink()
            say(f"removed {paths.conf}")
        else:
            say(f"kept {paths.conf}: changed since make install")
    for page, as_left in (rec.man_pages if rec is not None else {}).items():
        remove_if_unchanged(Path(page), as_left)
    for program in PROGRAMS:
        if ours(paths, program):
            paths.link(program).unlink()
            say(f"removed {paths.link(program)}")
    if rec is not None:
        shutil.rmtree(paths.prefix)
        say(f"removed {paths.prefix}")
        for directory in reversed(rec.created_dirs):
            try:
                Path(directory).rmdir()
            except OSError:
                pass  # not empty: something else lives there now


def remove_if_unchanged(path: Path, as_left: str) -> None:
    """Remove ``path`` if it is still the file install left (its sha256 ``as_left``)."""
    if not path.is_file() or path.is_symlink():
        return
    if sha256(path) == as_left:
        path.unlink()
        say(f"removed {path}")
    else:
        say(f"kept {path}: changed since make install")


def restore_xl(paths: Paths, rec: Record) -> None:
    if not paths.xl_conf.exists():
        return
    text = paths.xl_conf.read_text()
    new, what = xlconf.restore(text, paths.script)
    say(f"{paths.xl_conf}: {what}")
    if rec.xl_conf_created and not new.strip():
        paths.xl_conf.unlink()
        say(f"removed {paths.xl_conf} (make install created it)")
    elif new != text:
        write_atomic(paths.xl_conf, new)
    if paths.backup.exists():
        if paths.xl_conf.exists() and paths.backup.read_bytes() == paths.xl_conf.read_bytes():
            paths.backup.unlink()
        else:
            say(f"kept {paths.backup}: {paths.xl_conf} has changed since, compare them")


# --- small helpers ----------------------------------------------------------------------------


def missing_dirs(directory: Path) -> list[str]:
    """``directory`` and those of its parents that do not exist, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    return [str(d) for d in reversed(missing)]


def ours(paths: Paths, program: str) -> bool:
    link = paths.link(program)
    return link.is_symlink() and Path(os.readlink(link)) == paths.target(program)


def read_record(paths: Paths) -> Record | None:
    try:
        return Record(**json.loads(paths.record.read_text()))
    except FileNotFoundError:
        return None


def write_record(paths: Paths, rec: Record) -> None:
    write_atomic(paths.record, json.dumps(asdict(rec), indent=2, sort_keys=True) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by a new file of the same mode and owner (a temporary one renamed)."""
    tmp = path.with_name(f".{path.name}.remus-netbuf-tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():
        info = path.stat()
        os.chown(tmp, info.st_uid, info.st_gid)
        os.chmod(tmp, info.st_mode & 0o7777)
    else:
        os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(argv: Sequence[str]) -> None:
    done = subprocess.run(argv)
    if done.returncode != 0:
        raise Refused(f"{' '.join(argv)} failed (exit {done.returncode})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/install.py", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["install", "uninstall"])
    parser.add_argument("--prefix", type=Path, default=Path("/opt/remus-netbuf"))
    parser.add_argument("--sbindir", type=Path, default=Path("/usr/local/sbin"))
    parser.add_argument("--xendir", type=Path, default=Path("/etc/xen"))
    parser.add_argument("--mandir", type=Path, default=Path("/usr/local/share/man"))
    parser.add_argument("--wheels", type=Path, help="install offline from the wheels in DIR")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say(f"make {args.action} must run as root")
        return 1
    paths = Paths(args.prefix, args.sbindir, args.xendir, args.mandir)
    try:
        if args.action == "install":
            install(paths, args.wheels)
        else:
            uninstall(paths)
    except Refused as err:
        say(f"{args.action}: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
