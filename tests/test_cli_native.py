"""``remus-netbuf`` end to end on the running kernel (no sch_plug), in a bed of its own.

Each run is a separate process in the bed's namespace, talking to the stand-in xenstored. The
state it reports on is made with ``bed.claim`` and the real ``tc``/``ip``; what it changed is
checked with them too. What needs a working plug (a plugged netbuf, unclaimed plugs, the plug
actions) is in tests/test_cli_vm.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest

from tests.bed import CLI, Bed, Result, netbuf_path, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")

VIF = "vif5.0"
PATH5, PATH6, PATH7 = netbuf_path(5), netbuf_path(6), netbuf_path(7)
SUBCOMMANDS = ["status", "gc", "plug", "setup", "teardown", "check"]


def kernel_has_plug(bed: Bed) -> bool:
    bed.add_ifb("probe0")
    try:
        bed.tc("qdisc", "add", "dev", "probe0", "root", "plug", "limit", "1000")
    except subprocess.CalledProcessError:
        return False
    finally:
        bed.ip("link", "del", "probe0")
    return True


def redirect_by_hand(bed: Bed, vif: str, ifb: str) -> None:
    bed.tc("qdisc", "add", "dev", vif, "ingress")
    bed.tc(
        "filter", "add", "dev", vif, "parent", "ffff:", "protocol", "all", "pref", "10",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
    )  # fmt: skip


def install_by_hand(bed: Bed, vif: str, ifb: str, domid: int, devid: int = 0) -> None:
    """What a successful setup leaves, minus the plug (this kernel has none)."""
    bed.ip("link", "set", ifb, "up")
    redirect_by_hand(bed, vif, ifb)
    bed.claim(domid, devid, ifb)
    bed.xs.seed(f"{netbuf_path(domid, devid)}/hotplug-status", "connected")


def kernel_state(bed: Bed) -> dict[str, Any]:
    """Links, every qdisc we could have added, every ingress filter, as iproute2 shows them.

    Default qdiscs (handle 0:) are left out: the kernel attaches one when a link first comes up
    and keeps it when the link goes down again.
    """
    links = {name: (link.get("linkinfo", {}).get("info_kind"), "UP" in link["flags"])
             for name, link in bed.links().items()}  # fmt: skip
    qdiscs = [q for q in json.loads(bed.tc("-j", "qdisc", "show") or "[]") if q["handle"] != "0:"]
    filters = {name: bed.filters(name) for name in links if bed.has_ingress(name)}
    return {"links": links, "qdiscs": qdiscs, "filters": filters}


def one_line_failure(result: Result, *words: str) -> str:
    """Exit 1, nothing on stdout, and exactly one line on stderr naming every word."""
    assert result.returncode == 1, result
    assert result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("remus-netbuf"), lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def table(text: str) -> dict[tuple[int, int], dict[str, str]]:
    """The rows of ``status``'s table by (domid, devid), cells by column title."""
    lines = text.splitlines()
    titles = lines[0].split()
    found = {}
    for line in lines[1 : lines.index("")]:
        if line == "(no netbufs)":
            continue
        cells = dict(zip(titles, re.split(r"\s{2,}", line), strict=True))
        found[(int(cells["DOMID"].split()[0]), int(cells["DEVID"]))] = cells
    return found


def anomaly_lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\nanomalies: ", 1)[1].splitlines()[1:]]


# --- help and usage -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", *SUBCOMMANDS])
def test_help_of_every_command_has_examples(command: str) -> None:
    argv = [CLI, command, "--help"] if command else [CLI, "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^examples?:$", proc.stdout, re.M), proc.stdout
    example = f"  remus-netbuf {command}".rstrip()
    assert example in proc.stdout.split("example", 1)[1], proc.stdout


