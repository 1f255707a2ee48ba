"""``make bench``: figures for the notes, printed beside their targets and never asserted.

(a) On a kernel with sch_plug (Debian's, in QEMU: tools/vm.py): wall time of
    ``remus-netbuf-setup setup`` and ``teardown``, spawned as libxl spawns them, while 1, 16 and
    63 other domains hold IFBs (a live domain, a claim in xenstore, a vif redirected to its IFB,
    a plug on the IFB).
(b) Here: start-up cost of ``remus-netbuf-setup`` (``-X importtime`` total of the entry module,
    wall time of ``--version``) and the wall time of a teardown with nothing to undo.
(c) There too: one epoch's plug actions, buffer then release_one, through the plug API (one Plug,
    many cycles) and through ``tc qdisc change ... plug`` (a process per command, as the shell
    script does).
(d) There too: bench/plug_group.py, a domain's plugs (1, 4, 16 IFBs) per epoch through one
    PlugGroup batch against a loop of Plugs (its table is printed as it comes).

A TCG VM runs Python ~17x slower than the host, so its figures are for ratios, not absolutes.
The VM part is this script again (``--vm-part``), run by tools/vm.py; it writes its samples to a
JSON file in the VM's work dir and prints a progress line per round. Where this kernel has
sch_plug, the VM part runs here instead, in a private network namespace (``unshare --net``).
The exit status is 1 only when a figure could not be measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench/ is on the path, the repo is not
    sys.path.insert(0, str(REPO))

from tools import vm  # noqa: E402

if TYPE_CHECKING:
    from tests.xenstored_standin import XenstoredStandin

BIN = Path(sys.executable).parent
SETUP = str(BIN / "remus-netbuf-setup")
LEVELS = (1, 16, 63)  # other domains holding IFBs
HOTPLUG_RUNS = 7  # rounds; each runs a setup+teardown at every level, after one warm-up
NATIVE_RUNS = 10
API_CYCLES = 2000
TC_CYCLES = 20
VM_TIMEOUT = 900.0  # a hard stop; the VM part takes about 4-6 minutes under TCG
PRIVATE = "REMUS_NETBUF_BENCH_PRIVATE_NETNS"  # the VM part runs in a kernel of its own
OUR_DOMID, OUR_VIF = 1, "vif1.0"
TARGETS = {"setup_ratio": 1.3, "startup_ms": 120.0, "cycle_ratio": 50.0}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vm-part", type=Path, help=argparse.SUPPRESS)  # results file
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    vm.exit_on_sigterm()
    if args.vm_part:
        return vm_part(args.vm_part)
    print("remus-netbuf benchmarks: figures, not assertions")
    print(f"(b) native, kernel {os.uname().release}")
    native = native_figures()
    before = os.getloadavg()[0]
    inside, problem = vm_figures()
    print(f"    host load average: {before:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    missing = print_table(native, inside)
    if problem:
        print(f"\nVM part: {problem}")
    return 1 if missing or problem else 0


# --- (b) here ---------------------------------------------------------------------------


def native_figures() -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"import_ms": [], "version_ms": [], "noop_teardown_ms": []}
    for _ in range(NATIVE_RUNS):
        samples["import_ms"].append(import_ms("remus_netbuf.hotplug"))
        samples["version_ms"].append(wall_ms([SETUP, "--version"], os.environ))
    with standin() as stage:
        if Path(f"/sys/class/net/{OUR_VIF}").exists():  # never touch a real vif
            print(f"    no-op teardown skipped: this host has a {OUR_VIF}")
            return samples
        env = hotplug_env(stage, OUR_VIF, OUR_DOMID)
        for _ in range(NATIVE_RUNS):
            samples["noop_teardown_ms"].append(wall_ms([SETUP, "teardown"], env))
    print(f"    {NATIVE_RUNS} runs each: import, --version, no-op teardown")
    return samples


def import_ms(module: str) -> float:
    """``-X importtime`` cumulative time of ``module``, imported at top level, in ms."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    pattern = re.compile(rf"^import time:\s+\d+ \|\s+(\d+) \| {re.escape(module)}$", re.M)
    match = pattern.search(done.stderr)
    if match is None:
        raise RuntimeError(f"no importtime line for {module}")
    return int(match.group(1)) / 1000


