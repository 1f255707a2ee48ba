"""``remus-netbuf check``: the preflight an admin runs before ``xl remus``.

Each check says ok, warn or FAIL in one line, with the fix. The kernel is probed the only way
that proves anything, by doing what setup does, in a throwaway network namespace that is then
deleted with everything in it: create an IFB, put a plug with the configured limit on it, add an
ingress qdisc and a u32 + mirred redirect (on the namespace's ``lo``, standing in for a vif).
Nothing outside that namespace is changed; the kernel may load the modules on demand, as the
first setup would (the ``ifb`` module then also creates its ``numifbs`` IFBs in dom0).
The rest reads: the config file, xenstored, the lock directory, the IFBs and anomalies (one
``status`` scan), xl.conf with the script it names, and the libxenlight xl loads (was it built
with network buffering? :mod:`.libxenlight`).

The verdicts are plain functions over what was found (:func:`exit_status`, :func:`ifb_verdict`,
:func:`script_verdict` ...), unit-tested without a kernel.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import sysconfig
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING

from .audit import Anomaly, Snapshot
from .config import DEFAULT_PATH, Config, load_config
from .errors import KernelError, KernelLacks, LockError, NetbufError
from .xlconf import KEY, XL_CONF, netbufscript, script_xl_runs

if TYPE_CHECKING:
    from .dpkg import Provenance
    from .libxenlight import Libxenlight
    from .netlink import Netlink

OK, WARN, FAIL = "ok", "warn", "FAIL"
JSON_VERSION = 1
PROBE_NS = "remus-netbuf-check-"  # + pid: the throwaway namespace
PROBE_IFB = "ifb0"  # inside the throwaway namespace only
SCRIPT_NAME = "remus-netbuf-setup"
LINKED = f"/usr/local/sbin/{SCRIPT_NAME}"  # where make install links it


@dataclass(frozen=True)
class Result:
    """One check's verdict: ``level`` is ok, warn or FAIL; ``fix`` is empty when ok."""

    name: str
    level: str
    detail: str
    fix: str = ""


def exit_status(results: list[Result]) -> int:
    """0 all ok, 1 any FAIL, 2 warnings only."""
    levels = {r.level for r in results}
    return 1 if FAIL in levels else 2 if WARN in levels else 0


def render_text(results: list[Result]) -> str:
    lines = []
    for r in results:
        fix = f" [fix: {r.fix}]" if r.fix else ""
        lines.append(f"{r.level:<4}  {r.name}: {r.detail}{fix}")
    counts = Counter(r.level for r in results)
    lines.append(f"check: {counts[FAIL]} FAIL, {counts[WARN]} warn, {counts[OK]} ok")
    return "\n".join(lines) + "\n"


def render_json(results: list[Result]) -> str:
    verdict = {0: "ok", 1: "fail", 2: "warn"}[exit_status(results)]
    checks = [{**asdict(r), "level": r.level.lower()} for r in results]  # ok, warn, fail
    doc = {"version": JSON_VERSION, "result": verdict, "checks": checks}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def run_checks(
    environ: Mapping[str, str], xl_conf: str = XL_CONF, libxenlight: str | None = None
) -> list[Result]:
    """Every check, in the order an admin fixes them."""
    from .audit import anomalies
    from .decide import free_ifbs

    config, results = check_config(environ)
    results += probe_kernel(config)
    reached, snap, why = scan_host(environ)
    results += [reached, check_lock_dir(config)]
    if snap is None:  # not checked: a warning when its cause already failed above
        level = WARN if reached.level == FAIL else FAIL
        results.append(Result("free-ifbs", level, f"not checked: {why}", "see above"))
    else:
        free = free_ifbs(snap.ifbs, snap.claims, snap.live_domids)
        results.append(ifb_verdict(free, config.ifb_autocreate))
    results.append(check_script(xl_conf))
    results.append(check_libxenlight(libxenlight))
    if snap is None:
        results.append(Result("anomalies", WARN, f"not checked: {why}", "see above"))
    else:
        results.append(anomaly_verdict(anomalies(snap)))
    return results


