"""Run one command on a kernel with sch_plug: Debian's stock kernel in QEMU, or this one.

The kernel tier, the demo and the benchmarks need sch_plug, which the running kernel may lack.
This runner gives them one: Debian's own ``linux-image-amd64`` kernel (the kernel a Debian Xen
dom0 runs, sch_plug and friends as modules) of one suite, ``REMUS_NETBUF_VM_KERNEL``: trixie
(the default: Debian's current stable), bookworm (the host's apt) or sid (trixie and sid through
a private apt state in the cache, :mod:`tools.privapt`). It is fetched with ``apt-get download``
and ``dpkg-deb -x`` into the project's cache, one directory per suite (never installed as the
host's kernel), and booted in QEMU through virtme-ng (``vng``, in the project's venv). The guest
sees the host's ``/`` read-only over 9p, with vng's throwaway overlays on /etc /usr /var /tmp
...; the work dir (a ``--rwdir``) is the one way back: the command's output, its exit status,
the timeline.

A checkout can be anywhere, but vng cannot carry every path: its tmpfs on /var/tmp, /var/cache
and /run hides what the host has there, and it joins its arguments into one string, so a path
with a space breaks it (and the kernel's command line, which its initramfs splits at spaces).
So vng is given only paths in the work dir (links to the kernel and to its own guest tools,
:func:`stage_for_vng`), and the guest's init itself exposes the directories the job needs (the
repo, the venv, the cache, the command's directory: :func:`exposed`) at their own paths,
writable, the writes thrown away; their names travel in the work dir, never on the kernel's
command line.

Modes (``REMUS_NETBUF_VM``): ``auto`` (default) runs natively when this kernel has sch_plug (a
real dom0: the admin verifies on their own kernel), else in QEMU with KVM when a bounded probe
(:data:`KVM_PROBE_SECONDS`, its verdict cached) shows KVM boots, else with TCG. ``native``,
``kvm`` and ``tcg`` force one.

TCG is slow for Python over 9p (a cold import of the venv's packages took 10 s), so the guest
unpacks the interpreter's standard library and the venv's site-packages from one tarball (built
here once per venv, :func:`python_tarball`) into a tmpfs and binds them over their own paths:
same paths, a third of the import time. The guest then measures its speed against this host
(:data:`SLOWDOWN`, exported to the command) so tests can size their deadlines by it.

    python -m tools.vm [--timeout S] [--keep] [-v] [--cwd DIR] -- ARGV...

exits with ARGV's status, 124 when the timeout killed the VM, 125 when it did not run or the
command did not finish. Settings: REMUS_NETBUF_VM, REMUS_NETBUF_VM_KERNEL (bookworm, trixie,
sid: whose kernel boots), REMUS_NETBUF_VM_MEM (1G),
REMUS_NETBUF_VM_TIMEOUT (seconds), REMUS_NETBUF_VM_CACHE (the cache dir, default .cache/vm in
the repo), REMUS_NETBUF_VM_WORKDIR (parent of work dirs, default /tmp; no whitespace: vng carries
it), REMUS_NETBUF_VM_KEEP=1,
REMUS_NETBUF_VM_VNG (another vng: the tier's own tests use a broken one).
Inside, REMUS_NETBUF_IN_VM=1.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tools import privapt

REPO = Path(__file__).resolve().parents[1]
GUEST_INIT = REPO / "tools" / "vm_guest.sh"
IN_VM = "REMUS_NETBUF_IN_VM"
SLOWDOWN = "REMUS_NETBUF_VM_SLOWDOWN"  # how many times slower than the host the guest ran
EXIT_TIMEOUT, EXIT_VM = 124, 125
TAIL_LINES = 40
KVM_PROBE_SECONDS = 15.0
MODES = ("auto", "native", "kvm", "tcg")
SBIN = "/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"
KERNEL_META = "linux-image-amd64"
# REMUS_NETBUF_VM_KERNEL: the Debian suites whose current KERNEL_META the VM can boot.
KERNELS = ("bookworm", "trixie", "sid")
HOST_SUITE = "bookworm"  # fetched with the host's own apt and sources (this host's suite)
DEFAULT_KERNEL = "trixie"  # Debian's current stable: the kernel a new dom0 runs
# What the guest's Python never needs: left out of the tarball (linters, installers, the runner).
TARBALL_SKIP = ("mypy", "mypyc", "__mypyc", "pip", "setuptools", "virtme", "ruff")
STDLIB_SKIP = ("test", "idlelib", "tkinter", "lib2to3", "turtledemo")  # ensurepip: make install
# The CPU loop both sides time for SLOWDOWN (pure interpreter work, about 50 ms here).
SPEED_PROBE = "import time;t=time.perf_counter();sum(i*i for i in range(300000));"
SPEED_PROBE += "print(time.perf_counter()-t)"


@dataclass(frozen=True)
class Options:
    mode: str = "auto"
    kernel: str = DEFAULT_KERNEL  # the Debian suite whose kernel boots (KERNELS)
    mem: str = "1G"
    timeout: float = 900.0  # seconds for boot, command and power-off together
    cache: Path = REPO / ".cache" / "vm"
    workdir_parent: Path = Path("/tmp")  # host path given to the guest as --rwdir
    keep: bool = False  # keep the work dir even when all went well

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Options:
        base = cls()
        mode = environ.get("REMUS_NETBUF_VM") or base.mode
        if mode not in MODES:
            raise SystemExit(f"REMUS_NETBUF_VM={mode!r}: use one of {', '.join(MODES)}")
        kernel = environ.get("REMUS_NETBUF_VM_KERNEL") or base.kernel
        if kernel not in KERNELS:
            raise SystemExit(
                f"REMUS_NETBUF_VM_KERNEL={kernel!r}: use one of {', '.join(KERNELS)} (the Debian "
                "suite whose linux-image-amd64 the VM boots)"
            )
        workdir_parent = environ.get("REMUS_NETBUF_VM_WORKDIR") or str(base.workdir_parent)
        if any(c.isspace() for c in workdir_parent):
            raise SystemExit(f"REMUS_NETBUF_VM_WORKDIR={workdir_parent!r}: vng cannot carry spaces")
        return cls(
            mode=mode,
            kernel=kernel,
            mem=environ.get("REMUS_NETBUF_VM_MEM") or base.mem,
            timeout=float(environ.get("REMUS_NETBUF_VM_TIMEOUT") or base.timeout),
            cache=Path(environ.get("REMUS_NETBUF_VM_CACHE") or base.cache),
            workdir_parent=Path(workdir_parent),
            keep=environ.get("REMUS_NETBUF_VM_KEEP") == "1",
        )


class Unavailable(Exception):
    """The VM cannot run here: no kernel to fetch, no QEMU, no virtme-ng."""


@dataclass
class Outcome:
    """What one boot left behind: the command's status, or why there is none."""

    workdir: Path | None
    mode: str = "?"
    kernel: str = "?"  # which kernel booted: Kernel.label
    returncode: int | None = None  # the command's exit status; None if it did not finish
    problem: str | None = None
    booted: bool = False  # the guest reached our init
    timed_out: bool = False
    timeline: dict[str, float] = field(default_factory=dict)  # step -> guest uptime
    module_failures: list[str] = field(default_factory=list)
    slowdown: float | None = None
    wall: float = 0.0

    @property
    def exit_status(self) -> int:
        if self.returncode is not None:
            return self.returncode
        return EXIT_TIMEOUT if self.timed_out else EXIT_VM

    def summary(self) -> str:
        parts = [f"VM ({self.mode}, {self.kernel}) {self.wall:.1f} s wall"]
        if "init" in self.timeline:
            parts.append(f"kernel up {self.timeline['init']:.1f} s at init")
        if "run" in self.timeline and "done" in self.timeline:
            parts.append(f"command {self.timeline['done'] - self.timeline['run']:.1f} s")
        if self.slowdown:
            parts.append(f"{self.slowdown:.0f}x slower than the host")
        return ", ".join(parts)

    def console_tail(self) -> str:
        if self.workdir is None:
            return ""
        log = self.workdir / "console.log"
        return f"--- tail of {log} ---\n{tail(log)}"