def wall_ms(argv: Sequence[str], env: Any) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    took = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return took


@dataclass(frozen=True)
class Stage:
    """A private stand-in xenstored, and a temp dir with a config (its lock_dir inside)."""

    xs: XenstoredStandin
    socket_path: str
    tmp: Path


@contextmanager
def standin() -> Iterator[Stage]:
    from tests.xenstored_standin import XenstoredStandin

    tmp = Path(tempfile.mkdtemp(prefix="rnb-bench-", dir="/tmp"))  # AF_UNIX paths are short
    socket_path = str(tmp / "xs.sock")
    (tmp / "remus-netbuf.conf").write_text(f"lock_dir={tmp / 'lock'}\n")
    xs = XenstoredStandin(socket_path).start()
    try:
        yield Stage(xs, socket_path, tmp)
    finally:
        xs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def hotplug_env(stage: Stage, vif: str, domid: int) -> dict[str, str]:
    """The environment libxl gives the script, plus where our xenstored and config are."""
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "XENSTORED_PATH": stage.socket_path,
        "REMUS_NETBUF_CONF": str(stage.tmp / "remus-netbuf.conf"),
        "vifname": vif,
        "XENBUS_PATH": f"/libxl/{domid}/remus/netbuf/0",
    }


# --- (a) and (c), in the VM ----------------------------------------------------------------