def scan_host(environ: Mapping[str, str]) -> tuple[Result, Snapshot | None, str]:
    """The xenstore verdict, and one ``status`` scan (None, and why, when there is none)."""
    from .netlink import Netlink
    from .status import scan
    from .xenstore import Xenstore, socket_path

    path = socket_path(environ)
    try:
        with Xenstore(path) as xs:
            domains = len(xs.live_domids()) if xs.read("/local/domain") is not None else None
            reached = xenstore_verdict(path, domains)
            try:
                with Netlink() as nl:
                    return reached, scan(xs, nl), ""
            except NetbufError as err:
                return reached, None, str(err)
    except NetbufError as err:
        detail = str(err).removeprefix("xenstore: ")
        failed = Result("xenstore", FAIL, detail, _XENSTORE_FIX)
        return failed, None, "xenstored does not answer"


# --- config and lock ------------------------------------------------------------------------


def check_config(environ: Mapping[str, str]) -> tuple[Config, list[Result]]:
    """The config in force (the defaults if it does not parse), and its verdict."""
    source = environ.get("REMUS_NETBUF_CONF") or (
        DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else "no config file (defaults)"
    )
    try:
        config = load_config(environ)
    except NetbufError as err:
        fix = "correct that line (keys and values: README, Configuration)"
        return Config(), [Result("config", FAIL, f"{err}; the checks below use the defaults", fix)]
    auto = "yes" if config.ifb_autocreate else "no"
    detail = (
        f"{source}: plug_limit={config.plug_limit} protocols={config.protocols} "
        f"ifb_autocreate={auto} lock_dir={config.lock_dir}"
    )
    return config, [Result("config", OK, detail)]


def check_lock_dir(config: Config) -> Result:
    from .lock import check_lock_dir as lock_dir_ok

    try:
        exists = lock_dir_ok(config.lock_dir)
    except LockError as err:
        fix = "make it a real directory owned by root, or point lock_dir elsewhere"
        return Result("lock-dir", FAIL, str(err), fix)
    if not exists:
        return Result("lock-dir", OK, f"{config.lock_dir}: setup creates it root-only (0700)")
    return Result("lock-dir", OK, f"{config.lock_dir}: a directory, no symbolic link")


# --- the kernel ---------------------------------------------------------------------------

_STEPS = {
    "kernel-ifb": "created an IFB (ifb)",
    "kernel-plug": "added a plug qdisc with a limit of {limit} bytes (sch_plug)",
    "kernel-ingress": "added an ingress qdisc (sch_ingress)",
    "kernel-redirect": "added a u32 filter redirecting to the IFB (cls_u32, act_mirred)",
}


def probe_kernel(config: Config) -> list[Result]:
    """Do what setup does in a throwaway namespace, then delete the namespace."""
    from .netlink import Netlink, create_netns, list_netns, remove_netns

    for stale in list_netns():  # left by a check that was killed
        pid = stale.removeprefix(PROBE_NS)
        if stale.startswith(PROBE_NS) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _try(lambda: remove_netns(stale))  # noqa: B023 (called at once)
    name = f"{PROBE_NS}{os.getpid()}"
    try:
        create_netns(name)
    except KernelError as err:
        return [Result("kernel", FAIL, f"{err}", "run as root (it needs CAP_SYS_ADMIN)")]
    results: list[Result] = []
    try:
        with Netlink(name) as nl:
            results = _probe(nl, config)
    except KernelError as err:
        results.append(Result("kernel", FAIL, f"namespace {name}: {err}", "see the detail"))
    finally:
        try:
            remove_netns(name)
        except KernelError as err:
            results.append(Result("kernel", WARN, str(err), f"ip netns del {name}"))
    return results


def _probe(nl: Netlink, config: Config) -> list[Result]:
    done: dict[str, KernelError | None] = {}
    target = PROBE_IFB
    done["kernel-ifb"] = _try(partial(_new_ifb, nl))
    if done["kernel-ifb"] is not None:
        target = "lo"  # still learn whether the rest works
    done["kernel-plug"] = _try(lambda: nl.add_plug(target, config.plug_limit))
    if done["kernel-plug"] is None and nl.root_qdisc(target) != "plug":
        done["kernel-plug"] = KernelError(detail=f"{target}: the plug did not stay as root")
    done["kernel-ingress"] = _try(lambda: nl.add_ingress("lo"))
    if done["kernel-ingress"] is None:
        done["kernel-redirect"] = _try(lambda: nl.add_redirect("lo", target, config.protocols))
        _try(lambda: nl.remove_ingress("lo"))
    _try(lambda: nl.remove_plug(target))
    _try(lambda: nl.delete_link(PROBE_IFB))
    return kernel_verdicts(done, config.plug_limit)


