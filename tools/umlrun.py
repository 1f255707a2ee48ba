"""Run one command inside User-Mode Linux: a Linux 6.1 with sch_plug, booted as a process.

The host kernel may lack sch_plug; Debian's ``user-mode-linux`` has it. This boots that kernel
once over the host's root file system (hostfs) with the UML tier's private setup
(``tests/uml_init.sh``: proc, sysfs, tmpfs on /run and /tmp, a private module root with sch_plug
and friends loaded, lo up), runs the command there as root, and halts. The command's stdout and
stderr reach ours through UML's second and third consoles, which write straight to the host's
descriptors: streamed as they come, and not lost if UML dies or is killed on timeout. Its exit
status comes back through the work dir (on hostfs: ``/var/tmp`` by default).

    python -m tools.umlrun [--mem 512M] [--timeout 600] [--keep] [-v] [--cwd DIR] -- ARGV...

exits with ARGV's status, 124 when the timeout killed UML, 125 when UML did not run or the
command did not finish. Settings default from the tier's environment: REMUS_NETBUF_UML_KERNEL,
REMUS_NETBUF_UML_MEM, REMUS_NETBUF_UML_TIMEOUT, REMUS_NETBUF_UML_WORKDIR, REMUS_NETBUF_UML_KEEP.
Inside, REMUS_NETBUF_IN_UML=1. Syscalls there are 10-30x slower than here: imports take seconds.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INIT_SCRIPT = REPO / "tests" / "uml_init.sh"
IN_UML = "REMUS_NETBUF_IN_UML"
EXIT_TIMEOUT, EXIT_UML = 124, 125
TAIL_LINES = 40
SBIN = "/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"


@dataclass(frozen=True)
class Options:
    kernel: str = "linux.uml"
    mem: str = "512M"
    timeout: float = 600.0  # seconds for boot, command and halt together
    workdir_parent: Path = Path("/var/tmp")  # must be visible in UML: not under /tmp
    keep: bool = False  # keep the work dir even when all went well

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Options:
        base = cls()
        return cls(
            kernel=environ.get("REMUS_NETBUF_UML_KERNEL") or base.kernel,
            mem=environ.get("REMUS_NETBUF_UML_MEM") or base.mem,
            timeout=float(environ.get("REMUS_NETBUF_UML_TIMEOUT") or base.timeout),
            workdir_parent=Path(environ.get("REMUS_NETBUF_UML_WORKDIR") or base.workdir_parent),
            keep=environ.get("REMUS_NETBUF_UML_KEEP") == "1",
        )


@dataclass
class Outcome:
    """What one boot left behind: the command's status, or why there is none."""

    workdir: Path | None
    returncode: int | None = None  # the command's exit status; None if it did not finish
    problem: str | None = None
    booted: bool = False  # UML reached its init
    timed_out: bool = False
    timeline: dict[str, float] = field(default_factory=dict)  # step -> kernel uptime
    module_failures: list[str] = field(default_factory=list)
    wall: float = 0.0

    @property
    def exit_status(self) -> int:
        if self.returncode is not None:
            return self.returncode
        return EXIT_TIMEOUT if self.timed_out else EXIT_UML

    def summary(self) -> str:
        parts = [f"UML {self.wall:.1f} s wall"]
        if "init" in self.timeline:
            parts.append(f"kernel up {self.timeline['init']:.1f} s at init")
        if "run" in self.timeline and "done" in self.timeline:
            parts.append(f"command {self.timeline['done'] - self.timeline['run']:.1f} s")
        return ", ".join(parts)

    def console_tail(self) -> str:
        if self.workdir is None:
            return ""
        return (
            f"--- tail of {self.workdir / 'console.log'} ---\n{tail(self.workdir / 'console.log')}"
        )


