"""The e2e tier's scenarios, run in a real Xen dom0 (tools/e2e_dom0.sh starts this).

Each scenario is judged from dom0 with the real tools (xl, xenstore-*, tc, ip) and with packets:
the guests stream numbered UDP datagrams to dom0 (one every 50 ms), received here with arrival
times. Results go to /e2e/results.json after every scenario, so a timeout loses none.

    scenarios: remus (one guest under xl remus -b), fail (setup failing inside libxl),
    two (two guests at once), bash (Xen's own script beside ours), conformance (the stand-in
    xenstored's conformance tests against this real one)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

WORK = Path("/e2e")
RUN = Path("/run/e2e")
REPO = Path(os.environ.get("E2E_REPO", Path(__file__).resolve().parents[1]))
OURS = REPO / ".venv" / "bin" / "remus-netbuf-setup"
TIMED = RUN / "remus-netbuf-timed"  # our script, its wall time logged: what libxl runs
XEN_SCRIPTS = Path("/etc/xen/scripts")
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

    def __init__(self, guest: Guest, script: Path) -> None:
        self.guest = guest
        argv = ["xl", "-vvv", "remus", "-F", "-b", "-i", str(CHECKPOINT_MS), "-N", str(script)]
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


# --- the scenarios --------------------------------------------------------------------------


class Dom0:
    def __init__(self, results: Results) -> None:
        self.results = results
        self.receiver: Receiver | None = None
        self.guests = [
            Guest("g1", "10.99.0.11", "00:16:3e:00:00:11"),
            Guest("g2", "10.99.0.12", "00:16:3e:00:00:12"),
        ]

    @contextmanager
    def scenario(self, name: str) -> Iterator[Scenario]:
        sc = Scenario(name)
        self.results.scenarios[name] = sc
        say(f"scenario {name}")
        for guest in self.guests:
            restarted = guest.restarted()
            if restarted:
                sc.figures[f"{guest.name} restarted by xl before this scenario"] = restarted
                say(f"{guest.name} restarted by xl before this scenario: {restarted}")
        start = time.monotonic()
        try:
            yield sc
        except Exception as err:  # noqa: BLE001 - a scenario's crash is its failure
            sc.check("scenario ran to its end", False, f"{type(err).__name__}: {err}")
        sc.figures["wall (s)"] = round(time.monotonic() - start, 1)
        self.results.save()

    def prepare(self) -> None:
        RUN.mkdir(parents=True, exist_ok=True)
        TIMED.write_text(
            "#!/bin/bash\n"
            "# our script as libxl runs it, its wall time logged\n"
            f's=$EPOCHREALTIME\n{OURS} "$@"\nrc=$?\ne=$EPOCHREALTIME\n'
            "ms=$(( (${e/./} - ${s/./}) / 1000 ))\n"
            f'echo "$1 vif=$vifname rc=$rc ms=$ms" >>{WORK}/hotplug.log\n'
            "exit $rc\n"
        )
        TIMED.chmod(0o755)
        # Debian 12's libnl CLI looks for its plugins (nl-qdisc-add's plug) in libnl/, the
        # package puts them in libnl-3/: the link an admin of Xen's script has to make.
        plugins = Path("/usr/lib/x86_64-linux-gnu/libnl")
        if not plugins.exists():
            plugins.symlink_to("libnl-3")
        for module in ("sch_plug", "sch_ingress", "cls_u32", "act_mirred", "ifb"):
            sh("modprobe", module)
        sh("ip", "link", "add", "xenbr0", "type", "bridge")
        sh("ip", "addr", "add", f"{BRIDGE_ADDR}/24", "dev", "xenbr0")
        sh("ip", "link", "set", "xenbr0", "up")
        self.receiver = Receiver()

    def guests_up(self) -> None:
        with self.scenario("guests") as sc:
            for guest in self.guests:
                start = time.monotonic()
                problem = create_guest(guest)
                if not sc.check(f"xl create {guest.name} (PVH, one vif)", not problem, problem):
                    continue
                sc.figures[f"{guest.name}: xl create (s)"] = round(time.monotonic() - start, 1)
            for guest in self.guests:
                if guest.domid < 0:
                    continue
                assert self.receiver is not None
                start = time.monotonic()
                got = wait_for(partial(self.receiver.last_from, guest.addr), 180, 0.5)
                sc.check(f"{guest.name}'s UDP stream reaches dom0 over {guest.vif}", got)
                sc.figures[f"{guest.name}: first datagram after (s)"] = round(
                    time.monotonic() - start, 1
                )
            copies, wrong = memcheck(MEMCHECK_SECONDS)
            sc.figures[f"platform: 2 MB copies in dom0 in {MEMCHECK_SECONDS:g} s"] = copies
            sc.check(
                "the platform: dom0's memory copies come out right while the guests run",
                copies > 0 and wrong == 0,
                f"{wrong} of {copies} copies wrong (tools/e2e_memcheck.py)",
            )
            self.results.stage("guests up")

    def remus(self) -> None:
        """Scenario 1 (g1 under xl remus -b), then 3 (g2 joins it): each checked as it runs;
        Remus then ends as xl's own comment says a user forces failover, by destroying the
        primary guests, and libxl runs our teardown for each."""
        assert self.receiver is not None
        g1, g2 = self.guests
        runs: dict[str, Remus] = {}
        with self.scenario("remus") as sc:
            runs[g1.name] = remus = Remus(g1, TIMED)
            if self.started_ok(sc, g1, remus):
                judge_buffering(sc, self.receiver, g1, remus, 16)
        with self.scenario("two") as sc:
            runs[g2.name] = Remus(g2, TIMED)
            if self.started_ok(sc, g2, runs[g2.name]):
                ifbs = [xs_read(f"{g.netbuf}/ifb") for g in self.guests]
                sc.check("distinct IFBs", len(set(ifbs)) == 2 and None not in ifbs, ifbs)
                sc.check(
                    "both IFBs plugged",
                    all(i and "qdisc plug" in qdiscs(i) for i in ifbs),
                    plugged_ifbs(),
                )
                threads = [
                    threading.Thread(
                        target=judge_buffering, args=(sc, self.receiver, g, runs[g.name], 16)
                    )
                    for g in self.guests
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        with self.scenario("failover") as sc:
            freed = {g.name: xs_read(f"{g.netbuf}/ifb") for g in self.guests}
            before = len(hotplug_log())
            for guest in self.guests:
                sh("xl", "destroy", guest.name)
            for guest in self.guests:
                rc = runs[guest.name].stop(None, 120)
                text = runs[guest.name].text()
                sc.check(
                    f"xl remus of {guest.name} ends when the primary is destroyed",
                    "Primary domain has been destroyed" in text,
                    f"xl exit {rc}",
                )
            ran = hotplug_log()[before:]
            sc.figures["hotplug runs"] = ran
            for guest in self.guests:
                torn = [r for r in ran if r.startswith("teardown ") and f"vif={guest.vif}" in r]
                sc.check(
                    f"libxl runs our teardown for {guest.vif}", torn and "rc=0" in torn[0], torn
                )
            sc.check("no plug is left on any IFB", not plugged_ifbs(), plugged_ifbs())
            for guest in self.guests:
                node = xs_read(f"{guest.netbuf}/ifb")
                sc.check(
                    f"{guest.name}'s claim is gone", node is None, f"{guest.netbuf}/ifb={node}"
                )
            links = sh("ip", "-o", "link").stdout
            vifs = [g.vif for g in self.guests if re.search(rf"\b{re.escape(g.vif)}\b", links)]
            sc.check("the vifs went with their domains", not vifs, vifs)
            sc.figures["IFBs freed"] = freed

    def started_ok(self, sc: Scenario, guest: Guest, remus: Remus) -> bool:
        """libxl ran our setup for the guest's vif, and the netbuf is where libxl reads it."""
        status = remus.wait_connected()
        took = round(time.monotonic() - remus.started, 1)
        sc.figures[f"{guest.name}: xl remus to hotplug-status connected (s)"] = took
        # the timing wrapper logs our setup when it exits, just after it wrote "connected"
        wait_for(lambda: len(setup_ms(guest.vif)) > remus.setups_before, 10)
        ours = setup_ms(guest.vif)[remus.setups_before :]
        sc.figures[f"{guest.name}: our setup inside libxl (ms)"] = ours
        if not sc.check(
            f"libxl's setup of our script for {guest.vif} succeeds", status == "connected", status
        ):
            sc.figures["xl output tail"] = remus.text()[-1500:]
            return False
        ifb = xs_read(f"{guest.netbuf}/ifb") or ""
        sc.check(
            "ifb sits where libxl reads it",
            re.fullmatch(r"ifb\d+", ifb),
            f"{guest.netbuf}/ifb={ifb}",
        )
        sc.check(f"{ifb}'s root qdisc is plug", "qdisc plug" in qdiscs(ifb), qdiscs(ifb))
        filters = sh("tc", "filter", "show", "dev", guest.vif, "ingress").stdout
        sc.check(
            f"{guest.vif}'s ingress redirects to {ifb}", f"Redirect to device {ifb}" in filters
        )
        logged = wait_for(
            lambda: re.search(rf"{ifb} will buffer packets from vif {guest.vif}", remus.text()), 30
        )
        sc.check("libxl says it buffers", logged, logged.group(0) if logged else "")
        return True

    def fail(self) -> None:
        assert self.receiver is not None
        g1 = self.guests[0]
        with self.scenario("fail") as sc:
            CONF.write_text(
                "# e2e: an invalid value, so that setup fails inside libxl\nplug_limit = 0\n"
            )
            try:
                remus = Remus(g1, TIMED)
                rc: int | None
                try:
                    rc = remus.proc.wait(SETUP_DEADLINE)
                except subprocess.TimeoutExpired:
                    rc = remus.stop()
                remus.reader.join(5)
            finally:
                CONF.unlink()
            text = remus.text()
            sc.check("xl remus fails", rc not in (0, None), f"exit {rc}")
            ours = re.search(r".*plug_limit.*", text)
            sc.check(
                "libxl reports our hotplug-error text",
                ours,
                ours.group(0)[-300:] if ours else text[-600:],
            )
            started = re.search(r"will buffer packets|Remus: checkpoint", text)
            sc.check("Remus does not start", not started, started.group(0) if started else "")
            state = domain_state(g1.name)
            sc.check(
                "the guest keeps running (not paused, shut down, crashed or dying)",
                state and not set(state) & set("pscd"),
                f"state {state!r}",
            )
            left = leftovers(g1)
            sc.check("nothing is left of the failed setup", not left, left)
            ok, detail = steady(self.receiver, g1, 4)
            sc.check("the guest's network is intact (stream unbuffered)", ok, detail)

    def kill(self) -> None:
        """An admin kills xl remus: xl has no signal handler, so libxl never runs teardown."""
        assert self.receiver is not None
        g1 = self.guests[0]
        receiver = self.receiver
        with self.scenario("kill") as sc:
            remus = Remus(g1, TIMED)
            status = remus.wait_connected()
            if not sc.check("libxl's setup of our script succeeds", status == "connected", status):
                remus.stop()
                return
            marks = wait_for(
                lambda: len(remus.checkpoints()) >= 2 or remus.proc.poll() is not None, 120
            )
            running = remus.proc.poll() is None and len(remus.checkpoints()) >= 2
            if not sc.check("Remus is checkpointing when xl remus is killed", running, f"{marks}"):
                sc.figures["xl output tail"] = remus.text()[-1500:]
                remus.stop()
                return
            before = len(hotplug_log())
            rc = remus.stop(signal.SIGTERM)
            sc.figures["xl remus exit after SIGTERM"] = rc
            time.sleep(3)
            ran = hotplug_log()[before:]
            sc.figures["hotplug runs after the kill"] = ran
            left = leftovers(g1)
            sc.figures["left by the killed xl remus"] = left
            sc.figures["guest state"] = sh("xl", "list", g1.name).stdout.splitlines()[-1:]
            ifb = xs_read(f"{g1.netbuf}/ifb") or ""
            cli = REPO / ".venv" / "bin" / "remus-netbuf"
            status_out = sh(str(cli), "status")
            sc.figures["remus-netbuf status after the kill"] = (
                status_out.stdout.strip().splitlines()
            )
            done = sh(
                str(cli),
                "teardown",
                "--vif",
                g1.vif,
                "--xenbus-path",
                g1.netbuf,
                *(["--ifb", ifb] if ifb else []),
            )
            sc.check(
                "remus-netbuf teardown frees it",
                done.returncode == 0,
                (done.stderr or done.stdout).strip()[-300:],
            )
            left = leftovers(g1)
            sc.check("nothing is left after remus-netbuf teardown", not left, left)
            state = domain_state(g1.name)
            if "s" in state:  # '---ss-': shut down, for a suspend
                # Killed inside a checkpoint, xl leaves the guest suspended, and xl has no
                # command to resume it: its network cannot flow, whatever the netbuf. The
                # admin's way out, and ours, for the scenarios that follow: a new guest.
                sc.figures["xl left the guest suspended"] = state
                sh("xl", "destroy", g1.name)
                since = time.monotonic()
                problem = create_guest(g1)
                got = not problem and wait_for(
                    lambda: (receiver.last_from(g1.addr) or 0) > since, 180, 1
                )
                sc.check(f"{g1.name} created again", got, problem)
            ok, detail = steady(receiver, g1, 4)
            sc.check("the guest's stream flows unbuffered", ok, detail)

    def bash(self) -> None:
        with self.scenario("bash") as sc:
            if not sc.check("Xen's own remus-netbuf-setup is in dom0", BASH.exists(), BASH):
                return
            for n in (0, 1):
                sh("ip", "link", "add", f"ifb{n}", "type", "ifb")  # the bash script makes none
            g1, g2 = self.guests

            def start(script: Path, command: str, guest: Guest, ifb: str = "") -> Job:
                sh("xenstore-write", f"{guest.netbuf}/e2e", "1")  # XENBUS_PATH exists, as libxl's
                env = {**os.environ, "vifname": guest.vif, "XENBUS_PATH": guest.netbuf}
                if ifb:
                    env["REMUS_IFB"] = ifb
                proc = subprocess.Popen(
                    [str(script), command],
                    env=env,
                    text=True,
                    errors="replace",
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                return Job(f"{script.parent.name}/{script.name} {command} {guest.vif}", proc)

            used: dict[int, list[str | None]] = {}
            for round_ in (1, 2):
                first, second = (BASH, OURS) if round_ == 1 else (OURS, BASH)
                # both setups at once: one script's pickifb lock must hold off the other's
                jobs = [start(first, "setup", g1), start(second, "setup", g2)]
                for job in jobs:
                    rc, out = job.finish()
                    sc.check(f"round {round_}: {job.what}, at once with the other", rc == 0, out)
                ifbs = used[round_] = [xs_read(f"{g.netbuf}/ifb") for g in (g1, g2)]
                sc.check(
                    f"round {round_}: mixed setups never collide (distinct IFBs)",
                    len(set(ifbs)) == 2 and None not in ifbs,
                    ifbs,
                )
                sc.check(
                    f"round {round_}: both IFBs plugged",
                    all(i and "qdisc plug" in qdiscs(i) for i in ifbs),
                    plugged_ifbs(),
                )
                sc.figures[
                    f"round {round_}: IFBs (g1 by {first.parent.name}, g2 by {second.parent.name})"
                ] = ifbs
                # each tears down what the other set up
                for job in (
                    start(second, "teardown", g1, ifbs[0] or ""),
                    start(first, "teardown", g2, ifbs[1] or ""),
                ):
                    rc, out = job.finish()
                    sc.check(f"round {round_}: {job.what} (set up by the other)", rc == 0, out)
                for guest in (g1, g2):
                    left = leftovers(guest)
                    sc.check(
                        f"round {round_}: nothing left of {guest.name}'s netbuf", not left, left
                    )
            sc.check(
                "round 2 picks again the IFBs round 1 freed (each script one the other freed)",
                set(used.get(2, [None])) == set(used.get(1, []))
                and None not in used.get(2, [None]),
                used,
            )
            ifb_links = sorted(re.findall(r"\d+: (ifb\d+)", sh("ip", "-o", "link").stdout))
            sc.figures["IFBs in dom0 at the end"] = ifb_links

    def conformance(self) -> None:
        with self.scenario("conformance") as sc:
            junit = WORK / "conformance.xml"
            env = {"REMUS_NETBUF_REAL_XENSTORED": "/run/xenstored/socket"}
            done = sh(
                str(REPO / ".venv" / "bin" / "python"),
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "addopts=",
                "-rfEs",
                f"--junitxml={junit}",
                "tests/test_standin_conformance.py",
                env=env,
                timeout=600,
            )
            (WORK / "conformance.log").write_text(done.stdout + done.stderr)
            summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
            sc.figures["pytest summary"] = summary
            failures = [r for r in done.stdout.splitlines() if r.startswith(("FAILED", "ERROR"))]
            sc.figures["failures"] = failures[:20]
            sc.check(
                "the stand-in's conformance tests pass against the real C xenstored",
                done.returncode == 0,
                summary,
            )


def main() -> int:
    only = [n for n in os.environ.get("E2E_ONLY", "").split(",") if n]
    wanted = ["guests", *(only or SCENARIOS)]
    if "remus" in wanted:
        wanted += ["two", "failover"]
    results = Results(wanted)
    results.stage("driver")
    dom0 = Dom0(results)
    dom0.prepare()
    if any(n in wanted for n in ("remus", "fail", "kill", "bash")):
        dom0.guests_up()
    for name in SCENARIOS:
        if name in wanted:
            getattr(dom0, name)()
    results.stage("scenarios done")
    return 0 if all(s.ok for s in results.scenarios.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
