"""pytest plugin: the kernel tier, for tests that need a kernel with sch_plug.

The host kernel may lack sch_plug, so tests marked ``@pytest.mark.vm`` run on Debian's stock
kernel in QEMU (tools/vm.py: virtme-ng, KVM where a probe shows it works, TCG otherwise). On the
host the plugin collects them as usual; as soon as collection is done it boots the VMs in the
background. Each VM's command is pytest again, on its share of the vm tests, and this plugin, in
its inner role, appends one JSON line per test to a report in the VM's work dir (the one
directory the guest writes back through). Each outer item then reports its inner result as its
own: the real assertion for a failure, the inner reason for a skip. Fixtures of vm tests are set
up inside the VM only, never on the host.

Where the running kernel itself has sch_plug (a real dom0), there is no VM: vm tests run here,
as ordinary tests, so an admin verifies on their own kernel.

``@pytest.mark.vm(on_host=True)`` marks a test that drives the tier itself from the host: it is
selected with the tier (``-m vm``) but runs on the host.

A VM has one CPU. To use the host's others, the tier boots up to ``vm_shards`` VMs at once,
each with its share of the tests (balanced by ``@pytest.mark.vm(weight=N)``, N roughly the
test's seconds in a TCG VM, default DEFAULT_WEIGHT). The host's own tests run first, while the
VMs work. A vm test then waits for its shard's results.

If the VM cannot run (no kernel to fetch, no QEMU, no boot), vm tests skip, or fail when
CI=true, with the console's tail. Settings (environment first, then ini option): REMUS_NETBUF_VM
(auto, native, kvm, tcg: tools/vm.py), REMUS_NETBUF_VM_KERNEL (bookworm, trixie, sid: whose
Debian kernel boots), REMUS_NETBUF_VM_TIMEOUT / vm_timeout (seconds for boot, tests and
power-off together), REMUS_NETBUF_VM_SHARDS / vm_shards (VMs at once; default: the host's
CPUs), REMUS_NETBUF_VM_WORKDIR (parent of the work dirs: /tmp), REMUS_NETBUF_VM_KEEP=1 (keep
the work dirs, which are otherwise kept only when something broke).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _pytest._io import TerminalWriter  # what longreprtext uses; not public

from tools import vm

IN_VM = vm.IN_VM
REPORT = "REMUS_NETBUF_VM_REPORT"
# The directory from which this plugin imports by its dotted name (the repo root for tests.vmtier).
IMPORT_ROOT = Path(__file__).resolve().parents[__name__.count(".")]
TAIL_LINES = 40
DEFAULT_WEIGHT = 20.0  # seconds a typical vm test takes in a TCG VM (a hotplug run, packets)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "vm_timeout",
        "seconds for a whole VM run: boot, inner tests, power-off (env REMUS_NETBUF_VM_TIMEOUT)",
        default="2400",
    )
    parser.addini("vm_shards", "VMs booted at once (env REMUS_NETBUF_VM_SHARDS)", default="")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(IN_VM) == "1":
        if os.environ.get(REPORT):
            config.pluginmanager.register(InnerReporter(Path(os.environ[REPORT])), "vm-inner")
    else:
        config.pluginmanager.register(VmTier(config), "vm-tier")


def slowdown() -> float:
    """How many times slower than the host this runs (1 outside a VM): scale deadlines by it."""
    return max(1.0, float(os.environ.get(vm.SLOWDOWN) or 1.0))


def scaled(seconds: float) -> float:
    """A deadline of ``seconds`` on the host, stretched by how much slower this kernel runs."""
    return seconds * slowdown()


def tier_of(item: pytest.Item) -> str | None:
    """'vm' (runs in the VM), 'host' (a vm-tier test that runs here), or None."""
    marker = item.get_closest_marker("vm")
    if marker is None:
        return None
    return "host" if marker.kwargs.get("on_host") else "vm"


@dataclass(frozen=True)
class Settings:
    options: vm.Options
    ci: bool
    shards: int

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        env = os.environ
        try:
            options = vm.Options.from_env()
        except SystemExit as err:  # a bad REMUS_NETBUF_VM* value: one line, not a traceback
            raise pytest.UsageError(str(err)) from None
        timeout = env.get("REMUS_NETBUF_VM_TIMEOUT") or str(config.getini("vm_timeout"))
        return cls(
            options=dataclasses.replace(options, timeout=float(timeout)),
            ci=env.get("CI", "").lower() == "true",
            shards=int(
                env.get("REMUS_NETBUF_VM_SHARDS")
                or str(config.getini("vm_shards"))
                or len(os.sched_getaffinity(0))
            ),
        )


def skip_or_fail(settings: Settings, reason: str, detail: str = "") -> None:
    """The tier could not run: a skip on a workstation, a failure on CI."""
    if settings.ci:
        pytest.fail(
            f"{reason}\n(CI=true, so the kernel tier must run)\n{detail}".rstrip(), pytrace=False
        )
    pytest.skip(reason)


# --- host side ------------------------------------------------------------------------------


@dataclass
class TierRun:
    """What one VM boot left behind, read back from its work dir."""

    workdir: Path | None
    problem: str | None = None  # the run as a whole went wrong
    unavailable: bool = False  # and the VM never reached init: skip-or-fail, not a test failure
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    module_failures: list[str] = field(default_factory=list)
    timeline: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    mode: str = "?"
    kernel: str = "?"  # which kernel booted, e.g. "Debian trixie's 6.12.117+deb13-amd64"
    slowdown: float | None = None
    nodeids: list[str] = field(default_factory=list)

    def tails(self) -> str:
        if self.workdir is None:
            return ""
        parts = [
            f"--- tail of {self.workdir / n} ---\n{_tail(self.workdir / n)}"
            for n in ("out", "console.log")
        ]
        return "\n".join(parts)

    def summary(self) -> list[str]:
        t = self.timeline
        speed = f", {self.slowdown:.0f}x slower than the host" if self.slowdown else ""
        lines = [f"VM run ({self.mode}, {self.kernel}{speed}): {self.wall:.1f} s wall"]
        if "init" in t:
            ready = t.get("modules", t["init"])
            lines.append(f"boot: kernel up {t['init']:.1f} s at init, ready {ready:.1f} s")
        if "run" in t and "done" in t:
            tests = sum(float(r.get("duration", 0.0)) for r in self.records.values())
            lines.append(
                f"inner pytest: {t['done'] - t['run']:.1f} s, of which tests "
                f"{tests:.1f} s; tier overhead {self.wall - tests:.1f} s"
            )
        lines += [f"module FAILED in the VM: {m}" for m in self.module_failures]
        if self.problem:
            lines.append(f"problem: {self.problem}")
        return lines


class VmTier:
    """Host role: send the session's vm tests into VM boots and report what came out."""

    def __init__(self, config: pytest.Config) -> None:
        self.settings = Settings.from_config(config)
        self.rootdir = config.rootpath
        self.mode: str | None = None  # chosen once collection shows vm tests are selected
        self.runs: dict[str, TierRun] = {}  # nodeid -> the run of its shard
        self.shards: list[TierRun] = []
        self._threads: list[threading.Thread] = []
        self._booted: list[subprocess.Popen[bytes]] = []  # to kill if the session is cut short

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """The host's own tests first: they run while the VMs work."""
        items.sort(key=lambda item: tier_of(item) == "vm")  # stable: order kept within each

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        weights: dict[str, float] = {}
        items = {}
        for item in session.items:
            if tier_of(item) == "vm":
                marker = item.get_closest_marker("vm")
                weights[item.nodeid] = float(
                    marker.kwargs.get("weight", DEFAULT_WEIGHT) if marker else DEFAULT_WEIGHT
                )
                items[item.nodeid] = item
        if not weights or session.config.option.collectonly:
            return
        self.mode = vm.choose_mode(self.settings.options)
        if self.mode == "native":  # this kernel has sch_plug: the vm tests are ordinary tests
            return
        try:  # once, before the shards start: they share the cache
            vm.ensure_kernel(self.settings.options.cache, suite=self.settings.options.kernel)
            vm.python_tarball(self.settings.options.cache)
        except vm.Unavailable:
            pass  # each shard's run says why
        for item in items.values():
            # Fixtures belong to the inner run; here the item only relays its result.
            item.setup = _no_fixtures  # type: ignore[method-assign]
            item.runtest = _Relay(self, item)  # type: ignore[method-assign]
        for group in shard(weights, self.settings.shards):
            thread = threading.Thread(target=self._run_shard, args=(group,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run_shard(self, nodeids: list[str]) -> None:
        assert self.mode is not None
        run = run_vm(self.settings, self.mode, nodeids, self.rootdir, self._booted.append)
        self.shards.append(run)
        self.runs.update(dict.fromkeys(nodeids, run))

    def result(self, nodeid: str) -> TierRun:
        for thread in self._threads:
            thread.join()
        return self.runs[nodeid]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.mode == "native":
            terminalreporter.write_sep("-", "kernel tier")
            terminalreporter.write_line("this kernel has sch_plug: vm tests ran here, no VM")
        runs = [run for run in self.shards if run.workdir is not None]
        if not runs:
            return
        terminalreporter.write_sep("-", "kernel tier")
        for n, run in enumerate(runs, 1):
            prefix = f"shard {n}/{len(runs)}, {len(run.nodeids)} tests: " if len(runs) > 1 else ""
            for line in run.summary():
                terminalreporter.write_line(prefix + line)
            if self._keep(run):
                terminalreporter.write_line(f"work dir kept: {run.workdir}")

    def pytest_unconfigure(self) -> None:
        for proc in self._booted:  # a session cut short: no VM outlives it
            vm.kill(proc)
        for run in self.shards:
            if run.workdir is not None and not self._keep(run):
                shutil.rmtree(run.workdir, ignore_errors=True)

    def _keep(self, run: TierRun) -> bool:
        return self.settings.options.keep or bool(run.problem or run.module_failures)


def shard(weights: dict[str, float], shards: int) -> list[list[str]]:
    """Split tests into at most ``shards`` groups of about equal weight (heaviest first, each to
    the lightest group), every group in collection order."""
    groups: list[list[str]] = [[] for _ in range(max(1, min(shards, len(weights))))]
    loads = [0.0] * len(groups)
    for nodeid in sorted(weights, key=lambda n: -weights[n]):
        lightest = loads.index(min(loads))
        groups[lightest].append(nodeid)
        loads[lightest] += weights[nodeid]
    order = {nodeid: i for i, nodeid in enumerate(weights)}
    return [sorted(group, key=order.__getitem__) for group in groups if group]


def _no_fixtures() -> None:
    pass


class _Relay:
    """An outer vm item's runtest: wait for its shard's VM, then report the inner result."""

    def __init__(self, tier: VmTier, item: pytest.Item) -> None:
        self.tier, self.item = tier, item

    def __call__(self) -> None:
        run = self.tier.result(self.item.nodeid)
        if run.unavailable:
            skip_or_fail(self.tier.settings, run.problem or "the VM did not run", run.tails())
        rec = run.records.get(self.item.nodeid)
        notes = "".join(f"note: module FAILED in the VM: {m}\n" for m in run.module_failures)
        if rec is None:
            why = run.problem or "the inner pytest did not report this test"
            pytest.fail(f"no result from the VM: {why}\n{notes}{run.tails()}", pytrace=False)
        self.item.user_properties.append(("vm_duration", rec["duration"]))
        for title, content in rec["sections"]:
            key, _, when = title.removeprefix("Captured ").rpartition(" ")
            self.item.add_report_section(when or "call", f"{key or title} (in the VM)", content)
        if rec["outcome"] == "failed":
            where = "" if rec["when"] == "call" else f" (error in {rec['when']})"
            head = f"[in the VM{where}] {rec['crash']}"  # the line the short summary shows
            pytest.fail(f"{head}\n{notes}{rec['longrepr']}", pytrace=False)
        if rec["outcome"] == "skipped":
            if "wasxfail" in rec:
                pytest.xfail(rec["wasxfail"])
            # Reported at the test's location, as an inner skip is, rather than at this line.
            raise pytest.skip.Exception(rec["longrepr"], _use_item_location=True)


def run_vm(
    settings: Settings,
    mode: str,
    nodeids: list[str],
    rootdir: Path,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> TierRun:
    """Boot one VM with nodeids as the inner run's tests; return what it left behind."""
    workdir = vm.make_workdir(settings.options.workdir_parent)
    command = [sys.executable, "-m", "pytest", "--rootdir", str(rootdir), "-p", __name__]
    command += ["-p", "no:cacheprovider", "-v", "--color=no", *nodeids]
    pythonpath = os.pathsep.join(p for p in (str(IMPORT_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {REPORT: str(workdir / "report.jsonl"), "PYTHONPATH": pythonpath}
    with open(os.devnull, "wb") as sink:  # the output stays in the work dir: out
        outcome = vm.run(
            command,
            cwd=rootdir,
            env=env,
            options=settings.options,
            stdout=sink.fileno(),
            stderr=sink.fileno(),
            mode=mode,
            visible=[rootdir, IMPORT_ROOT],
            started=started,
            workdir=workdir,
        )
    run = TierRun(
        outcome.workdir,
        problem=outcome.problem,
        unavailable=not outcome.booted,
        module_failures=outcome.module_failures,
        timeline=outcome.timeline,
        wall=outcome.wall,
        mode=mode,
        kernel=outcome.kernel,
        slowdown=outcome.slowdown,
        nodeids=nodeids,
    )
    for line in _lines(workdir / "report.jsonl"):
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut short when the VM died
            continue
        run.records[rec["nodeid"]] = rec
    if outcome.returncode is not None and not run.records and outcome.returncode not in (0, 1):
        run.problem = run.problem or f"the inner pytest exited {outcome.returncode}"
    return run


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def _tail(path: Path) -> str:
    lines = _lines(path)
    return "\n".join(lines[-TAIL_LINES:]) if lines else "(missing or empty)"


# --- inner side (in the VM) -----------------------------------------------------------------


class InnerReporter:
    """Inner role: one JSON line per finished test, synced at once so a crash loses little."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rec = self.pending.setdefault(report.nodeid, _new_record(report.nodeid))
        rec["duration"] += report.duration
        rec["sections"] = [list(s) for s in report.sections]  # they accumulate over phases
        if hasattr(report, "wasxfail"):
            rec["wasxfail"] = report.wasxfail
        if report.failed or (report.skipped and rec["outcome"] == "passed"):
            rec.update(outcome=report.outcome, when=report.when, longrepr=_longrepr(report))
            crash = getattr(report.longrepr, "reprcrash", None)
            rec["crash"] = crash.message if crash is not None else ""

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        rec = self.pending.pop(nodeid, None)
        if rec is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _new_record(nodeid: str) -> dict[str, Any]:
    fields = {"outcome": "passed", "when": "call", "longrepr": "", "crash": "", "duration": 0.0}
    return {"nodeid": nodeid, **fields, "sections": []}


def _longrepr(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    longrepr = report.longrepr
    if longrepr is None or isinstance(longrepr, (str, tuple)):
        return report.longreprtext
    if isinstance(longrepr, pytest.ExceptionInfo):
        longrepr = longrepr.getrepr()
    out = io.StringIO()  # not longreprtext: it strips the first line's indent
    longrepr.toterminal(TerminalWriter(file=out))
    return out.getvalue().rstrip("\n")