def run(
    argv: Sequence[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    options: Options | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> Outcome:
    """Boot UML, run argv in cwd with env added to the basics, halt; output to stdout/stderr fds.

    stdout and stderr default to ours; pass the same descriptor for both to merge them.
    """
    options = options or Options.from_env()
    kernel = shutil.which(options.kernel)
    if kernel is None:
        why = f"UML kernel {options.kernel!r} not found (apt-get install user-mode-linux)"
        return Outcome(None, problem=why)
    workdir = make_workdir(options.workdir_parent)
    out = sys.stdout.fileno() if stdout is None else stdout
    err = sys.stderr.fileno() if stderr is None else stderr
    write_job(workdir, argv, cwd or Path.cwd(), env or {}, separate_stderr=err != out)
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    try:
        kernel_exit, timed_out = boot(kernel, options.mem, options.timeout, workdir, out, err)
    except BaseException:  # interrupted: UML is dead (boot saw to it), and so is the run
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    outcome = read_back(workdir)
    outcome.wall = time.monotonic() - start
    outcome.timed_out = timed_out
    if not outcome.booted:
        how = f"timed out after {options.timeout:g} s" if timed_out else f"exit {kernel_exit}"
        outcome.problem = f"UML did not boot ({how}); console: {workdir / 'console.log'}"
    elif timed_out:
        outcome.problem = f"the UML run timed out after {options.timeout:g} s"
    elif outcome.returncode is None:
        outcome.problem = f"UML stopped before the command finished (exit {kernel_exit})"
    if not options.keep and outcome.problem is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome


# --- the steps, shared with the pytest tier (tests/umltier.py) -----------------------------


def make_workdir(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="remus-netbuf-uml-", dir=parent))


def write_job(
    workdir: Path,
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    separate_stderr: bool = False,
    visible: Iterable[Path] = (),
) -> None:
    """Write what the init runs: its copy of the init, the command, the environment.

    ``env`` is added to the basics (PATH with the sbin directories, the host's PYTHONPATH, HOME,
    LANG). /tmp becomes a private tmpfs unless something the command needs lives there: the
    work dir, cwd, the python, PYTHONPATH, an absolute path in argv, or a path in ``visible``.
    """
    init = workdir / "init"  # a copy: the kernel command line cannot quote a path with spaces
    shutil.copyfile(INIT_SCRIPT, init)
    init.chmod(0o755)
    (workdir / "command").write_bytes(b"".join(os.fsencode(a) + b"\0" for a in argv))
    values = {
        IN_UML: "1",
        "PATH": os.environ.get("PATH", "") + ":" + SBIN,
        "REMUS_NETBUF_UML_CWD": str(cwd),
        "REMUS_NETBUF_UML_STDERR": "/dev/tty2" if separate_stderr else "/dev/tty1",
    }
    for name in ("PYTHONPATH", "HOME", "LANG", "LC_ALL", "CI"):
        if name in os.environ:
            values[name] = os.environ[name]
    values.update(env)
    needed = [workdir, cwd, Path(sys.executable), Path(sys.prefix), *visible]
    needed += [Path(p) for p in values.get("PYTHONPATH", "").split(os.pathsep) if p]
    needed += [Path(a) for a in argv if a.startswith("/")]
    values["REMUS_NETBUF_UML_PRIVATE_TMP"] = "0" if _under_tmp(needed) else "1"
    (workdir / "env").write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
    )


