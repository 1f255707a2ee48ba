"""Guarantees of remus-netbuf-setup that hold on the running kernel (no sch_plug needed).

Bad input is refused in one line touching nothing; the pickifb lock is safe (root-only
directory, symbolic links refused, a SIGKILLed holder never blocks); xenstore faults (daemon
absent, connection lost mid-setup, EAGAIN storms) end in exit 1 or a ridden-out retry, with
the kernel rolled back, in bounded time, never with a half-written claim.

The product runs through the fork runner (tests/forkrun.py: a forked child per run, in the
bed's namespace), so a thousand hypothesis cases take seconds. This kernel has no sch_plug,
so a setup that gets past every check fails at 'add plug qdisc' and rolls back: here that
failure is the sign that a fault was ridden out. The successes are in test_guarantees_vm.py.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import socket
import stat
import string
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.bed import Bed, netbuf_path
from tests.forkrun import Job, Outcome, Runner, daemon_dies_after, kernel_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")

VIF, VIF7 = "vif5.0", "vif7.0"
PATH5, PATH7 = netbuf_path(5), netbuf_path(7)
BAD_INPUT_CASES = 1000
BOUND = 20.0  # seconds any faulty run may take: libxl kills the script at 40 s
PROGRAM = "remus-netbuf-setup: "


@functools.cache
def kernel_has_plug() -> bool:
    ns = f"rnb-probe-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "probe0", "type", "ifb"], check=True)
        add = ["tc", "-n", ns, "qdisc", "add", "dev", "probe0", "root", "plug", "limit", "1000"]
        return subprocess.run(add, capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns])


@pytest.fixture
def noplug() -> None:
    """These tests read 'got past X' from the failure at 'add plug qdisc': no sch_plug here."""
    if kernel_has_plug():
        pytest.skip("this kernel has sch_plug; test_guarantees_vm.py covers the successes")


def scene(bed: Bed) -> None:
    """vif5.0 with a free ifb0, and another live netbuf (domain 7: vif7.0 -> ifb1) that every
    run must leave alone. Plugless: this kernel has no sch_plug."""
    bed.add_vif(VIF)
    bed.add_vif(VIF7)
    bed.add_ifb("ifb0")
    bed.add_ifb("ifb1", up=True)
    bed.domain(5)
    bed.domain(7)
    redirect_vif7(bed)
    bed.claim(7, 0, "ifb1")
    bed.xs.seed(f"{PATH7}/hotplug-status", "connected")


def redirect_vif7(bed: Bed) -> None:
    bed.tc("qdisc", "add", "dev", VIF7, "ingress")
    bed.tc(
        "filter", "add", "dev", VIF7, "parent", "ffff:", "protocol", "all", "pref", "10",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "ifb1",
    )  # fmt: skip


def reason_of(outcome: Outcome) -> str:
    """Exit 1, nothing on stdout, no traceback, and exactly one line on stderr: the reason."""
    assert outcome.returncode == 1, outcome
    assert outcome.stdout == "", outcome
    assert "Traceback" not in outcome.stderr, outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome
    assert lines[0].startswith(PROGRAM), outcome
    assert lines[0].isascii() and lines[0].isprintable(), outcome
    return lines[0].removeprefix(PROGRAM)


def failure_reason(outcome: Outcome) -> str:
    """Exit 1 and the one line naming the failed step, among the log lines of what was done."""
    assert outcome.returncode == 1, outcome
    assert "Traceback" not in outcome.stderr, outcome
    reasons = [line for line in outcome.stderr.splitlines() if " failed at step " in line]
    assert len(reasons) == 1, outcome
    return reasons[0].removeprefix(PROGRAM)


def changed_nodes(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def restore_xenstore(bed: Bed, before: dict[str, str]) -> None:
    after = bed.xs.nodes()
    for path in sorted(after.keys() - before.keys(), key=len):
        if path in bed.xs.nodes():
            bed.xs.remove(path)
    for path, value in before.items():
        if after.get(path) != value:
            bed.xs.seed(path, value)


def claim_is_whole(bed: Bed, path: str, ifbs: set[str] | None = None) -> str | None:
    """The claim at ``path``: absent, or the full name of an IFB the setup could have picked
    (any ``ifbN`` when ``ifbs`` is None: a created one, or one not created yet)."""
    claim = bed.node(f"{path}/ifb")
    if claim is not None:
        assert claim in ifbs if ifbs is not None else re.fullmatch(r"ifb[0-9]+", claim), claim
    return claim


# --- bad input: hypothesis ------------------------------------------------------------------

IFNAME_CHARS = string.ascii_letters + string.digits + "_.-"
FORBIDDEN = list("/ :\t\n\r\v;|&$()<>`'\"*?![]{}~#\\=,@%^+") + [
    "\x1b", "\x7f", "\xa0", "\u200b", "\u2028", "é", "ü", "ß", "ﬁ", "١", "ℌ", "日",
]  # fmt: skip
VARIABLES = ("vifname", "XENBUS_PATH", "REMUS_IFB")
ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
XENBUS = re.compile(r"/libxl/([1-9][0-9]{0,4})/remus/netbuf/(0|[1-9][0-9]{0,8})")


def good_ifname(name: str) -> bool:
    """The names the contract accepts: 1-15 of letters, digits, '_.-' (not '.' or '..')."""
    return re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", name) is not None and name not in (".", "..")


def good_path(path: str) -> bool:
    """/libxl/<domid>/remus/netbuf/<devid>, domid a guest's (1..0x7fef), ASCII digits."""
    match = XENBUS.fullmatch(path) if path.isascii() else None
    return match is not None and int(match[1]) < 0x7FF0


