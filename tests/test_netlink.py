"""The netlink module against the running kernel, in a private namespace, checked with tc/ip."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from remus_netbuf.errors import KernelError, KernelLacks
from remus_netbuf.netlink import Netlink

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def ns() -> Iterator[str]:
    name = "rnb-" + uuid.uuid4().hex[:10]
    run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "add", "vif3.1", "type", "veth", "peer", "name", "guest")
    yield name
    run("ip", "netns", "del", name)


@pytest.fixture
def nl(ns: str) -> Iterator[Netlink]:
    with Netlink(ns) as session:
        yield session


def tc_json(ns: str, *args: str) -> list[dict[str, object]]:
    return json.loads(run("tc", "-n", ns, "-j", *args) or "[]")  # type: ignore[no-any-return]


def test_ifb_probe_and_link_names(ns: str, nl: Netlink) -> None:
    nl.create_ifb("ifb0")
    nl.create_ifb("ifb10")
    nl.set_up("ifb0", True)
    assert nl.link_names() == {"lo", "vif3.1", "guest", "ifb0", "ifb10"}
    up, down = nl.ifb("ifb0"), nl.ifb("ifb10")
    assert up is not None and down is not None
    assert up.up and not down.up
    shown = {q["kind"] for q in tc_json(ns, "qdisc", "show", "dev", "ifb0") if q.get("root")}
    assert up.root_qdisc in shown
    assert down.root_qdisc is None  # a down IFB has only the built-in noop
    assert nl.ifb("vif3.1") is None  # a veth is no IFB
    assert nl.ifb("nope0") is None
    assert (
        json.loads(run("ip", "-n", ns, "-j", "-d", "link", "show", "ifb10"))[0]["linkinfo"][
            "info_kind"
        ]
        == "ifb"
    )


def test_plug_action_on_a_root_that_is_no_plug_names_what_the_kernel_said(
    ns: str, nl: Netlink
) -> None:
    """The raw epoch request reaches the kernel's qdisc lookup and its extended ack comes back
    as words: on the default root, 'not found'; on another kind, 'invalid qdisc name' (or,
    on a kernel without sch_plug, 'qdisc kind is unknown')."""
    nl.create_ifb("ifb0")
    nl.set_up("ifb0", True)
    with pytest.raises(KernelError, match=r"plug buffer on ifb0: .*(not found|NLM_F_CREATE)"):
        nl.plug("ifb0", "buffer")
    run("tc", "-n", ns, "qdisc", "add", "dev", "ifb0", "root", "pfifo", "limit", "10")
    with pytest.raises(KernelError, match=r"plug release_one on ifb0: .*qdisc (name|kind)") as err:
        nl.plug("ifb0", "release_one")
    assert err.value.fields["code"] in (errno.EINVAL, errno.ENOENT)  # the kernel's errno, kept
    assert nl.root_qdisc("ifb0") == "pfifo"  # untouched
    nl.link("lo")  # the session goes on working after the raw requests


def test_redirect_installed_and_removed(ns: str, nl: Netlink) -> None:
    nl.create_ifb("ifb0")
    nl.add_ingress("vif3.1")
    nl.add_redirect("vif3.1", "ifb0", "all")
    shown = run("tc", "-n", ns, "filter", "show", "dev", "vif3.1", "ingress")
    assert "protocol all pref 10 u32" in shown
    assert "match 00000000/00000000 at 0" in shown
    assert "mirred (Egress Redirect to device ifb0)" in shown
    assert [(r.protocol, r.pref, r.ifb) for r in nl.redirects("vif3.1")] == [("all", 10, "ifb0")]
    assert nl.remove_ingress("vif3.1") is True
    assert not any(q["kind"] == "ingress" for q in tc_json(ns, "qdisc", "show", "dev", "vif3.1"))
    assert nl.remove_ingress("vif3.1") is False  # missing: no EINVAL surfaces
    assert nl.redirects("vif3.1") == []


def test_protocols_ip_redirects_ipv4_only(ns: str, nl: Netlink) -> None:
    nl.create_ifb("ifb0")
    nl.add_ingress("vif3.1")
    nl.add_redirect("vif3.1", "ifb0", "ip")
    shown = run("tc", "-n", ns, "filter", "show", "dev", "vif3.1", "ingress")
    assert "protocol ip pref 10 u32" in shown
    assert [r.protocol for r in nl.redirects("vif3.1")] == ["ip"]


def test_missing_devices_are_named(nl: Netlink) -> None:
    assert nl.link("nope0") is None
    with pytest.raises(KernelError, match="device nope0 not found"):
        nl.add_ingress("nope0")
    assert nl.remove_ingress("nope0") is False
    assert nl.delete_link("nope0") is False
    assert nl.root_qdisc("nope0") is None


def test_existing_ingress_is_an_error_not_a_takeover(nl: Netlink) -> None:
    nl.add_ingress("vif3.1")
    with pytest.raises(KernelError, match="add ingress qdisc to vif3.1"):
        nl.add_ingress("vif3.1")


def test_plug_absent_from_this_kernel_is_named(ns: str, nl: Netlink) -> None:
    nl.create_ifb("ifb0")
    try:
        nl.add_plug("ifb0", 1000)
    except KernelLacks as err:
        assert str(err) == "kernel has no sch_plug (CONFIG_NET_SCH_PLUG)"
        assert nl.root_qdisc("ifb0") != "plug"
    else:
        pytest.skip("this kernel has sch_plug (the UML tier covers the plug)")


def test_remove_plug_leaves_other_root_qdiscs(ns: str, nl: Netlink) -> None:
    nl.create_ifb("ifb0")
    nl.set_up("ifb0", True)
    run("tc", "-n", ns, "qdisc", "add", "dev", "ifb0", "root", "pfifo", "limit", "10")
    assert nl.root_qdisc("ifb0") == "pfifo"
    assert nl.remove_plug("ifb0") is False  # not ours to remove
    assert nl.root_qdisc("ifb0") == "pfifo"
    stats = nl.stats("ifb0")
    assert stats is not None and stats.kind == "pfifo" and stats.backlog_packets == 0


def test_delete_link(ns: str, nl: Netlink) -> None:
    nl.create_ifb("ifb7")
    assert nl.delete_link("ifb7") is True
    assert "ifb7" not in run("ip", "-n", ns, "link", "show")


def test_sessions_do_not_leak_sockets(ns: str) -> None:
    """As os-vif does: open and close many sessions; the fd count must not grow."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with Netlink(ns) as session:
            session.link("lo")
    assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_unknown_namespace_is_not_created(nl: Netlink) -> None:
    ghost = "rnb-ghost-" + uuid.uuid4().hex[:6]
    with pytest.raises(KernelError, match=ghost):
        Netlink(ghost)
    assert ghost not in run("ip", "netns", "list")


