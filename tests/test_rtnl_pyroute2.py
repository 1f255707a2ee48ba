"""pyroute2 judges rtnl.py: each request rtnl builds, decoded by pyroute2's message classes, means
what it should; and the kernel's answers, parsed by rtnl/netlink and by pyroute2, agree.

pyroute2 is a test dependency only (the product speaks rtnetlink itself, see rtnl.py), imported
here and nowhere in the product. The expectations are written from Linux's uapi headers, as
numbers here or pyroute2's own constants, never from rtnl's constants, which would make the
check circular. A request is taken from the wire: rtnl.Socket writes it to a stand-in for the
kernel, so the header the socket adds is judged too. A kernel answer is taken from rtnl's own
socket, every datagram kept as it came, in a fresh namespace on this kernel (veth, ifb, ingress,
u32, mirred) and, for the plug, on the kernel tier's.

pyroute2 0.9.7 misreads a u32 selector's keys: ``u32_sel.decode`` reads them 4 bytes early
(``self.offset + 16``, where its own ``encode`` writes them at ``+ 20``: an attribute header and
the 16 bytes of ``struct tc_u32_sel``), so each key it shows is the selector's hmask and the
first 12 bytes of the real key. :func:`u32_keys` reads them with pyroute2's own key class at
the right place.

Run with ``-rA`` to see the counts: requests compared, and real dump messages compared.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink import (
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_ECHO,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    nlmsg_base,
)
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_DELQDISC,
    RTM_DELTFILTER,
    RTM_GETLINK,
    RTM_GETQDISC,
    RTM_GETTFILTER,
    RTM_NEWLINK,
    RTM_NEWQDISC,
    RTM_NEWTFILTER,
    TC_H_INGRESS,
    TC_H_ROOT,
)
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.tcmsg import cls_u32, sched_plug
from pyroute2.netlink.rtnl.tcmsg.act_mirred import MIRRED_EACTIONS
from pyroute2.netlink.rtnl.tcmsg.common import tc_actions
from pyroute2.protocols import ETH_P_8021Q, ETH_P_ALL, ETH_P_IP

from remus_netbuf import netlink, rtnl
from remus_netbuf.netlink import Netlink, QdiscStats, Redirect
from tests.packets import socket_in

Meaning = dict[str, Any]

# --- Linux's numbers that pyroute2 does not name ----------------------------------------------
RTEXT_FILTER_VF, RTEXT_FILTER_SKIP_STATS = 1 << 0, 1 << 3  # linux/rtnetlink.h
TC_U32_TERMINAL = 1  # linux/pkt_cls.h
INGRESS_HANDLE = 0xFFFF0000  # "ffff:", TC_H_MAKE(TC_H_INGRESS, 0): the ingress qdisc's handle
IFINFOMSG_SIZE, TCMSG_SIZE, NLMSGHDR_SIZE = 16, 20, 16  # sizeof(struct ifinfomsg), ...
# enum in6_addr_gen_mode (linux/if_link.h), by ip link's words
IN6_ADDR_GEN_WORDS = {0: "eui64", 1: "none", 2: "stable_secret", 3: "random"}
PLUG_LIMIT = sched_plug.actions["TCQ_PLUG_LIMIT"]
STOLEN = tc_actions["stolen"]
EGRESS_REDIRECT = MIRRED_EACTIONS[("egress", "redirect")]
NEW = NLM_F_EXCL | NLM_F_CREATE  # what "add" asks for: create it, and fail if it is there
PROTOCOL_WORDS = {ETH_P_ALL: "all", ETH_P_IP: "ip"}  # tc's words for them


# --- a request, from the wire, as pyroute2 reads it ------------------------------------------


class Recorder:
    """Stands in for the kernel at the far end of rtnl's socket: keeps each write, answers each
    message in it (NLMSG_DONE for a dump, an ack for anything else)."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.writes: list[bytes] = []

    def fileno(self) -> int:
        return self.ours.fileno()

    def send(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        offset = 0
        while offset + NLMSGHDR_SIZE <= len(data):
            length, _, flags, seq, _ = struct.unpack_from("=IHHII", data, offset)
            if flags & NLM_F_DUMP == NLM_F_DUMP:
                answer = struct.pack("=IHHIIi", 20, NLMSG_DONE, NLM_F_REQUEST, seq, 0, 0)
            else:
                echoed = bytes(data[offset : offset + NLMSGHDR_SIZE])
                answer = struct.pack("=IHHIIi", 36, NLMSG_ERROR, 0, seq, 0, 0) + echoed
            self.theirs.send(answer)
            offset += length
        return len(data)

    def recvmsg(self, size: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        return self.ours.recvmsg(size)

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


def sent(request: rtnl.Request) -> bytes:
    """The bytes rtnl.Socket writes for ``request``."""
    kernel = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rtnl, "_open", lambda netns: kernel)
        sock = rtnl.Socket()
    try:
        sock.request(request)
    finally:
        sock.close()
    (data,) = kernel.writes
    return data


def decoded(data: bytes) -> Any:
    """One netlink message decoded by the pyroute2 class for its type (ifinfmsg, tcmsg); it must
    span the datagram exactly, its attributes the rest of it after the fixed struct."""
    kind = struct.unpack_from("=H", data, 4)[0]
    msg = MarshalRtnl.msg_map[kind](data)
    msg.decode()
    assert msg["header"]["length"] == len(data)
    assert msg["header"]["pid"] == 0
    fixed = IFINFOMSG_SIZE if kind in (RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK) else TCMSG_SIZE
    spans = sum((slot.nla.length + 3) & ~3 for slot in msg["attrs"])
    assert NLMSGHDR_SIZE + fixed + spans == len(data)
    return msg


def plain(value: Any) -> Any:
    """A decoded message or attribute as plain data: an attribute list as [(name, value)] (with
    its flags where it has any: NLA_F_NESTED), a struct as a dict of its fields."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if not isinstance(value, nlmsg_base):
        return value
    derived = ("attrs", "header", "__align", "state")  # state: pyroute2's word for IFF_UP
    fields = {k: plain(v) for k, v in value.items() if k not in derived}
    if isinstance(value, cls_u32.options.u32_sel):
        fields["keys"] = u32_keys(value)
    attrs = []
    for slot in value.get("attrs", ()):
        assert slot.try_to_decode(), f"pyroute2 could not decode {slot.name}"
        attr = (slot.name, plain(slot.get_value()))
        attrs.append(attr + (slot.get_flags(),) if slot.get_flags() else attr)
    if not fields:
        return attrs
    if attrs:
        fields["attrs"] = attrs
    return fields


def u32_keys(sel: Any) -> list[Meaning]:
    """A u32 selector's keys, read by pyroute2's key class where they are (see the docstring)."""
    keys = []
    for n in range(sel["nkeys"]):
        key = sel.u32_key(data=sel.data, offset=sel.offset + 4 + 16 + 16 * n)
        key.decode()
        keys.append(plain(key))
    return keys


def meaning(data: bytes) -> Meaning:
    """What a request asks, as pyroute2 reads it: its type and flags, its struct, its attributes.
    A tc message's tcm_info is read as what it carries: the pref and the protocol."""
    msg = decoded(data)
    found = {"header": (msg["header"]["type"], msg["header"]["flags"]), **plain(msg)}
    if "info" in found:
        info = found.pop("info")
        found["pref"], found["protocol"] = info >> 16, socket.ntohs(info & 0xFFFF)
    return found


# --- what each request means, written from the ip/tc command it is ---------------------------


def link_msg(
    kind: int, flags: int, index: int = 0, ifi_flags: int = 0, change: int = 0, attrs: Any = ()
) -> Meaning:
    out = {"header": (kind, NLM_F_REQUEST | flags), "family": 0, "ifi_type": 0}
    out |= {"index": index, "flags": ifi_flags, "change": change}
    return out | ({"attrs": list(attrs)} if attrs else {})


def tc_msg(
    kind: int,
    flags: int,
    index: int = 0,
    handle: int = 0,
    parent: int = 0,
    pref: int = 0,
    protocol: int = 0,
    attrs: Any = (),
) -> Meaning:
    out = {"header": (kind, NLM_F_REQUEST | flags), "family": 0, "pad1": 0, "pad2": 0}
    out |= {"index": index, "handle": handle, "parent": parent, "pref": pref, "protocol": protocol}
    return out | ({"attrs": list(attrs)} if attrs else {})


def plug(action: int, limit: int) -> list[Any]:
    return [("TCA_KIND", "plug"), ("TCA_OPTIONS", {"action": action, "limit": limit})]


def u32_redirect(target: int) -> list[Any]:
    """``u32 match u32 0 0 action mirred egress redirect dev TARGET``: one match-all key, one
    action (prio 1), mirred stealing the packet for TARGET's egress."""
    parms = {"index": 0, "capab": 0, "action": STOLEN, "refcnt": 0, "bindcnt": 0}
    parms |= {"eaction": EGRESS_REDIRECT, "ifindex": target}
    mirred = [
        ("TCA_ACT_KIND", "mirred"),
        ("TCA_ACT_OPTIONS", [("TCA_MIRRED_PARMS", parms)], NLA_F_NESTED),
    ]
    match_all = {"key_mask": 0, "key_val": 0, "key_off": 0, "key_offmask": 0}
    sel = {"flags": TC_U32_TERMINAL, "offshift": 0, "nkeys": 1, "offmask": 0, "off": 0}
    sel |= {"offoff": 0, "hoff": 0, "hmask": 0, "keys": [match_all]}
    options = [("TCA_U32_ACT", [("TCA_ACT_PRIO_1", mirred)]), ("TCA_U32_SEL", sel)]
    return [("TCA_KIND", "u32"), ("TCA_OPTIONS", options)]


def ext_mask_and_name(name: str) -> list[Any]:
    return [("IFLA_EXT_MASK", RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS), ("IFLA_IFNAME", name)]


# Each builder of rtnl, by name: what its request means, for the same arguments.
EXPECTED: dict[str, Callable[..., Meaning]] = {
    # ip link show dev NAME (without counters)
    "get_link": lambda name: link_msg(RTM_GETLINK, NLM_F_ACK, attrs=ext_mask_and_name(name)),
    "dump_links": lambda: link_msg(RTM_GETLINK, NLM_F_DUMP),
    "add_ifb": lambda name: link_msg(
        RTM_NEWLINK,
        NLM_F_ACK | NEW,
        attrs=[("IFLA_IFNAME", name), ("IFLA_LINKINFO", [("IFLA_INFO_KIND", "ifb")])],
    ),
    "set_up": lambda index, up: link_msg(
        RTM_NEWLINK, NLM_F_ACK, index, ifi_flags=IFF_UP if up else 0, change=IFF_UP
    ),
    # ip link set dev DEV addrgenmode MODE: no flags changed, IPv6's own attribute set
    "set_addr_gen_mode": lambda index, mode: link_msg(
        RTM_NEWLINK,
        NLM_F_ACK,
        index,
        attrs=[("IFLA_AF_SPEC", [("AF_INET6", [("IFLA_INET6_ADDR_GEN_MODE", mode)])])],
    ),
    "delete_link": lambda index: link_msg(RTM_DELLINK, NLM_F_ACK, index),
    # the kernel answers a qdisc get only with NLM_F_ECHO
    "get_qdisc": lambda index, parent: tc_msg(
        RTM_GETQDISC, NLM_F_ACK | NLM_F_ECHO, index, parent=parent
    ),
    "dump_qdiscs": lambda: tc_msg(RTM_GETQDISC, NLM_F_DUMP),
    "add_plug": lambda index, limit, handle=0: tc_msg(
        RTM_NEWQDISC, NLM_F_ACK | NEW, index, handle, TC_H_ROOT, attrs=plug(PLUG_LIMIT, limit)
    ),
    "change_plug": lambda index, action, limit: tc_msg(
        RTM_NEWQDISC, NLM_F_ACK, index, parent=TC_H_ROOT, attrs=plug(action, limit)
    ),
    "delete_root": lambda index: tc_msg(RTM_DELQDISC, NLM_F_ACK, index, parent=TC_H_ROOT),
    "add_ingress": lambda index: tc_msg(
        RTM_NEWQDISC,
        NLM_F_ACK | NEW,
        index,
        INGRESS_HANDLE,
        TC_H_INGRESS,
        attrs=[("TCA_KIND", "ingress")],
    ),
    "delete_ingress": lambda index: tc_msg(
        RTM_DELQDISC,
        NLM_F_ACK,
        index,
        INGRESS_HANDLE,
        TC_H_INGRESS,
        attrs=[("TCA_KIND", "ingress")],
    ),
    "add_u32_redirect": lambda index, protocol, pref, target: tc_msg(
        RTM_NEWTFILTER,
        NLM_F_ACK | NEW,
        index,
        0,
        INGRESS_HANDLE,
        pref,
        protocol,
        attrs=u32_redirect(target),
    ),
    # no kind: every filter of that pref and protocol
    "delete_filter": lambda index, parent, pref, protocol: tc_msg(
        RTM_DELTFILTER, NLM_F_ACK, index, 0, parent, pref, protocol
    ),
    "dump_filters": lambda index, parent: tc_msg(RTM_GETTFILTER, NLM_F_DUMP, index, parent=parent),
}

VIF, IFB0, IFB1 = 3, 4, 7
PLUG_ACTION_NUMBERS = sorted(sched_plug.actions.values())
CASES: list[tuple[str, tuple[Any, ...]]] = [
    ("get_link", ("vif9.0",)),
    ("dump_links", ()),
    ("add_ifb", ("ifb1",)),
    ("set_up", (IFB1, True)),
    ("set_up", (IFB1, False)),
    ("delete_link", (IFB1,)),
    ("get_qdisc", (IFB0, TC_H_ROOT)),
    ("get_qdisc", (VIF, TC_H_INGRESS)),
    ("dump_qdiscs", ()),
    ("add_plug", (IFB0, 10_000_000)),
    ("add_plug", (IFB0, 10_000_000, 0x52450000)),
    *[("change_plug", (IFB0, n, 5000 if n == PLUG_LIMIT else 0)) for n in PLUG_ACTION_NUMBERS],
    ("delete_root", (IFB0,)),
    ("add_ingress", (VIF,)),
    ("delete_ingress", (VIF,)),
    ("add_u32_redirect", (VIF, ETH_P_ALL, 10, IFB0)),
    ("add_u32_redirect", (VIF, ETH_P_IP, 10, IFB0)),
    ("delete_filter", (VIF, INGRESS_HANDLE, 10, ETH_P_ALL)),
    ("delete_filter", (VIF, INGRESS_HANDLE, 10, ETH_P_IP)),
    ("dump_filters", (VIF, INGRESS_HANDLE)),
    *[("set_addr_gen_mode", (IFB1, mode)) for mode in sorted(IN6_ADDR_GEN_WORDS)],
]


def builders() -> set[str]:
    """rtnl's request builders: its functions that return a Request."""
    return {
        name
        for name, value in vars(rtnl).items()
        if callable(value) and getattr(value, "__annotations__", {}).get("return") == "Request"
    }


def test_every_request_means_what_its_command_does_as_pyroute2_reads_it() -> None:
    for name, args in CASES:
        request = getattr(rtnl, name)(*args)
        assert meaning(sent(request)) == EXPECTED[name](*args), (name, args)
    assert builders() <= {name for name, _ in CASES}, "a builder pyroute2 does not judge yet"
    # tc's words for the plug actions (netlink's table) are the kernel's numbers
    named = {f"TCQ_PLUG_{word.upper()}": n for word, n in netlink.PLUG_ACTIONS.items()}
    assert named == sched_plug.actions
    assert netlink.ETH_P == {"all": ETH_P_ALL, "ip": ETH_P_IP}
    assert {n: word for word, n in rtnl.ADDR_GEN_MODES.items()} == IN6_ADDR_GEN_WORDS
    print(f"requests compared: {len(CASES)} (builders: {len(builders())})")


# --- the same, over names, limits and handles --------------------------------------------------

# Link names the kernel takes (dev_valid_name: 1-15 bytes, no '/', ':' or white space, not '.'
# or '..'), in the ASCII the product accepts (request.check_ifname is stricter still).
NAMES = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/:"),
    min_size=1,
    max_size=15,
).filter(lambda name: name not in (".", ".."))
U32 = st.integers(0, 2**32 - 1)
INDEXES = st.integers(1, 2**31 - 1)
PREFS = st.integers(1, 0xFFFF)
PROTOCOLS = st.integers(0, 0xFFFF)
ARGUMENTS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "get_link": st.tuples(NAMES),
    "dump_links": st.just(()),
    "add_ifb": st.tuples(NAMES),
    "set_up": st.tuples(INDEXES, st.booleans()),
    "set_addr_gen_mode": st.tuples(INDEXES, st.sampled_from(sorted(IN6_ADDR_GEN_WORDS))),
    "delete_link": st.tuples(INDEXES),
    "get_qdisc": st.tuples(INDEXES, st.sampled_from([TC_H_ROOT, TC_H_INGRESS])),
    "dump_qdiscs": st.just(()),
    "add_plug": st.tuples(INDEXES, U32, U32),
    "change_plug": st.tuples(INDEXES, st.sampled_from(PLUG_ACTION_NUMBERS), U32),
    "delete_root": st.tuples(INDEXES),
    "add_ingress": st.tuples(INDEXES),
    "delete_ingress": st.tuples(INDEXES),
    "add_u32_redirect": st.tuples(INDEXES, PROTOCOLS, PREFS, st.integers(1, 2**32 - 1)),
    "delete_filter": st.tuples(INDEXES, U32, PREFS, PROTOCOLS),
    "dump_filters": st.tuples(INDEXES, U32),
}


