"""The netlink module against the running kernel, in a private namespace, checked with tc/ip."""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest

from remus_netbuf import rtnl
from remus_netbuf.errors import KernelError, KernelLacks
from remus_netbuf.netlink import Netlink, PlugFailure, acks_of

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


def test_a_redirect_of_another_protocol_is_named_by_its_number_and_removed_by_it(
    ns: str, nl: Netlink
) -> None:
    """A key someone added for a protocol we have no word for (802.1Q) is named by its
    ethertype in hex, as tc takes it, and removed by that name (status' repair does so)."""
    nl.create_ifb("ifb0")
    nl.add_ingress("vif3.1")
    run(
        "tc", "-n", ns, "filter", "add", "dev", "vif3.1", "parent", "ffff:", "protocol", "802.1Q",
        "pref", "20", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
        "dev", "ifb0",
    )  # fmt: skip
    assert [(r.protocol, r.pref, r.ifb) for r in nl.redirects("vif3.1")] == [("0x8100", 20, "ifb0")]
    nl.remove_redirect("vif3.1", 20, "0x8100")
    assert run("tc", "-n", ns, "filter", "show", "dev", "vif3.1", "ingress") == ""
    assert not any(q["kind"] == "ingress" for q in tc_json(ns, "qdisc", "show", "dev", "vif3.1"))


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
        pytest.skip("this kernel has sch_plug (the kernel tier covers the plug)")


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


def nlmsgerr(seq: int, code: int, request: bytes = b"", words: bytes = b"") -> bytes:
    """An NLMSG_ERROR answering ``seq``: the kernel's ack (code 0) or error, with words."""
    flags, tlvs = 0, b""
    if words:
        flags = 0x200  # NLM_F_ACK_TLVS
        words += b"\0"
        tlvs = struct.pack("=HH", 4 + len(words), 1) + words + b"\0" * (-len(words) % 4)
    body = struct.pack("=i", code) + (request or struct.pack("=IHHII", 16, 36, 5, seq, 0)) + tlvs
    return struct.pack("=IHHII", 16 + len(body), 2, flags, seq, 0) + body


def test_acks_of_reads_every_answer_in_a_datagram() -> None:
    data = nlmsgerr(5, 0) + nlmsgerr(6, -errno.EINVAL, words=b"Invalid qdisc name")
    data += struct.pack("=IHHII", 20, 3, 0, 9, 0) + b"\0" * 4  # NLMSG_DONE: not an answer
    assert acks_of(data) == {5: (0, ""), 6: (errno.EINVAL, "Invalid qdisc name")}
    assert acks_of(b"") == {}
    assert acks_of(struct.pack("=IHHII", 8, 2, 0, 5, 0)) == {}  # a short header stops the walk


class FakeKernel:
    """The far end of a datagram socketpair standing in for rtnetlink: it takes one write, and
    answers each message in it with its own datagram, last first, with a foreign answer and
    an error for the IFB it is told to refuse."""

    def __init__(self, refuse: int) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.refuse = refuse
        self.writes: list[bytes] = []
        self.thread = threading.Thread(target=self.serve)
        self.thread.start()

    def fileno(self) -> int:
        return self.ours.fileno()

    def send(self, data: bytes) -> int:
        return self.ours.send(data)

    def recvmsg(self, size: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, object]:
        return self.ours.recvmsg(size)

    def close(self) -> None:
        self.thread.join()
        self.ours.close()
        self.theirs.close()

    def serve(self) -> None:
        batch = self.theirs.recv(65536)
        self.writes.append(batch)
        answers = [nlmsgerr(0xDEAD, 0)]  # an answer to some other request first
        offset = 0
        while offset < len(batch):
            length, kind, flags, seq, _ = struct.unpack_from("=IHHII", batch, offset)
            index = struct.unpack_from("=BBHiIII", batch, offset + 16)[3]
            request = batch[offset : offset + length]
            if index == self.refuse:
                answers.append(nlmsgerr(seq, -errno.EINVAL, request, b"Invalid qdisc name"))
            else:
                answers.append(nlmsgerr(seq, 0))
            offset += length
        for answer in reversed(answers):
            self.theirs.send(answer)


def test_plug_batch_is_one_write_and_maps_every_answer_to_its_ifb(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kernel = FakeKernel(refuse=12)
    monkeypatch.setattr(rtnl, "_open", lambda netns: kernel)
    with Netlink() as nl:
        failures = nl.plug_batch([(11, "ifb0"), (12, "ifb1"), (13, "ifb2")], "buffer")
    assert failures == [PlugFailure("ifb1", errno.EINVAL, "Invalid qdisc name")]
    (batch,) = kernel.writes  # one write: one sendmsg in the kernel
    assert len(batch) == 3 * 60
    headers = [struct.unpack_from("=IHHII", batch, 60 * i) for i in range(3)]
    assert [h[1] for h in headers] == [36] * 3  # RTM_NEWQDISC
    assert len({h[3] for h in headers}) == 3  # distinct sequence numbers
    assert [struct.unpack_from("=BBHiIII", batch, 60 * i + 16)[3] for i in range(3)] == [11, 12, 13]
    kind, flags, body = rtnl.change_plug(11, 0, 0)  # tc qdisc change dev ifb0 root plug buffer
    assert batch[:60] == struct.pack("=IHHII", 60, kind, flags | 1, headers[0][3], 0) + body


def test_plug_batch_names_each_ifb_the_kernel_refused(ns: str, nl: Netlink) -> None:
    """On the running kernel (plug or not): every message of the batch is answered, the
    refusals are mapped to their IFBs in the kernel's words, and the session goes on."""
    for name in ("ifb0", "ifb1", "ifb2"):
        nl.create_ifb(name)
        nl.set_up(name, True)
    run("tc", "-n", ns, "qdisc", "add", "dev", "ifb1", "root", "pfifo", "limit", "10")
    links = [nl.link(name) for name in ("ifb0", "ifb1", "ifb2")]
    targets = [(link.ifindex, link.name) for link in links if link is not None]
    failures = nl.plug_batch(targets, "release_one")
    assert [f.ifb for f in failures] == ["ifb0", "ifb1", "ifb2"]  # none has a plug
    assert all(f.code in (errno.EINVAL, errno.ENOENT) and f.reason for f in failures)
    assert "qdisc" in failures[1].reason.lower()  # the kernel's own words
    assert nl.root_qdisc("ifb1") == "pfifo"
    nl.link("lo")