def test_version() -> None:
    proc = subprocess.run([CLI, "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert re.fullmatch(r"remus-netbuf \d+\.\d+\.\d+\n", proc.stdout)


USAGE_ERRORS = [
    ([], ["required: command"]),
    (["bogus"], ["invalid choice: 'bogus'"]),
    (["status", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["gc", "--dry-run", "now"], ["unrecognized arguments: now"]),
    (["plug"], ["required: ifb, action"]),
    (["plug", "ifb0", "explode"], ["invalid choice: 'explode'"]),
    (["plug", "ifb0", "limit"], ["limit takes BYTES"]),
    (["plug", "ifb0", "buffer", "5"], ["limit takes BYTES"]),
    (["plug", "ifb0;x", "stats"], ["IFB 'ifb0;x' is not an interface name"]),
    (["plug", "ifb0", "ifb1;x", "buffer"], ["IFB 'ifb1;x' is not an interface name"]),
    (["plug", "ifb0", "ifb1"], ["invalid choice: 'ifb1'"]),
    (["plug", "buffer"], ["required: ifb"]),
    (["plug", "ifb0", "limit", "5", "6"], ["limit takes BYTES"]),
    (["plug", "--domain", "5"], ["required: action"]),
    (["plug", "--domain", "5", "ifb0", "buffer"], ["give IFBs or --domain D, not both"]),
    (["plug", "--domain", "0", "stats"], ["--domain '0' is not a guest's domid"]),
    (["plug", "--domain", "32752", "stats"], ["--domain '32752' is not a guest's domid"]),
    (["setup", "--vif", VIF], ["required: --xenbus-path"]),
    (["teardown", "--xenbus-path", PATH5], ["required: --vif"]),
    (["setup", "--vif", VIF, "--xenbus-path", PATH5, "--ifb", "ifb0"], ["--ifb"]),
]


def ids(cases: list[tuple[list[str], list[str]]]) -> list[str]:
    return [" ".join(argv).encode("unicode_escape").decode() or "(none)" for argv, _ in cases]


@pytest.mark.parametrize(("argv", "words"), USAGE_ERRORS, ids=ids(USAGE_ERRORS))
def test_usage_errors_are_one_line_and_exit_1(bed: Bed, argv: list[str], words: list[str]) -> None:
    bed.add_ifb("ifb0")
    before = (bed.xs.nodes(), kernel_state(bed))
    one_line_failure(bed.cli(*argv), *words)
    assert (bed.xs.nodes(), kernel_state(bed)) == before


def test_xenstore_unreachable_is_one_line(bed: Bed) -> None:
    result = bed.cli("status", XENSTORED_PATH="/nonexistent/xenstored.sock")
    one_line_failure(result, "xenstore", "cannot connect", "/nonexistent/xenstored.sock")


# --- status ---------------------------------------------------------------------------------


def test_status_of_a_clean_system_exits_0(bed: Bed) -> None:
    bed.add_ifb("ifb0")  # a free IFB is no netbuf and no anomaly
    bed.add_vif("vif3.0")
    bed.domain(3)
    result = bed.cli("status")
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[1:] == ["(no netbufs)", "", "anomalies: none"]
    result = bed.cli("status", "--json")
    assert result.returncode == 0, result
    assert json.loads(result.stdout) == {"version": 1, "netbufs": [], "anomalies": []}


@pytest.fixture
def mixed(bed: Bed) -> Bed:
    """A live netbuf (plugless: this kernel), one on a renamed vif, a dead domain's claim, and
    a redirect no netbuf claims."""
    for vif in (VIF, "web6", "vif8.0"):
        bed.add_vif(vif)
    for ifb in ("ifb0", "ifb1", "ifb2", "ifb3"):
        bed.add_ifb(ifb)
    bed.domain(5)
    bed.domain(6)
    install_by_hand(bed, VIF, "ifb0", 5)
    bed.xs.seed("/local/domain/0/backend/vif/6/0/vifname", "web6")
    install_by_hand(bed, "web6", "ifb3", 6)
    bed.claim(7, 0, "ifb1")  # domain 7 is not under /local/domain
    bed.xs.seed(f"{PATH7}/hotplug-status", "connected")
    redirect_by_hand(bed, "vif8.0", "ifb2")  # nobody claims ifb2
    return bed


def expected_row(bed: Bed, domid: int, vif: str, ifb: str, live: bool = True) -> dict[str, Any]:
    filters = bed.filters(vif) if vif in bed.links() else ""
    redirect = f"mirred (Egress Redirect to device {ifb})" in filters
    return {
        "domid": domid,
        "devid": 0,
        "vif": vif,
        "ifb": ifb,
        "live": live,
        "ifb_exists": ifb in bed.links(),
        "ifb_up": bed.is_up(ifb),
        "root_qdisc": bed.root_qdisc(ifb),
        "backlog_bytes": 0,
        "backlog_packets": 0,
        "drops": 0,
        "redirect": redirect,
        "hotplug_status": bed.node(f"{netbuf_path(domid)}/hotplug-status"),
    }


NAMES = {"ifb": None, "vif": None, "domid": None, "devid": None, "path": None}
MIXED_ANOMALIES = [
    {
        "kind": "dead-domain-claim",
        "detail": f"{PATH7}/ifb = ifb1, but domain 7 does not exist",
        "gc": [f"remove-claim {PATH7}"],
        **NAMES,
        **{"ifb": "ifb1", "domid": 7, "devid": 0, "path": PATH7},
    },
    {
        "kind": "claim-without-plug",
        "detail": f"{PATH5}/ifb = ifb0, which has no plug",
        "gc": [],
        **NAMES,
        **{"ifb": "ifb0", "domid": 5, "devid": 0, "path": PATH5},
    },
    {
        "kind": "claim-without-plug",
        "detail": f"{PATH6}/ifb = ifb3, which has no plug",
        "gc": [],
        **NAMES,
        **{"ifb": "ifb3", "domid": 6, "devid": 0, "path": PATH6},
    },
    {
        "kind": "unclaimed-redirect",
        "detail": "vif8.0 redirects to ifb2, which no live netbuf claims for it",
        "gc": ["remove-redirect vif8.0 to ifb2"],
        **NAMES,
        **{"ifb": "ifb2", "vif": "vif8.0"},
    },
]


def test_status_json_and_table_agree_with_the_bed(mixed: Bed) -> None:
    bed = mixed
    result = bed.cli("status", "--json")
    assert result.returncode == 2, result
    doc = json.loads(result.stdout)
    assert doc["netbufs"] == [
        expected_row(bed, 5, VIF, "ifb0"),
        expected_row(bed, 6, "web6", "ifb3"),
        expected_row(bed, 7, "vif7.0", "ifb1", live=False),
    ]
    assert [r["redirect"] for r in doc["netbufs"]] == [True, True, False]  # the observer agrees
    assert doc["anomalies"] == MIXED_ANOMALIES

    result = bed.cli("status")
    assert result.returncode == 2, result
    rows = table(result.stdout)
    assert list(rows) == [(5, 0), (6, 0), (7, 0)]
    for netbuf in doc["netbufs"]:
        cells = rows[(netbuf["domid"], netbuf["devid"])]
        assert cells["DOMID"] == str(netbuf["domid"]) + ("" if netbuf["live"] else " (dead)")
        assert (cells["VIF"], cells["IFB"]) == (netbuf["vif"], netbuf["ifb"])
        assert cells["LINK"] == ("up" if netbuf["ifb_up"] else "down")
        assert cells["ROOT"] == (netbuf["root_qdisc"] or "-")
        assert cells["BACKLOG"] == "0b/0p"
        assert cells["REDIRECT"] == ("yes" if netbuf["redirect"] else "no")
        assert cells["HOTPLUG"] == netbuf["hotplug_status"]
    assert f"anomalies: {len(MIXED_ANOMALIES)}" in result.stdout.splitlines()
    lines = anomaly_lines(result.stdout)
    assert [line.split(":")[0] for line in lines] == [a["kind"] for a in MIXED_ANOMALIES]
    assert lines[0].endswith(f"[gc: remove-claim {PATH7}]")
    assert lines[1].endswith("[gc leaves it: live netbuf]")


def test_status_reports_a_netbuf_whose_ifb_was_deleted(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    bed.ip("link", "del", "ifb0")
    result = bed.cli("status", "--json")
    assert result.returncode == 2, result
    (row,) = json.loads(result.stdout)["netbufs"]
    assert (row["ifb_exists"], row["ifb_up"], row["root_qdisc"], row["redirect"]) == (
        False,
        False,
        None,
        False,
    )
    assert json.loads(result.stdout)["anomalies"][0]["detail"].endswith("which does not exist")
    assert table(bed.cli("status").stdout)[(5, 0)]["LINK"] == "missing"


# --- gc -------------------------------------------------------------------------------------


def test_gc_dry_run_changes_nothing_and_says_what_it_would_do(mixed: Bed) -> None:
    bed = mixed
    before = (bed.xs.nodes(), kernel_state(bed))
    result = bed.cli("gc", "--dry-run")
    assert result.returncode == 0, result
    assert (bed.xs.nodes(), kernel_state(bed)) == before
    assert result.stdout.splitlines() == [
        f"would remove-claim {PATH7}: dead-domain-claim: {MIXED_ANOMALIES[0]['detail']}",
        f"left alone (live netbuf): claim-without-plug: {MIXED_ANOMALIES[1]['detail']}",
        f"left alone (live netbuf): claim-without-plug: {MIXED_ANOMALIES[2]['detail']}",
        f"would remove-redirect vif8.0 to ifb2: unclaimed-redirect: {MIXED_ANOMALIES[3]['detail']}",
    ]
    assert "tc qdisc del" not in result.stderr


def test_gc_repairs_the_dead_and_the_unclaimed_and_leaves_the_live(mixed: Bed) -> None:
    bed = mixed
    live_before = {vif: bed.filters(vif) for vif in (VIF, "web6")}
    result = bed.cli("gc")
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0] == (
        f"did remove-claim {PATH7}: dead-domain-claim: {MIXED_ANOMALIES[0]['detail']}"
    )
    assert (
        f"did remove-redirect vif8.0 to ifb2: unclaimed-redirect: {MIXED_ANOMALIES[3]['detail']}"
        in result.stdout.splitlines()
    )
    # the replayable log lines: that one filter, then the ingress qdisc it leaves empty
    assert "vif8.0: tc filter del dev vif8.0 parent ffff: protocol all pref 10" in result.stderr
    assert "vif8.0: tc qdisc del dev vif8.0 ingress" in result.stderr
    # the dead domain's claim and status nodes are gone, the vif's stray redirect too
    assert bed.subtree(f"{PATH7}/") == {}
    assert not bed.has_ingress("vif8.0")
    assert {"ifb1", "ifb2"} <= set(bed.links())  # IFBs are never deleted
    # the live netbufs are untouched
    assert {vif: bed.filters(vif) for vif in live_before} == live_before
    for path, ifb in ((PATH5, "ifb0"), (PATH6, "ifb3")):
        assert bed.node(f"{path}/ifb") == ifb
        assert bed.node(f"{path}/hotplug-status") == "connected"
        assert bed.is_up(ifb)

    after = bed.cli("status", "--json")
    assert after.returncode == 2  # the live netbufs still lack a plug: for the admin, not gc
    assert [a["kind"] for a in json.loads(after.stdout)["anomalies"]] == ["claim-without-plug"] * 2
    again = bed.cli("gc")
    assert again.returncode == 0, again
    assert not any(line.startswith("did ") for line in again.stdout.splitlines()), again.stdout


def test_gc_with_nothing_to_repair(bed: Bed) -> None:
    result = bed.cli("gc")
    assert (result.returncode, result.stdout) == (0, "nothing to repair\n")


def test_gc_needs_lock_dir_alone_and_warns_of_another_bad_key(mixed: Bed) -> None:
    """As teardown: a typo in plug_limit must not keep gc from repairing; status still says."""
    bed = mixed
    bed.conf.write_text(f"plug_limit = 0\nlock_dir={bed.lock_dir}\n")
    for argv in (["gc", "--dry-run"], ["gc"]):
        result = bed.cli(*argv)
        assert result.returncode == 0, result
        warnings = [line for line in result.stderr.splitlines() if "ignoring key" in line]
        assert warnings == [
            "remus-netbuf: gc: ignoring key 'plug_limit' (only lock_dir is needed): config "
            f"{bed.conf}:1: plug_limit must be bytes, 1..4294967295, not '0'"
        ], result
    assert "did remove-claim" in result.stdout
    assert bed.subtree(f"{PATH7}/") == {}
    status = json.loads(bed.cli("status", "--json").stdout)
    assert "bad-config" in [a["kind"] for a in status["anomalies"]]


def test_gc_fails_on_a_bad_lock_dir_and_changes_nothing(mixed: Bed) -> None:
    bed = mixed
    bed.conf.write_text("lock_dir=relative/lock\n")
    before = (bed.xs.nodes(), kernel_state(bed))
    one_line_failure(bed.cli("gc"), f"config {bed.conf}:1: lock_dir must be an absolute path")
    assert (bed.xs.nodes(), kernel_state(bed)) == before


# --- plug -----------------------------------------------------------------------------------


def test_plug_on_an_ifb_without_plug_fails_naming_it(bed: Bed) -> None:
    bed.add_ifb("ifb0")
    for action in (["buffer"], ["release"], ["release-all"], ["limit", "1000"], ["stats"]):
        result = bed.cli("plug", "ifb0", *action)
        one_line_failure(result, "ifb0: plug open failed: root qdisc is the default, not plug")
    assert bed.root_qdisc("ifb0") is None


def test_plug_on_a_missing_ifb_fails_naming_it(bed: Bed) -> None:
    one_line_failure(bed.cli("plug", "ifb9", "stats"), "ifb9: plug open failed", "not found")


def test_plug_on_several_ifbs_names_each_that_is_no_plug(bed: Bed) -> None:
    bed.add_ifb("ifb0")
    bed.add_ifb("ifb1")
    one_line_failure(
        bed.cli("plug", "ifb0", "ifb1", "ifb9", "buffer"),
        "ifb0, ifb1, ifb9: plug open failed: ifb0, ifb1: root qdisc is the default, not plug; "
        "ifb9: device ifb9 not found",
    )


def test_plug_domain_takes_the_domains_claims_and_refuses_a_dead_one(bed: Bed) -> None:
    bed.add_ifb("ifb0")
    bed.add_ifb("ifb1")
    bed.domain(5)
    bed.claim(5, 1, "ifb1")
    bed.claim(5, 0, "ifb0")
    bed.claim(7, 0, "ifb0")  # domain 7 is dead: its claim is stale
    one_line_failure(
        bed.cli("plug", "--domain", "5", "release"),
        "ifb0, ifb1: plug open failed: root qdisc is the default, not plug",
    )
    one_line_failure(
        bed.cli("plug", "--domain", "7", "release"), "domain 7: plug open failed: no such live"
    )
    bed.domain(6)
    one_line_failure(
        bed.cli("plug", "--domain", "6", "stats"), "domain 6: plug open failed: no netbuf claims"
    )


@pytest.mark.parametrize("value", ["10M", "0"])
def test_plug_limit_value_is_checked_before_the_ifb(bed: Bed, value: str) -> None:
    one_line_failure(bed.cli("plug", "ifb9", "limit", value), "bad invocation", value)


# --- setup and teardown by hand --------------------------------------------------------------


def test_setup_without_sch_plug_fails_at_the_plug_and_leaves_nothing(bed: Bed) -> None:
    if kernel_has_plug(bed):
        pytest.skip("this kernel has sch_plug; the missing-plug path needs one without")
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    before = kernel_state(bed)
    result = bed.cli("setup", "--vif", VIF, "--xenbus-path", PATH5)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    (reason,) = [line for line in result.stderr.splitlines() if " failed at step " in line]
    for word in (VIF, "(ifb ifb0)", "add plug qdisc", "sch_plug", "CONFIG_NET_SCH_PLUG"):
        assert word in reason, reason
    assert bed.node(f"{PATH5}/hotplug-error") == reason.removeprefix("remus-netbuf: ")
    assert bed.node(f"{PATH5}/hotplug-status") == "error"
    bed.assert_clean(VIF, "ifb0", PATH5)
    assert kernel_state(bed) == before


@pytest.mark.parametrize("with_ifb", [True, False], ids=["--ifb", "claim"])
def test_teardown_of_a_hand_made_netbuf(bed: Bed, with_ifb: bool) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    args = ["--vif", VIF, "--xenbus-path", PATH5] + (["--ifb", "ifb0"] if with_ifb else [])
    for attempt in range(2):  # idempotent
        result = bed.cli("teardown", *args)
        assert result.returncode == 0, result
        if attempt == 0:
            assert f"{VIF}: tc qdisc del dev {VIF} ingress" in result.stderr  # replayable
        bed.assert_clean(VIF, "ifb0", PATH5)
        assert bed.node(f"{PATH5}/hotplug-status") is None


def test_teardown_needs_lock_dir_alone_as_the_hotplug_script(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    bed.configure(protocols="ipv6")
    result = bed.cli("teardown", "--vif", VIF, "--xenbus-path", PATH5)
    assert result.returncode == 0, result
    assert f"remus-netbuf: {VIF}: teardown: ignoring key 'protocols'" in result.stderr
    bed.assert_clean(VIF, "ifb0", PATH5)
    assert set(bed.subtree(PATH5)) == {PATH5}


BAD_FLAGS = [
    (["setup", "--vif", "vif5.0;reboot", "--xenbus-path", PATH5], ["--vif", "vif5.0;reboot"]),
    (["setup", "--vif", "averyveryverylongname", "--xenbus-path", PATH5], ["longer than 15"]),
    (["setup", "--vif", "", "--xenbus-path", PATH5], ["--vif is empty"]),
    (["setup", "--vif", VIF, "--xenbus-path", "/local/domain/5"], ["'/local/domain/5'"]),
    (["setup", "--vif", VIF, "--xenbus-path", "/libxl/0/remus/netbuf/0"], ["/libxl/0/"]),
    (["teardown", "--vif", VIF, "--xenbus-path", PATH5 + "/"], [PATH5 + "/"]),
    (["teardown", "--vif", VIF, "--xenbus-path", PATH5, "--ifb", "../ifb0"], ["--ifb"]),
    (["teardown", "--vif", "vif5.0\n", "--xenbus-path", PATH5], ["--vif", "\\n"]),
]


@pytest.mark.parametrize(("argv", "words"), BAD_FLAGS, ids=ids(BAD_FLAGS))
def test_bad_flag_values_are_rejected_before_anything_is_touched(
    bed: Bed, argv: list[str], words: list[str]
) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)  # teardown would undo this; setup would add to it
    before = (bed.xs.nodes(), kernel_state(bed))
    one_line_failure(bed.cli(*argv), "bad invocation", *words)
    assert (bed.xs.nodes(), kernel_state(bed)) == before


def test_cli_and_hotplug_script_share_the_teardown(bed: Bed) -> None:
    """The same state, torn down by either entry point, ends the same."""
    ends = []
    for program in ("remus-netbuf", "remus-netbuf-setup"):
        bed.add_vif(VIF)
        bed.add_ifb("ifb0")
        bed.domain(5)
        install_by_hand(bed, VIF, "ifb0", 5)
        if program == "remus-netbuf":
            result = bed.cli("teardown", "--vif", VIF, "--xenbus-path", PATH5, "--ifb", "ifb0")
        else:
            result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0")
        assert result.returncode == 0, result
        ends.append((bed.subtree("/libxl"), kernel_state(bed)))
        sh("ip", "-n", bed.ns, "link", "del", VIF)
        sh("ip", "-n", bed.ns, "link", "del", "ifb0")
    assert ends[0] == ends[1]
