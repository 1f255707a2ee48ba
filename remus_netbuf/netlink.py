"""All netlink: every kernel query and change of the netbuf goes through this module (pyroute2).

Nothing else imports pyroute2. Every verb works in the namespace the session was opened for, and
logs, at INFO, the ``ip``/``tc`` command that does the same by hand, prefixed with the device it
touches, so an admin can read the log and replay it. Kernel errors are translated here into
:class:`KernelError` (or :class:`KernelLacks` when a module is missing); data crossing the
boundary is small dataclasses, never netlink messages.

pyroute2 pitfalls this module steps around: its plug ``action`` must be a full name
(``'TCQ_PLUG_BUFFER'`` ...) since an integer silently becomes BUFFER (our epoch path encodes
``tc_plug_qopt`` itself, below); a plug added without ``limit``
gets limit 0 and drops every packet; ``tc('dump-filter')`` is broken in the sync API (we use
``get-filter``); ``IPRoute(netns=...)`` creates the namespace unless ``flags=0``; deleting a missing
ingress qdisc fails with EINVAL, so we look before we delete; the kernel answers a qdisc ``get``
only to a request with NLM_F_ECHO (the session sets ``nlm_echo``).

The hot paths never decode every link: setup and teardown name devices through libc's
``if_nameindex`` and ask the kernel about single devices, so their cost does not grow with the
number of guests (the sync API's ``nlm_request``, which could send a kind-filtered link dump,
is broken in pyroute2 0.9: it reads a status key that is never set).

The epoch path (:meth:`Netlink.plug_batch`) sends a prebuilt 60-byte ``RTM_NEWQDISC`` per
device straight down the session's netlink socket, all devices in one write, and reads the acks
back: one write, and one read per device, as libxl does in C for one device, where pyroute2's
request machinery costs tens of times more.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, overload

from .decide import Ifb
from .errors import KernelError, KernelLacks

log = logging.getLogger("remus_netbuf")

TC_H_ROOT = 0xFFFFFFFF
INGRESS_PARENT = 0xFFFF0000  # "ffff:", where ingress filters hang
ETH_P = {"all": 0x0003, "ip": 0x0800}
PROTOCOL_SETS = {"all": ("all",), "ip": ("ip",)}
FILTER_PREF = 10  # the preference Xen's shell script uses
PLUG_HANDLE = 0x52450000  # "5245:" ("RE"): the plug's own handle (see Netlink.add_plug)
MIRRED_EGRESS_REDIRECT = 1
TC_H_INGRESS = 0xFFFFFFF1  # where a device's ingress qdisc sits
# tc's words for the plug actions -> TCQ_PLUG_* of linux/pkt_sched.h
PLUG_ACTIONS = {"buffer": 0, "release_one": 1, "release_indefinite": 2, "limit": 3}
ANSWER_TIMEOUT = 5.0  # seconds to wait for the kernel's ack of a plug action
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_TCMSG = struct.Struct("=BBHiIII")  # family, pad, pad, ifindex, handle, parent, info
_NLA = struct.Struct("=HH")  # len, type
_PLUG_QOPT = struct.Struct("=iI")  # struct tc_plug_qopt: int action; __u32 limit
_ERRNO = struct.Struct("=i")
RTM_NEWQDISC, NLMSG_ERROR = 36, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x1, 0x4, 0x100, 0x200
TCA_KIND, TCA_OPTIONS, NLMSGERR_ATTR_MSG = 1, 2, 1
_LACKS_QDISC = {
    "plug": ("sch_plug", "CONFIG_NET_SCH_PLUG"),
    "ingress": ("sch_ingress", "CONFIG_NET_SCH_INGRESS"),
}
_LACKS_IFB = ("ifb", "CONFIG_IFB")
_LACKS_U32 = ("cls_u32", "CONFIG_NET_CLS_U32")
_LACKS_MIRRED = ("act_mirred", "CONFIG_NET_ACT_MIRRED")


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    up: bool


@dataclass(frozen=True)
class QdiscStats:
    """Counters of a qdisc; backlog is what the plug holds right now."""

    kind: str
    bytes: int
    packets: int
    backlog_bytes: int
    backlog_packets: int
    drops: int
    requeues: int
    overlimits: int


@dataclass(frozen=True)
class PlugFailure:
    """A plug action the kernel refused on one device: its errno and its words."""

    ifb: str
    code: int
    reason: str


@dataclass(frozen=True)
class Redirect:
    """An ingress filter key: a redirect to device ``ifb``, or (``other``) a key that does
    something else."""

    protocol: str
    pref: int
    ifb: str | None
    other: bool = False


@dataclass(frozen=True)
class Survey:
    """What :meth:`Netlink.survey` saw: link kinds by name, the IFBs, root qdisc counters by
    device, the ingress filters by device."""

    kinds: dict[str, str | None]
    ifbs: list[Ifb]
    stats: dict[str, QdiscStats]
    filters: dict[str, list[Redirect]]


def link_exists(name: str) -> bool:
    """Cheap existence check in the caller's namespace (an ioctl; pyroute2 not loaded)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