def test_requests_round_trip_through_pyroute2_for_any_name_limit_and_handle() -> None:
    seen: Counter[str] = Counter()
    judged = sorted(builders())
    assert set(judged) <= set(ARGUMENTS), "a builder without arguments to try"

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(judged).flatmap(lambda n: st.tuples(st.just(n), ARGUMENTS[n])))
    def round_trip(case: tuple[str, tuple[Any, ...]]) -> None:
        name, args = case
        assert meaning(sent(getattr(rtnl, name)(*args))) == EXPECTED[name](*args)
        seen[name] += 1

    round_trip()
    assert set(seen) == set(judged)
    print(f"requests compared (hypothesis): {sum(seen.values())} over {len(seen)} builders")


def test_no_product_module_imports_pyroute2() -> None:
    """pyroute2 is in the venv now, so a product import of it would no longer fail: import every
    module of the package (the CLI's too, not only the hotplug path test_imports runs)."""
    code = (
        "import importlib, pkgutil, sys, remus_netbuf\n"
        "for m in pkgutil.iter_modules(remus_netbuf.__path__):\n"
        "    importlib.import_module('remus_netbuf.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'pyroute2'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- the kernel's answers: rtnl/netlink's parse beside pyroute2's -----------------------------


def run(*argv: str) -> None:
    subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)


