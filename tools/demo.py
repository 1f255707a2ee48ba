"""``make demo``: the main job on an embedded default, as a story an admin can follow.

A throwaway network namespace plays dom0, with a veth "guest" behind ``vif1.0`` and a private
stand-in xenstored in which domain 1 is live. ``remus-netbuf-setup setup`` runs exactly as libxl
runs it; the installed state is shown with the real ``tc``, the xenstore nodes and ``remus-netbuf
status``; then epochs, with packets: what the guest sent, what dom0 received, what the plug holds.
Then teardown, and the state clean. Every claim the story makes is checked, so it is a smoke test
too: the exit status is 1 if anything did not happen as told. Everything it creates is removed at
the end, also on failure or SIGTERM.

Needs sch_plug. When the running kernel lacks it, the demo says so and runs itself in QEMU on
Debian's stock kernel (tools/vm.py), printing each stage as it happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: tools/ is on the path, the repo is not
    sys.path.insert(0, str(REPO))

from tools import vm  # noqa: E402

if TYPE_CHECKING:
    from tests.bed import Bed, Result
    from tests.packets import Wire

DOMID, DEVID = 1, 0
VIF = f"vif{DOMID}.{DEVID}"
XENBUS_PATH = f"/libxl/{DOMID}/remus/netbuf/{DEVID}"
INDENT = "   "
Row = tuple[str, str, str, str]


class Step(NamedTuple):
    """One step of the epochs: what happens, and what dom0 and the plug must show after it."""

    name: str
    action: Callable[[], object]
    sends: str  # what the guest sends, for the table
    receives: dict[str, int]  # what dom0 must receive, by family:label
    arp: bool | None = None  # whether dom0 must have seen the guest's ARP (None: no matter)
    holds: int = 0  # packets in the plug afterwards


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    vm.exit_on_sigterm()
    if os.environ.get(vm.IN_VM) == "1":
        return Story().run()
    start = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - start:5.1f} s] {message}", flush=True)

    options = vm.Options.from_env()
    mode = vm.choose_mode(options, say)
    if mode == "native":
        return Story().run()
    say(f"this kernel has no sch_plug: the demo runs in QEMU ({mode}) on Debian's stock kernel")
    me = [sys.executable, str(Path(__file__).resolve())]
    outcome = vm.run(me, cwd=REPO, options=options, mode=mode, say=say)
    say(f"done ({outcome.summary()})")
    if outcome.problem:
        print(f"demo: {outcome.problem}", file=sys.stderr)
        if not outcome.booted:
            print(outcome.console_tail(), file=sys.stderr)
    return outcome.exit_status


class Story:
    """The demo's steps; each claim it prints is checked, and a false one is marked FAILED."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def run(self) -> int:
        print("remus-netbuf demo: a protected guest's output, held until its checkpoint is safe")
        print(f"kernel {os.uname().release}, which has sch_plug\n")
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rnb-demo-")))
            bed = stack.enter_context(_bed(tmp))
            wire = self.stage(bed, stack)
            made = [bed.ns, wire.guest]
            ifb = self.setup(bed)
            if ifb is not None:
                self.installed(bed, ifb)
                self.epochs(bed, wire, ifb)
                self.teardown(bed, ifb)
        left = [ns for ns in made if Path("/run/netns", ns).exists()]
        left += [str(p) for p in (tmp, Path(bed.xs_socket).parent) if p.exists()]
        self.check(not left, f"everything the demo made is gone (left: {', '.join(left)})")
        if self.failures:
            print(f"\nFAILED: {len(self.failures)} claim(s) did not hold:")
            for failure in self.failures:
                print(f"{INDENT}{failure}")
            return 1
        print("\nEvery step happened as told; everything the demo made is gone.")
        return 0

    def check(self, ok: bool, claim: str) -> bool:
        if not ok:
            self.failures.append(claim)
            print(f"{INDENT}FAILED: {claim}")
        return ok

    # --- the story ------------------------------------------------------------------------

    def stage(self, bed: Bed, stack: ExitStack) -> Wire:
        from tests.packets import DOM0_V4, DOM0_V6, GUEST_V4, GUEST_V6, Wire

        print("1. The stage")
        peer = bed.add_vif(VIF)
        bed.domain(DOMID)
        wire = Wire(bed.ns, VIF, peer)
        stack.callback(wire.close)
        quiet = _quiet_guest(bed, wire)
        _table(
            [
                ("dom0", f"network namespace {bed.ns}; {VIF} has {DOM0_V4}, {DOM0_V6}"),
                ("guest", f"namespace {wire.guest}: {peer}, the other end of {VIF}"),
                ("", f"has {GUEST_V4}, {GUEST_V6}; sends UDP to dom0 port 7777, and ARP"),
                ("xenstored", f"private stand-in at {bed.xs_socket}"),
                ("", f"domain {DOMID} live: /local/domain/{DOMID}/name = guest{DOMID}"),
                ("config", f"{bed.conf}: lock_dir only, all else default"),
            ]
        )
        self.check(quiet, "the guest's own IPv6 start-up traffic died down before setup")
        print()
        return wire

    def setup(self, bed: Bed) -> str | None:
        print(
            f"2. libxl brings up {VIF}'s netbuf: it runs the hotplug script (in dom0's namespace)"
        )
        result = self.hotplug(bed, "setup")
        ifb = bed.node(f"{XENBUS_PATH}/ifb")
        self.check(result.returncode == 0, "setup exits 0")
        self.check(ifb is not None, f"setup claims an IFB at {XENBUS_PATH}/ifb")
        print()
        return ifb

    def installed(self, bed: Bed, ifb: str) -> None:
        print("3. What is installed")
        self.show(f"tc qdisc show dev {ifb}", bed.tc("qdisc", "show", "dev", ifb))
        self.show(f"tc filter show dev {VIF} ingress", bed.filters(VIF))
        print(f"{INDENT}xenstore {XENBUS_PATH}:")
        nodes = _children(bed, XENBUS_PATH)
        _table(sorted(nodes.items()), INDENT * 2)
        status = bed.cli("status")
        self.show("remus-netbuf status", status.stdout + status.stderr)
        self.check(bed.root_qdisc(ifb) == "plug" and bed.is_up(ifb), f"{ifb} is up, plugged")
        silent = bed.links()[ifb].get("inet6_addr_gen_mode") == "none"
        silent = silent and not bed.ip("-6", "addr", "show", "dev", ifb).strip()
        self.check(silent, f"{ifb} sends nothing of its own: addrgenmode none, no IPv6 address")
        redirect = f"mirred (Egress Redirect to device {ifb})" in bed.filters(VIF)
        self.check(redirect, f"{VIF}'s ingress is redirected to {ifb}")
        self.check(nodes.get("hotplug-status") == "connected", "hotplug-status is connected")
        self.check(status.returncode == 0, "status exits 0: no anomalies")
        self.check(f"{VIF}  {ifb}" in status.stdout, f"status lists {VIF} on {ifb}")
        print()

    def epochs(self, bed: Bed, wire: Wire, ifb: str) -> None:
        from remus_netbuf.plug import Plug

        print("4. Epochs: dom0 receives the guest's packets only once a checkpoint is safe")
        print(f"{INDENT}(libxl drives the plug each epoch; here the plug API does: Plug({ifb!r}))")
        with Plug(ifb, netns=bed.ns) as plug:

            def epoch_0() -> None:
                wire.send("e0", v4=3, v6=3)
                wire.send_arp()

            steps = [
                Step("guest runs: epoch 0", epoch_0, "e0: 3 v4, 3 v6, ARP", {}, False, 7),
                Step("buffer: checkpoint 1 starts", plug.buffer, "", {}, False, 7),
                Step(
                    "guest runs: epoch 1",
                    lambda: wire.send("e1", v4=2, v6=2),
                    "e1: 2 v4, 2 v6",
                    {},
                    False,
                    11,
                ),
                Step(
                    "release_one: checkpoint 1 safe",
                    plug.release_one,
                    "",
                    {"v4:e0": 3, "v6:e0": 3},
                    True,
                    4,
                ),
                Step("release_all: Remus stops", plug.release_all, "", {"v4:e1": 2, "v6:e1": 2}),
                Step(
                    "guest runs: unbuffered",
                    lambda: wire.send("free", v4=1, v6=1),
                    "free: 1 v4, 1 v6",
                    {"v4:free": 1, "v6:free": 1},
                ),
            ]
            header = ("step", "guest sends", "dom0 receives", "plug holds")
            expected = [
                (t.name, t.sends, _labels(t.receives) + ", ARP", "99 packets") for t in steps
            ]
            widths = _widths([header, *expected])
            _row(header, widths)
            arp_before = False
            for step in steps:
                step.action()
                _row(self.epoch(bed, wire, ifb, step, arp_before), widths)
                arp_before = arp_before or step.arp is True
        print()

    def epoch(self, bed: Bed, wire: Wire, ifb: str, step: Step, arp_before: bool) -> Row:
        """One row: what dom0 received (checked against the step's) and what the plug holds."""
        got = wire.drain(settle=1.0)
        learned = wire.dom0_learned_guest_arp()
        backlog = _backlog(bed, ifb)
        name = step.name
        self.check(got == Counter(step.receives), f"{name}: dom0 receives {_labels(step.receives)}")
        if step.arp is not None:
            self.check(
                learned == step.arp, f"{name}: dom0 has {'' if step.arp else 'not '}seen ARP"
            )
        self.check(backlog == step.holds, f"{name}: the plug holds {step.holds} (tc: {backlog})")
        arp = ", ARP" if learned and not arp_before else ""
        received = (_labels(got) + arp).removeprefix(", ") or "nothing"
        return (name, step.sends or "-", received, f"{backlog} packets")

    def teardown(self, bed: Bed, ifb: str) -> None:
        print(f"5. libxl tears {VIF}'s netbuf down")
        result = self.hotplug(bed, "teardown", ifb)
        self.check(result.returncode == 0, "teardown exits 0")
        status = bed.cli("status")
        self.show("remus-netbuf status", status.stdout + status.stderr)
        self.show(f"tc qdisc show dev {VIF}", bed.tc("qdisc", "show", "dev", VIF))
        self.show(f"ip link show {ifb}", bed.ip("link", "show", ifb))
        nodes = _children(bed, XENBUS_PATH)
        print(f"{INDENT}xenstore {XENBUS_PATH}: {', '.join(nodes) or 'no nodes'}")
        self.check(status.returncode == 0 and "(no netbufs)" in status.stdout, "status: none")
        self.check(not bed.has_ingress(VIF), f"{VIF} has no ingress qdisc")
        self.check(not bed.is_up(ifb) and bed.root_qdisc(ifb) != "plug", f"{ifb}: down, no plug")
        self.check(not nodes, f"no claim, no hotplug-status under {XENBUS_PATH}")

    # --- helpers that print ---------------------------------------------------------------

    def hotplug(self, bed: Bed, command: str, ifb: str | None = None) -> Result:
        first = f"vifname={VIF} XENBUS_PATH={XENBUS_PATH}" + (f" REMUS_IFB={ifb}" if ifb else "")
        print(f"{INDENT}$ {first} \\")
        print(f"{INDENT}  XENSTORED_PATH={bed.xs_socket} \\")
        print(f"{INDENT}  REMUS_NETBUF_CONF={bed.conf} \\")
        print(f"{INDENT}  remus-netbuf-setup {command}")
        start = time.monotonic()
        result = bed.hotplug(command, VIF, XENBUS_PATH, remus_ifb=ifb)
        took = time.monotonic() - start
        print(f"{INDENT}exit {result.returncode} after {took:.1f} s; its log (stderr, syslog):")
        for line in result.stderr.splitlines():
            print(f"{INDENT * 2}{line.removeprefix('remus-netbuf-setup: ')}")
        return result

    def show(self, command: str, output: str) -> None:
        print(f"{INDENT}$ {command}")
        for line in output.rstrip().splitlines() or ["(nothing)"]:
            print(f"{INDENT * 2}{line}".rstrip().expandtabs(4))