class Netlink:
    """One rtnetlink session in one namespace (``None``: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        from pyroute2 import IPRoute

        self.netns = netns
        self._tc = f"tc -n {netns}" if netns else "tc"
        self._ip = f"ip -n {netns}" if netns else "ip"
        where = {} if netns is None else {"netns": netns, "flags": 0}
        try:
            self._ipr = IPRoute(groups=0, ext_ack=True, nlm_echo=True, **where)
        except OSError as err:
            place = f"namespace {netns}" if netns else "the current namespace"
            raise KernelError(detail=f"cannot open netlink in {place}: {err}") from None
        self._seq = itertools.count(0x52454D00)  # our plug requests' numbers ("REM\0" on)

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    # --- queries ----------------------------------------------------------------------------

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        try:
            with self._request(f"look up {name}"):
                msg = self._ipr.link("get", ifname=name)[0]
        except KernelError as err:
            if err.fields.get("code") == errno.ENODEV:
                return None
            raise
        return _link(msg)

    def links(self) -> list[Link]:
        with self._request("list links"):
            return [_link(msg) for msg in self._ipr.get_links()]

    def link_names(self) -> set[str]:
        """The name of every link, without decoding every link: libc's ``if_nameindex`` in our
        own namespace (the product's case), a link dump in another (tests)."""
        if self.netns is None:
            with self._request("list link names"):
                return {name for _, name in socket.if_nameindex()}
        return {link.name for link in self.links()}

    def ifb(self, name: str) -> Ifb | None:
        """``name`` as an IFB with its root qdisc, or None if it is no IFB (or gone): two
        one-device requests, however many links the host has."""
        link = self.link(name)
        if link is None or link.kind != "ifb":
            return None
        root = self._qdisc(link.index, TC_H_ROOT, name)
        if root is None:
            return Ifb(name, None, link.up)
        return Ifb(name, root.get_attr("TCA_KIND"), link.up, added_root=root["handle"] != 0)

    def root_qdisc(self, name: str) -> str | None:
        """Kind of the root qdisc on ``name``; None if the device is gone or has the kernel's
        built-in default (noop, noqueue)."""
        index = self._index(name, missing_ok=True)
        root = None if index is None else self._qdisc(index, TC_H_ROOT, name)
        return None if root is None else str(root.get_attr("TCA_KIND"))

    def has_ingress(self, name: str) -> bool:
        ingress = self._qdisc(self._index(name), TC_H_INGRESS, name)
        return ingress is not None and ingress.get_attr("TCA_KIND") == "ingress"

    def redirects(self, vif: str) -> list[Redirect]:
        """The mirred egress redirects on ``vif``'s ingress, with the device they point at."""
        if not self.has_ingress(vif):
            return []
        names = {link.index: link.name for link in self.links()}
        return [f for f in self._filters(self._index(vif), vif, names) if f.ifb is not None]

    def ingress_filters(self, dev: str) -> list[Redirect]:
        """Every filter key on ``dev``'s ingress (see :meth:`_filters`); none without one."""
        if self._index(dev, missing_ok=True) is None or not self.has_ingress(dev):
            return []
        names = {link.index: link.name for link in self.links()}
        return self._filters(self._index(dev), dev, names)

    def _filters(self, index: int, name: str, names: dict[int, str]) -> list[Redirect]:
        """Every filter key on a device's ingress: its redirect target, or None for a key that
        does anything else (a policer, a classifier of someone's shaping)."""
        with self._request(f"list filters of {name}"):
            msgs = self._ipr.tc("get-filter", index=index, parent=INGRESS_PARENT)
        found = []
        for msg in msgs:
            proto = _PROTOCOL_NAMES.get(msg["info"] & 0xFFFF, hex(msg["info"] & 0xFFFF))
            pref = msg["info"] >> 16
            targets = list(_mirred_targets(msg))
            if not targets and _is_key(msg):
                found.append(Redirect(proto, pref, None, other=True))
            for target in targets:
                found.append(Redirect(proto, pref, names.get(target, f"#{target}")))
        return found

    def survey(self) -> Survey:
        """One look at everything netbufs use: every link's kind, the IFBs, the counters of
        root qdiscs, and each device's ingress filters. One link dump and one qdisc dump, plus a
        filter dump per device that has an ingress qdisc."""
        links = {link.index: link for link in self.links()}
        with self._request("list qdiscs"):
            qdiscs = list(self._ipr.get_qdiscs())
        roots = {q["index"]: q for q in qdiscs if q["parent"] == TC_H_ROOT}
        ifbs = [
            Ifb(
                link.name,
                roots[i].get_attr("TCA_KIND") if i in roots else None,
                link.up,
                added_root=i in roots and roots[i]["handle"] != 0,
            )
            for i, link in links.items()
            if link.kind == "ifb"
        ]
        stats = {
            links[i].name: _stats(q) for i, q in roots.items() if i in links and q["handle"] != 0
        }
        names = {i: link.name for i, link in links.items()}
        filters: dict[str, list[Redirect]] = {}
        for q in qdiscs:
            if q.get_attr("TCA_KIND") != "ingress" or q["index"] not in links:
                continue
            name = links[q["index"]].name
            filters[name] = self._filters(q["index"], name, names)
        kinds = {link.name: link.kind for link in links.values()}
        return Survey(kinds, ifbs, stats, filters)

    def stats(self, name: str) -> QdiscStats | None:
        """Counters of the root qdisc on ``name`` (None if only the default is there)."""
        root = self._qdisc(self._index(name), TC_H_ROOT, name)
        return None if root is None or root["handle"] == 0 else _stats(root)

    # --- changes ----------------------------------------------------------------------------

    def create_ifb(self, name: str) -> None:
        self._say(name, f"{self._ip} link add {name} type ifb")
        with self._request(f"create {name}", lacks=_LACKS_IFB):
            self._ipr.link("add", ifname=name, kind="ifb")

    def delete_link(self, name: str, missing_ok: bool = True) -> bool:
        if missing_ok and self.link(name) is None:
            return False
        self._say(name, f"{self._ip} link del {name}")
        with self._request(f"delete {name}"):
            self._ipr.link("del", index=self._index(name))
        return True

    def set_up(self, name: str, up: bool) -> None:
        state = "up" if up else "down"
        self._say(name, f"{self._ip} link set dev {name} {state}")
        with self._request(f"set {name} {state}"):
            self._ipr.link("set", index=self._index(name), state=state)

    def add_plug(self, ifb: str, limit: int) -> None:
        """A root plug with our own handle: the kernel then refuses it over any root qdisc but
        its own default ("NLM_F_REPLACE needed to override"), where without a handle it would
        replace someone's (seen on 6.1, with tc's own ``qdisc add`` too)."""
        handle = f"{PLUG_HANDLE >> 16:x}:"
        self._say(ifb, f"{self._tc} qdisc add dev {ifb} root handle {handle} plug limit {limit}")
        with self._request(f"add plug to {ifb}", lacks=_LACKS_QDISC["plug"]):
            self._ipr.tc("add", "plug", self._index(ifb), handle=PLUG_HANDLE, limit=limit)

    def free_ifb(self, ifb: str) -> None:
        """Leave ``ifb`` as a fresh one: down first, then its plug removed. In that order the
        kernel attaches no default qdisc (it would, to a device still up), so Xen's own script,
        which counts an IFB with any qdisc as busy, can take it again."""
        link = self.link(ifb)
        if link is None:
            return
        if link.kind != "ifb":
            raise KernelError(detail=f"{ifb} is not an IFB (kind {link.kind}): left untouched")
        if link.up:
            self.set_up(ifb, False)
        self.remove_plug(ifb)

    def remove_redirect(self, vif: str, pref: int, protocol: str) -> None:
        """Delete the filters at ``pref``/``protocol`` of ``vif``'s ingress, then the ingress
        qdisc if no filter is left on it."""
        index = self._index(vif)
        self._say(
            vif, f"{self._tc} filter del dev {vif} parent ffff: protocol {protocol} pref {pref}"
        )
        with self._request(f"remove the redirect filter of {vif}"):
            # tcm_info carries pref and protocol; pyroute2 drops prio= without a kind
            info = (pref << 16) | socket.htons(ETH_P[protocol])
            self._ipr.tc("del-filter", index=index, parent=INGRESS_PARENT, info=info)
        names = {index: vif}
        if not self._filters(index, vif, names):
            self.remove_ingress(vif)

    def remove_plug(self, ifb: str) -> bool:
        """Delete the root qdisc of ``ifb`` if it is a plug; False if there was none."""
        if self.root_qdisc(ifb) != "plug":
            return False
        self._say(ifb, f"{self._tc} qdisc del dev {ifb} root")
        with self._request(f"remove plug from {ifb}"):
            self._ipr.tc("del", index=self._index(ifb), parent=TC_H_ROOT)
        return True

    def plug(self, ifb: str, action: str, limit: int = 0) -> None:
        """Drive the plug on ``ifb``: one of PLUG_ACTIONS (``limit`` only for ``limit``)."""
        self.plug_index(self._index(ifb), ifb, action, limit)

    def plug_index(self, index: int, ifb: str, action: str, limit: int = 0) -> None:
        """:meth:`plug` for a device whose index is known: one write and one read per action."""
        for failure in self.plug_batch([(index, ifb)], action, limit):
            words = f"limit {limit}" if action == "limit" else action
            raise KernelError(detail=f"plug {words} on {ifb}: {failure.reason}", code=failure.code)

    def plug_batch(
        self, targets: Sequence[tuple[int, str]], action: str, limit: int = 0
    ) -> list[PlugFailure]:
        """One plug action on many devices (``(index, name)`` pairs): one write, one answer each.

        Each request is what ``tc qdisc change dev IFB root plug ACTION`` sends (and libxl,
        through libnl): RTM_NEWQDISC for the root, kind ``plug``, a ``tc_plug_qopt``. All of them
        go down the session's socket in a single write -- one ``sendmsg`` in the kernel, one
        skb, whose messages rtnetlink handles in order and answers one by one, each under its
        own sequence number -- so the devices' epoch marks are set within one system call.
        Every ack is read back before anything else uses the socket. Returns the devices the
        kernel refused, with its words; raises KernelError only when the socket itself fails.
        """
        words = f"limit {limit}" if action == "limit" else action
        seqs: dict[int, str] = {}
        batch = bytearray()
        for index, ifb in targets:
            self._say(ifb, f"{self._tc} qdisc change dev {ifb} root plug {words}", logging.DEBUG)
            seq = next(self._seq)
            seqs[seq] = ifb
            batch += plug_request(seq, index, PLUG_ACTIONS[action], limit)
        names = ", ".join(seqs.values())
        with self._request(f"plug {words} on {names}"):
            fd = self._ipr.fileno()
            os.write(fd, batch)
            answers = self._await_acks(fd, set(seqs))
        return [
            PlugFailure(seqs[seq], code, text or os.strerror(code))
            for seq, (code, text) in sorted(answers.items())
            if code
        ]

    def add_ingress(self, vif: str) -> None:
        self._say(vif, f"{self._tc} qdisc add dev {vif} ingress")
        with self._request(f"add ingress qdisc to {vif}", lacks=_LACKS_QDISC["ingress"]):
            self._ipr.tc("add", "ingress", self._index(vif), INGRESS_PARENT)

    def remove_ingress(self, vif: str) -> bool:
        """Delete ``vif``'s ingress qdisc and so its filters; False if vif or qdisc is gone."""
        if self._index(vif, missing_ok=True) is None or not self.has_ingress(vif):
            return False
        self._say(vif, f"{self._tc} qdisc del dev {vif} ingress")
        with self._request(f"remove ingress qdisc from {vif}"):
            self._ipr.tc("del", "ingress", self._index(vif), INGRESS_PARENT)
        return True

    def add_redirect(self, vif: str, ifb: str, protocols: str) -> None:
        """Match-all u32 filter(s) on ``vif``'s ingress: mirred egress redirect to ``ifb``."""
        vif_index, ifb_index = self._index(vif), self._index(ifb)
        for proto in PROTOCOL_SETS[protocols]:
            self._say(
                vif,
                f"{self._tc} filter add dev {vif} parent ffff: protocol {proto} pref {FILTER_PREF}"
                f" u32 match u32 0 0 action mirred egress redirect dev {ifb}",
            )
            with self._request(f"add redirect filter on {vif} to {ifb}", lacks=_LACKS_U32):
                self._ipr.tc(
                    "add-filter",
                    "u32",
                    vif_index,
                    parent=INGRESS_PARENT,
                    protocol=ETH_P[proto],
                    prio=FILTER_PREF,
                    target=INGRESS_PARENT | 1,  # pyroute2 always sends a classid; unused here
                    keys=["0x0/0x0+0"],
                    action=[
                        {
                            "kind": "mirred",
                            "direction": "egress",
                            "action": "redirect",
                            "ifindex": ifb_index,
                        }
                    ],
                )

    # --- internals --------------------------------------------------------------------------

    @overload
    def _index(self, name: str, missing_ok: Literal[False] = False) -> int: ...
    @overload
    def _index(self, name: str, missing_ok: Literal[True]) -> int | None: ...

    def _index(self, name: str, missing_ok: bool = False) -> int | None:
        """The device's index: an ioctl in our own namespace, a link request in another."""
        if self.netns is None:
            try:
                return socket.if_nametoindex(name)
            except OSError:
                link = None
        else:
            link = self.link(name)
        if link is None:
            if missing_ok:
                return None
            raise KernelError(detail=f"device {name} not found", code=errno.ENODEV)
        return link.index

    def _qdisc(self, index: int, parent: int, name: str) -> Any | None:
        """The qdisc at ``parent`` (root or ingress) of device ``index``, as the kernel answers a
        one-device request; None when there is none, or only the built-in default."""
        try:
            with self._request(f"look up the qdiscs of {name}"):
                answer = self._ipr.tc("get", index=index, parent=parent)
        except KernelError as err:
            if err.fields.get("code") in (errno.ENOENT, errno.EINVAL):
                return None
            raise
        return next((m for m in answer if m["header"]["type"] == RTM_NEWQDISC), None)

    def _await_acks(self, fd: int, seqs: set[int]) -> dict[int, tuple[int, str]]:
        """Read until the kernel has answered every request in ``seqs``: (errno, its words)
        for each, 0 for success. Answers to other requests are skipped."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        answers: dict[int, tuple[int, str]] = {}
        while len(answers) < len(seqs):
            if not poller.poll(ANSWER_TIMEOUT * 1000):
                missing = len(seqs) - len(answers)
                raise OSError(
                    errno.ETIMEDOUT,
                    f"{missing} of {len(seqs)} answers missing after {ANSWER_TIMEOUT:g} s",
                )
            for seq, answer in acks_of(os.read(fd, 65536)).items():
                if seq in seqs:
                    answers[seq] = answer
        return answers

    def _say(self, dev: str, command: str, level: int = logging.INFO) -> None:
        log.log(level, "%s: %s", dev, command)

    @contextmanager
    def _request(self, what: str, lacks: tuple[str, str] | None = None) -> Iterator[None]:
        """Translate pyroute2's and the socket's errors into KernelError naming ``what``."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            yield
        except NetlinkError as err:
            text = (
                err.args[1]
                if len(err.args) > 1 and err.args[1]
                else errno.errorcode.get(err.code, str(err.code))
            )
            if lacks is not None and err.code in (errno.ENOENT, errno.EOPNOTSUPP):
                feature, config = _missing(lacks, str(text))
                raise KernelLacks(feature=feature, config=config, code=err.code) from None
            raise KernelError(detail=f"{what}: {text}", code=err.code) from None
        except OSError as err:
            raise KernelError(detail=f"{what}: {err.strerror or err}", code=err.errno) from None


def plug_request(seq: int, index: int, action: int, limit: int) -> bytes:
    """RTM_NEWQDISC changing the root plug of device ``index``: what ``tc`` and libnl send."""
    body = _TCMSG.pack(socket.AF_UNSPEC, 0, 0, index, 0, TC_H_ROOT, 0)
    body += _nla(TCA_KIND, b"plug\0") + _nla(TCA_OPTIONS, _PLUG_QOPT.pack(action, limit))
    flags = NLM_F_REQUEST | NLM_F_ACK
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_NEWQDISC, flags, seq, 0) + body