def _insert(base: str, extra: str, where: int) -> str:
    where = min(where, len(base))
    return base[:where] + extra + base[where:]


def good_ifnames() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([VIF, VIF7, "ifb0", "web-6", "vif32751.99", "-x", "a"]),
        st.builds("vif{}.{}".format, st.integers(1, 32751), st.integers(0, 99)),
        st.text(IFNAME_CHARS, min_size=1, max_size=15),
    ).filter(good_ifname)


def bad_ifnames(marker: Path) -> st.SearchStrategy[str]:
    """Over-long, '/', spaces, non-ASCII, shell metacharacters, '.', '..' (never empty)."""
    return st.one_of(
        st.sampled_from([".", "..", "../../etc", "vif5.0/../x", "vif 5.0", "vif5.0\n", "éth0"]),
        st.sampled_from([f"$(touch {marker})", f"`touch {marker}`", f"x;touch {marker}"]),
        st.text(IFNAME_CHARS, min_size=16, max_size=300),
        st.builds("vif5.{}".format, st.integers(10**9, 10**40)),
        st.builds(
            _insert,
            st.text(IFNAME_CHARS, max_size=14),
            st.sampled_from(FORBIDDEN),
            st.integers(0, 14),
        ),
        ANY_TEXT.filter(lambda s: s != ""),
    ).filter(lambda s: not good_ifname(s))


def good_paths() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([PATH5, PATH7, netbuf_path(32751, 999_999_999)]),
        st.builds(netbuf_path, st.integers(1, 0x7FEF), st.integers(0, 999_999_999)),
    )


def bad_paths(marker: Path) -> st.SearchStrategy[str]:
    """Empty, outside /libxl/<domid>/remus/netbuf/<devid>, dom0 or reserved domids, padded
    numbers, traversal, trailing parts, over-long, non-ASCII digits, spaces, shell."""
    fixed = [
        "", "/", "/libxl", "/libxl/5", "/libxl/5/remus/netbuf", "/libxl/5/remus/netbuf/",
        f"{PATH5}/", f"{PATH5}/ifb", f"{PATH5}/..", "/libxl/5/remus/netbuf/../netbuf/0",
        "libxl/5/remus/netbuf/0", "//libxl/5/remus/netbuf/0", "/libxl//5/remus/netbuf/0",
        "/libxl/05/remus/netbuf/0", "/libxl/5/remus/netbuf/00", "/libxl/0/remus/netbuf/0",
        "/libxl/32752/remus/netbuf/0", "/libxl/65535/remus/netbuf/0", "/libxl/-5/remus/netbuf/0",
        "/libxl/5/remus/netbuf/-1", "/libxl/5/remus/netbuf/1000000000", "/LIBXL/5/remus/netbuf/0",
        "/local/domain/5/device/vif/0", "/local/domain/0/backend/vif/5/0", "/libxl/5/device/vif/0",
        "/tool/xenstored", "@introduceDomain", "/libxl/٥/remus/netbuf/0",
        "/libxl/５/remus/netbuf/0",
        f"{PATH5} ", f" {PATH5}", f"{PATH5}\n", f"{PATH5};touch {marker}",
        f"$(touch {marker})", "/libxl/5/remus/netbuf/0" * 100,
    ]  # fmt: skip
    return st.one_of(
        st.sampled_from(fixed),
        st.builds(netbuf_path, st.integers(0x7FF0, 10**6) | st.just(0), st.integers(0, 9)),
        st.builds(_insert, good_paths(), st.sampled_from(FORBIDDEN) | ANY_TEXT, st.integers(0, 40)),
        st.builds("/libxl/{}/remus/netbuf/{}".format, st.integers(1, 99), ANY_TEXT),
        ANY_TEXT,
    ).filter(lambda p: not good_path(p))


def bad_commands() -> st.SearchStrategy[str]:
    fixed = ["", "Setup", "SETUP", "teardown ", " setup", "setup;reboot", "online", "offline",
             "add", "remove", "start", "stop", "status", "setup\n", "ѕetup"]  # fmt: skip
    options = ("setup", "teardown", "-h", "--help", "--version")
    return st.one_of(st.sampled_from(fixed), ANY_TEXT).filter(lambda c: c not in options)


