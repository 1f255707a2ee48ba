"""The e2e tier's scenarios under xl remus (remus, two, failover, fail, kill) and beside it
(bash: Xen's own script; conformance: the stand-in xenstored against the real one), as methods
tools/e2e_dom0.py's Dom0 takes on.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from tools.e2e_base import (
    BASH,
    CLI,
    CONF,
    INSTALLED,
    OURS,
    SETUP_DEADLINE,
    TEST_PYTHON,
    TIMED,
    WORK,
    Scenario,
    sh,
    wait_for,
    xs_read,
)
from tools.e2e_xl import (
    Guest,
    Job,
    Receiver,
    Remus,
    create_guest,
    domain_state,
    hotplug_log,
    judge_buffering,
    leftovers,
    plugged_ifbs,
    qdiscs,
    setup_ms,
    steady,
)


class Scenarios:
    """What each scenario needs of Dom0: its guests, the packets, a scenario's context."""

    receiver: Receiver | None
    guests: list[Guest]

    def scenario(self, name: str) -> contextlib.AbstractContextManager[Scenario]:
        raise NotImplementedError

    def remus(self) -> None:
        """Scenario 1 (g1 under xl remus -b), then 3 (g2 joins it): each checked as it runs;
        Remus then ends as xl's own comment says a user forces failover, by destroying the
        primary guests, and libxl runs our teardown for each."""
        assert self.receiver is not None
        g1, g2 = self.guests
        runs: dict[str, Remus] = {}
        with self.scenario("remus") as sc:
            # installed: xl runs the script xl.conf names (no -N), as an admin's xl remus does
            runs[g1.name] = remus = Remus(g1, None if INSTALLED else TIMED)
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
                if runs[guest.name].script is None:  # xl.conf's: from libxl's log, no failure
                    torn = runs[guest.name].ran("teardown")
                    done = len(torn) == 1 and torn[0].endswith(f"{OURS} teardown")
                else:
                    torn = [r for r in ran if r.startswith("teardown ") and f"vif={guest.vif}" in r]
                    done = bool(torn) and "rc=0" in torn[0]
                sc.check(f"libxl runs our teardown for {guest.vif}", done, torn)
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
        if remus.script is None:  # xl.conf's script: libxl's own log says which it ran
            ran = remus.ran("setup")
            sc.check(
                f"xl runs the script xl.conf names: {OURS}",
                ran and ran[0].endswith(f"forking to execute: {OURS} setup"),
                ran,
            )
        else:  # the timing wrapper logs our setup when it exits, just after "connected"
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
            kept = CONF.read_bytes() if CONF.exists() else None  # installed: our conffile
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
                if kept is None:
                    CONF.unlink()
                else:
                    CONF.write_bytes(kept)
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
            cli = CLI
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
                TEST_PYTHON,
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