def vm_figures() -> tuple[dict[str, Any], str | None]:
    """Run the VM part; its samples, and what went wrong if anything did."""
    options = dataclasses.replace(vm.Options.from_env(), timeout=VM_TIMEOUT)
    mode = vm.choose_mode(options, lambda m: print(f"    {m}"))
    workdir = vm.make_workdir(options.workdir_parent)
    results = workdir / "results.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--vm-part", str(results)]
    try:
        if mode == "native":
            print(f"(a), (c) here, kernel {os.uname().release}, in a private network namespace:")
            done = subprocess.run(["unshare", "--net", *command], env={**os.environ, PRIVATE: "1"})
            returncode, problem = done.returncode, None
        else:
            print(f"(a), (c) in QEMU ({mode}) on Debian's stock kernel:")
            outcome = vm.run(command, cwd=REPO, options=options, mode=mode, workdir=workdir)
            print(f"    ({outcome.summary()})")
            returncode, problem = outcome.returncode, outcome.problem
        data = json.loads(results.read_text()) if results.exists() else {}
        if returncode not in (0, None):
            problem = f"exit {returncode}"
        return data, problem
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def vm_part(results: Path) -> int:
    """In the VM: measure, writing the samples after each round (a timeout keeps the rest)."""
    if os.environ.get(vm.IN_VM) != "1" and os.environ.get(PRIVATE) != "1":
        print("--vm-part builds devices in its root namespace: only in a VM", file=sys.stderr)
        return 1
    hot: dict[str, dict[str, list[float]]] = {str(n): {"setup": [], "teardown": []} for n in LEVELS}
    data: dict[str, Any] = {"hotplug": hot, "cycle": {}}
    # IFBs up would send their own IPv6 start-up packets into their plugs: keep them quiet.
    _run(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
    warm = hotplug_pair(LEVELS[0])  # the first python starts are the slowest
    print(f"    warm-up, not counted: setup {warm[0]:.0f} ms, teardown {warm[1]:.0f} ms")
    for rnd in range(1, HOTPLUG_RUNS + 1):  # levels interleaved: host noise hits them alike
        for others in LEVELS:
            setup, teardown = hotplug_pair(others)
            hot[str(others)]["setup"].append(setup)
            hot[str(others)]["teardown"].append(teardown)
        results.write_text(json.dumps(data))
        row = ", ".join(
            f"{n}: {hot[str(n)]['setup'][-1]:.0f}/{hot[str(n)]['teardown'][-1]:.0f}" for n in LEVELS
        )
        print(f"    round {rnd}/{HOTPLUG_RUNS}, setup/teardown ms with N other domains {row}")
    data["cycle"] = cycles()
    results.write_text(json.dumps(data))
    api, tc = data["cycle"]["api_us"], data["cycle"]["tc_us"]
    print(f"    plug cycles: {len(api)} through the API, {len(tc)} through tc")
    print("(d) a domain's plugs per epoch: one PlugGroup batch against a loop of Plugs")
    group = subprocess.run([sys.executable, str(Path(__file__).with_name("plug_group.py"))])
    return group.returncode


def hotplug_pair(others: int) -> tuple[float, float]:
    """Wall ms of one setup and one teardown of vif1.0 while ``others`` domains hold IFBs.

    Built in the VM's own root namespace (private to the VM), so the script is spawned exactly
    as libxl spawns it: no ``ip netns exec`` in the timing. The spare IFB it takes is made up
    front, so it picks a free IFB rather than creating one.
    """
    spare = f"ifb{others}"
    path = f"/libxl/{OUR_DOMID}/remus/netbuf/0"
    with standin() as stage, world(others, spare):
        seed_xenstore(stage.xs, others)
        env = hotplug_env(stage, OUR_VIF, OUR_DOMID)
        setup = wall_ms([SETUP, "setup"], env)
        claim = stage.xs.nodes().get(f"{path}/ifb")
        if claim != spare:
            raise RuntimeError(f"setup claimed {claim}, not the free {spare}")
        return setup, wall_ms([SETUP, "teardown"], {**env, "REMUS_IFB": spare})


def seed_xenstore(xs: XenstoredStandin, others: int) -> None:
    """Domain 1 (ours) and the other domains live; each other domain claims its IFB."""
    xs.seed(f"/local/domain/{OUR_DOMID}/name", f"guest{OUR_DOMID}")
    for i in range(others):
        domid, base = i + 2, f"/libxl/{i + 2}/remus/netbuf/0"
        xs.seed(f"/local/domain/{domid}/name", f"guest{domid}")
        xs.seed(f"{base}/ifb", f"ifb{i}")
        xs.seed(f"{base}/hotplug-status", "connected")


@contextmanager
def world(others: int, spare: str) -> Iterator[None]:
    """Our vif1.0, a spare IFB, and ``others`` domains' vifs redirected into plugged IFBs."""
    ip = [f"link add {OUR_VIF} type veth peer name g1x0", f"link set {OUR_VIF} up"]
    ip += [f"link add {spare} type ifb"]
    tc = []
    for i in range(others):
        vif, ifb = f"vif{i + 2}.0", f"ifb{i}"
        ip += [f"link add {vif} type veth peer name g{i + 2}x0", f"link set {vif} up"]
        ip += [f"link add {ifb} type ifb", f"link set {ifb} up"]
        tc += [f"qdisc add dev {ifb} root plug limit 10000000", f"qdisc add dev {vif} ingress"]
        tc += [
            f"filter add dev {vif} parent ffff: protocol all pref 10 u32 match u32 0 0"
            f" action mirred egress redirect dev {ifb}"
        ]
    devices = [OUR_VIF, spare] + [n for i in range(others) for n in (f"vif{i + 2}.0", f"ifb{i}")]
    try:
        _batch("ip", ip)
        _batch("tc", tc)
        yield
    finally:
        _batch("ip", [f"link del {d}" for d in devices], force=True)


def _batch(tool: str, commands: Sequence[str], force: bool = False) -> None:
    if commands:
        argv = [tool, *(["-force"] if force else []), "-batch", "-"]
        subprocess.run(argv, input="\n".join(commands) + "\n", text=True, check=not force)


def _run(argv: Sequence[str]) -> None:
    subprocess.run(argv, check=True)


def cycles() -> dict[str, list[float]]:
    """Per-cycle µs of buffer+release_one: the plug API, then tc with a process per command."""
    from remus_netbuf.plug import Plug

    ifb = "ifbbench0"
    _run(["ip", "link", "add", ifb, "type", "ifb"])
    try:
        _run(["ip", "link", "set", ifb, "up"])
        _run(["tc", "qdisc", "add", "dev", ifb, "root", "plug", "limit", "10000000"])
        api: list[float] = []
        with Plug(ifb) as plug:
            for _ in range(API_CYCLES):
                start = time.perf_counter_ns()
                plug.buffer()
                plug.release_one()
                api.append((time.perf_counter_ns() - start) / 1000)
        tc: list[float] = []
        change = ["tc", "qdisc", "change", "dev", ifb, "root", "plug"]
        for _ in range(TC_CYCLES):  # tc's words: block is TCQ_PLUG_BUFFER, release RELEASE_ONE
            start = time.perf_counter_ns()
            _run([*change, "block"])
            _run([*change, "release"])
            tc.append((time.perf_counter_ns() - start) / 1000)
        return {"api_us": api, "tc_us": tc}
    finally:
        subprocess.run(["ip", "link", "del", ifb])


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    figure: str
    samples: Sequence[float]
    unit: str  # ms or µs
    target: str = ""
    value: str = ""  # instead of the samples' median

    def cells(self) -> tuple[str, str, str, str]:
        if self.value:
            return self.figure, self.value, "", ""
        if not self.samples:
            return self.figure, "n/a", "", "0"
        low, high = min(self.samples), max(self.samples)
        spread = f"{low:.0f}-{high:.0f}"
        return (
            self.figure,
            f"{median(self.samples):.0f} {self.unit}",
            spread,
            str(len(self.samples)),
        )


def print_table(native: dict[str, list[float]], inside: dict[str, Any]) -> int:
    """Print every figure with its target; returns how many could not be measured."""
    lines: list[Line] = []
    hot = inside.get("hotplug", {})
    for action in ("setup", "teardown"):
        for others in LEVELS:
            runs = hot.get(str(others), {}).get(action, [])
            name = f"(a) VM: {action}, {others} other domain{'s' if others > 1 else ''} busy"
            lines.append(Line(name, runs, "ms", ratio_target(hot, action, others)))
    imp, ver, noop = native["import_ms"], native["version_ms"], native["noop_teardown_ms"]
    startup = TARGETS["startup_ms"]
    lines += [
        Line("(b) here: importtime of remus_netbuf.hotplug", imp, "ms"),
        Line(
            "(b) here: remus-netbuf-setup --version, wall",
            ver,
            "ms",
            f"<= {startup:.0f} ms: {met(median(ver), startup)}" if ver else "",
        ),
        Line("(b) here: teardown with nothing to undo, wall", noop, "ms"),
    ]
    cyc = inside.get("cycle", {})
    api, tc = cyc.get("api_us", []), cyc.get("tc_us", [])
    ratio = median(tc) / median(api) if api and tc else None
    goal = TARGETS["cycle_ratio"]
    lines += [
        Line("(c) VM: buffer+release_one, plug API", api, "µs"),
        Line("(c) VM: block+release, tc per command", tc, "µs"),
        Line(
            "(c) VM: the plug API is faster than tc by",
            [],
            "",
            f">= {goal:.0f}x: {met(goal, ratio)}" if ratio else "",
            f"{ratio:.0f}x" if ratio else "n/a",
        ),
    ]
    rows = [("figure", "median", "min-max", "runs"), *(x.cells() for x in lines)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    targets = ["target", *(x.target for x in lines)]
    for row, target in zip(rows, targets, strict=True):
        right = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in right)]
        print(("  ".join(cells) + "  " + target).rstrip())
    print(NOTES)
    return sum(1 for x in lines if x.cells()[1] == "n/a")