def junk_words(marker: Path) -> st.SearchStrategy[str]:
    """Arguments that are not ``name=value`` with a name the contract accepts."""
    fixed = ["stray", "", "=", "=x", "--help", "-h", "--version", "vifname", "XENBUS_PATH",
             "VIFNAME=vif5.0", "xenbus_path=" + PATH5, "remus_ifb=ifb0", "PATH=/tmp",
             "REMUS_NETBUF_CONF=/etc/passwd", "XENSTORED_PATH=/tmp/x", " vifname=vif5.0",
             "REMUS_NETBUF_TEST_KILL_AT=pick IFB", f"$(touch {marker})",
             "vifname =vif5.0"]  # fmt: skip
    return st.one_of(
        st.sampled_from(fixed),
        ANY_TEXT.filter(lambda w: "=" not in w),
        st.builds("{}={}".format, ANY_TEXT.filter(lambda n: n not in VARIABLES), ANY_TEXT),
    ).filter(lambda w: w.partition("=")[0] not in VARIABLES or "=" not in w)


# Config values that are bad whatever the parser's details: no '#', no surrounding blanks or
# quotes, no line breaks (so what the file says is what the key gets).
VALUE_TEXT = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#'\"")
    | st.sampled_from(["é", "١", "日", " "]),
    min_size=1,
    max_size=30,
).filter(lambda v: v == v.strip())


def fatal_to_teardown_lines() -> st.SearchStrategy[str]:
    """Bad lines that teardown, which reads lock_dir alone, fails on too: a bad lock_dir (the
    first line of every bed's file sets it, so one more is also a repeat), or a line that is not
    key=value (its key, lock_dir perhaps, cannot be known)."""
    lock_dirs = ["relative/lock", "lock", "~/lock", "/var/run/xen hotplug", "/tmp/é", "./x"]
    return st.one_of(
        st.builds("lock_dir={}".format, st.sampled_from(lock_dirs)),
        st.sampled_from(["just words", "plug_limit", "plug_limit 5", "[section]", "lock_dir /x"]),
    )


def bad_config_lines() -> st.SearchStrategy[str]:
    return st.one_of(
        fatal_to_teardown_lines(),
        st.builds("plug_limit={}".format, st.integers(max_value=0) | st.integers(min_value=2**32)),
        st.builds("plug_limit={}".format, st.sampled_from(["1e6", "0x10", "10MB", "+5", "١٠٠"])),
        st.builds("plug_limit={}".format, VALUE_TEXT.filter(lambda v: not v.isdigit())),
        st.builds("protocols={}".format, VALUE_TEXT.filter(lambda v: v not in ("all", "ip"))),
        st.builds("protocols={}".format, st.sampled_from(["ipv6", "ALL", "all;reboot", "all ip"])),
        st.builds(
            "ifb_autocreate={}".format,
            VALUE_TEXT.filter(
                lambda v: v.lower() not in ("1", "yes", "true", "on", "0", "no", "false", "off")
            ),
        ),
        st.builds(
            "{}=1".format,
            st.text(string.ascii_letters + "_", min_size=1).filter(
                lambda k: k not in ("plug_limit", "protocols", "ifb_autocreate", "lock_dir")
            ),
        ),
        st.just("=5"),
    )


GOOD_CONFIG_LINES = ["plug_limit=20000", "protocols=ip", "ifb_autocreate=no", "# comment", "",
                     "protocols = 'all'  # quoted, commented", "plug_limit=4294967295"]  # fmt: skip


@dataclass
class Invocation:
    """One hotplug run with at least one bad part; what the contract then allows it to write."""

    argv: list[str]
    env: dict[str, str]
    config: bytes | None  # None: REMUS_NETBUF_CONF names a file that does not exist
    bad: list[str]
    xenbus_path: str | None  # in force: the last XENBUS_PATH= argument, else the environment's
    args_parse: bool  # every argument is name=value with an accepted name

    def must_report_at(self) -> str | None:
        """Where hotplug-error/-status must be written: a valid XENBUS_PATH, all args parsed."""
        path = self.xenbus_path
        return path if path is not None and good_path(path) and self.args_parse else None

    def may_report_at(self) -> set[str]:
        candidates = [self.env.get("XENBUS_PATH", "")]
        candidates += [a.partition("=")[2] for a in self.argv[1:] if a.startswith("XENBUS_PATH=")]
        return {p for p in candidates if good_path(p)}


PARTS = ["command", "vifname", "XENBUS_PATH", "REMUS_IFB", "args", "config"]


def _is_text(value: str | None) -> bool:
    return value is not None


