"""Touch only what is ours, on the running kernel (no sch_plug): each case of the principle that
the product changes only what it can prove is a netbuf's, and that a failure anywhere still
frees the guest. Judged by the real ``tc``/``ip`` and the stand-in's tree.

What needs a working plug (a setup that succeeds beside an admin's shaping, the freed IFB left
with no root qdisc, a whole netbuf set up again) is in test_ours_vm.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.bed import Bed, netbuf_path
from tests.test_hotplug_native import assert_one_line_failure, install_by_hand

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")

VIF = "vif5.0"
PATH5 = netbuf_path(5, 0)
TBF = ["tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms"]


def shaping(bed: Bed, dev: str, ifb: str) -> str:
    """An admin's upload shaping: dev's ingress redirected to ifb, whose root is a tbf; plus a
    policer on dev, at another preference. Returns tc's view of dev's filters."""
    bed.ip("link", "set", ifb, "up")
    bed.tc("qdisc", "add", "dev", ifb, "root", "handle", "1:", *TBF)
    bed.tc("qdisc", "add", "dev", dev, "ingress")
    bed.tc(
        "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all", "pref", "10",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
    )  # fmt: skip
    return bed.filters(dev)


def redirect(bed: Bed, dev: str, ifb: str, pref: int = 10) -> None:
    if not bed.has_ingress(dev):
        bed.tc("qdisc", "add", "dev", dev, "ingress")
    bed.tc(
        "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all", "pref", str(pref),
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
    )  # fmt: skip


def classify(bed: Bed, dev: str, pref: int = 20) -> None:
    """Someone's classifier on dev's ingress: a filter that is no redirect (this kernel has no
    act_police; a classifier is as foreign)."""
    bed.tc(
        "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "ip", "pref", str(pref),
        "u32", "match", "ip", "src", "10.0.0.0/8", "classid", ":1",
    )  # fmt: skip


# --- 1. picking: a root qdisc of someone's makes an IFB busy --------------------------------


def test_an_ifb_with_someones_root_qdisc_is_busy_and_named_so(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_vif("eth1")
    bed.add_ifb("ifb0")
    bed.domain(5)
    before = shaping(bed, "eth1", "ifb0")
    bed.configure(ifb_autocreate="no")
    result = bed.hotplug("setup", VIF, PATH5)
    assert_one_line_failure(result, "pick IFB", "ifb0 (root tbf, not ours)", "ifb_autocreate")
    assert bed.root_qdisc("ifb0") == "tbf"
    assert bed.filters("eth1") == before
    reason = result.error_lines[-1].split("remus-netbuf-setup: ", 1)[1]
    assert {k: v for k, v in bed.subtree("/libxl").items() if v} == {
        f"{PATH5}/hotplug-error": reason,
        f"{PATH5}/hotplug-status": "error",
    }


def test_setup_passes_over_an_ifb_with_someones_root_qdisc(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_vif("eth1")
    bed.add_ifb("ifb0")
    bed.add_ifb("ifb1")
    bed.domain(5)
    shaping(bed, "eth1", "ifb0")
    result = bed.hotplug("setup", VIF, PATH5)  # fails at the plug here: it says which IFB
    assert_one_line_failure(result, "(ifb ifb1)", "add plug qdisc")
    assert bed.root_qdisc("ifb0") == "tbf" and bed.is_up("ifb0")


# --- 2. teardown frees only an IFB its own claim names ----------------------------------------


@pytest.mark.parametrize("how", ["claim", "REMUS_IFB", "cli --ifb"])
def test_a_claim_naming_a_device_that_is_no_ifb_leaves_it_untouched(bed: Bed, how: str) -> None:
    bed.add_vif(VIF)
    bed.add_vif("eth1")
    bed.domain(5)
    redirect(bed, VIF, "eth1")  # what a setup with that claim would have left
    bed.claim(5, 0, "eth1")
    if how == "cli --ifb":
        result = bed.cli("teardown", "--vif", VIF, "--xenbus-path", PATH5, "--ifb", "eth1")
        assert result.returncode == 1 and len(result.error_lines) == 1, result
        assert "eth1 is not an IFB (kind veth)" in result.error_lines[0]
    else:
        remus_ifb = "eth1" if how == "REMUS_IFB" else None
        result = bed.hotplug("teardown", VIF, PATH5, remus_ifb=remus_ifb)
        assert_one_line_failure(result, VIF, "free IFB", "eth1 is not an IFB (kind veth)")
    assert bed.is_up("eth1"), "teardown brought a device that is no IFB down"
    assert not bed.has_ingress(VIF)  # the guest is freed all the same
    assert bed.node(f"{PATH5}/ifb") is None


def test_status_names_a_claim_on_a_device_that_is_no_ifb(bed: Bed) -> None:
    bed.add_vif("eth1")
    bed.domain(5)
    bed.claim(5, 0, "eth1")
    result = bed.cli("status", "--json")
    assert result.returncode == 2, result
    (anomaly,) = json.loads(result.stdout)["anomalies"]
    assert (anomaly["kind"], anomaly["ifb"], anomaly["domid"], anomaly["path"]) == (
        "claim-not-ifb",
        "eth1",
        5,
        PATH5,
    )
    gc = bed.cli("gc")
    assert gc.returncode == 0 and bed.is_up("eth1"), gc


# --- 3. gc's redirects: only a vif's, into a plugged or bare IFB; one filter at a time ---------


def test_gc_and_status_leave_an_admins_shaping_alone(bed: Bed) -> None:
    """eth1 and eth2 shaped through ifb0 and ifb-shape (root tbf), and vif3.1, a live guest's
    vif with no netbuf, shaped through ifb0: no anomaly, and gc changes nothing."""
    for dev in ("eth1", "eth2", "vif3.1"):
        bed.add_vif(dev)
    bed.add_ifb("ifb0")
    bed.add_ifb("ifb-shape")
    bed.domain(3)
    shaping(bed, "eth1", "ifb0")
    shaping(bed, "eth2", "ifb-shape")
    redirect(bed, "vif3.1", "ifb0")
    classify(bed, "eth1")
    before = {dev: bed.filters(dev) for dev in ("eth1", "eth2", "vif3.1")}
    status = bed.cli("status")
    assert status.returncode == 0, status
    assert "anomalies: none" in status.stdout
    gc = bed.cli("gc")
    assert (gc.returncode, gc.stdout) == (0, "nothing to repair\n"), gc
    assert {dev: bed.filters(dev) for dev in before} == before
    assert bed.root_qdisc("ifb0") == "tbf" and bed.root_qdisc("ifb-shape") == "tbf"


def test_gc_removes_a_leftover_redirect_filter_and_keeps_the_vifs_other_filters(bed: Bed) -> None:
    """A dead domain's vif7.0 still redirects into ifb1 (bare: no netbuf claims it) beside an
    admin's classifier: gc removes that one filter and keeps the ingress with the other."""
    bed.add_vif("vif7.0")
    bed.add_vif("vif8.0")
    bed.add_ifb("ifb1")
    bed.add_ifb("ifb2")
    redirect(bed, "vif7.0", "ifb1")
    classify(bed, "vif7.0")
    redirect(bed, "vif8.0", "ifb2")  # alone on its vif: the ingress goes with it
    result = bed.cli("gc")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [
        "did remove-redirect vif7.0 to ifb1: unclaimed-redirect: vif7.0 redirects to ifb1, "
        "which no live netbuf claims for it",
        "did remove-redirect vif8.0 to ifb2: unclaimed-redirect: vif8.0 redirects to ifb2, "
        "which no live netbuf claims for it",
    ]
    left = bed.filters("vif7.0")
    assert "mirred" not in left and "match 0a000000/ff000000" in left, left
    assert not bed.has_ingress("vif8.0")


