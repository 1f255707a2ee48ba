"""The real-Xen end-to-end tier: ``xl remus`` runs our script through real libxl, in QEMU.

Boots Debian's Xen 4.17 hypervisor in QEMU (KVM when the kernel tier's probe says it boots,
else TCG) with Debian's 6.1 kernel as dom0 (the kernel tier's, :func:`tools.vm.ensure_kernel`).
dom0's root is this host's ``/`` over 9p, read-only, under a tmpfs. dom0 installs Debian's Xen
packages of one version with dpkg (:mod:`tools.xenpkg` fetches them), then, as the README's
Install says, our package (``make deb``) and Debian's libxenmisc repacked with libxenlight
rebuilt with libnl3 (``make xen-netbuf-debs``), both built here before boot (:func:`prepare`).
Nothing on this host is changed: every write lands in dom0's tmpfs, except the work dir (9p,
read-write), where dom0 leaves its log, timeline and results.

dom0 runs tools/e2e_dom0.sh as PID 1 (xenstored, xen-init-dom0, xenconsoled), then the
scenarios (tools/e2e_dom0.py). Guests are PVH (Remus needs log-dirty; Debian's Xen has no
shadow paging for PV), booting the same kernel with a busybox initramfs that streams UDP to
dom0 (tools/e2e_guest.sh, tools/e2e_udp.c).

    python -m tools.e2e [--xen 4.17|4.20] [--timeout S] [--keep] [--only NAME,...]

--xen 4.20 boots trixie's Xen 4.20 instead, with trixie's kernel as dom0's and a trixie root
(tools/xenroot.py) as dom0's whole root, the checkout bound in from the host.

exits 0 when every scenario passed, 1 when one failed, 2 when the tier could not run.
Settings: REMUS_NETBUF_VM (auto|kvm|tcg, as the kernel tier), REMUS_NETBUF_E2E_TIMEOUT,
REMUS_NETBUF_E2E_KEEP=1, REMUS_NETBUF_E2E_ONLY, REMUS_NETBUF_E2E_XEN, REMUS_NETBUF_E2E_CPU
(TCG's -cpu, default TCG_CPU below: max without XSAVE). The cache is .cache/e2e (4.20's:
.cache/e2e/4.20; and .cache/vm).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools import deb, e2e_images, vm, xendebs, xenpkg
from tools.e2e_images import DOM0_INIT, GUEST_INIT

REPO = vm.REPO
CACHE = REPO / ".cache" / "e2e"
TOOLS = REPO / "tools"
DOM0_STAGE = TOOLS / "e2e_dom0.sh"
# Xen under TCG: smap/smep off (else dom0 dies ~6 s in, #PF in create_bounce_frame).
XEN_ARGS = (
    "console=com1 com1=115200,8n1 dom0_mem=1536M,max:1536M dom0_max_vcpus={vcpus} loglvl=all "
    "guest_loglvl=all console_timestamps=boot smap=0 smep=0"
)
DOM0_ARGS = "console=hvc0 earlyprintk=xen rdinit=/init loglevel=4"
MEMORY_MB = 2560
# QEMU 7.2's TCG, given XSAVE, lets Xen's switches between dom0 and the guests corrupt dom0
# processes' SSE registers (~1 in 40 of tools/e2e_memcheck.py's 2 MB copies came out wrong; tc,
# bash, xl and Python crashed): without XSAVE, Xen saves them with FXSAVE, and none does. AVX
# needs XSAVE; without it glibc also leaves TCG's slow AVX emulation (the guests boot ~40% faster).
TCG_CPU = "max,-xsave,-avx,-avx2"
# One vCPU under TCG: with two (QEMU's multi-threaded TCG, a thread each), the PVH guests
# triple-faulted now and then, right after an exit to Xen (the kernel's PIT calibration reading
# port 0x42 at boot; a hypercall while the other guest was checkpointed): 4 of 15 boots and 2
# running guests in five runs, each restarted by xl under a new domid. With one, none in
# five runs (10 boots), about as fast (docs/real-xen-tier.md: The CPU model). Under KVM, two.
TCG_VCPUS = 1
TIMEOUT = 900.0


@dataclass(frozen=True)
class Parts:
    """Everything one boot needs, all under the caches."""

    kernel: vm.Kernel  # the guests' (and 4.17's dom0's): bookworm's, the kernel tier's
    dom0_kernel: vm.Kernel  # 4.20's: the trixie root's own
    xen: xenpkg.XenTree
    netbuf_tree: Path  # the rebuilt libxenlight, xl, libxl-save-helper at their dom0 paths
    dom0_initrd: Path
    guest_initrd: Path
    tarball: Path
    # 4.17: what dom0 installs with dpkg and apt, as an admin would (else empty: 4.20, or no
    # netbuf build): Debian's Xen packages (and udev), then ours and the netbuf libxenmisc
    xen_debs: tuple[Path, ...] = ()
    our_debs: tuple[Path, ...] = ()


def prepare(say: Callable[[str], None], release: str = xenpkg.BRANCH) -> Parts:
    """Fetch and build what is missing (cached), and say how long each step took."""
    timed = Stopwatch(say)
    images = e2e_images
    with timed("kernel"):
        kernel = vm.ensure_kernel(vm.Options().cache, say)
    with timed("Xen packages and the netbuf-enabled libxenlight"):
        xen = xenpkg.ensure(xenpkg.cache_for(release), say, release)
    xen_debs: tuple[Path, ...] = ()
    our_debs: tuple[Path, ...] = ()
    if release == xenpkg.BRANCH and not xen.netbuf_missing:
        with timed("the .debs dom0 installs (make deb, make xen-netbuf-debs)"):
            xen_debs = tuple(xenpkg.dom0_debs(xen, say))
            netbuf = xendebs.build(release, xen.version, xendebs.OUT, say)
            our_debs = (deb.ensure(say=say).deb, *netbuf)
    with timed("initramfs images"):
        if xen.own_root and xen.kernel and xen.modules:
            dom0_kernel = vm.Kernel(xen.modules.name, xen.kernel, xen.modules)
            modules: Sequence[str] = images.dom0_modules(xen.modules)
            dom0_name = f"dom0-{release}"
        else:
            images.fit_to_host(xen.root)
            dom0_kernel, modules, dom0_name = kernel, images.DOM0_MODULES, "dom0"
        # installing: no loose file over dom0's root, Debian's Xen and ours come as packages
        netbuf_tree = images.empty_layer() if xen_debs else images.netbuf_tree(xen)
        dom0 = images.initrd(dom0_name, dom0_kernel, DOM0_INIT, modules, images.DOM0_APPLETS, {})
        udp = {"e2e_udp": images.udp_sender()}
        guest = images.initrd(
            "guest", kernel, GUEST_INIT, images.GUEST_MODULES, images.GUEST_APPLETS, udp
        )
    with timed("python tarball"):
        tarball = xen.pytar or vm.python_tarball(vm.Options().cache)
    return Parts(kernel, dom0_kernel, xen, netbuf_tree, dom0, guest, tarball, xen_debs, our_debs)


class Stopwatch:
    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.figures: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.figures[what] = took = time.monotonic() - start
        self.say(f"{what}: {took:.1f} s")


# --- one boot -------------------------------------------------------------------------------


def accel(say: Callable[[str], None]) -> str:
    """'kvm' when the kernel tier's probe found KVM booting here (or it is forced), else 'tcg'."""
    options = vm.Options.from_env()
    if options.mode in ("kvm", "tcg"):
        return options.mode
    return "kvm" if vm.kvm_works(options, say) else "tcg"