def invocations(marker: Path, lock_dir: Path) -> st.SearchStrategy[Invocation]:
    """Hotplug runs with at least one bad part, each variable in the environment, in an
    argument, or both (the argument wins), junk arguments anywhere, a bad config line."""
    strategies = {
        "vifname": (good_ifnames(), st.none() | st.just("") | bad_ifnames(marker)),
        "XENBUS_PATH": (good_paths(), st.none() | bad_paths(marker)),
        "REMUS_IFB": (st.none() | st.just("") | good_ifnames(), bad_ifnames(marker)),
    }
    commands = (st.sampled_from(["setup", "teardown"]), bad_commands())
    junk = st.lists(junk_words(marker), min_size=1, max_size=3)
    config_line = bad_config_lines()
    # Teardown needs lock_dir alone: a bad line of another key is a warning there, not bad
    # input (test_hotplug_native.py tears down through one), so a teardown whose one bad part is
    # the config gets a fault it must fail on.
    teardown_config_line = fatal_to_teardown_lines()
    decoys = {
        name: st.one_of(good, wrong).filter(_is_text) for name, (good, wrong) in strategies.items()
    }
    wheres = st.sampled_from(["env", "arg", "env then arg", "arg twice"])
    # Half the cases have one bad part, so that each check is reached alone (a bad config is
    # read only when the request is valid); half have several.
    bad_parts = st.sampled_from(PARTS).map(lambda part: {part}) | st.sets(
        st.sampled_from(PARTS), min_size=1
    )
    good_lines = st.lists(st.sampled_from(GOOD_CONFIG_LINES), max_size=3)
    config_faults = st.sampled_from(["line", "line", "line", "missing", "not utf-8"])
    teardown_config_faults = st.sampled_from(["line", "line", "line", "missing"])
    position = st.integers(0, 12)

    @st.composite
    def draw_one(draw: st.DrawFn) -> Invocation:
        bad = sorted(draw(bad_parts))
        command = draw(commands["command" in bad])
        env: dict[str, str] = {}
        args: list[str] = []
        in_force: dict[str, str | None] = {}
        for name, (good, wrong) in strategies.items():
            value = in_force[name] = draw(wrong if name in bad else good)
            if value is None:
                continue
            where = draw(wheres)
            if where == "env":
                env[name] = value
            elif where == "arg":
                args.append(f"{name}={value}")
            else:
                decoy = draw(decoys[name])
                assert decoy is not None
                if where == "env then arg":
                    env[name] = decoy
                    args.append(f"{name}={value}")
                else:
                    args += [f"{name}={decoy}", f"{name}={value}"]
        if "args" in bad:
            for word in draw(junk):
                args.insert(draw(position), word)
        lines = [f"lock_dir={lock_dir}", *draw(good_lines)]
        config: bytes | None = "\n".join(lines).encode()
        if "config" in bad:
            fatal_to_teardown = bad == ["config"] and command == "teardown"
            how = draw(teardown_config_faults if fatal_to_teardown else config_faults)
            if how == "line":
                line = teardown_config_line if fatal_to_teardown else config_line
                lines.insert(draw(position), draw(line))
                config = "\n".join(lines).encode()
            elif how == "missing":
                config = None
            else:
                config = b"%s\nprotocols=\xff\xfeall\n" % config
        return Invocation(
            [command, *args], env, config, bad, in_force["XENBUS_PATH"], "args" not in bad
        )

    return draw_one()


def assert_only_the_report_written(
    case: Invocation, reason: str, before: dict[str, str], after: dict[str, str]
) -> None:
    """Xenstore changed only by hotplug-error/-status at a valid XENBUS_PATH (and the empty
    directories xenstore makes above them), and where the contract requires that report, it
    is there: status 'error', the reason line as the error."""
    places = case.may_report_at()
    allowed = {f"{p}/{node}" for p in places for node in ("hotplug-error", "hotplug-status")}
    written = changed_nodes(before, after)
    made = {n for n in written - allowed if any(a.startswith(n + "/") for a in allowed)}
    assert written - made <= allowed, (written, case)
    assert all(n not in before and after[n] == "" for n in made), (written, case)
    for path in places:
        if f"{path}/hotplug-status" in written:
            assert after[f"{path}/hotplug-status"] == "error", case
            assert after[f"{path}/hotplug-error"] == reason, case
    required = case.must_report_at()
    if required is not None:
        assert after.get(f"{required}/hotplug-status") == "error", case
        assert after.get(f"{required}/hotplug-error") == reason, case