# --- 5. teardown frees the guest first ---------------------------------------------------------


@pytest.mark.parametrize("broken", ["config", "xenstored"])
def test_teardown_frees_the_guest_before_a_broken_config_or_a_lost_xenstored(
    bed: Bed, broken: str
) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    env = {}
    if broken == "config":  # one teardown fails on: it needs lock_dir (test_hotplug_native.py)
        bed.conf.write_text("lock_dir=relative/dir\n")
    else:
        env["XENSTORED_PATH"] = "/nonexistent/xenstored.sock"
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0", **env)
    step = "read config" if broken == "config" else "connect to xenstore"
    assert_one_line_failure(result, VIF, step)
    assert bed.node(f"{PATH5}/ifb") == "ifb0"
    assert not bed.has_ingress(VIF), "the guest's output is still redirected"


# --- 6. setup on a path that already holds a claim ---------------------------------------------


def test_a_failed_setup_over_an_old_claim_restores_it_exactly(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.add_ifb("ifb3")
    bed.domain(5)
    bed.claim(5, 0, "ifb3")  # an earlier run's claim; ifb3 has no plug: the netbuf is not whole
    result = bed.hotplug("setup", VIF, PATH5)  # fails at the plug on this kernel
    assert_one_line_failure(result, "add plug qdisc")
    assert bed.node(f"{PATH5}/ifb") == "ifb3"
    assert not bed.has_ingress(VIF)


# --- 6b. teardown without a claim: REMUS_IFB is freed only with a netbuf's plug ----------------


@pytest.mark.parametrize(
    ("dev", "root"),
    [
        ("ifb0", ["handle", "1:", *TBF]),  # someone's shaping
        ("ifb0", ["handle", "5245:", *TBF]),  # our plug's handle, but no plug
        ("ifb0", []),  # the kernel's default, up: a free IFB
        ("eth1", ["handle", "5245:", *TBF]),  # no IFB at all
    ],
    ids=["tbf", "tbf-5245", "default", "veth-5245"],
)
def test_teardown_without_a_claim_leaves_remus_ifb_alone_unless_a_netbufs_plug(
    bed: Bed, dev: str, root: list[str]
) -> None:
    """As after xl destroy: /libxl/5 gone (our claim with it) and the vif gone, then libxl's
    teardown with REMUS_IFB. A root that is not a netbuf's plug (handle 5245:, kind plug) is
    someone's, and so is the device: not brought down, its root kept. (A netbuf's plug, which
    this kernel cannot make, is freed: test_vm_netbuf.py.)"""
    if dev.startswith("ifb"):
        bed.add_ifb(dev, up=True)
    else:
        bed.add_vif(dev)
    if root:
        bed.tc("qdisc", "add", "dev", dev, "root", *root)
    bed.domain(5)
    before = bed.tc("qdisc", "show", "dev", dev)
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb=dev)
    assert result.returncode == 0, result.stderr
    assert f"teardown: no claim at XENBUS_PATH, {dev} has no netbuf's plug: left alone" in (
        result.stderr
    )
    assert bed.is_up(dev), f"teardown brought {dev} down"
    assert bed.tc("qdisc", "show", "dev", dev) == before
    assert bed.subtree("/libxl") == {}