NOTES = f"""\
(a) {HOTPLUG_RUNS} rounds after one warm-up; each round builds every level afresh and runs one
    setup and one teardown in it, the script spawned directly as libxl spawns it, in the VM's
    own root namespace; the stand-in xenstored answers from Python.
(b) in this host's own namespace; the teardown finds no vif1.0 and no claim.
(c) {API_CYCLES} API cycles on one Plug; {TC_CYCLES} tc cycles of 2 processes each (tc's words:
    block = buffer, release = release_one).
Python in a TCG VM is ~17x slower than here, and its timings follow the host's load:
compare ratios there, not absolutes."""


def ratio_target(hot: dict[str, Any], action: str, others: int) -> str:
    if action != "setup" or others != LEVELS[-1]:
        return ""
    base = hot.get(str(LEVELS[0]), {}).get("setup", [])
    busy = hot.get(str(others), {}).get("setup", [])
    goal = TARGETS["setup_ratio"]
    if not base or not busy:
        return f"<= {goal}x setup at {LEVELS[0]}"
    ratio = median(busy) / median(base)
    return f"<= {goal}x setup at {LEVELS[0]}: {ratio:.2f}x, {met(ratio, goal)}"


def met(value: float | None, limit: float | None) -> str:
    if value is None or limit is None:
        return "n/a"
    return "met" if value <= limit else "MISSED"


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


if __name__ == "__main__":
    sys.exit(main())
