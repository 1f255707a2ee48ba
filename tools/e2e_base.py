"""The e2e tier's dom0 side, common ground: where things are, the results file, and how a
check speaks (say, sh, xenstore reads, waiting). tools/e2e_dom0.py runs the scenarios.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

WORK = Path("/e2e")
RUN = Path("/run/e2e")
REPO = Path(os.environ.get("E2E_REPO", Path(__file__).resolve().parents[1]))
# Our product from the checkout under the root's own python3 (Xen 4.20's trixie root: the
# host's venv is of another Python), through wrappers prepare() writes; else the repo's venv.
CHECKOUT = os.environ.get("E2E_CHECKOUT") == "1"
# Xen 4.17: our .deb, installed in dom0 with apt (tools/e2e_dom0.py), is what runs.
INSTALLED = bool(os.environ.get("E2E_OUR_DEBS"))
BIN = RUN / "bin"
SBIN = Path("/usr/sbin")
if INSTALLED:
    OURS, CLI = SBIN / "remus-netbuf-setup", SBIN / "remus-netbuf"
elif CHECKOUT:
    OURS, CLI = BIN / "remus-netbuf-setup", BIN / "remus-netbuf"
else:
    OURS, CLI = (
        REPO / ".venv" / "bin" / "remus-netbuf-setup",
        REPO / ".venv" / "bin" / "remus-netbuf",
    )
TEST_PYTHON = os.environ.get("E2E_TEST_PYTHON") or str(REPO / ".venv" / "bin" / "python")
XEN_BRANCH = os.environ.get("E2E_XEN_BRANCH") or "4.17"
TIMED = RUN / "remus-netbuf-timed"  # our script, its wall time logged: what libxl runs
XEN_SCRIPTS = Path("/etc/xen/scripts")
XL_CONF = Path("/etc/xen/xl.conf")
XL_LINE = f'remus.default.netbufscript="{SBIN}/remus-netbuf-setup"'  # the README's one line
BASH = XEN_SCRIPTS / "remus-netbuf-setup"  # Xen's own, from the Xen source of the tree
CONF = Path("/etc/xen/remus-netbuf.conf")
PORT = 5001
SEND_INTERVAL = 0.05  # tools/e2e_guest.sh: one datagram every 50 ms
CHECKPOINT_MS = 2000
BRIDGE_ADDR = "10.99.0.1"
SCENARIOS = ("fail", "kill", "bash", "remus", "conformance")  # remus: also two, failover
MEMCHECK_SECONDS = 15.0  # with the guests up: the platform check (tools/e2e_memcheck.py)
SETUP_DEADLINE = 120.0  # libxl's own is 40 s; ours only bounds a hang
# xl -vvv: libxl suspends the guest at the start of every checkpoint and says so.
CHECKPOINT_LINE = re.compile(r"guest has suspended")


# --- results --------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    checks: list[dict[str, object]] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)

    def check(self, what: str, ok: object, detail: object = "") -> bool:
        self.checks.append({"what": what, "ok": bool(ok), "detail": str(detail)})
        say(f"{self.name}: {'ok' if ok else 'FAIL'} {what}" + (f": {detail}" if detail else ""))
        return bool(ok)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks)


class Results:
    def __init__(self, wanted: Sequence[str]) -> None:
        self.wanted = list(wanted)
        self.stages: dict[str, float] = {}
        self.scenarios: dict[str, Scenario] = {}

    def stage(self, name: str) -> None:
        self.stages[name] = uptime()
        self.save()

    def save(self) -> None:
        data = {
            "wanted": self.wanted,
            "stages": self.stages,
            "scenarios": {
                n: {"ok": s.ok, "checks": s.checks, "figures": s.figures}
                for n, s in self.scenarios.items()
            },
        }
        tmp = WORK / "results.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(WORK / "results.json")


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def say(line: str) -> None:
    text = f"E2E[{uptime():.2f}s]: {line}"
    print(text, flush=True)
    try:
        with open("/dev/console", "w") as console:
            console.write(text + "\n")
    except OSError:
        pass


def sh(
    *argv: str, timeout: float = 120.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, **(env or {})}
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=timeout, env=merged
        )
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(argv, 124, str(err.stdout or ""), f"timed out: {err}")


LAST_XS_ERROR: list[str] = [""]
T = TypeVar("T")


def xs_read(path: str) -> str | None:
    done = sh("xenstore-read", path)
    if done.returncode != 0:
        LAST_XS_ERROR[0] = f"xenstore-read {path}: rc {done.returncode}: {done.stderr.strip()}"
        return None
    return done.stdout.strip()


def wait_for(condition: Callable[[], T], timeout: float, step: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def remus_netbuf_check(label: str, *extra: str) -> tuple[int, dict[str, tuple[str, str]]]:
    """``remus-netbuf check`` in dom0, its output said and logged in check.log: its exit
    status, and its lines by check name (level, detail)."""
    done = sh(str(CLI), "check", *extra)
    with open(WORK / "check.log", "a") as log:
        log.write(f"$ remus-netbuf check {' '.join(extra)}  # {label}\n{done.stdout}{done.stderr}")
    for line in (done.stdout + done.stderr).splitlines():
        say(f"check ({label}): {line}")
    lines = {}
    for line in done.stdout.splitlines():
        match = re.match(r"(ok|warn|FAIL)\s+(\S+): (.*)", line)
        if match:
            lines[match[2]] = (match[1], match[3])
    return done.returncode, lines


def failing(lines: dict[str, tuple[str, str]]) -> list[str]:
    return sorted(name for name, (level, _) in lines.items() if level == "FAIL")
