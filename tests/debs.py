"""Reading a .deb in tests, with dpkg-deb: its file list, control fields, control members."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from tests.vmtier import scaled


def run(
    argv: list[str], timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run argv; shown with its output if the test fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=scaled(timeout), env=env)
    print(f"$ {shlex.join(argv)}  (exit {done.returncode})\n{done.stdout}{done.stderr}")
    return done


def contents(package: Path) -> dict[str, str]:
    """``dpkg-deb -c``: each path (without the leading ``.``; a link's own, not its target) and
    its mode string."""
    listing = run(["dpkg-deb", "-c", str(package)]).stdout.splitlines()
    return {
        line.split()[5].removeprefix(".").rstrip("/") or "/": line.split()[0] for line in listing
    }


def field(package: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(package), name]).stdout.strip()


def member(package: Path, name: str) -> str:
    """A file of the control archive (conffiles, postinst ...)."""
    tar = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(package)], capture_output=True)
    done = subprocess.run(["tar", "-xO", f"./{name}"], input=tar.stdout, capture_output=True)
    return done.stdout.decode()