class Tap:
    """rtnl's netlink socket, passed through, keeping every datagram the kernel answered."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.datagrams: list[bytes] = []

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def send(self, data: bytes) -> int:
        return int(self._sock.send(data))

    def recvmsg(self, size: int) -> Any:
        answer = self._sock.recvmsg(size)
        self.datagrams.append(answer[0])
        return answer

    def close(self) -> None:
        self._sock.close()

    def parsed(self) -> list[Any]:
        """pyroute2's parse of what the kernel answered since the last call (its end-of-dump
        and acks left out)."""
        found = [m for d in self.datagrams for m in MarshalRtnl().parse(d)]
        self.datagrams.clear()
        for msg in found:
            assert msg["header"]["error"] is None, msg["header"]["error"]
        return [m for m in found if m["header"]["type"] not in (NLMSG_DONE, NLMSG_ERROR)]


@pytest.fixture
def taps(monkeypatch: pytest.MonkeyPatch) -> list[Tap]:
    """Every rtnl socket opened from here on, tapped."""
    opened: list[Tap] = []
    real = rtnl._open

    def tapped(netns: str | None) -> Tap:
        opened.append(Tap(real(netns)))
        return opened[-1]

    monkeypatch.setattr(rtnl, "_open", tapped)
    return opened


@pytest.fixture
def ns() -> Iterator[str]:
    name = "rnb-pr2-" + uuid.uuid4().hex[:8]
    run("ip", "netns", "add", name)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


VIF_NAME, PEER, IFB_NAME, SPARE = "vif1.0", "guest", "ifb0", "ifb1"
FRAMES = 5


def netbuf_by_hand(ns: str, root: tuple[str, ...]) -> None:
    """A vif whose ingress is redirected to ifb0 (with ``root`` as its root qdisc, handle 5245:)
    as a netbuf's is, a second key that mirrors (not redirects) to the down ifb1, all made with
    ip and tc; then FRAMES frames from the guest's side, through the redirect into ifb0."""
    ip, tc = ("ip", "-n", ns), ("tc", "-n", ns)
    run(*ip, "link", "set", "lo", "up")
    run(*ip, "link", "add", VIF_NAME, "type", "veth", "peer", "name", PEER)
    run(*ip, "link", "add", IFB_NAME, "type", "ifb")
    run(*ip, "link", "add", SPARE, "type", "ifb")
    for dev in (VIF_NAME, PEER, IFB_NAME):
        run(*ip, "link", "set", dev, "up")
    run(*tc, "qdisc", "add", "dev", IFB_NAME, "root", "handle", "5245:", *root)
    run(*tc, "qdisc", "add", "dev", VIF_NAME, "ingress")
    add = (*tc, "filter", "add", "dev", VIF_NAME, "parent", "ffff:")
    match = ("u32", "match", "u32", "0", "0", "action", "mirred", "egress")
    run(*add, "protocol", "all", "pref", "10", *match, "redirect", "dev", IFB_NAME)
    run(*add, "protocol", "ip", "pref", "20", *match, "mirror", "dev", SPARE)
    raw = socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW)
    try:
        raw.bind((PEER, 0))
        for _ in range(FRAMES):  # broadcast, ethertype 0x88b5 (local experimental)
            raw.send(b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + b"x" * 86)
    finally:
        raw.close()