def boot(
    kernel: str,
    mem: str,
    timeout: float,
    workdir: Path,
    stdout: int,
    stderr: int,
    started: Callable[[int], None] | None = None,
) -> tuple[int, bool]:
    """Run UML to its end or the timeout; return its exit status and whether it timed out.

    The kernel's own console goes to workdir/console.log; the command's stdout to ``stdout``
    (UML's second console) and its stderr to ``stderr`` (the third, when it differs).
    ``started`` is told UML's process group, for a caller that may have to kill it from
    another thread (:func:`kill`).
    """
    args = [
        f"mem={mem}",
        "rootfstype=hostfs",
        "rootflags=/",
        "rw",
        f"init={workdir}/init",
        "con=null",
        "con0=null,fd:2",
        f"uml_dir={workdir}",
        f"REMUS_NETBUF_UML_WORK={workdir}",
    ]
    fds = [os.dup(stdout)]  # fresh numbers: the child's 0-2 are taken
    if stderr != stdout:
        fds.append(os.dup(stderr))
    args += [f"con{n}=null,fd:{fd}" for n, fd in enumerate(fds, 1)]
    env = {**os.environ, "TMPDIR": _ram_dir(mem)}  # where UML keeps its RAM file
    try:
        with open(workdir / "console.log", "wb") as console:
            proc = subprocess.Popen(
                [kernel, *args],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
                pass_fds=fds,
            )
    finally:
        for fd in fds:
            os.close(fd)
    if started is not None:
        started(proc.pid)
    try:
        proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:  # also on KeyboardInterrupt: UML and its helpers share its process group
        kill(proc.pid)
        proc.wait()
    return proc.returncode, timed_out


def kill(pgid: int) -> None:
    """Kill a UML that :func:`boot` started, and its helpers (they share its process group)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def read_back(workdir: Path) -> Outcome:
    outcome = Outcome(workdir)
    for line in lines(workdir / "timeline"):
        name, _, uptime = line.partition(" ")
        outcome.timeline[name] = float(uptime)
    outcome.booted = "init" in outcome.timeline
    outcome.module_failures = [
        ln.removeprefix("FAILED ").strip()
        for ln in lines(workdir / "modules")
        if ln.startswith("FAILED")
    ]
    rc = lines(workdir / "rc")
    if rc and rc[0].strip().isdigit() and "done" in outcome.timeline:
        outcome.returncode = int(rc[0])
    return outcome


def _under_tmp(paths: Iterable[Path]) -> bool:
    tmp = Path("/tmp")
    for p in paths:
        for q in (p, p.resolve()):
            if q == tmp or tmp in q.parents:
                return True
    return False


def _ram_dir(mem: str) -> str:
    """/dev/shm when it can hold UML's RAM (it is small in containers), else the temp dir."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(mem[:-1]) * units[mem[-1].upper()] if mem[-1:].upper() in units else int(mem)
    try:
        st = os.statvfs("/dev/shm")
        if os.access("/dev/shm", os.W_OK) and st.f_bavail * st.f_frsize > size:
            return "/dev/shm"
    except OSError:
        pass
    return tempfile.gettempdir()


def lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def tail(path: Path, count: int = TAIL_LINES) -> str:
    found = lines(path)
    return "\n".join(found[-count:]) if found else "(missing or empty)"


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks (killing UML, cleanup) still run."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="umlrun",
        description="Run a command inside User-Mode Linux (Linux 6.1 with sch_plug).",
        epilog="example: python -m tools.umlrun -- tc qdisc add dev lo root plug",
    )
    defaults = Options.from_env()
    parser.add_argument("--mem", default=defaults.mem, help=f"UML memory (default {defaults.mem})")
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="seconds in all")
    parser.add_argument("--cwd", type=Path, help="directory to run in (default: this one)")
    parser.add_argument("--keep", action="store_true", default=defaults.keep, help="keep work dir")
    parser.add_argument("-v", "--verbose", action="store_true", help="summary line on stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    exit_on_sigterm()
    options = Options(defaults.kernel, args.mem, args.timeout, defaults.workdir_parent, args.keep)
    outcome = run(command, cwd=args.cwd, options=options)
    for failure in outcome.module_failures:
        print(f"umlrun: warning: module failed to load: {failure}", file=sys.stderr)
    if args.verbose:
        print(f"umlrun: {outcome.summary()}; exit {outcome.exit_status}", file=sys.stderr)
    if outcome.problem:
        print(f"umlrun: {outcome.problem}", file=sys.stderr)
        if not outcome.booted:
            print(outcome.console_tail(), file=sys.stderr)
        if outcome.workdir is not None:
            print(f"umlrun: work dir kept: {outcome.workdir}", file=sys.stderr)
    return outcome.exit_status


if __name__ == "__main__":
    sys.exit(main())