def qemu_command(parts: Parts, workdir: Path, mode: str) -> list[str]:
    """Xen as the multiboot kernel; dom0's kernel and initramfs as its modules."""
    if mode == "kvm":
        cpu, vcpus = ["-accel", "kvm", "-cpu", "host"], 2
    else:
        tcg_cpu = os.environ.get("REMUS_NETBUF_E2E_CPU") or TCG_CPU  # another model, to compare
        cpu, vcpus = ["-accel", "tcg", "-cpu", tcg_cpu], TCG_VCPUS
    argv = ["qemu-system-x86_64", *cpu, "-machine", "pc", "-smp", str(vcpus), "-m", str(MEMORY_MB)]
    argv += ["-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults"]
    argv += ["-serial", f"file:{workdir / 'console.log'}"]
    shares = {
        "host": (Path("/"), True),
        "xenroot": (parts.xen.root, True),
        "netbuf": (parts.netbuf_tree, True),
        "work": (workdir, False),
    }
    for tag, (path, readonly) in shares.items():
        ro = ",readonly=on" if readonly else ""
        argv += ["-fsdev", f"local,id={tag},path={path},security_model=none{ro},multidevs=remap"]
        argv += ["-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
    dom0_args = f"{DOM0_ARGS} e2e_stage={DOM0_STAGE}"
    if parts.xen.own_root:
        dom0_args += f" e2e_root=own e2e_repo={REPO}"
    elif parts.xen_debs:
        dom0_args += " e2e_root=installed"
    for path in (parts.dom0_kernel.vmlinuz, parts.dom0_initrd, DOM0_STAGE, REPO):
        if "," in str(path) or " " in str(path):
            raise vm.Unavailable(f"{path}: QEMU's multiboot module list cannot take ',' or ' '")
    argv += ["-kernel", str(parts.xen.hypervisor), "-append", XEN_ARGS.format(vcpus=vcpus)]
    argv += ["-initrd", f"{parts.dom0_kernel.vmlinuz} {dom0_args},{parts.dom0_initrd}"]
    return argv


def write_env(parts: Parts, workdir: Path, only: Sequence[str]) -> None:
    python = parts.xen.python or str(REPO / ".venv" / "bin" / "python")
    pydirs: tuple[Path, ...] = vm.python_dirs()
    if parts.xen.python:  # the own root's standard library (its tarball holds only that)
        pydirs = (Path("/usr/lib") / f"python{_root_python(parts.xen.root)}",)
    values = {
        "E2E_REPO": str(REPO),
        "E2E_PYTHON": python,
        # our product from the checkout, under the root's python3 (no venv of the host's)
        "E2E_CHECKOUT": "1" if parts.xen.python else "",
        "E2E_TEST_PYTHON": f"{xenroot_venv()}/bin/python" if parts.xen.python else python,
        "E2E_XEN_BRANCH": parts.xen.branch,
        "E2E_NETBUF_MISSING": parts.xen.netbuf_missing,
        "E2E_NETBUF_NOTE": parts.xen.netbuf_note,
        "E2E_TARBALL": str(parts.tarball),
        "E2E_PYDIRS": " ".join(str(d) for d in pydirs),
        "E2E_GUEST_KERNEL": str(parts.kernel.vmlinuz),
        "E2E_GUEST_INITRD": str(parts.guest_initrd),
        "E2E_XEN_VERSION": parts.xen.version,
        "E2E_ONLY": ",".join(only),
        "E2E_XEN_DEBS": " ".join(str(d) for d in parts.xen_debs),
        "E2E_OUR_DEBS": " ".join(str(d) for d in parts.our_debs),
        # Xen's own bash script, for the bash scenario: Debian ships none (a test's copy)
        "E2E_XEN_SCRIPT": str(
            parts.xen.netbuf_files.get("/etc/xen/scripts/remus-netbuf-setup", "")
        ),
    }
    (workdir / "env").write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
    )