def pyroute2_link(msg: Any) -> dict[str, Any]:
    mode = msg.get_nested("IFLA_AF_SPEC", "AF_INET6", "IFLA_INET6_ADDR_GEN_MODE")
    return {
        "ifindex": msg["index"],
        "name": msg.get_attr("IFLA_IFNAME"),
        "kind": msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
        "up": bool(msg["flags"] & IFF_UP),
        "addr_gen_mode": None if mode is None else IN6_ADDR_GEN_WORDS.get(mode, str(mode)),
    }


def pyroute2_qdisc(msg: Any) -> dict[str, Any]:
    basic = msg.get_nested("TCA_STATS2", "TCA_STATS_BASIC")
    queue = msg.get_nested("TCA_STATS2", "TCA_STATS_QUEUE")
    assert basic is not None and queue is not None  # every kernel since 2.6 sends them
    return {
        "where": (msg["index"], msg["handle"], msg["parent"]),
        "kind": msg.get_attr("TCA_KIND"),
        "bytes": basic["bytes"],
        "packets": basic["packets"],
        "backlog_bytes": queue["backlog"],
        "backlog_packets": queue["qlen"],
        "drops": queue["drops"],
        "requeues": queue["requeues"],
        "overlimits": queue["overlimits"],
    }


def pyroute2_filter(msg: Any) -> dict[str, Any]:
    options = msg.get_attr("TCA_OPTIONS") if msg.get_attr("TCA_KIND") == "u32" else None
    targets = []
    actions = options.get_attr("TCA_U32_ACT") if options is not None else None
    for slot in actions["attrs"] if actions is not None else ():
        action = slot.get_value()
        parms = action.get_nested("TCA_ACT_OPTIONS", "TCA_MIRRED_PARMS")
        if action.get_attr("TCA_ACT_KIND") == "mirred" and parms["eaction"] == EGRESS_REDIRECT:
            targets.append(parms["ifindex"])
    return {
        "where": (msg["index"], msg["handle"], msg["parent"]),
        "kind": msg.get_attr("TCA_KIND"),
        "targets": targets,
        "key": options is not None and options.get_attr("TCA_U32_SEL") is not None,
    }


