"""pytest plugin: the UML tier, for tests that need a kernel with sch_plug.

The host kernel may lack sch_plug, so tests marked ``@pytest.mark.uml`` run inside User-Mode
Linux (Debian's ``user-mode-linux``: a Linux 6.1 that runs as a process, with the host's root
file system over hostfs). On the host the plugin collects them as usual; the first time one is
about to run, it boots UML once for the whole session. UML's init (``uml_init.sh``) runs pytest
again, inside UML, on every uml test selected in this session, and this plugin, in its inner
role, appends one JSON line per test to a report in a work dir on hostfs. Each outer item then
reports its inner result as its own: the real assertion for a failure, the inner reason for a
skip. Fixtures of uml tests are set up inside UML only, never on the host.

``@pytest.mark.uml(on_host=True)`` marks a test that drives the tier itself from the host: it is
selected with the tier (``-m uml``) but runs on the host.

Booting is tools/umlrun.py's (shared with the demo and the benchmarks); this plugin gives it the
inner pytest as the command and reads the results back.

UML has one CPU. To use the host's others, the tier boots up to ``uml_shards`` UMLs at once,
each with its share of the tests (balanced by ``@pytest.mark.uml(weight=N)``, N roughly the
test's seconds, default DEFAULT_WEIGHT), and starts them as soon as collection is done, in the
background: the host's own tests, which run first, overlap with them. A uml test then waits
for its shard's results.

If UML cannot run (no kernel binary, no boot), uml tests skip, or fail when CI=true. Settings
(environment first, then ini option): REMUS_NETBUF_UML_KERNEL / uml_kernel, REMUS_NETBUF_UML_MEM
/ uml_mem, REMUS_NETBUF_UML_TIMEOUT / uml_timeout (seconds for boot, tests and halt together),
REMUS_NETBUF_UML_SHARDS / uml_shards (UMLs at once; default: the host's CPUs),
REMUS_NETBUF_UML_WORKDIR (parent of the per-session work dir, on hostfs: default /var/tmp) and
REMUS_NETBUF_UML_KEEP=1 (keep the work dir, which is otherwise kept only when something broke).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _pytest._io import TerminalWriter  # what longreprtext uses; not public

from tools import umlrun

IN_UML = "REMUS_NETBUF_IN_UML"
REPORT = "REMUS_NETBUF_UML_REPORT"
# The directory from which this plugin imports by its dotted name (the repo root for tests.umltier).
IMPORT_ROOT = Path(__file__).resolve().parents[__name__.count(".")]
TAIL_LINES = 40
DEFAULT_WEIGHT = 8.0  # seconds a typical uml test takes in UML here (a hotplug run, packets)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "uml_kernel", "UML kernel binary (env REMUS_NETBUF_UML_KERNEL)", default="linux.uml"
    )
    parser.addini("uml_mem", "UML memory size (env REMUS_NETBUF_UML_MEM)", default="512M")
    parser.addini(
        "uml_timeout",
        "seconds for the whole UML run: boot, inner tests, halt (env REMUS_NETBUF_UML_TIMEOUT)",
        default="2400",
    )
    parser.addini("uml_shards", "UMLs booted at once (env REMUS_NETBUF_UML_SHARDS)", default="")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(IN_UML) == "1":
        if os.environ.get(REPORT):
            config.pluginmanager.register(InnerReporter(Path(os.environ[REPORT])), "uml-inner")
    else:
        config.pluginmanager.register(UmlTier(config), "uml-tier")


def tier_of(item: pytest.Item) -> str | None:
    """'uml' (runs inside UML), 'host' (a uml-tier test that runs here), or None."""
    marker = item.get_closest_marker("uml")
    if marker is None:
        return None
    return "host" if marker.kwargs.get("on_host") else "uml"


@dataclass(frozen=True)
class Settings:
    kernel: str
    mem: str
    timeout: float
    workdir_parent: Path
    keep: bool
    ci: bool
    shards: int

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        env = os.environ
        return cls(
            kernel=env.get("REMUS_NETBUF_UML_KERNEL") or str(config.getini("uml_kernel")),
            mem=env.get("REMUS_NETBUF_UML_MEM") or str(config.getini("uml_mem")),
            timeout=float(env.get("REMUS_NETBUF_UML_TIMEOUT") or str(config.getini("uml_timeout"))),
            workdir_parent=Path(env.get("REMUS_NETBUF_UML_WORKDIR") or "/var/tmp"),
            keep=env.get("REMUS_NETBUF_UML_KEEP") == "1",
            ci=env.get("CI", "").lower() == "true",
            shards=int(
                env.get("REMUS_NETBUF_UML_SHARDS")
                or str(config.getini("uml_shards"))
                or len(os.sched_getaffinity(0))
            ),
        )


def skip_or_fail(settings: Settings, reason: str, detail: str = "") -> None:
    """The tier could not run: a skip on a workstation, a failure on CI."""
    if settings.ci:
        pytest.fail(
            f"{reason}\n(CI=true, so the UML tier must run)\n{detail}".rstrip(), pytrace=False
        )
    pytest.skip(reason)


# --- host side ------------------------------------------------------------------------------


@dataclass
class TierRun:
    """What one UML boot left behind, read back from its work dir."""

    workdir: Path | None
    problem: str | None = None  # the run as a whole went wrong
    unavailable: bool = False  # and UML never reached init: skip-or-fail, not a test failure
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    module_failures: list[str] = field(default_factory=list)
    timeline: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    nodeids: list[str] = field(default_factory=list)

    def tails(self) -> str:
        if self.workdir is None:
            return ""
        parts = [
            f"--- tail of {self.workdir / n} ---\n{_tail(self.workdir / n)}"
            for n in ("pytest.log", "console.log")
        ]
        return "\n".join(parts)

    def summary(self) -> list[str]:
        t = self.timeline
        lines = [f"UML run: {self.wall:.1f} s wall"]
        if "init" in t:
            lines.append(f"boot: kernel up {t['init']:.1f} s when init started")
        if "run" in t and "done" in t:
            tests = sum(float(r.get("duration", 0.0)) for r in self.records.values())
            lines.append(
                f"inner pytest: {t['done'] - t['run']:.1f} s, of which tests "
                f"{tests:.1f} s; tier overhead {self.wall - tests:.1f} s"
            )
        lines += [f"module FAILED inside UML: {m}" for m in self.module_failures]
        if self.problem:
            lines.append(f"problem: {self.problem}")
        return lines


class UmlTier:
    """Host role: send the session's uml tests into UML boots and report what came out."""

    def __init__(self, config: pytest.Config) -> None:
        self.settings = Settings.from_config(config)
        self.rootdir = config.rootpath
        self.runs: dict[str, TierRun] = {}  # nodeid -> the run of its shard
        self.shards: list[TierRun] = []
        self._threads: list[threading.Thread] = []
        self._booted: list[int] = []  # UML process groups, to kill if the session is cut short

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """The host's own tests first: they run while the UMLs work."""
        items.sort(key=lambda item: tier_of(item) == "uml")  # stable: order kept within each

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        weights: dict[str, float] = {}
        for item in session.items:
            if tier_of(item) == "uml":
                marker = item.get_closest_marker("uml")
                weights[item.nodeid] = float(
                    marker.kwargs.get("weight", DEFAULT_WEIGHT) if marker else DEFAULT_WEIGHT
                )
                # Fixtures belong to the inner run; here the item only relays its result.
                item.setup = _no_fixtures  # type: ignore[method-assign]
                item.runtest = _Relay(self, item)  # type: ignore[method-assign]
        if session.config.option.collectonly:
            return
        for group in shard(weights, self.settings.shards):
            thread = threading.Thread(target=self._run_shard, args=(group,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run_shard(self, nodeids: list[str]) -> None:
        run = run_uml(self.settings, nodeids, self.rootdir, self._booted.append)
        self.shards.append(run)
        self.runs.update(dict.fromkeys(nodeids, run))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if tier_of(item) == "host" and shutil.which(self.settings.kernel) is None:
            skip_or_fail(self.settings, f"UML kernel {self.settings.kernel!r} not found")

    def result(self, nodeid: str) -> TierRun:
        for thread in self._threads:
            thread.join()
        return self.runs[nodeid]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        runs = [run for run in self.shards if run.workdir is not None]
        if not runs:
            return
        terminalreporter.write_sep("-", "uml tier")
        for n, run in enumerate(runs, 1):
            prefix = f"shard {n}/{len(runs)}, {len(run.nodeids)} tests: " if len(runs) > 1 else ""
            for line in run.summary():
                terminalreporter.write_line(prefix + line)
            if self._keep(run):
                terminalreporter.write_line(f"work dir kept: {run.workdir}")

    def pytest_unconfigure(self) -> None:
        for pgid in self._booted:  # a session cut short: no UML outlives it
            umlrun.kill(pgid)
        for run in self.shards:
            if run.workdir is not None and not self._keep(run):
                shutil.rmtree(run.workdir, ignore_errors=True)

    def _keep(self, run: TierRun) -> bool:
        return self.settings.keep or bool(run.problem or run.module_failures)


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
    """An outer uml item's runtest: boot UML if not yet done, then report the inner result."""

    def __init__(self, tier: UmlTier, item: pytest.Item) -> None:
        self.tier, self.item = tier, item

    def __call__(self) -> None:
        run = self.tier.result(self.item.nodeid)
        if run.unavailable:
            skip_or_fail(self.tier.settings, run.problem or "UML did not run", run.tails())
        rec = run.records.get(self.item.nodeid)
        notes = "".join(f"note: module FAILED inside UML: {m}\n" for m in run.module_failures)
        if rec is None:
            why = run.problem or "the inner pytest did not report this test"
            pytest.fail(f"no result from inside UML: {why}\n{notes}{run.tails()}", pytrace=False)
        self.item.user_properties.append(("uml_duration", rec["duration"]))
        for title, content in rec["sections"]:
            key, _, when = title.removeprefix("Captured ").rpartition(" ")
            self.item.add_report_section(when or "call", f"{key or title} (in UML)", content)
        if rec["outcome"] == "failed":
            where = "" if rec["when"] == "call" else f" (error in {rec['when']})"
            head = f"[in UML{where}] {rec['crash']}"  # the line the short summary shows
            pytest.fail(f"{head}\n{notes}{rec['longrepr']}", pytrace=False)
        if rec["outcome"] == "skipped":
            if "wasxfail" in rec:
                pytest.xfail(rec["wasxfail"])
            # Reported at the test's location, as an inner skip is, rather than at this line.
            raise pytest.skip.Exception(rec["longrepr"], _use_item_location=True)


def run_uml(
    settings: Settings,
    nodeids: list[str],
    rootdir: Path,
    started: Callable[[int], None] | None = None,
) -> TierRun:
    """Boot UML once with nodeids as the inner run's tests; return what it left behind."""
    kernel = shutil.which(settings.kernel)
    if kernel is None:
        why = f"UML kernel {settings.kernel!r} not found (apt-get install user-mode-linux)"
        return TierRun(None, why, unavailable=True, nodeids=nodeids)
    workdir = _prepare(settings, nodeids, rootdir)
    start = time.monotonic()
    returncode, timed_out = _boot(kernel, settings, workdir, started)
    run = _read_back(workdir)
    run.nodeids = nodeids
    run.wall = time.monotonic() - start
    if "init" not in run.timeline:
        how = f"timed out after {settings.timeout:g} s" if timed_out else f"exit {returncode}"
        run.problem = f"UML did not boot ({how}); console: {workdir / 'console.log'}"
        run.unavailable = True
    elif timed_out:
        run.problem = f"the UML run timed out after {settings.timeout:g} s"
    elif "done" not in run.timeline:
        run.problem = f"UML stopped before the inner pytest finished (exit {returncode})"
    return run


def _prepare(settings: Settings, nodeids: list[str], rootdir: Path) -> Path:
    workdir = umlrun.make_workdir(settings.workdir_parent)
    command = [sys.executable, "-m", "pytest", "--rootdir", str(rootdir), "-p", __name__]
    command += ["-p", "no:cacheprovider", "-v", "--color=no", *nodeids]
    pythonpath = os.pathsep.join(p for p in (str(IMPORT_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {REPORT: str(workdir / "report.jsonl"), "PYTHONPATH": pythonpath}
    umlrun.write_job(workdir, command, rootdir, env, visible=[IMPORT_ROOT])
    return workdir


def _boot(
    kernel: str, settings: Settings, workdir: Path, started: Callable[[int], None] | None
) -> tuple[int, bool]:
    """Run UML to its end or the timeout; return its exit status and whether it timed out."""
    # The inner pytest writes to UML's second console, pytest.log: straight to the host, unlike
    # a file over hostfs, so it survives UML being killed on timeout.
    with open(workdir / "pytest.log", "wb") as log:
        fd = log.fileno()
        return umlrun.boot(kernel, settings.mem, settings.timeout, workdir, fd, fd, started)


def _read_back(workdir: Path) -> TierRun:
    back = umlrun.read_back(workdir)
    run = TierRun(workdir, timeline=back.timeline, module_failures=back.module_failures)
    for line in _lines(workdir / "report.jsonl"):
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut short when UML died
            continue
        run.records[rec["nodeid"]] = rec
    return run


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def _tail(path: Path) -> str:
    lines = _lines(path)
    return "\n".join(lines[-TAIL_LINES:]) if lines else "(missing or empty)"


# --- inner side (inside UML) ----------------------------------------------------------------


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
    if not hasattr(report.longrepr, "toterminal"):
        return report.longreprtext
    out = io.StringIO()  # not longreprtext: it strips the first line's indent
    report.longrepr.toterminal(TerminalWriter(file=out))
    return out.getvalue().rstrip("\n")