def test_bad_input_is_refused_in_one_line_and_touches_nothing(
    bed: Bed, runner: Runner, tmp_path: Path
) -> None:
    """Every case has at least one bad part: exit 1, one reason line on stderr, no traceback,
    the namespace as it was (links, qdiscs, filters, by iproute2), xenstore changed only by
    the failure report at a valid XENBUS_PATH, no lock taken, nothing evaluated."""
    scene(bed)
    marker = tmp_path / "pwned"
    kernel = kernel_state(bed.ns)
    nodes = bed.xs.nodes()
    ran: list[list[str]] = []
    reasons: Counter[str] = Counter()

    @settings(
        max_examples=BAD_INPUT_CASES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=invocations(marker, bed.lock_dir))
    def check(case: Invocation) -> None:
        ran.append(case.bad)
        extra = {}
        if case.config is None:
            extra["REMUS_NETBUF_CONF"] = str(tmp_path / "absent.conf")
        else:
            bed.conf.write_bytes(case.config)
        env = {**bed.env(**extra), **case.env}
        outcome = runner.run(Job("hotplug", tuple(case.argv), env), timeout=BOUND)
        # A teardown frees the guest before it reads the config: with only the config bad, the
        # vif's ingress goes first (logged as its tc command), then the config fails.
        frees_guest = case.bad == ["config"] and case.argv[0] == "teardown"
        try:
            reason = failure_reason(outcome) if frees_guest else reason_of(outcome)
            an_ifb = "at step 'check vif'" in reason and "is an IFB, not a vif" in reason
            assert "bad invocation: " in reason or "at step 'read config'" in reason or an_ifb
            reasons["config" if "at step 'read config'" in reason else "invocation"] += 1
            reasons["reported"] += case.must_report_at() is not None
            assert_only_the_report_written(case, reason, nodes, bed.xs.nodes())
            if frees_guest and not bed.has_ingress(VIF7):
                redirect_vif7(bed)  # the scene again, for the next case
            assert kernel_state(bed.ns) == kernel, case
            assert not bed.lock_dir.exists(), case
            assert not marker.exists(), case
        finally:
            restore_xenstore(bed, nodes)

    check()
    print(f"{len(ran)} cases, by reason: {dict(reasons)}")
    assert len(ran) >= BAD_INPUT_CASES
    for part in PARTS:
        assert sum(part in bad for bad in ran) >= BAD_INPUT_CASES // 10, part
    assert min(reasons.values()) >= BAD_INPUT_CASES // 20, reasons


# --- crashes: kill -9 at every step this kernel reaches -------------------------------------

# The steps before the plug: a kill comes as a step starts, so 'add plug qdisc' is reached here
# too. The later ones need sch_plug: test_guarantees_vm.py kills at all of them.
CRASH_STEPS = ["connect to xenstore", "check vif", "open netlink", "take pickifb lock",
               "pick IFB", "create IFB", "silence IFB", "bring IFB up",
               "add plug qdisc"]  # fmt: skip
CRASH_BATCHES = 14  # 7 with no free IFB (9 kills each), 7 with one free per setup (8 kills)
MIN_KILLS = 100


@pytest.mark.usefixtures("noplug")
def test_setup_killed_at_every_step_then_torn_down_and_gced_leaves_nothing(
    bed: Bed, runner: Runner
) -> None:
    """Batches of setups, one killed with SIGKILL at each step (all at once, each on its own
    vif), torn down as libxl does (REMUS_IFB = the claim, or none, alternately), then gc:
    nothing is left, and the other live netbuf (domain 7, made by hand) is untouched."""
    scene(bed)
    victims = list(range(10, 10 + len(CRASH_STEPS)))
    for d in victims:
        bed.add_vif(f"vif{d}.0")
        bed.domain(d)
        bed.xs.seed(netbuf_path(d))  # see add_vifs in test_guarantees_vm.py: a stand-in quirk
    healthy = bed.subtree(PATH7)
    kills: Counter[str] = Counter()
    state = kernel_state(bed.ns)
    for batch in range(CRASH_BATCHES):
        spares = [n for n, (kind, _) in state.links.items() if kind == "ifb" and n != "ifb1"]
        if batch % 2 == 0:  # no free IFB: every setup creates one
            steps = CRASH_STEPS
            for name in spares:
                bed.ip("link", "del", name)
        else:  # a free IFB for each: none is created
            steps = [step for step in CRASH_STEPS if step != "create IFB"]
            for n in range(max(0, len(steps) - len(spares))):
                bed.add_ifb(f"ifb{100 + n}")
        doomed = list(zip(victims, steps, strict=False))
        jobs = [
            runner.hotplug("setup", f"vif{d}.0", netbuf_path(d), REMUS_NETBUF_TEST_KILL_AT=step)
            for d, step in doomed
        ]
        for (_, step), outcome in zip(doomed, runner.run_all(jobs, BOUND), strict=True):
            assert outcome.killed, (step, outcome)
            kills[step] += 1
        claims = {d: claim_is_whole(bed, netbuf_path(d)) for d in victims}
        teardowns = [
            runner.hotplug(
                "teardown", f"vif{d}.0", netbuf_path(d), claims[d] if (batch + i) % 2 else None
            )
            for i, d in enumerate(victims)
        ]
        for outcome in runner.run_all(teardowns, BOUND):
            assert outcome.returncode == 0, outcome
        gc = runner.run(runner.cli("gc"), BOUND)
        assert gc.returncode == 0, gc
        state = kernel_state(bed.ns)
        assert bed.subtree(PATH7) == healthy
        assert state.up("ifb1") and state.redirects[VIF7] == (("all", 10, "ifb1"),)
        for name, (kind, up) in state.links.items():
            assert name == VIF7 or not state.has_ingress(name), name
            assert kind != "ifb" or name == "ifb1" or not up, name
        claimed = {k for k in bed.xs.nodes() if k.endswith("/ifb")}
        assert claimed == {f"{PATH7}/ifb"}, claimed
        for d in victims:
            assert set(bed.subtree(netbuf_path(d))) <= {netbuf_path(d)}, d
    assert sum(kills.values()) >= MIN_KILLS, kills
    assert set(kills) == set(CRASH_STEPS)
    assert min(kills.values()) >= CRASH_BATCHES // 2, kills


