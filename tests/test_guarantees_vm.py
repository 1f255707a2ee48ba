"""Guarantees of remus-netbuf-setup that need a working plug (the kernel tier: a VM).

Concurrency: sixteen setups at once get sixteen distinct IFBs, each plugged and redirected
from its own vif, and sixteen teardowns at once leave nothing; gc running among them never
touches a live netbuf. Crashes: a setup killed with SIGKILL at any step, then torn down as
libxl does and gc'd, leaves nothing, and a healthy netbuf beside it stays intact. Xenstore
faults on the way to a success: a dropped connection is ridden out, a lost daemon rolls back,
an EAGAIN storm is retried.

The product runs through the fork runner (tests/forkrun.py: one forked child per run, in the
bed's namespace), since a new interpreter per run costs seconds in a TCG VM; one test keeps real
``remus-netbuf-setup`` processes for the concurrent path. The verdicts come from the real
``ip``/``tc`` (one snapshot of the namespace in two processes) and the stand-in's tree.
The numbers (rounds, kills) are set at the top; deadlines grow with the VM's measured slowdown.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator

import pytest

from tests.bed import SETUP, Bed, netbuf_path, sh
from tests.forkrun import Job, KernelState, Outcome, Runner, daemon_dies_after, kernel_state
from tests.vmtier import scaled

pytestmark = pytest.mark.vm

# The numbers the issues ask for, on the kernel tier (one CPU per VM; under TCG Python runs
# ~17x slower than on the host, so the rounds are split in two halves, one per VM). Kills here:
# 42, every step 4 times but "create IFB" (twice), the plug steps included; the steps before the
# plug are killed >= 100 more times natively (test_guarantees_native.py).
VIFS = 16
ROUNDS = 20  # 16 setups at once, then 16 teardowns at once
GC_ROUNDS = 1  # the same with gc runs among them
CRASH_BATCHES = 4  # one setup killed at every step: 12 kills, 11 with a free IFB for each
MIN_KILLS = 42
# Hang bounds, not speed targets. The guest's measured slowdown is of pure Python (5x in an idle
# TCG VM); netlink, forks and the stand-in's socket are slower still there: 16 setups queued on
# the lock took 38 s in one CI run, past a 40 s lock timeout.
BOUND = scaled(60.0)  # seconds a run may take before it counts as a hang
LOCK_TIMEOUT = scaled(30.0)
SETUP_STEPS = [
    "connect to xenstore",
    "check vif",
    "open netlink",
    "take pickifb lock",
    "pick IFB",
    "create IFB",
    "silence IFB",
    "bring IFB up",
    "add plug qdisc",
    "add ingress qdisc",
    "add redirect filter",
    "publish to xenstore",
]
KILL_AT = "REMUS_NETBUF_TEST_KILL_AT"


@pytest.fixture(autouse=True)
def lock_timeout_for_a_slow_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stretch the pickifb lock's timeout in the forked children. A TCG VM runs the product
    ~17x slower than a dom0, so sixteen runs queued on the lock can wait past its 30 s, which
    is sized for a dom0 against libxl's 40 s kill. The tests check what concurrency does, not
    the VM's speed: the timeout grows with the measured slowdown.
    """
    from remus_netbuf import lock

    generator = lock.pickifb_lock.__wrapped__  # type: ignore[attr-defined]
    monkeypatch.setattr(generator, "__defaults__", (max(30.0, LOCK_TIMEOUT),))


@pytest.fixture
def guests(bed: Bed) -> Iterator[str]:
    """A namespace for the guests' ends of the vifs, so the bed holds only dom0's devices."""
    name = f"{bed.ns}-guests"
    sh("ip", "netns", "add", name)
    yield name
    sh("ip", "netns", "del", name, check=False)


def vif(domid: int) -> str:
    return f"vif{domid}.0"


def path(domid: int) -> str:
    return netbuf_path(domid)


