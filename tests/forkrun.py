"""Fork runner: each product run is a forked child of the test process, not a new interpreter.

Why fork: in a TCG VM (the kernel tier) Python runs ~17x slower and importing the product's
libraries takes seconds, so a ``remus-netbuf-setup`` subprocess per run is far too slow for the
hundreds of runs the guarantee tests make. Here the test process imports the product and its
libraries once (:func:`preload`); each run is an ``os.fork()`` whose child, before anything else,
enters the bed's network namespace with ``setns`` (the child is single-threaded, so the whole
process moves), takes the environment it is given as ``os.environ``, sends fd 1 and 2 to files,
calls ``remus_netbuf.hotplug.main(argv)`` (or ``remus_netbuf.cli.main(argv)``) and leaves with
``_exit(rc)``. The parent waits with a deadline and collects the exit status (-9 for SIGKILL, as the
REMUS_NETBUF_TEST_KILL_AT hook does), stdout and stderr.

Each child is a separate process with its own xenstore connection, netlink socket and flock
descriptor: what concurrent libxl hotplug runs are, minus interpreter start-up, so the lock
and the xenstore transactions are exercised for real. What a fork does not exercise is the
start-up itself (the entry-point script, the imports): the tests keep a few real
``remus-netbuf-setup`` processes for that.

Children end through the C ``_exit`` (``posix._exit``), not coverage.py's patched
``os._exit``: that patch would save the parent's pre-fork data again from every child. Fork
runs are therefore not measured by coverage; the subprocess tests are.
"""

from __future__ import annotations

import ctypes
import importlib
import io
import json
import os
import posix
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from tests.bed import Bed
from tests.xenstored_standin import XenstoredStandin

CLONE_NEWNET = 0x40000000
EXIT_CRASHED = 70  # the child raised past the entry point (EX_SOFTWARE): a traceback follows
_libc = ctypes.CDLL(None, use_errno=True)

# Everything a run imports, so that no child pays for an import (seconds in a TCG VM).
PRELOAD = (
    "remus_netbuf.hotplug",
    "remus_netbuf.cli",
    "remus_netbuf.config",
    "remus_netbuf.netbuf",
    "remus_netbuf.teardown",
    "remus_netbuf.netlink",
    "remus_netbuf.rtnl",
    "remus_netbuf.xenstore",
    "remus_netbuf.xswire",
    "remus_netbuf.lock",
    "remus_netbuf.status",
    "remus_netbuf.audit",
    "remus_netbuf.log",
    "argparse",
    "syslog",
)


def preload() -> None:
    """Import once in the test process what every child would otherwise import."""
    for name in PRELOAD:
        importlib.import_module(name)


def _entry(program: str) -> Callable[[list[str]], int]:
    if program == "hotplug":
        from remus_netbuf.hotplug import main as hotplug_main

        return hotplug_main
    if program == "cli":
        from remus_netbuf.cli import main as cli_main

        return cli_main
    raise ValueError(program)


@dataclass(frozen=True)
class Job:
    """One product run: ``program`` is "hotplug" (remus-netbuf-setup) or "cli" (remus-netbuf)."""

    program: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What one run did. ``returncode`` is -N when the child died of signal N."""

    job: Job
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def __str__(self) -> str:
        return (
            f"{self.job.program} {' '.join(self.job.argv)}: exit {self.returncode} "
            f"after {self.seconds:.2f} s\n--- stdout ---\n{self.stdout}--- stderr ---\n"
            f"{self.stderr}"
        )


class ChildTimeout(AssertionError):
    """A child outlived its deadline (it was killed): a hang is a test failure."""


class Child:
    """A run in flight: the forked child's pid and where its output goes."""

    def __init__(self, job: Job, netns_fd: int | None) -> None:
        self.job = job
        self._out: IO[bytes] = tempfile.TemporaryFile()
        self._err: IO[bytes] = tempfile.TemporaryFile()
        self.started = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(job, netns_fd, self._out.fileno(), self._err.fileno())
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)

    def exited(self, within: float = 0.0) -> bool:
        """Whether the child has exited, waiting up to ``within`` s (it is not reaped)."""
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(max(0.0, within) * 1000))

    def wait(self, timeout: float) -> Outcome:
        """Reap the child; kill it and raise ChildTimeout if it is not done in ``timeout`` s."""
        hung = not self.exited(timeout)
        if hung:
            os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        os.close(self._pidfd)
        outcome = Outcome(
            self.job,
            os.waitstatus_to_exitcode(status),
            _read(self._out),
            _read(self._err),
            time.monotonic() - self.started,
        )
        if hung:
            raise ChildTimeout(f"no exit within {timeout:g} s, killed: {outcome}")
        return outcome


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    data = handle.read()
    handle.close()
    return data.decode("utf-8", "backslashreplace")


