"""The e2e tier's scenarios, run in a real Xen dom0 (tools/e2e_dom0.sh starts this).

Each scenario is judged from dom0 with the real tools (xl, xenstore-*, tc, ip) and with packets:
the guests stream numbered UDP datagrams to dom0 (one every 50 ms), received here with arrival
times. Results go to /e2e/results.json after every scenario, so a timeout loses none.

    scenarios: remus (one guest under xl remus -b), fail (setup failing inside libxl),
    two (two guests at once), bash (Xen's own script beside ours), conformance (the stand-in
    xenstored's conformance tests against this real one)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from tools.e2e_base import (
    BASH,
    BIN,
    BRIDGE_ADDR,
    CHECKOUT,
    CLI,
    INSTALLED,
    MEMCHECK_SECONDS,
    OURS,
    REPO,
    RUN,
    TIMED,
    WORK,
    XEN_BRANCH,
    Results,
    Scenario,
    remus_netbuf_check,
    say,
    sh,
    wait_for,
)
from tools.e2e_install import Installing
from tools.e2e_scenarios import Scenarios
from tools.e2e_xl import Guest, Receiver, create_guest, memcheck

SCENARIOS = ("check", "fail", "kill", "bash", "remus", "conformance")  # remus: two, failover


class Dom0(Scenarios, Installing):
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
        # Our product from the checkout, under the root's python3. The checkout is read-only
        # here and its __pycache__ holds the host's Python's: without a cache of its own, 3.13
        # compiled the package at every run, 11-26 s of a setup under load (libxl allows 40).
        if CHECKOUT:
            BIN.mkdir(parents=True, exist_ok=True)
            run = {
                OURS: f"{REPO}/scripts/remus-netbuf-setup",
                CLI: "-c 'import sys; from remus_netbuf.cli import main; sys.exit(main())'",
            }
            for wrapper, what in run.items():
                wrapper.write_text(
                    f"#!/bin/sh\nexport PYTHONPATH={REPO} PYTHONPYCACHEPREFIX={RUN}/pycache\n"
                    f'exec {sys.executable} {what} "$@"\n'
                )
                wrapper.chmod(0o755)
        script = os.environ.get("E2E_XEN_SCRIPT", "")
        if INSTALLED and script and not BASH.exists():  # Debian ships no such script
            BASH.write_bytes(Path(script).read_bytes())
            BASH.chmod(0o755)
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

    def check(self) -> None:
        """remus-netbuf check in this dom0, its output in the log: it must tell the libxenlight
        xl loads (ours with network buffering, unless there is no build) from Debian's."""
        debians = Path("/mnt/e2e-xen/usr/lib/x86_64-linux-gnu") / f"libxenlight.so.{XEN_BRANCH}.0"
        ours = not os.environ.get("E2E_NETBUF_MISSING")
        with self.scenario("check") as sc:
            sc.figures["python"] = sys.version.split()[0]
            if os.environ.get("E2E_NETBUF_NOTE"):
                sc.figures["netbuf build"] = os.environ["E2E_NETBUF_NOTE"]
            for label, extra, netbuf in (
                ("the libxenlight xl loads", [], ours),
                ("Debian's libxenlight", ["--libxenlight", str(debians)], False),
            ):
                rc, lines = remus_netbuf_check(label, *extra)
                level, detail = lines.get("libxenlight", ("", f"rc {rc}: no libxenlight line"))
                built = "network buffering built in" in detail
                sc.check(
                    f"remus-netbuf check on {label}: {'netbuf' if netbuf else 'no netbuf'}",
                    level and built == netbuf,
                    f"{level} {detail}",
                )

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


def main() -> int:
    only = [n for n in os.environ.get("E2E_ONLY", "").split(",") if n and n != "check"]
    chosen = only or list(SCENARIOS[1:])
    guests = any(n in chosen for n in ("remus", "fail", "kill", "bash"))
    # in every dom0 first: check, or (installed) our .deb and the netbuf Xen .deb
    wanted = ["install" if INSTALLED else "check", *(["guests"] if guests else []), *chosen]
    if "remus" in wanted:
        wanted += ["two", "failover"]
    if INSTALLED:  # at the end, Debian's update and a purge
        wanted += ["update", "purge"]
    results = Results(wanted)
    results.stage("driver")
    dom0 = Dom0(results)
    dom0.prepare()
    if INSTALLED:
        dom0.install()
    else:
        dom0.check()
    if guests:
        dom0.guests_up()
    for name in SCENARIOS[1:]:
        if name in wanted:
            getattr(dom0, name)()
    results.stage("scenarios done")
    if INSTALLED:
        dom0.update()
        dom0.purge()
    return 0 if all(s.ok for s in results.scenarios.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