def _new_ifb(nl: Netlink) -> None:
    nl.create_ifb(PROBE_IFB)
    nl.set_up(PROBE_IFB, True)


def _try(action: Callable[[], object]) -> KernelError | None:
    try:
        action()
    except KernelError as err:
        return err
    return None


def kernel_verdicts(done: Mapping[str, KernelError | None], limit: int) -> list[Result]:
    """One line per step of the probe: what worked, or the module and CONFIG option missing."""
    results = []
    for name, worked in _STEPS.items():
        if name not in done:
            results.append(Result(name, WARN, "not tried: it needs the ingress qdisc", "see above"))
        elif done[name] is None:
            results.append(Result(name, OK, worked.format(limit=limit)))
        else:
            results.append(Result(name, FAIL, str(done[name]), _kernel_fix(done[name])))
    return results


def _kernel_fix(err: KernelError | None) -> str:
    if isinstance(err, KernelLacks):
        module, option = err.fields["feature"], err.fields["config"]
        return (
            f"modprobe {module}; if there is no such module, boot a kernel built with "
            f"{option}=m (Debian's stock kernel has it)"
        )
    return "see the detail"


# --- xenstore, IFBs, anomalies -----------------------------------------------------------

_XENSTORE_FIX = "start xenstored (systemctl start xenstored), or set XENSTORED_PATH"


def xenstore_verdict(path: str, domains: int | None) -> Result:
    if domains is None:
        detail = f"{path} answers, but /local/domain does not exist: dom0 is not set up"
        return Result("xenstore", WARN, detail, "start the Xen services (xencommons)")
    counted = f"{domains} domain{'' if domains == 1 else 's'} besides dom0"
    return Result("xenstore", OK, f"{path} answers: {counted}")


def ifb_verdict(free: list[str], autocreate: bool) -> Result:
    """How many IFBs are free, and whether autocreation covers the vifs beyond them."""
    names = f" ({', '.join(free)})" if free else ""
    if autocreate:
        return Result("free-ifbs", OK, f"{len(free)} free{names}; ifb_autocreate=yes makes more")
    if free:
        detail = f"{len(free)} free{names}; ifb_autocreate=no: room for {len(free)} more vifs"
        return Result("free-ifbs", OK, detail)
    fix = (
        "ifb_autocreate=yes, or more IFBs (modprobe ifb numifbs=N, ip link add ifbN type ifb), "
        "or remus-netbuf gc if unclaimed plugs hold them"
    )
    detail = "no free IFB and ifb_autocreate=no: the next setup fails"
    return Result("free-ifbs", FAIL, detail, fix)


def anomaly_verdict(found: list[Anomaly]) -> Result:
    if not found:
        return Result("anomalies", OK, "none")
    kinds = Counter(a.kind for a in found)
    detail = f"{len(found)}: " + ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
    fix = "remus-netbuf status shows them; remus-netbuf gc repairs those no live netbuf owns"
    return Result("anomalies", WARN, detail, fix)


# --- the script xl runs -------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """What was found at the path xl runs."""

    path: str
    source: str  # where the path came from
    exists: bool
    executable: bool
    ours: bool  # this installation's remus-netbuf-setup (through any symlinks)
    package: bool  # some remus-netbuf-setup of this package (another venv or checkout)
    shebang: str


def check_script(xl_conf: str) -> Result:
    try:
        with open(xl_conf, encoding="utf-8", errors="replace") as f:
            text: str | None = f.read()
    except FileNotFoundError:
        text = None
    except OSError as err:
        return Result("xl-script", FAIL, f"cannot read {xl_conf}: {err.strerror}", "see the detail")
    path = script_xl_runs(text)
    if text is not None and netbufscript(text) is not None:
        source = f"{KEY} in {xl_conf}"
    else:
        source = f"the default: {KEY} is not set in {xl_conf}"
    return script_verdict(inspect_script(path, source))


def own_script() -> str:
    """This installation's remus-netbuf-setup: the one beside the running program (the Debian
    package's /usr/sbin, a venv's bin, make install's links), else where pip puts scripts."""
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), SCRIPT_NAME)
    return (
        beside
        if os.path.isfile(beside)
        else os.path.join(sysconfig.get_path("scripts"), SCRIPT_NAME)
    )