def test_teardown_without_a_claim_and_remus_ifb_gone_succeeds(bed: Bed) -> None:
    bed.domain(5)
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb9")
    assert result.returncode == 0, result.stderr
    assert "teardown: no claim at XENBUS_PATH, ifb9 has no netbuf's plug: left alone" in (
        result.stderr
    )


# --- 7. bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["FOO=1", "extra"])
def test_unknown_arguments_write_hotplug_error(bed: Bed, word: str) -> None:
    bed.add_vif(VIF)
    bed.domain(5)
    result = bed.hotplug("setup", VIF, PATH5, args=[word])
    reason = assert_one_line_failure(result, "bad invocation", word.split("=")[0])
    assert bed.node(f"{PATH5}/hotplug-status") == "error"
    assert bed.node(f"{PATH5}/hotplug-error") == reason.split(": ", 1)[1]
    assert not bed.has_ingress(VIF)


@pytest.mark.parametrize("command", ["setup", "teardown"])
def test_a_vifname_that_names_an_ifb_is_refused_before_anything_is_touched(
    bed: Bed, command: str
) -> None:
    bed.add_ifb("ifb0", up=True)
    bed.add_vif("vif7.0")
    redirect(bed, "vif7.0", "ifb0")
    bed.tc("qdisc", "add", "dev", "ifb0", "ingress")  # an IFB's own ingress: not ours either
    bed.domain(5)
    before = (bed.xs.nodes(), bed.filters("vif7.0"), bed.qdiscs("ifb0"))
    result = bed.hotplug(command, "ifb0", PATH5)
    assert_one_line_failure(result, "check vif", "ifb0 is an IFB, not a vif")
    before_xs = {k: v for k, v in before[0].items() if not k.startswith("/libxl")}
    after = {k: v for k, v in bed.xs.nodes().items() if not k.startswith("/libxl")}
    assert (after, bed.filters("vif7.0"), bed.qdiscs("ifb0")) == (before_xs, *before[1:])
    assert bed.node(f"{PATH5}/hotplug-status") == "error"


# --- 7. the lock directory ---------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "uid", "why"), [
    (0o777, 0, "world-writable (mode 0777)"),
    (0o770, 0, "group- or world-writable (mode 0770)"),
    (0o700, 1000, "owned by uid 1000, not root"),
])  # fmt: skip
def test_an_unsafe_lock_dir_is_refused(bed: Bed, mode: int, uid: int, why: str) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    bed.lock_dir.mkdir()
    os.chown(bed.lock_dir, uid, 0)
    bed.lock_dir.chmod(mode)
    result = bed.hotplug("setup", VIF, PATH5)
    assert_one_line_failure(result, "take pickifb lock", why.split(" (")[0].split(",")[0])
    assert not bed.has_ingress(VIF)
    assert not (bed.lock_dir / "pickifb").exists()


def test_gc_says_whom_it_waits_for_after_a_second(bed: Bed) -> None:
    bed.lock_dir.mkdir(mode=0o700)
    lock = bed.lock_dir / "pickifb"
    holder = subprocess.Popen(["flock", str(lock), "sleep", "3"])
    try:
        time.sleep(0.5)  # flock has it
        result = bed.cli("gc")
    finally:
        holder.wait()
    assert result.returncode == 0, result
    assert f"lock {lock}: waiting for pid {holder.pid} (flock)" in result.stderr, result.stderr


# --- 8. output: one stderr line per failure; status and a broken config -----------------------


def test_one_stderr_line_when_hotplug_error_cannot_be_written(bed: Bed) -> None:
    result = bed.hotplug(
        "setup", VIF, PATH5, args=["FOO=1"], XENSTORED_PATH="/nonexistent/xenstored.sock"
    )
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_status_reports_a_broken_config(bed: Bed) -> None:
    bed.conf.write_text("plug_limit=1\nplug_limit=2\n")
    result = bed.cli("status", "--json")
    assert result.returncode == 2, result
    (anomaly,) = json.loads(result.stdout)["anomalies"]
    assert anomaly["kind"] == "bad-config"
    assert anomaly["detail"] == f"config {bed.conf}:2: plug_limit is set twice (first on line 1)"
    table = bed.cli("status")
    assert "bad-config: config" in table.stdout and table.returncode == 2