def pyroute2_redirects(parsed: list[Any], names: dict[int, str]) -> list[Redirect]:
    """The ingress keys among ``parsed``, as netlink.Redirect says them: tcm_info's pref and
    protocol (tc's word, else its number), and each mirred egress redirect's device, or
    ``other`` for a key that does something else."""
    found = []
    for msg in parsed:
        if msg["header"]["type"] != RTM_NEWTFILTER:
            continue
        pref, protocol = msg["info"] >> 16, socket.ntohs(msg["info"] & 0xFFFF)
        word = PROTOCOL_WORDS.get(protocol, hex(protocol))
        seen = pyroute2_filter(msg)
        if not seen["targets"] and seen["key"]:
            found.append(Redirect(word, pref, None, other=True))
        for target in seen["targets"]:
            found.append(Redirect(word, pref, names.get(target, f"#{target}")))
    return found


def fields(record: Any, found: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A record's fields beside the same names in ``found`` (a field pyroute2's side does not
    know is a KeyError: whatever netlink.py parses, it judges)."""
    names = record.__slots__
    return {s: getattr(record, s) for s in names}, {s: found[s] for s in names}


def answered(sock: rtnl.Socket, tap: Tap, request: rtnl.Request) -> list[tuple[Any, Any]]:
    """rtnl's answers to ``request``, each beside pyroute2's parse of the same bytes."""
    tap.datagrams.clear()
    ours = sock.request(request)
    theirs = tap.parsed()
    assert [m["header"]["type"] for m in theirs] == [msg.kind for msg in ours]
    for msg, their in zip(ours, theirs, strict=True):
        start = their.offset + NLMSGHDR_SIZE
        assert msg.body == their.data[start : their.offset + their["header"]["length"]]
    return list(zip(ours, theirs, strict=True))


def compare_dumps(ns: str, taps: list[Tap]) -> Counter[str]:
    """Every link, qdisc and ingress filter of the namespace, as netlink.py parses rtnl's answers
    and as pyroute2 parses the same bytes; the messages compared, by what they were."""
    compared: Counter[str] = Counter()
    sock = rtnl.Socket(ns)
    try:
        tap = taps[-1]
        links = answered(sock, tap, rtnl.dump_links())
        index = {their["index"]: their.get_attr("IFLA_IFNAME") for _, their in links}
        by_name = {name: i for i, name in index.items()}
        links += answered(sock, tap, rtnl.get_link(IFB_NAME))
        for msg, their in links:
            ours, theirs = fields(netlink._link(msg), pyroute2_link(their))
            assert ours == theirs
            compared["links"] += 1
        qdiscs = answered(sock, tap, rtnl.dump_qdiscs())
        qdiscs += answered(sock, tap, rtnl.get_qdisc(by_name[IFB_NAME], TC_H_ROOT))
        for msg, their in qdiscs:
            expected = pyroute2_qdisc(their)
            assert netlink._tcmsg(msg) == expected["where"]
            ours, theirs = fields(netlink._stats(msg), expected)
            assert ours == theirs
            compared["qdiscs"] += 1
        filters = answered(sock, tap, rtnl.dump_filters(by_name[VIF_NAME], INGRESS_HANDLE))
        for msg, their in filters:
            ours_filter = {
                "where": netlink._tcmsg(msg),
                "kind": netlink._kind(msg),
                "targets": list(netlink._mirred_targets(msg)),
                "key": netlink._is_key(msg),
            }
            assert ours_filter == pyroute2_filter(their)
            compared["filters"] += 1
        assert compared["filters"] >= 4  # each pref: the group, its hash table, its key
    finally:
        sock.close()
    # netlink.py's own reading of the pref and protocol, through its public verb
    with Netlink(ns) as nl:
        redirects = nl.ingress_filters(VIF_NAME)
    assert redirects == pyroute2_redirects(taps[-1].parsed(), index)
    assert redirects == [Redirect("all", 10, IFB_NAME), Redirect("ip", 20, None, other=True)]
    return compared


def root_of(ns: str) -> QdiscStats:
    """ifb0's root qdisc as netlink.py's verbs see it: its counters, and its handle ours."""
    with Netlink(ns) as nl:
        stats = nl.stats(IFB_NAME)
        assert stats is not None
        ifb = nl.ifb(IFB_NAME)
        assert ifb is not None and ifb.root_handle == netlink.PLUG_HANDLE  # 5245:, ours
    return stats


def report(compared: Counter[str], root: QdiscStats) -> None:
    shown = ", ".join(f"{k} {v}" for k, v in sorted(compared.items()))
    print(f"real dump messages compared: {sum(compared.values())} ({shown}); ifb0's root: {root}")


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")
def test_dumps_of_this_kernel_parse_as_pyroute2_parses_them(ns: str, taps: list[Tap]) -> None:
    """Links (lo, a veth pair, two IFBs), qdiscs (a pfifo with counters, ingress, defaults) and
    u32 keys (a redirect, a mirror) on this kernel."""
    netbuf_by_hand(ns, ("pfifo", "limit", "100"))
    compared = compare_dumps(ns, taps)
    stats = root_of(ns)
    assert stats.kind == "pfifo" and stats.packets >= FRAMES  # counters that are not all zero
    report(compared, stats)


@pytest.mark.vm(weight=15)
def test_plug_stats_parse_as_pyroute2_parses_them(ns: str, taps: list[Tap]) -> None:
    """The same on a kernel with sch_plug: the plug holds the frames (it starts buffering),
    and its backlog, as netlink.py and pyroute2 read it, counts them."""
    netbuf_by_hand(ns, ("plug", "limit", "10000"))
    compared = compare_dumps(ns, taps)
    stats = root_of(ns)
    assert stats.kind == "plug" and stats.backlog_packets >= FRAMES and stats.packets == 0
    report(compared, stats)


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")
def test_a_key_of_another_protocol_is_named_by_its_number(ns: str, taps: list[Tap]) -> None:
    """tc shows such a key as ``protocol 802.1Q``; pyroute2 reads 0x8100 from the same bytes."""
    ip, tc = ("ip", "-n", ns), ("tc", "-n", ns)
    run(*ip, "link", "add", VIF_NAME, "type", "veth", "peer", "name", PEER)
    run(*ip, "link", "add", IFB_NAME, "type", "ifb")
    run(*tc, "qdisc", "add", "dev", VIF_NAME, "ingress")
    add = (*tc, "filter", "add", "dev", VIF_NAME, "parent", "ffff:", "protocol", "802.1Q")
    match = ("u32", "match", "u32", "0", "0", "action", "mirred", "egress")
    run(*add, "pref", "30", *match, "redirect", "dev", IFB_NAME)
    with Netlink(ns) as nl:
        redirects = nl.ingress_filters(VIF_NAME)
        names = {link.ifindex: link.name for link in nl.links()}
    theirs = pyroute2_redirects(taps[-1].parsed(), names)
    if theirs != [Redirect(hex(ETH_P_8021Q), 30, IFB_NAME)]:
        pytest.fail(f"pyroute2 read {theirs}")
    assert redirects == theirs
