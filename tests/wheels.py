"""Wheels for installing offline in the VM, which has no network: built here, on the host.

``make install WHEELS=DIR`` installs remus-netbuf[metrics] from DIR without an index. The
session hook in tests/conftest.py builds DIR (``pip wheel`` of this checkout with its metrics
extra) before the VMs boot, when a selected test asks for the ``offline_wheels`` fixture; the
guest sees it through the repo's overlay. A stamp of the sources skips rebuilding when nothing
changed; a failed build leaves its reason for the test to report.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".cache" / "wheels"
FIXTURE = "offline_wheels"


def source_stamp() -> str:
    """Changes whenever the wheel of this checkout would."""
    digest = hashlib.sha256()
    sources = [*sorted(REPO.glob("remus_netbuf/*")), *sorted(REPO.glob("scripts/*"))]
    for path in [REPO / "pyproject.toml", REPO / "README.md", *sources]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build() -> None:
    """Build the wheels unless those there are of these sources (never raises)."""
    stamp, error = WHEELS / "stamp", WHEELS / "error"
    if stamp.exists() and stamp.read_text() == source_stamp():
        return
    WHEELS.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    for old in WHEELS.glob("remus_netbuf-*.whl"):
        old.unlink()
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    argv += ["--wheel-dir", str(WHEELS), f"{REPO}[metrics]"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        error.write_text("pip wheel took more than 600 s")
        return
    if done.returncode != 0:
        error.write_text(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
        return
    error.unlink(missing_ok=True)
    stamp.write_text(source_stamp())


def ready() -> Path | str:
    """The wheel directory, or why there is none for these sources."""
    stamp = WHEELS / "stamp"
    if stamp.exists() and stamp.read_text() == source_stamp():
        return WHEELS
    error = WHEELS / "error"
    return error.read_text() if error.exists() else f"no wheels of these sources in {WHEELS}"