# --- which kernel: this one, or Debian's in QEMU --------------------------------------------


def host_has_sch_plug() -> bool:
    """Whether this kernel takes a plug qdisc, tried in a throwaway network namespace."""
    script = "tc qdisc add dev lo root plug limit 1000"
    try:
        done = subprocess.run(
            ["unshare", "--net", "sh", "-c", script], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def choose_mode(options: Options, say: Callable[[str], None] = lambda _: None) -> str:
    """'native', 'kvm' or 'tcg', as :data:`Options.mode` asks or the probes find."""
    if options.mode != "auto":
        return options.mode
    if host_has_sch_plug():
        return "native"
    return "kvm" if kvm_works(options, say) else "tcg"


def kvm_works(options: Options, say: Callable[[str], None] = lambda _: None) -> bool:
    """Whether QEMU with KVM boots Debian's kernel to our init within KVM_PROBE_SECONDS.

    /dev/kvm can exist and hang QEMU (seen here: 100% system time, nothing printed), so only a
    boot proves it. The verdict is cached per host kernel and CPU model.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    key = f"{os.uname().release} {_cpu_model()}"
    verdict_file = options.cache / "kvm-probe"
    cached = lines(verdict_file)
    if len(cached) == 2 and cached[0] == key:
        return cached[1] == "works"
    say(f"probing KVM (at most {KVM_PROBE_SECONDS:g} s, once per host) ...")
    probe = dataclasses.replace(options, timeout=KVM_PROBE_SECONDS, keep=False)
    outcome = run(["true"], options=probe, mode="kvm", python=False)
    works = outcome.returncode == 0
    verdict_file.parent.mkdir(parents=True, exist_ok=True)
    verdict_file.write_text(f"{key}\n{'works' if works else 'fails'}\n")
    say(f"KVM {'works' if works else 'does not boot here; using TCG'}")
    return works


def _cpu_model() -> str:
    for line in lines(Path("/proc/cpuinfo")):
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


# --- Debian's kernel, fetched once per suite into the cache -----------------------------------


@dataclass(frozen=True)
class Kernel:
    version: str  # e.g. 6.1.0-57-amd64
    vmlinuz: Path
    modules: Path
    suite: str = HOST_SUITE

    @property
    def label(self) -> str:
        """What logs call it, e.g. "Debian trixie's 6.12.117+deb13-amd64"."""
        return f"Debian {self.suite}'s {self.version}"


def kernel_dir(cache: Path, suite: str) -> Path:
    """Where one suite's kernel is cached: its tree and a ``version`` file naming it."""
    return cache / "kernel" / suite


def ensure_kernel(
    cache: Path, say: Callable[[str], None] = lambda _: None, suite: str = HOST_SUITE
) -> Kernel:
    """The suite's current stock amd64 kernel, extracted under kernel_dir (fetched if missing),
    with its modules where vng and modprobe look: /lib/modules/VERSION (a symlink, depmod'ed)."""
    if suite not in KERNELS:
        raise Unavailable(f"no kernel for suite {suite!r}: use one of {', '.join(KERNELS)}")
    root = kernel_dir(cache, suite)
    recorded = lines(root / "version")
    kernel = find_kernel(root / recorded[0], recorded[0], suite) if recorded else None
    if kernel is None:
        kernel = _fetch_kernel(root, suite, say)
    _link_modules(kernel, say)
    return kernel


def find_kernel(tree: Path, version: str, suite: str = HOST_SUITE) -> Kernel | None:
    """The image and the modules of VERSION in an extracted tree, where its packages put them
    (None when either is missing). bookworm: ``boot/vmlinuz-V`` and ``lib/modules/V``; trixie
    (merged /usr): ``boot/vmlinuz-V`` and ``usr/lib/modules/V``; sid: no /boot, the image is
    ``usr/lib/modules/V/vmlinuz`` (linux-binary-V), the modules beside it (linux-modules-V)."""
    trees = [tree / "lib" / "modules" / version, tree / "usr" / "lib" / "modules" / version]
    modules = next((t for t in trees if (t / "kernel").is_dir()), None)
    images = [tree / "boot" / f"vmlinuz-{version}", *(t / "vmlinuz" for t in trees)]
    image = next((i for i in images if i.is_file()), None)
    if modules is None or image is None:
        return None
    return Kernel(version, image, modules, suite)


AptRun = Callable[[list[str], Path | None], str]  # argv, cwd -> stdout


def _fetch_kernel(root: Path, suite: str, say: Callable[[str], None]) -> Kernel:
    apt = _apt_for(root, suite)
    package = kernel_package(apt(["apt-cache", "depends", KERNEL_META], None))
    version = package.removeprefix("linux-image-")
    packages = [package, *kernel_parts(apt(["apt-cache", "depends", package], None), version)]
    say(f"fetching Debian {suite}'s kernel {version} ({', '.join(packages)}: once) ...")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        apt(["apt-get", "download", *packages], Path(tmp))
        tree = Path(tmp) / "tree"
        for deb in sorted(Path(tmp).glob("*.deb")):
            _check(["dpkg-deb", "-x", str(deb), str(tree)], f"dpkg-deb -x {deb.name}")
        if find_kernel(tree, version, suite) is None:
            raise Unavailable(f"{', '.join(packages)}: no vmlinuz and modules tree of {version}")
        shutil.rmtree(root / version, ignore_errors=True)
        tree.rename(root / version)
    (root / "version").write_text(version + "\n")
    say(f"kernel {version} cached in {root}")
    kernel = find_kernel(root / version, version, suite)
    assert kernel is not None
    return kernel


def _apt_for(root: Path, suite: str) -> AptRun:
    """The host's apt for HOST_SUITE (its own sources name it); for another suite, a private
    apt state under root (the host's sources never read), its lists updated now."""
    if suite == HOST_SUITE:
        return _apt
    apt = _SuiteApt(root / "apt", privapt.one_line_sources(suite), "debian.list")
    apt.update()
    return lambda argv, cwd: apt.run(argv[0], *argv[1:], cwd=cwd)


class _SuiteApt(privapt.PrivateApt):
    error = Unavailable


def depends(text: str) -> list[str]:
    """The packages an ``apt-cache depends`` output names as Depends (alternatives too)."""
    found = []
    for line in text.splitlines():
        kind, _, name = line.strip().lstrip("|").partition(":")
        if kind == "Depends" and name.strip() and not name.strip().startswith("<"):
            found.append(name.strip())
    return found


def kernel_package(text: str) -> str:
    """The linux-image-VERSION package that KERNEL_META depends on (its apt-cache depends)."""
    for name in depends(text):
        if name.startswith("linux-image-") and name != KERNEL_META:
            return name
    raise Unavailable(f"apt-cache depends {KERNEL_META} names no kernel package:\n{text}")


def kernel_parts(text: str, version: str) -> list[str]:
    """What linux-image-VERSION depends on of the same build (its apt-cache depends): none in
    bookworm and trixie (one package); sid's linux-image-V is a meta package over
    linux-binary-V (the image), linux-modules-V and linux-base-V (modules.builtin, .order)."""
    return [n for n in depends(text) if n.startswith("linux-") and n.endswith(f"-{version}")]


def _apt(argv: list[str], cwd: Path | None = None) -> str:
    """An apt command; on a machine whose package lists are missing or stale, update, retry."""
    for attempt in (1, 2):
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        if done.returncode == 0 and (done.stdout.strip() or argv[0] == "apt-get"):
            return done.stdout
        if attempt == 1:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise Unavailable(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")


def _check(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(f"{what} failed: {done.stderr.strip()}")


def _link_modules(kernel: Kernel, say: Callable[[str], None]) -> None:
    """/lib/modules/VERSION -> the cached tree; the host's own modules are never replaced."""
    where = Path("/lib/modules") / kernel.version
    if where.is_symlink() and where.resolve() == kernel.modules.resolve():
        if (kernel.modules / "modules.dep").exists():
            return
    elif where.exists() and not where.is_symlink():
        return  # a real tree: this host has the package installed
    else:
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = where.with_name(f".{kernel.version}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(kernel.modules)
        tmp.replace(where)  # atomic, also over a link to another checkout's cache
    say(f"depmod {kernel.version}")
    _check(["depmod", kernel.version], "depmod")


# --- the guest's Python, packed once per venv -----------------------------------------------


def python_dirs() -> tuple[Path, Path]:
    """The interpreter's standard library and the venv's site-packages, as real paths: where
    the guest's lookups end, through any link (a checkout's .venv may be one)."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = Path(sys.base_prefix).resolve() / "lib" / version
    return stdlib, Path(sys.prefix).resolve() / "lib" / version / "site-packages"


def python_tarball(cache: Path) -> Path:
    """One tar of :func:`python_dirs`, rebuilt when the venv changes."""
    stdlib, site = python_dirs()
    tarball = cache / f"python-{_venv_stamp()}.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("python-*.tar"):
        old.unlink(missing_ok=True)
    skip = [f"--exclude={stdlib.relative_to('/')}/{name}" for name in STDLIB_SKIP]
    skip += [f"--exclude={site.relative_to('/')}/{name}*" for name in TARBALL_SKIP]
    tmp = tarball.with_suffix(f".{os.getpid()}")
    argv = ["tar", "-C", "/", "-cf", str(tmp), *skip, "--exclude=*.opt-?.pyc"]
    _check([*argv, str(stdlib.relative_to("/")), str(site.relative_to("/"))], "tar")
    tmp.replace(tarball)
    return tarball


def _venv_stamp() -> str:
    """Changes with what the tar would hold: the venv's packages, where, and what is left out."""
    site = python_dirs()[1]
    newest = max((p.stat().st_mtime_ns for p in site.glob("*")), default=0)
    recipe = zlib.crc32(repr((TARBALL_SKIP, STDLIB_SKIP, sys.version, str(site))).encode())
    return f"{newest:x}-{recipe:08x}"


def speed_probe(python: str = sys.executable) -> float:
    """Seconds the SPEED_PROBE loop takes here (best of three)."""
    best = float("inf")
    for _ in range(3):
        done = subprocess.run([python, "-c", SPEED_PROBE], capture_output=True, text=True)
        best = min(best, float(done.stdout))
    return best


# --- one boot -------------------------------------------------------------------------------


def run(
    argv: Sequence[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    options: Options | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    mode: str | None = None,
    python: bool = True,
    visible: Iterable[Path] = (),
    say: Callable[[str], None] = lambda _: None,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
    workdir: Path | None = None,
) -> Outcome:
    """Boot the VM, run argv in cwd (default: here) with env added, power off.

    The command's output streams to the stdout/stderr descriptors (default: ours; the same one
    for both merges them) as it is written. ``python`` unpacks the host's Python into the guest
    (skip it for a command that runs none). ``visible`` are more host directories the command
    needs (exposed writable in the guest, the writes thrown away); the repo, the venv, the cache
    and cwd always are. ``started`` is told the VM's process, for a caller that may have to kill
    it from another thread (:func:`kill`).
    A ``workdir`` the caller made (to put more in it, or read more back) is never removed.
    """
    options = options or Options.from_env()
    mode = mode or choose_mode(options, say)
    if mode == "native":
        raise ValueError("mode native: run the command directly, not through the VM")
    try:
        kernel = ensure_kernel(options.cache, say, options.kernel)
        vng = _vng()
        tarball = python_tarball(options.cache) if python else None
        reference = speed_probe() if python else None
    except Unavailable as err:
        return Outcome(None, mode, f"Debian {options.kernel}'s kernel", problem=str(err))
    keep = options.keep or workdir is not None
    workdir = workdir or make_workdir(options.workdir_parent)
    out = sys.stdout.fileno() if stdout is None else stdout
    errfd = sys.stderr.fileno() if stderr is None else stderr
    cwd = (cwd or Path.cwd()).absolute()
    needed = exposed([REPO, *visible, Path(sys.prefix), options.cache, cwd], workdir)
    job_env = {"REMUS_NETBUF_VM_KERNEL": kernel.suite, **(env or {})}  # what the guest runs on
    write_job(workdir, argv, cwd, job_env, tarball, reference, out == errfd, needed)
    command = vng_command(vng, stage_for_vng(workdir, kernel, vng), mode, options.mem, workdir)
    say(f"booting {kernel.label} in QEMU ({mode}) ...")
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    try:
        timed_out = _boot(command, workdir, options.timeout, out, errfd, started)
    except BaseException:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    outcome = read_back(workdir)
    outcome.mode, outcome.wall, outcome.timed_out = mode, time.monotonic() - start, timed_out
    outcome.kernel = kernel.label
    if not outcome.booted:
        how = f"timed out after {options.timeout:g} s" if timed_out else "it powered off"
        outcome.problem = f"the VM did not boot ({how}); console: {workdir / 'console.log'}"
    elif timed_out:
        outcome.problem = f"the VM run timed out after {options.timeout:g} s"
    elif outcome.returncode is None:
        outcome.problem = "the VM stopped before the command finished"
    if not keep and outcome.problem is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome


def _vng() -> Path:
    vng = Path(os.environ.get("REMUS_NETBUF_VM_VNG") or Path(sys.prefix) / "bin" / "vng")
    if not vng.exists():
        raise Unavailable(f"{vng} not found (the venv lacks virtme-ng: make deps)")
    if shutil.which("qemu-system-x86_64") is None:
        raise Unavailable("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    return vng


def vng_command(vng: Path, vmlinuz: Path, mode: str, mem: str, workdir: Path) -> list[str]:
    """One CPU per VM (the tier runs one VM per host CPU); -v sends the console to stdout."""
    argv = [str(vng), "-v", "--run", str(vmlinuz), "--user", "root", "--cpus", "1"]
    argv += ["--memory", mem, "--name", "remus-netbuf-vm", "--rwdir", str(workdir)]
    if mode == "tcg":
        argv.append("--disable-kvm")
    return [*argv, "--exec", f"bash {shlex.quote(str(workdir / 'init'))}"]


def stage_for_vng(workdir: Path, kernel: Kernel, vng: Path) -> Path:
    """Links in the work dir for what vng puts on the kernel's command line, which splits at
    spaces and is read before the guest's init can expose hidden paths: ``kernel``, the cached
    tree (vng boots its vmlinuz and links the guest's /lib/modules/VERSION to its modules
    there, whatever the host's link says); ``vng/virtme``, the venv's vng's own package, which
    :func:`_boot` puts first on vng's path (its guest tools are the guest's first init; another
    vng keeps its own). Returns the vmlinuz.
    """
    tree = kernel.modules.parents[2]  # the extracted tree: its lib/modules/VERSION, or usr's
    if tree.name == "usr":
        tree = tree.parent
    (workdir / "kernel").symlink_to(tree.resolve())
    spec = importlib.util.find_spec("virtme")
    ours = vng == Path(sys.prefix) / "bin" / "vng"
    if ours and spec is not None and spec.submodule_search_locations:
        (workdir / "vng").mkdir()
        (workdir / "vng" / "virtme").symlink_to(list(spec.submodule_search_locations)[0])
    return workdir / "kernel" / kernel.vmlinuz.relative_to(tree)


def exposed(paths: Iterable[Path], workdir: Path) -> list[Path]:
    """The host directories the guest's init exposes at their own paths: real paths (the guest
    follows the same links to them), each once, none inside another (the outer one's overlay
    has it) and none holding the work dir (an overlay there would hide the way back)."""
    work = workdir.resolve()
    kept: list[Path] = []
    for path in sorted({p.resolve() for p in paths if p.is_dir()}):  # parents first
        if not work.is_relative_to(path) and not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def make_workdir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="remus-netbuf-vm-", dir=parent))


def write_job(
    workdir: Path,
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    tarball: Path | None,
    reference: float | None,
    merged: bool = True,
    expose: Iterable[Path] = (),
) -> None:
    """Write what the guest's init runs: its copy of the init, the command, the environment,
    the directories to expose (NUL-terminated, as the command: any name survives)."""
    shutil.copyfile(GUEST_INIT, workdir / "init")
    (workdir / "command").write_bytes(b"".join(os.fsencode(a) + b"\0" for a in argv))
    (workdir / "expose").write_bytes(b"".join(os.fsencode(p) + b"\0" for p in expose))
    values = {
        IN_VM: "1",
        "PATH": os.environ.get("PATH", "") + ":" + SBIN,
        "REMUS_NETBUF_VM_CWD": str(cwd),
        "REMUS_NETBUF_VM_MERGED": "1" if merged else "0",
        "REMUS_NETBUF_VM_TARBALL": str(tarball or ""),
        "REMUS_NETBUF_VM_PYDIRS": "\n".join(str(d) for d in python_dirs()) if tarball else "",
        "REMUS_NETBUF_VM_REFERENCE": str(reference or ""),
        "REMUS_NETBUF_VM_PYTHON": sys.executable,
        "REMUS_NETBUF_VM_PROBE": SPEED_PROBE,
    }
    for name in ("PYTHONPATH", "HOME", "LANG", "LC_ALL", "CI", "COVERAGE_PROCESS_START"):
        if name in os.environ:
            values[name] = os.environ[name]
    values.update(env)
    (workdir / "env").write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
    )


def _boot(
    command: list[str],
    workdir: Path,
    timeout: float,
    stdout: int,
    stderr: int,
    started: Callable[[subprocess.Popen[bytes]], None] | None,
) -> bool:
    """Run the VM to power-off or the timeout (then kill it); stream the command's output.

    The guest writes the command's output to files in the work dir (9p, written through at
    once); followers copy what appears to our descriptors, so it streams, and a killed VM
    loses nothing already written. Returns whether the timeout struck.
    """
    env = {**os.environ, "PATH": f"{Path(sys.prefix) / 'bin'}:{os.environ.get('PATH', '')}"}
    if (workdir / "vng").is_dir():  # vng's package through its link: stage_for_vng
        paths = (str(workdir / "vng"), os.environ.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    done = threading.Event()
    followers = [threading.Thread(target=_follow, args=(workdir / "out", stdout, done))]
    if stdout != stderr:
        followers.append(threading.Thread(target=_follow, args=(workdir / "err", stderr, done)))
    with open(workdir / "console.log", "wb") as console:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
    if started is not None:
        started(proc)
    for follower in followers:
        follower.start()
    try:
        proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:  # also on KeyboardInterrupt: vng and QEMU share its process group
        kill(proc)
        done.set()
        for follower in followers:
            follower.join()
    return timed_out


def _follow(path: Path, fd: int, done: threading.Event) -> None:
    """Copy what is appended to path to fd until done is set, then the rest."""
    offset = 0
    while True:
        finished = done.is_set()
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            os.write(fd, chunk)
            offset += len(chunk)
        if finished:
            return
        done.wait(0.2)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill a VM that :func:`run` started, and its QEMU (they share a process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


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
    slow = lines(workdir / "slowdown")
    if slow:
        try:
            outcome.slowdown = float(slow[0])
        except ValueError:
            pass
    rc = lines(workdir / "rc")
    if rc and rc[0].strip().isdigit() and "done" in outcome.timeline:
        outcome.returncode = int(rc[0])
    return outcome


def lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []


def tail(path: Path, count: int = TAIL_LINES) -> str:
    found = lines(path)
    return "\n".join(found[-count:]) if found else "(missing or empty)"


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks (killing the VM, cleanup) still run."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.vm",
        description="Run a command on a kernel with sch_plug (Debian's, in QEMU, or this one).",
        epilog="example: python -m tools.vm -- tc qdisc add dev lo root plug",
    )
    defaults = Options.from_env()
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="seconds in all")
    parser.add_argument("--cwd", type=Path, help="directory to run in (default: this one)")
    parser.add_argument("--keep", action="store_true", default=defaults.keep, help="keep work dir")
    parser.add_argument("--fetch", action="store_true", help="only fetch and cache the kernel")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and arguments")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"vm: {message}", file=sys.stderr, flush=True)

    if args.fetch:
        try:
            print(ensure_kernel(defaults.cache, say, defaults.kernel).vmlinuz)
        except Unavailable as err:
            say(str(err))
            return EXIT_VM
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    exit_on_sigterm()
    options = dataclasses.replace(defaults, timeout=args.timeout, keep=args.keep)
    mode = choose_mode(options, say if args.verbose else lambda _: None)
    if mode == "native":
        return subprocess.run(command, cwd=args.cwd).returncode
    outcome = run(command, cwd=args.cwd, options=options, mode=mode, say=say)
    for failure in outcome.module_failures:
        say(f"warning: module failed to load: {failure}")
    if args.verbose:
        say(f"{outcome.summary()}; exit {outcome.exit_status}")
    if outcome.problem:
        say(outcome.problem)
        if not outcome.booted:
            print(outcome.console_tail(), file=sys.stderr)
        if outcome.workdir is not None:
            say(f"work dir kept: {outcome.workdir}")
    return outcome.exit_status


if __name__ == "__main__":
    sys.exit(main())