def _child(job: Job, netns_fd: int | None, out_fd: int, err_fd: int) -> NoReturn:
    """The forked child: enter the namespace, then run the entry point; never returns."""
    rc = EXIT_CRASHED
    try:
        if netns_fd is not None and _libc.setns(netns_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdout = _text(1)
        sys.stderr = _text(2)
        os.environ.clear()
        os.environ.update(job.env)
        rc = _entry(job.program)(list(job.argv))
    except SystemExit as exit_:  # argparse's errors and --help
        if exit_.code is None or isinstance(exit_.code, int):
            rc = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            rc = 1
    except BaseException:
        traceback.print_exc()
        rc = EXIT_CRASHED
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        posix._exit(rc)


def _text(fd: int) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", line_buffering=True)


class Runner:
    """Runs the product against one Bed: in its namespace, with its xenstored and config."""

    def __init__(self, bed: Bed, netns: bool = True) -> None:
        preload()
        self.bed = bed
        self._netns_fd = os.open(f"/run/netns/{bed.ns}", os.O_RDONLY) if netns else None

    def close(self) -> None:
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- jobs -----------------------------------------------------------------------------

    def hotplug(
        self,
        command: str,
        vif: str | None = None,
        xenbus_path: str | None = None,
        remus_ifb: str | None = None,
        args: Sequence[str] = (),
        **extra_env: str,
    ) -> Job:
        """``remus-netbuf-setup COMMAND ARGS`` with libxl's environment, as Bed.hotplug."""
        env = self.bed.env(**extra_env)
        for name, value in (("vifname", vif), ("XENBUS_PATH", xenbus_path)):
            if value is not None:
                env[name] = value
        if remus_ifb is not None:
            env["REMUS_IFB"] = remus_ifb
        return Job("hotplug", (command, *args), env)

    def cli(self, *args: str, **extra_env: str) -> Job:
        """``remus-netbuf ARGS``."""
        return Job("cli", args, self.bed.env(**extra_env))

    # --- running --------------------------------------------------------------------------

    def start(self, job: Job) -> Child:
        return Child(job, self._netns_fd)

    def run(self, job: Job, timeout: float = 60.0) -> Outcome:
        return self.start(job).wait(timeout)

    def run_all(self, jobs: Sequence[Job], timeout: float = 120.0) -> list[Outcome]:
        """Start every job at once, then reap them all; a straggler is killed and reported."""
        children = [self.start(job) for job in jobs]
        deadline = time.monotonic() + timeout
        outcomes: list[Outcome] = []
        hung: list[str] = []
        for child in children:
            try:
                outcomes.append(child.wait(deadline - time.monotonic()))
            except ChildTimeout as err:
                hung.append(str(err))
        if hung:
            raise ChildTimeout("\n".join(hung))
        return outcomes


# --- observing: the whole namespace in two iproute2 processes ---------------------------------


@dataclass(frozen=True)
class KernelState:
    """A namespace as iproute2 shows it: links, qdiscs, ingress redirects (plain, comparable)."""

    links: dict[str, tuple[str | None, bool]]  # name -> (kind, up)
    qdiscs: dict[str, tuple[tuple[str, str, str], ...]]  # dev -> (kind, handle, parent|"root")
    redirects: dict[str, tuple[tuple[str, int, str], ...]]  # dev -> (protocol, pref, to_dev)

    def root(self, dev: str) -> str | None:
        """Kind of ``dev``'s root qdisc unless it is the kernel's default (handle 0:)."""
        for kind, handle, parent in self.qdiscs.get(dev, ()):
            if parent == "root" and handle != "0:":
                return kind
        return None

    def has_ingress(self, dev: str) -> bool:
        return any(kind == "ingress" for kind, _, _ in self.qdiscs.get(dev, ()))

    def up(self, dev: str) -> bool:
        return self.links[dev][1]


def kernel_state(ns: str) -> KernelState:
    """Snapshot ``ns`` with ``ip -j`` and one ``tc -j -batch`` (qdiscs, then every filter).

    Two processes however many devices there are: in a TCG VM each costs ~0.2 s.
    """
    out = _iproute2("ip", "-n", ns, "-j", "-d", "link", "show")
    links = {
        link["ifname"]: (link.get("linkinfo", {}).get("info_kind"), "UP" in link["flags"])
        for link in json.loads(out)
    }
    names = sorted(links)
    batch = "qdisc show\n" + "".join(f"filter show dev {n} ingress\n" for n in names)
    lines = _iproute2("tc", "-n", ns, "-j", "-batch", "-", stdin=batch).splitlines()
    answers = [json.loads(line) for line in lines if line.strip()]
    assert len(answers) == 1 + len(names), lines
    qdiscs: dict[str, list[tuple[str, str, str]]] = {}
    for q in answers[0]:
        parent = "root" if q.get("root") else str(q.get("parent"))
        qdiscs.setdefault(q["dev"], []).append((q["kind"], q["handle"], parent))
    redirects: dict[str, tuple[tuple[str, int, str], ...]] = {}
    for name, filters in zip(names, answers[1:], strict=True):
        found = [
            (f["protocol"], f["pref"], act.get("to_dev", "?"))
            for f in filters
            for act in f.get("options", {}).get("actions", [])
            if act.get("kind") == "mirred" and act.get("mirred_action") == "redirect"
        ]
        if found:
            redirects[name] = tuple(sorted(found))
    return KernelState(links, {dev: tuple(sorted(qs)) for dev, qs in qdiscs.items()}, redirects)


def _iproute2(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


# --- faults -------------------------------------------------------------------------------


@contextmanager
def daemon_dies_after(standin: XenstoredStandin, requests: int) -> Iterator[None]:
    """xenstored answers ``requests`` requests, then drops the connection and stays away (its
    socket gone) until the block ends; then it is back, with its tree as it was."""
    handle = standin._handle

    def handle_then_die(*request: Any) -> bool:
        alive: bool = handle(*request)
        if not alive:
            standin.stop()
        return alive

    standin.drop_after_requests = requests
    standin._handle = handle_then_die  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del standin._handle
        standin.drop_after_requests = None
        standin.start()
