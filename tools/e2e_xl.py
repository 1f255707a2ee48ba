"""The e2e tier's dom0 side: the guests' packets, the guests, xl remus, and what a netbuf
leaves in dom0 (xenstore, tc), as the scenarios (tools/e2e_scenarios.py) observe them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.e2e_base import (
    BRIDGE_ADDR,
    CHECKPOINT_LINE,
    CHECKPOINT_MS,
    LAST_XS_ERROR,
    PORT,
    REPO,
    RUN,
    SEND_INTERVAL,
    SETUP_DEADLINE,
    WORK,
    Scenario,
    sh,
    wait_for,
    xs_read,
)

# --- the packets ----------------------------------------------------------------------------


class Receiver:
    """Every datagram the guests send to dom0: (arrival time, source address, sequence)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("0.0.0.0", PORT))
        self.got: list[tuple[float, str, int]] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            data, (addr, _) = self.sock.recvfrom(64)
            self.got.append((time.monotonic(), addr, int(data or b"-1")))

    def times(self, addr: str, start: float, end: float) -> list[float]:
        return [t for t, a, _ in list(self.got) if a == addr and start <= t <= end]

    def last_from(self, addr: str) -> float | None:
        for t, a, _ in reversed(list(self.got)):
            if a == addr:
                return t
        return None


def bursts(times: Sequence[float], gap: float) -> list[tuple[float, float, int]]:
    """Arrivals split where they pause for more than ``gap``: (first, last, count) each."""
    out: list[tuple[float, float, int]] = []
    for t in sorted(times):
        if out and t - out[-1][1] <= gap:
            first, _, count = out[-1]
            out[-1] = (first, t, count + 1)
        else:
            out.append((t, t, 1))
    return out


def bursts_per_interval(
    found: Sequence[tuple[float, float, int]], marks: Sequence[float]
) -> list[int]:
    """How many bursts start in each interval between consecutive checkpoint marks."""
    counts = [0] * max(0, len(marks) - 1)
    for first, _, _ in found:
        for i in range(len(marks) - 1):
            if marks[i] <= first < marks[i + 1]:
                counts[i] += 1
    return counts


# --- guests and xl remus --------------------------------------------------------------------


@dataclass
class Guest:
    name: str
    addr: str
    mac: str
    domid: int = -1

    @property
    def vif(self) -> str:
        return f"vif{self.domid}.0"

    @property
    def netbuf(self) -> str:
        return f"/libxl/{self.domid}/remus/netbuf/0"

    def restarted(self) -> str:
        """If xl restarted the guest (it reboots one that triple-faults) under a new domid:
        what changed, and ``domid`` follows it, so that no check looks at a vif or a
        XENBUS_PATH that went with the old domain. '' when the guest is as it was."""
        if self.domid < 0:
            return ""
        found = sh("xl", "domid", self.name).stdout.strip()
        if not found.isdigit():  # destroyed (a crashed guest stays: on_crash = "preserve")
            self.domid = -1
            return ""
        now = int(found)
        if now == self.domid:
            return ""
        faults = [
            line
            for line in sh("xl", "dmesg").stdout.splitlines()
            if f"d{self.domid}v" in line and ("shutdown" in line or "crash" in line)
        ]
        was, self.domid = self.domid, now
        return f"domid {was} -> {now}" + (f" ({faults[-1].strip()})" if faults else "")


def memcheck(seconds: float) -> tuple[int, int]:
    """tools/e2e_memcheck.py on each of dom0's vCPUs: the 2 MB copies made, and how many came
    out wrong (any means the platform corrupts dom0's memory, and no result here is worth
    reading)."""
    argv = [sys.executable, str(REPO / "tools" / "e2e_memcheck.py"), str(seconds)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        for _ in range(os.cpu_count() or 1)
    ]
    counts = [proc.communicate()[0].split() for proc in procs]
    if any(len(c) != 2 for c in counts) or any(proc.returncode for proc in procs):
        return 0, 0
    return sum(int(c[0]) for c in counts), sum(int(c[1]) for c in counts)