# --- the pickifb lock -----------------------------------------------------------------------


def lock_refused(outcome: Outcome, program: str = PROGRAM) -> str:
    """Exit 1 and exactly one line on stderr: the lock refused as a symbolic link."""
    assert outcome.returncode == 1, outcome
    assert "Traceback" not in outcome.stderr, outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome
    assert lines[0].startswith(program), outcome
    assert "is a symbolic link; refusing" in lines[0], outcome
    return lines[0]


def passed_the_lock(outcome: Outcome) -> None:
    """The run took the lock and went on: on this kernel it then fails adding the plug."""
    reason = failure_reason(outcome)
    assert "at step 'add plug qdisc'" in reason, outcome


@pytest.mark.usefixtures("noplug")
def test_missing_lock_dir_is_created_root_only(bed: Bed, runner: Runner, tmp_path: Path) -> None:
    scene(bed)
    bed.lock_dir = tmp_path / "run" / "xen-hotplug"  # its parent is missing too
    bed.configure()
    old = os.umask(0)  # the product must not rely on the caller's umask
    try:
        outcome = runner.run(runner.hotplug("setup", VIF, PATH5), timeout=BOUND)
    finally:
        os.umask(old)
    passed_the_lock(outcome)
    info = os.lstat(bed.lock_dir)
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)
    assert (info.st_uid, info.st_gid) == (0, 0)
    lock = os.lstat(bed.lock_dir / "pickifb")
    assert stat.S_ISREG(lock.st_mode) and stat.S_IMODE(lock.st_mode) & 0o077 == 0, lock


def symlink_target(tmp_path: Path, exists: bool) -> Path:
    target = tmp_path / "precious"
    if exists:
        target.write_text("do not touch\n")
        target.chmod(0o644)
        os.utime(target, (1_000_000_000, 1_000_000_000))
    return target


LOCKING_RUNS = ["setup", "teardown", "gc"]


def locking_run(runner: Runner, which: str) -> tuple[Outcome, str]:
    """A run that takes the pickifb lock: setup, teardown of a claimed netbuf, or gc."""
    if which == "gc":
        return runner.run(runner.cli("gc"), timeout=BOUND), "remus-netbuf: "
    job = runner.hotplug(which, VIF, PATH5, remus_ifb="ifb0" if which == "teardown" else None)
    return runner.run(job, timeout=BOUND), PROGRAM


@pytest.mark.parametrize("target_exists", [True, False], ids=["target", "dangling"])
@pytest.mark.parametrize("which", LOCKING_RUNS)
def test_lock_path_that_is_a_symlink_is_refused(
    bed: Bed, runner: Runner, tmp_path: Path, which: str, target_exists: bool
) -> None:
    scene(bed)
    bed.claim(5, 0, "ifb0")  # so that teardown has an IFB to free, under the lock
    bed.lock_dir.mkdir(mode=0o700)
    target = symlink_target(tmp_path, target_exists)
    (bed.lock_dir / "pickifb").symlink_to(target)
    before = (target.read_text(), os.stat(target)) if target_exists else None
    kernel, nodes = kernel_state(bed.ns), bed.xs.nodes()
    outcome, program = locking_run(runner, which)
    lock_refused(outcome, program)
    assert os.readlink(bed.lock_dir / "pickifb") == str(target)
    if before is None:
        assert not os.path.lexists(target)
    else:
        after = os.stat(target)
        assert target.read_text() == before[0]
        assert (after.st_mode, after.st_mtime_ns, after.st_size) == (
            before[1].st_mode, before[1].st_mtime_ns, before[1].st_size,
        )  # fmt: skip
    assert kernel_state(bed.ns) == kernel
    assert bed.node(f"{PATH5}/ifb") == "ifb0"
    assert bed.subtree(PATH7) == {k: v for k, v in nodes.items() if k.startswith(PATH7)}


@pytest.mark.parametrize("which", LOCKING_RUNS)
def test_lock_dir_that_is_a_symlink_is_refused(
    bed: Bed, runner: Runner, tmp_path: Path, which: str
) -> None:
    scene(bed)
    bed.claim(5, 0, "ifb0")
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    bed.lock_dir.symlink_to(real)
    kernel = kernel_state(bed.ns)
    outcome, program = locking_run(runner, which)
    lock_refused(outcome, program)
    assert list(real.iterdir()) == []  # no lock file made through the link
    assert os.readlink(bed.lock_dir) == str(real)
    assert kernel_state(bed.ns) == kernel
    assert bed.node(f"{PATH5}/ifb") == "ifb0"


