"""apt-get and apt-cache on a private apt state: their own sources, lists and archives.

The tools that fetch Debian packages into the project's cache (tools/xenpkg.py: bookworm's Xen;
tools/vm.py: trixie's or sid's kernel) must never read or edit the host's sources, which may
name another suite, nor update the host's package lists. Each gives its own sources text and a
state directory; apt reads the sources from there only (``Dir::Etc::sourcelist`` is
``/dev/null``), keeps its lists and caches there, and downloads as the caller (no ``_apt``
sandbox, which could not write into a cache under /root).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"  # bookworm's: verifies sid too
MIRROR = "http://deb.debian.org/debian"


class AptError(Exception):
    """An apt command failed; the message names it and apt's last word."""


def one_line_sources(suite: str, mirror: str = MIRROR, components: str = "main") -> str:
    """A sources.list line for one suite of Debian, signed by Debian's archive keyring."""
    return f"deb [signed-by={KEYRING}] {mirror} {suite} {components}\n"


class PrivateApt:
    """apt-get and apt-cache with their own sources, lists and archives under ``state``.

    ``sources`` is written to ``state/etc/NAME``: deb822 when NAME ends in ``.sources``,
    one-line entries when it ends in ``.list``. A subclass may set :attr:`error` to raise its
    own exception class (it is called with the message).
    """

    error: type[Exception] = AptError

    def __init__(self, state: Path, sources: str, name: str = "private.sources") -> None:
        self.state = state
        for sub in ("etc", "lists/partial", "archives/partial"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        (state / "etc" / name).write_text(sources)
        self.options = [
            "-o", "Dir::Etc::sourcelist=/dev/null",
            "-o", f"Dir::Etc::sourceparts={state / 'etc'}",
            "-o", f"Dir::State::Lists={state / 'lists'}",
            "-o", f"Dir::Cache::Archives={state / 'archives'}",
            "-o", f"Dir::Cache::pkgcache={state / 'pkgcache.bin'}",
            "-o", f"Dir::Cache::srcpkgcache={state / 'srcpkgcache.bin'}",
            "-o", "APT::Sandbox::User=root",  # writes into the cache as the caller
        ]  # fmt: skip

    def update(self) -> None:
        self.run("apt-get", "update", "-qq")

    def run(self, tool: str, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        """tool's stdout; on failure, raise (check) or return ''."""
        done = subprocess.run([tool, *self.options, *args], cwd=cwd, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise self.error(f"{tool} {' '.join(args)} failed: {last_line(done.stderr)}")
        return done.stdout if done.returncode == 0 else ""


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