# --- plumbing -------------------------------------------------------------------------------


@contextmanager
def _bed(tmp: Path) -> Iterator[Bed]:
    from tests.bed import make_bed

    yield from make_bed(tmp)


def _quiet_guest(bed: Bed, wire: Wire, quiet_for: float = 2.0, limit: float = 20.0) -> bool:
    """Stop the guest's router solicitations and wait out its other IPv6 start-up packets
    (DAD, MLD reports), so that the plug later holds only what the story sends."""
    sysctl(wire.guest, f"net.ipv6.conf.{wire.peer}.router_solicitations=0")
    start = last_change = time.monotonic()
    seen = -1
    while time.monotonic() - start < limit:
        out = bed.ip("-j", "-s", "link", "show", VIF)
        count = json.loads(out)[0]["stats64"]["rx"]["packets"]
        if count != seen:
            seen, last_change = count, time.monotonic()
        elif time.monotonic() - last_change >= quiet_for:
            return True
        time.sleep(0.25)
    return False


def _backlog(bed: Bed, ifb: str) -> int:
    roots = [q for q in json.loads(bed.tc("-s", "-j", "qdisc", "show", "dev", ifb)) if q["root"]]
    return int(roots[0].get("qlen", 0)) if roots else 0


def _children(bed: Bed, path: str) -> dict[str, str]:
    return {k.removeprefix(path + "/"): v for k, v in bed.subtree(path + "/").items()}


def _labels(got: Mapping[str, int]) -> str:
    """{'v4:e0': 3, 'v6:e0': 3} -> 'e0: 3 v4, 3 v6'."""
    by_label: dict[str, list[str]] = {}
    for key, count in sorted(got.items()):
        family, _, label = key.partition(":")
        by_label.setdefault(label, []).append(f"{count} {family}")
    return "; ".join(f"{label}: {', '.join(parts)}" for label, parts in by_label.items())


def _widths(rows: Sequence[tuple[str, ...]]) -> list[int]:
    return [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]


def _row(row: tuple[str, ...], widths: Sequence[int], indent: str = INDENT) -> None:
    cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
    print((indent + "  ".join(cells)).rstrip())


def _table(rows: Sequence[tuple[str, ...]], indent: str = INDENT) -> None:
    widths = _widths(rows)
    for row in rows:
        _row(row, widths, indent)


def sysctl(ns: str, setting: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", setting], check=True)


if __name__ == "__main__":
    sys.exit(main())