def held(path: Path) -> bool:
    """Whether another process holds an flock on ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.usefixtures("noplug")
def test_lock_of_a_sigkilled_holder_never_blocks(bed: Bed, runner: Runner) -> None:
    scene(bed)
    lock = bed.lock_dir / "pickifb"
    passed_the_lock(runner.run(runner.hotplug("setup", VIF, PATH5), timeout=BOUND))
    assert lock.exists()

    # Another process holds the lock (one process: flock(1) on its fd 9, then exec sleep) ...
    holder = subprocess.Popen(
        ["sh", "-c", 'exec 9<>"$1" && flock 9 && exec sleep 600', "holder", str(lock)]
    )
    try:
        deadline = time.monotonic() + 10
        while not held(lock):
            assert time.monotonic() < deadline and holder.poll() is None, "flock never held it"
            time.sleep(0.01)
        waiter = runner.start(runner.hotplug("setup", VIF, PATH5))  # ... a setup waits ...
        assert not waiter.exited(within=1.5), "setup did not wait for the held lock"
        # ... until the holder is killed with SIGKILL: then it goes on at once.
        holder.kill()
        killed_at = time.monotonic()
        outcome = waiter.wait(timeout=BOUND)
        assert time.monotonic() - killed_at < 5, outcome
        passed_the_lock(outcome)
    finally:
        holder.kill()
        holder.wait()
    assert holder.returncode == -9 and lock.exists()  # a stale file is left behind

    # The product itself killed while holding the lock (at 'pick IFB', just after taking it).
    killed = runner.run(
        runner.hotplug("setup", VIF, PATH5, REMUS_NETBUF_TEST_KILL_AT="pick IFB"), timeout=BOUND
    )
    assert killed.killed, killed
    assert lock.exists()
    started = time.monotonic()
    passed_the_lock(runner.run(runner.hotplug("setup", VIF, PATH5), timeout=BOUND))
    assert time.monotonic() - started < 5
    assert not held(lock)


@pytest.mark.usefixtures("noplug")
def test_lock_removed_by_xens_locking_sh_is_taken_again_not_held_twice(
    bed: Bed, runner: Runner
) -> None:
    """Xen's locking.sh removes the lock file while it still holds it (release_lock), and a
    second Xen script then locks a new file at the path. A setup that was waiting on the old
    file must not take that as the lock: it waits for the new holder, as locking.sh does."""
    scene(bed)
    lock = bed.lock_dir / "pickifb"
    passed_the_lock(runner.run(runner.hotplug("setup", VIF, PATH5), timeout=BOUND))
    remover = subprocess.Popen(  # claim_lock, then release_lock's rm on a line of input
        [
            "sh",
            "-c",
            'exec 9<>"$1" && flock 9 && read _ && rm "$1" && exec sleep 600',
            "a",
            str(lock),
        ],
        stdin=subprocess.PIPE,
    )
    second = None
    try:
        wait_until(lambda: held(lock))
        waiter = runner.start(runner.hotplug("setup", VIF, PATH5))
        assert not waiter.exited(within=1.5), "setup did not wait for the held lock"
        assert remover.stdin is not None
        remover.stdin.write(b"\n")
        remover.stdin.flush()
        wait_until(lambda: not lock.exists())
        second = subprocess.Popen(  # another Xen script's claim_lock: a new file, locked
            ["sh", "-c", 'exec 9<>"$1" && flock 9 && exec sleep 600', "b", str(lock)]
        )
        wait_until(lambda: lock.exists() and held(lock))
        remover.kill()  # the old file's flock goes: the waiter wins a lock on a removed file
        assert not waiter.exited(within=1.5), "setup took the lock while locking.sh held it"
        second.kill()
        passed_the_lock(waiter.wait(timeout=BOUND))
    finally:
        for proc in (remover, second):
            if proc is not None:
                proc.kill()
                proc.wait()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


# --- xenstore faults ------------------------------------------------------------------------


def test_xenstored_not_running_leaves_no_kernel_residue(
    bed: Bed, runner: Runner, tmp_path: Path
) -> None:
    scene(bed)
    kernel = kernel_state(bed.ns)
    stale = str(tmp_path / "stale.sock")  # a daemon that died and left its socket behind
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(stale)
    bed.xs.stop()  # and the bed's own daemon is gone too
    for path in (stale, bed.xs_socket):
        for command in ("setup", "teardown"):
            job = runner.hotplug(command, VIF, PATH5, remus_ifb="ifb0", XENSTORED_PATH=path)
            outcome = runner.run(job, timeout=BOUND)
            reason = failure_reason(outcome)
            assert "at step 'connect to xenstore'" in reason and path in reason, outcome
            assert outcome.seconds < BOUND
            assert kernel_state(bed.ns) == kernel
    assert not bed.lock_dir.exists()


def requests_of(bed: Bed, run: Callable[[], Outcome]) -> tuple[int, Outcome]:
    before = bed.xs.requests
    outcome = run()
    return bed.xs.requests - before, outcome


@pytest.mark.usefixtures("noplug")
def test_xenstored_lost_mid_setup_rolls_back_in_bounded_time(bed: Bed, runner: Runner) -> None:
    """At every request of a setup (and of its failure report), xenstored drops the connection
    for good: exit 1, kernel rolled back, no hang, the claim whole or absent; once xenstored
    is back, teardown as libxl runs it and gc leave nothing."""
    scene(bed)
    setup = runner.hotplug("setup", VIF, PATH5)
    passed_the_lock(runner.run(setup, timeout=BOUND))  # fault-free, on this kernel: no plug
    total, outcome = requests_of(bed, lambda: runner.run(setup, timeout=BOUND))
    passed_the_lock(outcome)  # the same again, counting its requests
    kernel, nodes = kernel_state(bed.ns), bed.xs.nodes()
    assert total >= 10, total
    claims_left = []
    for n in range(total):
        with daemon_dies_after(bed.xs, n):
            outcome = runner.run(setup, timeout=BOUND)
            assert outcome.returncode == 1, outcome
            assert "Traceback" not in outcome.stderr, outcome
            assert outcome.seconds < BOUND, outcome
            assert kernel_state(bed.ns) == kernel, (n, outcome)
        claim = claim_is_whole(bed, PATH5, {"ifb0"})
        claims_left.append(claim)
        teardown = runner.hotplug("teardown", VIF, PATH5, remus_ifb=claim)
        assert runner.run(teardown, timeout=BOUND).returncode == 0
        gc = runner.run(runner.cli("gc"), timeout=BOUND)
        assert gc.returncode == 0, gc
        assert kernel_state(bed.ns) == kernel, n
        assert set(bed.subtree(PATH5)) <= {PATH5}, n  # no claim, no hotplug-status/-error
        assert bed.subtree(PATH7) == {k: v for k, v in nodes.items() if k.startswith(PATH7)}
    # Lost before the commit: no claim. Lost after it: the rollback cannot remove it, whole.
    assert None in claims_left and "ifb0" in claims_left, claims_left


@pytest.mark.usefixtures("noplug")
def test_xenstored_restart_mid_setup_is_ridden_out(bed: Bed, runner: Runner) -> None:
    """At every request, xenstored drops the connection once (a restart): the setup reconnects
    and carries on to the plug, which this kernel lacks; the rollback and the report too."""
    scene(bed)
    setup = runner.hotplug("setup", VIF, PATH5)
    passed_the_lock(runner.run(setup, timeout=BOUND))
    total, outcome = requests_of(bed, lambda: runner.run(setup, timeout=BOUND))
    passed_the_lock(outcome)
    assert total >= 10, total
    kernel, nodes = kernel_state(bed.ns), bed.xs.nodes()
    for n in range(total):
        bed.xs.drop_after_requests = n
        outcome = runner.run(setup, timeout=BOUND)
        assert bed.xs.drop_after_requests is None, "the drop never happened"
        passed_the_lock(outcome)
        assert "connection to" in outcome.stderr and "reconnecting" in outcome.stderr, outcome
        assert kernel_state(bed.ns) == kernel, (n, outcome)
        assert bed.xs.nodes() == nodes, n  # claim removed by the rollback; the error reported
        assert bed.node(f"{PATH5}/hotplug-status") == "error"


@pytest.mark.usefixtures("noplug")
def test_eagain_storm_is_retried_then_given_up_with_a_clear_reason(
    bed: Bed, runner: Runner
) -> None:
    scene(bed)
    setup = runner.hotplug("setup", VIF, PATH5)
    passed_the_lock(runner.run(setup, timeout=BOUND))
    kernel, nodes = kernel_state(bed.ns), bed.xs.nodes()

    bed.xs.eagain_commits = 49  # a storm that ends: the claim gets through (then: no plug)
    passed_the_lock(runner.run(setup, timeout=BOUND))
    assert bed.xs.eagain_commits == 0
    assert "claimed ifb0" in runner.run(setup, timeout=BOUND).stderr

    bed.xs.eagain_commits = 10**9  # a storm that never ends
    outcome = runner.run(setup, timeout=BOUND)
    reason = failure_reason(outcome)
    assert "at step 'pick IFB'" in reason and "still conflicting" in reason, outcome
    assert outcome.seconds < 10, outcome
    assert "claimed" not in outcome.stderr
    assert kernel_state(bed.ns) == kernel
    assert bed.node(f"{PATH5}/ifb") is None  # never a half-written claim
    assert bed.node(f"{PATH5}/hotplug-error") == reason
    assert bed.xs.nodes() == {**nodes, f"{PATH5}/hotplug-error": reason}