def _root_python(root: Path) -> str:
    """X.Y of the root's python3 (usr/lib/pythonX.Y)."""
    found = sorted(p.name for p in (root / "usr" / "lib").glob("python3.[0-9]*"))
    return found[-1].removeprefix("python") if found else "3"


def xenroot_venv() -> str:
    from tools import xenroot

    return xenroot.VENV


def boot(
    parts: Parts, workdir: Path, mode: str, timeout: float, say: Callable[[str], None]
) -> bool:
    """Run dom0 to power-off or the timeout; stream its E2E lines. Whether the timeout struck."""
    argv = qemu_command(parts, workdir, mode)
    (workdir / "qemu.argv").write_text(shlex.join(argv) + "\n")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    console = workdir / "console.log"
    seen = 0
    deadline = time.monotonic() + timeout
    timed_out = False
    while proc.poll() is None:
        if time.monotonic() > deadline:
            timed_out = True
            vm.kill(proc)
            break
        time.sleep(1)
        seen = _echo(console, seen, say)
    proc.wait()
    _echo(console, seen, say)
    if proc.stdout is not None:
        rest = proc.stdout.read().decode(errors="replace").strip()
        if rest:
            say(f"qemu: {rest}")
    return timed_out


def _echo(console: Path, seen: int, say: Callable[[str], None]) -> int:
    """Say the console's new E2E lines; returns how far it has read."""
    try:
        with open(console, "rb") as f:
            f.seek(seen)
            chunk = f.read()
    except FileNotFoundError:
        return seen
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].decode(errors="replace").splitlines():
        line = line.strip()
        at = line.find("E2E")
        if at >= 0:
            say(line[at:])
    return seen + end