def ip_batch(bed: Bed, lines: Iterable[str]) -> None:
    """Many ``ip`` commands in the bed, in one process."""
    text = "".join(f"{line}\n" for line in lines)
    done = subprocess.run(
        ["ip", "-n", bed.ns, "-batch", "-"], input=text, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def add_vifs(bed: Bed, guests: str, domids: Iterable[int]) -> None:
    """A live domain and its vif (a veth whose other end is in the guests' namespace) each,
    and its XENBUS_PATH node."""
    domids = list(domids)
    ip_batch(bed, [f"link add {vif(d)} type veth peer name g{d} netns {guests}" for d in domids])
    ip_batch(bed, [f"link set {vif(d)} up" for d in domids])
    for d in domids:
        bed.domain(d)
        bed.xs.seed(path(d))


def ok(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        assert outcome.returncode == 0, outcome
        assert "Traceback" not in outcome.stderr, outcome


def claims_of(bed: Bed, domids: Iterable[int]) -> dict[int, str | None]:
    return {d: bed.node(f"{path(d)}/ifb") for d in domids}


def assert_installed(bed: Bed, state: KernelState, domid: int, ifb: str | None) -> None:
    """What Bed.assert_installed checks, read from one snapshot: claim, hotplug-status, the IFB
    up with its plug (what libxl checks), and the vif's ingress redirecting to it alone."""
    assert ifb is not None and bed.node(f"{path(domid)}/ifb") == ifb, domid
    assert bed.node(f"{path(domid)}/hotplug-status") == "connected", domid
    assert bed.node(f"{path(domid)}/hotplug-error") is None, domid
    assert state.up(ifb) and state.root(ifb) == "plug", (domid, ifb, state.qdiscs.get(ifb))
    assert state.has_ingress(vif(domid)), domid
    assert state.redirects.get(vif(domid)) == (("all", 10, ifb),), (domid, state.redirects)


def assert_clean(bed: Bed, state: KernelState, domid: int, ifb: str | None) -> None:
    """What Bed.assert_clean checks, from one snapshot, and the hotplug nodes gone too."""
    if vif(domid) in state.links:
        assert not state.has_ingress(vif(domid)), (domid, state.qdiscs.get(vif(domid)))
    if ifb is not None and ifb in state.links:
        assert state.root(ifb) != "plug" and not state.up(ifb), (domid, ifb)
    assert set(bed.subtree(path(domid))) <= {path(domid)}, bed.subtree(path(domid))


def assert_nothing_else(bed: Bed, state: KernelState, live: dict[int, str]) -> None:
    """Beyond the live netbufs: no plug, no IFB up, no ingress, no claim anywhere."""
    live_ifbs = set(live.values())
    live_vifs = {vif(d) for d in live}
    for name, (kind, up) in state.links.items():
        if kind == "ifb" and name not in live_ifbs:
            assert state.root(name) != "plug" and not up, (name, state.qdiscs.get(name))
        if name not in live_vifs:
            assert not state.has_ingress(name) and name not in state.redirects, name
    claims = {k for k in bed.xs.nodes() if k.startswith("/libxl/") and k.endswith("/ifb")}
    assert claims == {f"{path(d)}/ifb" for d in live}, claims


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.vm(weight=170)  # seconds, roughly: the kernel tier balances its shards by it
@pytest.mark.parametrize("half", [1, 2])
def test_concurrent_setups_get_distinct_plugged_ifbs_and_teardowns_leave_nothing(
    bed: Bed, runner: Runner, guests: str, half: int
) -> None:
    """Sixteen setups started at once: sixteen distinct IFBs, each hotplug-status=connected,
    up with a root plug (by the real tc), redirected from its own vif alone. Then sixteen
    teardowns at once: zero residue. ROUNDS rounds in all, in two halves that the kernel tier
    can run side by side in two VMs."""
    domids = range(1, VIFS + 1)
    add_vifs(bed, guests, domids)
    started = time.monotonic()
    for round_ in range(ROUNDS // 2):
        ok(runner.run_all([runner.hotplug("setup", vif(d), path(d)) for d in domids], BOUND))
        claims = claims_of(bed, domids)
        assert len(set(claims.values()) - {None}) == VIFS, claims
        state = kernel_state(bed.ns)
        for d in domids:
            assert_installed(bed, state, d, claims[d])
        assert_nothing_else(bed, state, {d: str(claims[d]) for d in domids})
        if round_ == 0:  # the shared verdicts too, on two of them
            for d in (domids[0], domids[-1]):
                bed.assert_installed(vif(d), str(claims[d]), path(d))

        teardowns = [runner.hotplug("teardown", vif(d), path(d), claims[d]) for d in domids]
        ok(runner.run_all(teardowns, BOUND))
        state = kernel_state(bed.ns)
        for d in domids:
            assert_clean(bed, state, d, claims[d])
        assert_nothing_else(bed, state, {})
        if round_ == 0:
            for d in (domids[0], domids[-1]):
                bed.assert_clean(vif(d), claims[d], path(d))
    took = time.monotonic() - started
    print(f"{ROUNDS // 2} rounds of {VIFS} setups, {VIFS} teardowns: {took:.1f} s")


def plant_garbage(bed: Bed) -> None:
    """What gc must repair: a dead domain's claim, an unclaimed plug, an unclaimed redirect,
    on two new IFBs (earlier ones may have become live netbufs' since)."""
    links = kernel_state(bed.ns).links
    plugged, target = [f"junk{n}" for n in range(len(links) + 2) if f"junk{n}" not in links][:2]
    ip_batch(bed, [f"link add {plugged} type ifb", f"link add {target} type ifb"])
    bed.xs.seed(f"{path(99)}/ifb", plugged)  # domain 99 is not under /local/domain
    bed.xs.seed(f"{path(99)}/hotplug-status", "connected")
    bed.tc("qdisc", "add", "dev", plugged, "root", "plug", "limit", "1000")
    # The dead domain's vif, still redirecting (a device that is no vif would be someone's).
    stray = vif(99)
    if stray not in links:
        ip_batch(bed, [f"link add {stray} type veth peer name g99x0", f"link set {stray} up"])
    bed.tc("qdisc", "add", "dev", stray, "ingress")
    bed.tc(
        "filter", "add", "dev", stray, "parent", "ffff:", "protocol", "all", "pref", "10",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", target,
    )  # fmt: skip


def with_gc(runner: Runner, jobs: list[Job], every: int = 8) -> list[Job]:
    """``jobs`` with a gc run after every ``every`` of them."""
    mixed: list[Job] = []
    for i, job in enumerate(jobs, 1):
        mixed.append(job)
        if i % every == 0:
            mixed.append(runner.cli("gc"))
    return mixed


@pytest.mark.vm(weight=25)
def test_gc_among_concurrent_setups_and_teardowns_never_touches_a_live_netbuf(
    bed: Bed, runner: Runner, guests: str
) -> None:
    """The same with gc runs started among them and garbage for gc to repair: gc repairs the
    garbage and never removes a live netbuf's claim, plug or redirect."""
    domids = range(1, VIFS + 1)
    add_vifs(bed, guests, domids)
    for _ in range(GC_ROUNDS):
        plant_garbage(bed)
        setups = [runner.hotplug("setup", vif(d), path(d)) for d in domids]
        outcomes = runner.run_all(with_gc(runner, setups), BOUND)
        ok(outcomes)
        repairs = [
            line for o in outcomes if o.job.program == "cli" for line in o.stdout.splitlines()
        ]
        assert f"did remove-claim {path(99)}: dead-domain-claim" in "\n".join(repairs), repairs
        claims = claims_of(bed, domids)
        assert len(set(claims.values()) - {None}) == VIFS, claims
        state = kernel_state(bed.ns)
        for d in domids:
            assert_installed(bed, state, d, claims[d])
        assert_nothing_else(bed, state, {d: str(claims[d]) for d in domids})  # garbage gone

        plant_garbage(bed)
        teardowns = [runner.hotplug("teardown", vif(d), path(d), claims[d]) for d in domids]
        ok(runner.run_all(with_gc(runner, teardowns), BOUND))
        ok([runner.run(runner.cli("gc"), BOUND)])  # a teardown may have finished after the last
        state = kernel_state(bed.ns)
        for d in domids:
            assert_clean(bed, state, d, claims[d])
        assert_nothing_else(bed, state, {})


# --- crashes --------------------------------------------------------------------------------


@pytest.mark.vm(weight=45)
def test_setup_killed_at_every_step_then_torn_down_and_gced_leaves_nothing(
    bed: Bed, runner: Runner, guests: str
) -> None:
    """Batches of setups, one killed with SIGKILL at each step (all at once, on their own
    vifs), then torn down as libxl does (with REMUS_IFB = the claim, or without, alternately)
    and gc'd: nothing is left, and a healthy netbuf set up beforehand is intact."""
    healthy = 1
    victims = list(range(2, 2 + len(SETUP_STEPS)))
    add_vifs(bed, guests, [healthy, *victims])
    ok([runner.run(runner.hotplug("setup", vif(healthy), path(healthy)), BOUND)])
    healthy_ifb = str(bed.node(f"{path(healthy)}/ifb"))
    kills: Counter[str] = Counter()
    gc_repairs: list[str] = []
    started = time.monotonic()
    state = kernel_state(bed.ns)
    for batch in range(CRASH_BATCHES):
        spares = sorted(n for n, (k, _) in state.links.items() if k == "ifb" and n != healthy_ifb)
        if batch % 2 == 0:  # no free IFB: every setup creates one
            steps = SETUP_STEPS
            ip_batch(bed, [f"link del {n}" for n in spares])
        else:  # a free IFB for each: none is created
            steps = [s for s in SETUP_STEPS if s != "create IFB"]
            missing = max(0, len(steps) - len(spares))
            ip_batch(bed, [f"link add ifb{100 + n} type ifb" for n in range(missing)])
        doomed = list(zip(victims, steps, strict=False))
        jobs = [runner.hotplug("setup", vif(d), path(d), **{KILL_AT: s}) for d, s in doomed]
        for (_, step), outcome in zip(doomed, runner.run_all(jobs, BOUND), strict=True):
            assert outcome.killed, (step, outcome)
            kills[step] += 1
        claims = claims_of(bed, victims)
        for d, claim in claims.items():
            assert claim is None or claim.startswith("ifb") and claim[3:].isdigit(), (d, claim)
        teardowns = [
            runner.hotplug("teardown", vif(d), path(d), claims[d] if (batch + i) % 2 else None)
            for i, d in enumerate(victims)
        ]
        ok(runner.run_all(teardowns, BOUND))
        gc = runner.run(runner.cli("gc"), BOUND)
        ok([gc])
        gc_repairs += [line for line in gc.stdout.splitlines() if line != "nothing to repair"]
        state = kernel_state(bed.ns)
        assert_installed(bed, state, healthy, healthy_ifb)
        for d in victims:
            assert_clean(bed, state, d, claims[d])
        assert_nothing_else(bed, state, {healthy: healthy_ifb})
    bed.assert_installed(vif(healthy), healthy_ifb, path(healthy))
    print(f"{sum(kills.values())} kills in {time.monotonic() - started:.1f} s: {dict(kills)}")
    print(f"gc repaired after the teardowns: {gc_repairs or 'nothing'}")
    assert sum(kills.values()) >= MIN_KILLS
    assert set(kills) == set(SETUP_STEPS)
    assert min(kills.values()) >= CRASH_BATCHES // 2, kills


# --- xenstore faults on the way to a success -------------------------------------------------


def setup_ok(bed: Bed, runner: Runner, domid: int, **env: str) -> tuple[Outcome, str]:
    outcome = runner.run(runner.hotplug("setup", vif(domid), path(domid), **env), BOUND)
    ok([outcome])
    ifb = bed.node(f"{path(domid)}/ifb")
    assert ifb is not None
    return outcome, ifb


def teardown_ok(bed: Bed, runner: Runner, domid: int, ifb: str | None) -> None:
    ok([runner.run(runner.hotplug("teardown", vif(domid), path(domid), ifb), BOUND)])
    assert set(bed.subtree(path(domid))) <= {path(domid)}


def test_xenstore_faults_while_publishing(bed: Bed, runner: Runner, guests: str) -> None:
    """The requests only a success reaches (publishing: remove hotplug-error, write
    hotplug-status), when everything is in the kernel. A connection dropped once (a xenstored
    restart) is ridden out to a success. xenstored gone for good: exit 1 in bounded time, plug,
    redirect and ingress rolled back, the claim whole (xenstore could not take it back); once
    xenstored is back, teardown and gc leave nothing. The requests before are faulted natively
    (test_guarantees_native.py), where the missing plug stands for the success."""
    add_vifs(bed, guests, [5])
    before = bed.xs.requests
    _, ifb = setup_ok(bed, runner, 5)
    publishing = (bed.xs.requests - before - 2, bed.xs.requests - before - 1)
    teardown_ok(bed, runner, 5, ifb)
    clean = kernel_state(bed.ns)

    bed.xs.drop_after_requests = publishing[1]
    outcome, ifb = setup_ok(bed, runner, 5)
    assert bed.xs.drop_after_requests is None, "the drop never happened"
    assert "reconnecting" in outcome.stderr, outcome
    state = kernel_state(bed.ns)
    assert_installed(bed, state, 5, ifb)
    assert_nothing_else(bed, state, {5: ifb})
    teardown_ok(bed, runner, 5, ifb)

    for n in publishing:
        with daemon_dies_after(bed.xs, n):
            outcome = runner.run(runner.hotplug("setup", vif(5), path(5)), BOUND)
        assert outcome.returncode == 1 and "Traceback" not in outcome.stderr, outcome
        assert "at step 'publish to xenstore'" in outcome.stderr, outcome
        assert "rollback incomplete" in outcome.stderr, outcome
        assert kernel_state(bed.ns) == clean, outcome
        claim = bed.node(f"{path(5)}/ifb")
        assert claim == ifb, claim  # whole: what the transaction committed
        teardown_ok(bed, runner, 5, claim)
        ok([runner.run(runner.cli("gc"), BOUND)])
        assert_nothing_else(bed, kernel_state(bed.ns), {})


def test_eagain_storm_is_retried_to_a_success(bed: Bed, runner: Runner, guests: str) -> None:
    add_vifs(bed, guests, [5])
    bed.xs.eagain_commits = 49  # the 50th and last attempt commits (1..49: natively)
    _, ifb = setup_ok(bed, runner, 5)
    assert bed.xs.eagain_commits == 0
    state = kernel_state(bed.ns)
    assert_installed(bed, state, 5, ifb)
    assert_nothing_else(bed, state, {5: ifb})
    teardown_ok(bed, runner, 5, ifb)


# --- real processes -------------------------------------------------------------------------

REAL = 2  # real remus-netbuf-setup processes at once: each starts an interpreter (seconds)


def test_real_processes_set_up_and_tear_down_concurrently(bed: Bed, guests: str) -> None:
    """The concurrent path once with real ``remus-netbuf-setup`` processes, as libxl runs them:
    entry-point script, imports, environment, exit status."""
    domids = list(range(1, REAL + 1))
    add_vifs(bed, guests, domids)

    def run_all(command: str, claims: dict[int, str | None]) -> None:
        procs = []
        for d in domids:
            env = {**bed.env(), "vifname": vif(d), "XENBUS_PATH": path(d)}
            if claims.get(d):
                env["REMUS_IFB"] = str(claims[d])
            argv = ["ip", "netns", "exec", bed.ns, SETUP, command]
            procs.append(subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True))
        for proc in procs:
            _, err = proc.communicate(timeout=BOUND)
            assert proc.returncode == 0, err
            assert "Traceback" not in err, err

    run_all("setup", {})
    claims = claims_of(bed, domids)
    assert len(set(claims.values()) - {None}) == REAL, claims
    state = kernel_state(bed.ns)
    for d in domids:
        assert_installed(bed, state, d, claims[d])
    run_all("teardown", claims)
    state = kernel_state(bed.ns)
    for d in domids:
        assert_clean(bed, state, d, claims[d])
    assert_nothing_else(bed, state, {})