def inspect_script(path: str, source: str) -> Script:
    ours = os.path.realpath(own_script())
    try:
        info = os.stat(path)
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return Script(path, source, False, False, False, False, "")
    shebang = head.split(b"\n", 1)[0].decode("utf-8", "replace") if head[:2] == b"#!" else ""
    return Script(
        path=path,
        source=source,
        exists=True,
        executable=stat.S_ISREG(info.st_mode) and bool(info.st_mode & 0o111),
        ours=os.path.realpath(path) == ours,
        package=b"remus_netbuf" in head,
        shebang=shebang,
    )


def script_verdict(script: Script) -> Result:
    """Whether xl runs this installation's remus-netbuf-setup."""
    ours = own_script()
    if os.path.realpath(LINKED) == os.path.realpath(ours):
        ours = LINKED  # make install's link: the path that survives a new venv
    fix = f'{KEY}="{ours}" in xl.conf, or xl remus -N {ours}'
    if sys.prefix != sys.base_prefix:  # a venv: make install's (not the Debian package's)
        fix = "make install, or " + fix
    where = f"xl runs {script.path} ({script.source})"
    if not script.exists:
        return Result("xl-script", FAIL, f"{where}, which does not exist", fix)
    if not script.executable:
        return Result("xl-script", FAIL, f"{where}, which is not an executable file", fix)
    if script.ours:
        return Result("xl-script", OK, f"{where}: this installation")
    if script.package:
        return Result("xl-script", WARN, f"{where}: remus-netbuf, but not this installation", fix)
    what = (
        f"a {script.shebang.removeprefix('#!').strip()} script" if script.shebang else "a program"
    )
    detail = f"{where}: {what}, not this installation (Xen's own script?)"
    return Result("xl-script", WARN, detail, fix)


# --- the libxenlight xl loads -------------------------------------------------------------

_LIBXL_FIX = (
    "rebuild libxenlight (with xl and libxl-save-helper) from Xen's source with libnl3 "
    "(libnl-route-3-dev: configure then sets CONFIG_LIBNL=y)"
)
_UNSAFE = (
    "or run xl remus -n: no network buffering, unsafe (the guest's output leaves before its "
    "checkpoint is safe)"
)


def check_libxenlight(path: str | None = None) -> Result:
    """The library at ``path``, else the one the dynamic loader finds."""
    from .dpkg import provenance
    from .libxenlight import NotElf, find, inspect, search_dirs

    found = path or find()
    if found is None:
        detail = f"no libxenlight in {', '.join(search_dirs())}: xl is not installed here"
        return Result("libxenlight", WARN, detail, "install Xen's tools, then check again")
    try:
        lib = inspect(found)
    except (OSError, NotElf) as err:
        detail = f"cannot tell whether it buffers: {err}"
        return Result("libxenlight", WARN, detail, "see the detail")
    return libxenlight_verdict(lib, provenance(found))


def libxenlight_verdict(lib: Libxenlight, package: Provenance | None = None) -> Result:
    """OK when it buffers; else FAIL, saying whether an update took a netbuf build away, and
    the way back: on Debian (the package is known) make xen-netbuf-debs, else a rebuild."""
    shown = lib.path
    real = os.path.realpath(lib.path)
    if real != os.path.abspath(lib.path):  # the soname link: say which file it is
        shown += f" (-> {os.path.basename(real)})"
    owner = f" ({package.package} {package.version})" if package else ""
    if lib.netbuf:
        detail = f"{shown}{owner}: network buffering built in: {lib.evidence}"
        return Result("libxenlight", OK, detail)
    if package and package.netbuf_before:
        lost = (
            f"{shown}: lost network buffering: {package.package} {package.netbuf_before} "
            f"(installed {package.netbuf_installed}) was replaced by {package.version} "
            "(a Xen update from Debian?)"
        )
    else:
        lost = f"{shown}{owner}: no network buffering"
    detail = (
        f'{lost}, {lib.evidence}: xl remus fails with "Remus: No support for network buffering"'
    )
    if package is None:
        return Result("libxenlight", FAIL, detail, f"{_LIBXL_FIX}, {_UNSAFE}")
    fix = (
        "make xen-netbuf-debs in remus-netbuf's source tree, then apt install "
        f"./dist/xen-netbuf/{package.rebuilt_name} (README: Install), {_UNSAFE}"
    )
    return Result("libxenlight", FAIL, detail, fix)