def report(workdir: Path, say: Callable[[str], None]) -> int:
    """Print the scenarios' verdicts and figures; 0 when all passed."""
    path = workdir / "results.json"
    if not path.exists():
        say(f"no results: dom0 did not finish (console: {workdir / 'console.log'})")
        return 1
    results = json.loads(path.read_text())
    failed = 0
    timeline = dict(
        line.split() for line in vm.lines(workdir / "timeline") if len(line.split()) == 2
    )
    say(
        "dom0 timeline (uptime, s): "
        + ", ".join(f"{k} {float(v):.1f}" for k, v in timeline.items())
    )
    say(
        "stages (dom0 uptime, s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in results.get("stages", {}).items())
    )
    for name, scenario in results.get("scenarios", {}).items():
        ok = scenario.get("ok", False)
        failed += not ok
        say(f"{'PASS' if ok else 'FAIL'} {name}")
        for check in scenario.get("checks", []):
            mark = "ok  " if check["ok"] else "FAIL"
            say(f"    {mark} {check['what']}" + (f": {check['detail']}" if check["detail"] else ""))
        for key, value in scenario.get("figures", {}).items():
            say(f"    {key}: {value}")
    wanted = results.get("wanted", [])
    missing = [name for name in wanted if name not in results.get("scenarios", {})]
    for name in missing:
        say(f"FAIL {name}: did not run (dom0 stopped before it)")
    return 1 if failed or missing or not results.get("scenarios") else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.e2e", description=__doc__.splitlines()[0]
    )
    env = os.environ
    parser.add_argument(
        "--timeout", type=float, default=float(env.get("REMUS_NETBUF_E2E_TIMEOUT") or TIMEOUT)
    )
    parser.add_argument(
        "--keep", action="store_true", default=env.get("REMUS_NETBUF_E2E_KEEP") == "1"
    )
    parser.add_argument(
        "--xen",
        choices=xenpkg.RELEASES,
        default=env.get("REMUS_NETBUF_E2E_XEN") or xenpkg.BRANCH,
        help=f"Xen and dom0's Debian: 4.17 bookworm, 4.20 trixie (default {xenpkg.BRANCH})",
    )
    parser.add_argument(
        "--only",
        default=env.get("REMUS_NETBUF_E2E_ONLY", ""),
        help="comma-separated scenario names (default: all)",
    )
    args = parser.parse_args(argv)

    start = time.monotonic()

    def say(line: str) -> None:
        print(f"e2e [{time.monotonic() - start:6.1f}s] {line}", flush=True)

    try:
        parts = prepare(say, args.xen)
        mode = accel(say)
    except (vm.Unavailable, xenpkg.XenPkgError, deb.Failed, xendebs.Failed) as err:
        say(f"cannot run: {err}")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="remus-netbuf-e2e-", dir="/tmp"))
    write_env(parts, workdir, [n for n in args.only.split(",") if n])
    say(f"booting Xen {parts.xen.version} + dom0 {parts.dom0_kernel.version} in QEMU ({mode})")
    if parts.xen.netbuf_missing:
        missing = parts.xen.netbuf_missing
        say(f"no netbuf libxenlight (Debian's has no network buffering): {missing}")
    if parts.xen.netbuf_note:
        say(f"NOTE: {parts.xen.netbuf_note}")
    say(f"work dir {workdir}")
    timed_out = boot(parts, workdir, mode, args.timeout, say)
    if timed_out:
        say(f"timed out after {args.timeout:g} s")
    rc = report(workdir, say) or (1 if timed_out else 0)
    if parts.xen.netbuf_note:
        say(f"NOTE: {parts.xen.netbuf_note}")
    say(f"make e2e: {'passed' if rc == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s")
    if rc == 0 and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"kept {workdir}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