def create_guest(guest: Guest) -> str:
    cfg = RUN / f"{guest.name}.cfg"
    cfg.write_text(
        "\n".join(
            [
                f'name = "{guest.name}"',
                'type = "pvh"',
                f'kernel = "{os.environ["E2E_GUEST_KERNEL"]}"',
                f'ramdisk = "{os.environ["E2E_GUEST_INITRD"]}"',
                f'extra = "console=hvc0 loglevel=4 e2e_ip={guest.addr}/24 e2e_dst={BRIDGE_ADDR}"',
                "memory = 128",
                "vcpus = 1",
                # QEMU TCG's SVM reports RDTSCP exits as RDTSC: the guest must not use it
                'tsc_mode = "native"',
                'cpuid = "host,rdtscp=0"',
                f"vif = [ 'bridge=xenbr0,mac={guest.mac}' ]",
                'on_crash = "preserve"',
                "",
            ]
        )
    )
    done = sh("xl", "create", str(cfg), timeout=180)
    if done.returncode != 0:
        return f"xl create {guest.name}: rc {done.returncode}: {done.stderr.strip()[-400:]}"
    guest.domid = int(sh("xl", "domid", guest.name).stdout.strip())
    return ""


class Remus:
    """``xl -vvv remus -F -b`` of one guest with a netbuf script; its output, time-stamped.

    -b: the checkpoints go to /dev/null. (A stand-in backup host through ``-s``, whose death
    would end Remus as a backup failing does, made xl hang or crash under TCG; see
    docs/real-xen-tier.md.)
    """

    def __init__(self, guest: Guest, script: Path | None) -> None:
        """``script`` None: no -N, xl runs the one xl.conf names (remus.default.netbufscript)."""
        self.guest = guest
        self.script = script
        argv = ["xl", "-vvv", "remus", "-F", "-b", "-i", str(CHECKPOINT_MS)]
        argv += ["-N", str(script)] if script else []
        self.setups_before = len(setup_ms(guest.vif))  # our runs on this vif so far
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*argv, guest.name, "dummyhost"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.lines: list[tuple[float, str]] = []
        self.log = open(WORK / f"remus-{guest.name}-{int(self.started)}.log", "w")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            now = time.monotonic()
            line = raw.decode(errors="replace").rstrip()
            self.lines.append((now, line))
            self.log.write(f"{now - self.started:9.3f} {line}\n")
        self.log.flush()

    def checkpoints(self) -> list[float]:
        return [t for t, line in list(self.lines) if CHECKPOINT_LINE.search(line)]

    def text(self) -> str:
        return "\n".join(line for _, line in list(self.lines))

    def ran(self, command: str) -> list[str]:
        """libxl's lines (xl -vvv) saying it ran a hotplug script with ``command``, and how
        that ended when it failed: ``forking to execute: SCRIPT setup``, ``SCRIPT setup [PID]
        exited with error status 1``."""
        return [
            line
            for _, line in list(self.lines)
            if re.search(
                rf"(forking to execute: \S+ {command}$|\S+ {command} \[\d+\] exited)", line
            )
        ]

    def wait_connected(self) -> str:
        """'connected', 'error', or what else the netbuf's hotplug-status was at the end."""

        def status() -> str | None:
            value = xs_read(f"{self.guest.netbuf}/hotplug-status")
            if value in ("connected", "error") or self.proc.poll() is not None:
                return value or f"xl exited {self.proc.returncode}"
            return None

        return str(wait_for(status, SETUP_DEADLINE) or f"no hotplug-status ({LAST_XS_ERROR[0]})")

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 120.0) -> int | None:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        finally:
            self.reader.join(5)
        return self.proc.returncode


def hotplug_log() -> list[str]:
    path = WORK / "hotplug.log"
    return path.read_text().splitlines() if path.exists() else []


def setup_ms(vif: str) -> list[int]:
    """Wall times (ms) of our setups on vif, from the timing wrapper's log."""
    found = []
    for line in hotplug_log():
        parts = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
        if line.startswith("setup ") and parts.get("vif") == vif:
            found.append(int(parts.get("ms", "0")))
    return found