def test_stats_are_the_counters_tc_reads(ns: str, nl: Netlink) -> None:
    """Frames through a pfifo root: the counters read back are those tc -s shows."""
    run("ip", "-n", ns, "link", "set", "guest", "up")
    run("ip", "-n", ns, "link", "set", "vif3.1", "up")
    run("tc", "-n", ns, "qdisc", "add", "dev", "vif3.1", "root", "pfifo", "limit", "100")
    send = "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
    send += "s.bind(('vif3.1', 0))\n"  # raw frames: out through vif3.1's root qdisc
    send += "for _ in range(5): s.send(b'\\xff' * 6 + b'\\x02' * 6 + b'\\x88\\xb5' + b'x' * 86)"
    subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", send], check=True)

    def shown() -> dict[str, object]:
        return next(q for q in tc_json(ns, "-s", "qdisc", "show", "dev", "vif3.1") if q["root"])

    before = shown()
    stats = nl.stats("vif3.1")
    after = shown()
    assert stats is not None and stats.kind == "pfifo"
    assert 5 <= before["packets"] <= stats.packets <= after["packets"]  # type: ignore[operator]
    assert stats.bytes >= 5 * 100
    assert before["bytes"] <= stats.bytes <= after["bytes"]  # type: ignore[operator]
    assert (stats.drops, stats.overlimits, stats.requeues) == (0, 0, 0)
    assert (stats.backlog_bytes, stats.backlog_packets) == (0, 0)