def _nla(kind: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (_align4(length) - length)


def _align4(length: int) -> int:
    """Netlink messages and attributes start on 4-byte boundaries (NLMSG_ALIGN, NLA_ALIGN)."""
    return (length + 3) & ~3


def ack_of(data: bytes, seq: int) -> tuple[int | None, str]:
    """(errno, extended-ack text) of the NLMSG_ERROR answering ``seq`` in ``data`` (0: success),
    or (None, "") when ``data`` holds no answer to it."""
    return acks_of(data).get(seq, (None, ""))


def acks_of(data: bytes) -> dict[int, tuple[int, str]]:
    """Every NLMSG_ERROR in ``data`` by the sequence number it answers: (errno, extended-ack
    text), errno 0 for success. Other messages are skipped."""
    answers: dict[int, tuple[int, str]] = {}
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        message = data[offset : offset + length]
        if kind == NLMSG_ERROR and len(message) >= _NLMSGHDR.size + _ERRNO.size:
            code = -_ERRNO.unpack_from(message, _NLMSGHDR.size)[0]
            answers[seq] = (code, _ack_text(message, flags) if code else "")
        offset += _align4(length)
    return answers


def _ack_text(message: bytes, flags: int) -> str:
    """NLMSGERR_ATTR_MSG of an extended ack: the kernel's own words for what went wrong."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    start = _NLMSGHDR.size + _ERRNO.size  # then the request's header, or all of the request
    echoed = _NLMSGHDR.size if flags & NLM_F_CAPPED else _NLMSGHDR.unpack_from(message, start)[0]
    offset = start + _align4(echoed)
    while offset + _NLA.size <= len(message):
        length, kind = _NLA.unpack_from(message, offset)
        if length < _NLA.size:
            break
        if kind & 0x3FFF == NLMSGERR_ATTR_MSG:
            return (
                message[offset + _NLA.size : offset + length]
                .split(b"\0")[0]
                .decode("ascii", "replace")
            )
        offset += _align4(length)
    return ""


def _missing(lacks: tuple[str, str], text: str) -> tuple[str, str]:
    """Name the missing module; the u32 filter request can also lack the mirred action."""
    if lacks == _LACKS_U32 and "action" in text.lower():
        return _LACKS_MIRRED
    return lacks


def _link(msg: Any) -> Link:
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    return Link(msg["index"], msg.get_attr("IFLA_IFNAME"), kind, bool(msg["flags"] & 1))


_PROTOCOL_NAMES = {socket.htons(v): k for k, v in ETH_P.items()}


def _is_key(msg: Any) -> bool:
    """Whether a u32 filter message is a key (it matches), not a hash table or divisor."""
    options = msg.get_attr("TCA_OPTIONS")
    return options is not None and options.get_attr("TCA_U32_SEL") is not None


def _mirred_targets(msg: Any) -> Iterator[int]:
    options = msg.get_attr("TCA_OPTIONS")
    acts = options.get_attr("TCA_U32_ACT") if options is not None else None
    if acts is None:
        return
    for _, act in acts["attrs"]:
        if act.get_attr("TCA_ACT_KIND") != "mirred":
            continue
        parms = act.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
        if parms["eaction"] == MIRRED_EGRESS_REDIRECT:
            yield parms["ifindex"]


def _stats(q: Any) -> QdiscStats:
    stats2 = q.get_attr("TCA_STATS2")
    basic = stats2.get_attr("TCA_STATS_BASIC") if stats2 is not None else None
    queue = stats2.get_attr("TCA_STATS_QUEUE") if stats2 is not None else None
    legacy = q.get_attr("TCA_STATS") or {}
    basic = basic or legacy
    queue = queue or legacy
    return QdiscStats(
        kind=q.get_attr("TCA_KIND"),
        bytes=basic.get("bytes", 0),
        packets=basic.get("packets", 0),
        backlog_bytes=queue.get("backlog", 0),
        backlog_packets=queue.get("qlen", 0),
        drops=queue.get("drops", 0),
        requeues=queue.get("requeues", 0),
        overlimits=queue.get("overlimits", 0),
    )


# --- named network namespaces (``ip netns``): the throwaway ones ``check`` probes the kernel in


def create_netns(name: str) -> None:
    """Create the named network namespace, as ``ip netns add NAME`` does (pyroute2 forks a child
    that unshares and bind-mounts it under /run/netns; no program is run)."""
    from pyroute2 import netns

    log.debug("%s: ip netns add %s", name, name)
    try:
        netns.create(name)
    except (OSError, RuntimeError) as err:
        raise KernelError(detail=f"create network namespace {name}: {_why(err)}") from None


def remove_netns(name: str) -> None:
    """Delete the named network namespace and so everything in it (``ip netns del NAME``)."""
    from pyroute2 import netns

    log.debug("%s: ip netns del %s", name, name)
    try:
        netns.remove(name)
    except OSError as err:
        raise KernelError(detail=f"delete network namespace {name}: {_why(err)}") from None


def list_netns() -> list[str]:
    """The named network namespaces (``ip netns list``)."""
    from pyroute2 import netns

    return sorted(netns.listnetns())


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno)
    return str(err) or type(err).__name__