def domain_state(name: str) -> str:
    """xl list's State of the domain ('' when there is none): r running, b blocked, p paused,
    s shut down, c crashed, d dying, '-' for each unset. With one pCPU, a guest waiting for
    it is '------'."""
    rows = sh("xl", "list", name).stdout.splitlines()[1:]
    fields = rows[-1].split() if rows else []
    return fields[4] if len(fields) >= 6 else ""


def qdiscs(dev: str) -> str:
    return sh("tc", "qdisc", "show", "dev", dev).stdout.strip()


def plugged_ifbs() -> list[str]:
    out = sh("tc", "qdisc", "show").stdout
    return sorted({m.group(1) for m in re.finditer(r"qdisc plug \S+ dev (\S+) root", out)})


def leftovers(guest: Guest) -> list[str]:
    """What a netbuf of this guest would leave: its claim, an ingress on its vif, any plug."""
    found = []
    for node in ("ifb", "hotplug-status", "hotplug-error"):
        value = xs_read(f"{guest.netbuf}/{node}")
        if value is not None:
            found.append(f"{guest.netbuf}/{node}={value}")
    if "ingress" in qdiscs(guest.vif):
        found.append(f"ingress qdisc on {guest.vif}")
    found += [f"plug on {ifb}" for ifb in plugged_ifbs()]
    return found


def steady(receiver: Receiver, guest: Guest, seconds: float) -> tuple[bool, str]:
    """Whether the guest's stream arrives unbuffered: no pause over 0.5 s for ``seconds``."""
    start = time.monotonic()
    time.sleep(seconds)
    times = receiver.times(guest.addr, start, time.monotonic())
    found = bursts(times, 0.5)
    return len(found) == 1 and len(times) > seconds / SEND_INTERVAL / 4, (
        f"{len(times)} datagrams in {seconds:g} s, {len(found)} run(s) split by pauses > 0.5 s"
    )


def judge_buffering(
    sc: Scenario, receiver: Receiver, guest: Guest, remus: Remus, seconds: float
) -> None:
    """The guest's stream under Remus: at most one burst per checkpoint, none between."""
    # The first checkpoint comes after the whole memory is sent (slow under TCG): judge from it.
    wait_for(lambda: remus.checkpoints() or remus.proc.poll() is not None, 180, 0.5)
    sc.figures[f"{guest.name}: first checkpoint after xl remus started (s)"] = round(
        time.monotonic() - remus.started, 1
    )
    start = time.monotonic()
    time.sleep(seconds)
    end = time.monotonic()
    marks = [t for t in remus.checkpoints() if start - 10 <= t <= end]
    times = receiver.times(guest.addr, start, end)
    found = bursts(times, 3 * SEND_INTERVAL)
    per = bursts_per_interval([b for b in found if marks and marks[0] <= b[0] < marks[-1]], marks)
    spans = [round((last - first) * 1000) for first, last, _ in found]
    sc.figures[f"{guest.name}: datagrams in {seconds:g} s"] = len(times)
    sc.figures[f"{guest.name}: checkpoints seen in xl's output"] = len(marks)
    sc.figures[f"{guest.name}: bursts"] = len(found)
    sc.figures[f"{guest.name}: datagrams per burst"] = [c for _, _, c in found]
    sc.figures[f"{guest.name}: burst spans (ms)"] = spans
    sc.check(f"{guest.name}'s datagrams arrive during Remus", len(times) > 0, f"{len(times)}")
    sc.check(
        f"{guest.name}: xl reports checkpoints",
        len(marks) >= 2,
        f"{len(marks)} marks in {seconds:g} s",
    )
    unbuffered = len(times) / max(1, len(found))
    sc.check(
        f"{guest.name}'s stream arrives in bursts, not steadily (a steady one is one run)",
        len(found) >= 2 and unbuffered >= 3,
        f"{len(times)} datagrams in {len(found)} bursts",
    )
    sc.check(
        f"{guest.name}: at most one burst per checkpoint interval",
        per and max(per) <= 1,
        f"bursts per interval {per}",
    )


@dataclass
class Job:
    what: str
    proc: subprocess.Popen[str]

    def finish(self, timeout: float = 60.0) -> tuple[int | None, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            return None, f"timed out after {timeout:g} s: {out.strip()[-300:]}"
        return self.proc.returncode, out.strip()[-300:]
