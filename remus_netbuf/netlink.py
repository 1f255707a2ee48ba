"""All netlink: every kernel query and change of the netbuf goes through this module.

Nothing else talks to the kernel, but :mod:`.ifindex`: whether a link exists, an ioctl, is all a
teardown with nothing to undo asks, and it does not import this module for it. Every verb works
in the namespace the session was opened for, and logs, at INFO, the ``ip``/``tc`` command that
does the same by hand, prefixed with the device it touches, so an admin can read the log and
replay it. Kernel errors are translated here into :class:`KernelError` (or :class:`KernelLacks`
when a module is missing); data crossing the boundary is small records (record.py), never
netlink messages.

The messages themselves are :mod:`.rtnl`'s, byte for byte what the logged command sends; this
module decodes the answers. (It used pyroute2 until start-up mattered: importing it took longer
than a whole hotplug run may, see rtnl.) Kernel quirks stepped around: deleting a missing
ingress qdisc fails with EINVAL, so we look before we delete; the kernel answers a qdisc get
only to a request with NLM_F_ECHO; a plug added without options would get the default limit.

The hot paths never decode every link: setup and teardown name devices through libc's
``if_nameindex`` and ask the kernel about single devices, so their cost does not grow with the
number of guests. The epoch path (:meth:`Netlink.plug_batch`) is one 60-byte ``RTM_NEWQDISC``
per device, all devices in one write to the session's socket, and the acks read back: one write,
and one read per device, as libxl does in C for one device.
"""

from __future__ import annotations

import _socket  # the C module alone: socket.py adds enum and selectors, nothing used here
import errno
import os
import struct
from contextlib import contextmanager

from . import rtnl
from .decide import Ifb
from .errors import KernelError, KernelLacks
from .log import DEBUG, INFO, log
from .record import Record
from .rtnl import TC_H_INGRESS, TC_H_ROOT, Message, RtnlError, acks_of

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["acks_of"]  # re-exported: every ack of a datagram (rtnl)

INGRESS_PARENT = rtnl.INGRESS_HANDLE  # "ffff:", where ingress filters hang
ETH_P = {"all": 0x0003, "ip": 0x0800}
PROTOCOL_SETS = {"all": ("all",), "ip": ("ip",)}
FILTER_PREF = 10  # the preference Xen's shell script uses
PLUG_HANDLE = 0x52450000  # "5245:" ("RE"): the plug's own handle (see Netlink.add_plug)
MIRRED_EGRESS_REDIRECT = rtnl.TCA_EGRESS_REDIR
# tc's words for the plug actions -> TCQ_PLUG_* of linux/pkt_sched.h
PLUG_ACTIONS = {"buffer": 0, "release_one": 1, "release_indefinite": 2, "limit": 3}
TCA_STATS, TCA_STATS2, TCA_STATS_BASIC, TCA_STATS_QUEUE = 3, 7, 1, 3
_BASIC = struct.Struct("=QI")  # struct gnet_stats_basic: bytes, packets
_QUEUE = struct.Struct("=IIIII")  # struct gnet_stats_queue: qlen, backlog, drops, requeues, overl.
_TC_STATS = struct.Struct("=QIIIIIII")  # struct tc_stats: bytes, packets, drops, overlimits,
#                                         bps, pps, qlen, backlog (before TCA_STATS2)
_LACKS_QDISC = {
    "plug": ("sch_plug", "CONFIG_NET_SCH_PLUG"),
    "ingress": ("sch_ingress", "CONFIG_NET_SCH_INGRESS"),
}
_LACKS_IFB = ("ifb", "CONFIG_IFB")
_LACKS_U32 = ("cls_u32", "CONFIG_NET_CLS_U32")
_LACKS_MIRRED = ("act_mirred", "CONFIG_NET_ACT_MIRRED")


class Link(Record):
    __slots__ = ("ifindex", "name", "kind", "up", "addr_gen_mode")

    def __init__(
        self, ifindex: int, name: str, kind: str | None, up: bool, addr_gen_mode: str | None = None
    ) -> None:
        self.ifindex = ifindex  # the kernel's ifi_index
        self.name = name
        self.kind = kind
        self.up = up
        # ip link's word for how IPv6 makes the device's link-local address (eui64, none, ...);
        # None: the kernel has no IPv6 for it
        self.addr_gen_mode = addr_gen_mode


class QdiscStats(Record):
    """Counters of a qdisc; backlog is what the plug holds right now."""

    __slots__ = (
        "kind",
        "bytes",
        "packets",
        "backlog_bytes",
        "backlog_packets",
        "drops",
        "requeues",
        "overlimits",
    )

    def __init__(
        self,
        kind: str,
        bytes: int,
        packets: int,
        backlog_bytes: int,
        backlog_packets: int,
        drops: int,
        requeues: int,
        overlimits: int,
    ) -> None:
        self.kind = kind
        self.bytes = bytes
        self.packets = packets
        self.backlog_bytes = backlog_bytes
        self.backlog_packets = backlog_packets
        self.drops = drops
        self.requeues = requeues
        self.overlimits = overlimits


class PlugFailure(Record):
    """A plug action the kernel refused on one device: its errno and its words."""

    __slots__ = ("ifb", "code", "reason")

    def __init__(self, ifb: str, code: int, reason: str) -> None:
        self.ifb = ifb
        self.code = code
        self.reason = reason


class Redirect(Record):
    """An ingress filter key: a redirect to device ``ifb``, or (``other``) a key that does
    something else."""

    __slots__ = ("protocol", "pref", "ifb", "other")

    def __init__(self, protocol: str, pref: int, ifb: str | None, other: bool = False) -> None:
        self.protocol = protocol
        self.pref = pref
        self.ifb = ifb
        self.other = other


class Survey(Record):
    """What :meth:`Netlink.survey` saw: link kinds by name, the IFBs, root qdisc counters by
    device, the ingress filters by device."""

    __slots__ = ("kinds", "ifbs", "stats", "filters")

    def __init__(
        self,
        kinds: dict[str, str | None],
        ifbs: list[Ifb],
        stats: dict[str, QdiscStats],
        filters: dict[str, list[Redirect]],
    ) -> None:
        self.kinds = kinds
        self.ifbs = ifbs
        self.stats = stats
        self.filters = filters


def has_our_plug(ifb: Ifb | None) -> bool:
    """Whether ``ifb`` (as :meth:`Netlink.ifb` saw it) has a netbuf's plug as its root qdisc: a
    plug with our own handle, which only our setup gives one (Xen's script's get the kernel's)."""
    return ifb is not None and ifb.root_qdisc == "plug" and ifb.root_handle == PLUG_HANDLE


class Netlink:
    """One rtnetlink session in one namespace (``None``: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._tc = f"tc -n {netns}" if netns else "tc"
        self._ip = f"ip -n {netns}" if netns else "ip"
        try:
            self._rt = rtnl.Socket(netns)
        except OSError as err:
            place = f"namespace {netns}" if netns else "the current namespace"
            detail = f"cannot open netlink in {place}: {err.strerror or err}"
            raise KernelError(detail=detail) from None

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._rt.close()

    # --- queries ----------------------------------------------------------------------------

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        try:
            answer = self._ask(f"look up {name}", rtnl.get_link(name))
        except KernelError as err:
            if err.fields.get("code") == errno.ENODEV:
                return None
            raise
        return _link(answer[0]) if answer else None

    def links(self) -> list[Link]:
        return [_link(msg) for msg in self._ask("list links", rtnl.dump_links())]

    def link_names(self) -> set[str]:
        """The name of every link, without decoding every link: libc's ``if_nameindex`` in our
        own namespace (the product's case), a link dump in another (tests)."""
        if self.netns is None:
            with self._request("list link names"):
                return {name for _, name in _socket.if_nameindex()}
        return {link.name for link in self.links()}

    def ifb(self, name: str) -> Ifb | None:
        """``name`` as an IFB with its root qdisc, or None if it is no IFB (or gone): two
        one-device requests, however many links the host has."""
        link = self.link(name)
        if link is None or link.kind != "ifb":
            return None
        root = self._qdisc(link.ifindex, TC_H_ROOT, name)
        if root is None:
            return Ifb(name, None, link.up)
        return Ifb(name, _kind(root), link.up, root_handle=_tcmsg(root)[1])

    def root_qdisc(self, name: str) -> str | None:
        """Kind of the root qdisc on ``name``; None if the device is gone or has the kernel's
        built-in default (noop, noqueue)."""
        index = self._index_or_none(name)
        root = None if index is None else self._qdisc(index, TC_H_ROOT, name)
        return None if root is None else _kind(root)

    def has_ingress(self, name: str) -> bool:
        ingress = self._qdisc(self._index(name), TC_H_INGRESS, name)
        return ingress is not None and _kind(ingress) == "ingress"

    def redirects(self, vif: str) -> list[Redirect]:
        """The mirred egress redirects on ``vif``'s ingress, with the device they point at."""
        if not self.has_ingress(vif):
            return []
        names = {link.ifindex: link.name for link in self.links()}
        return [f for f in self._filters(self._index(vif), vif, names) if f.ifb is not None]

    def ingress_filters(self, dev: str) -> list[Redirect]:
        """Every filter key on ``dev``'s ingress (see :meth:`_filters`); none without one."""
        if self._index_or_none(dev) is None or not self.has_ingress(dev):
            return []
        names = {link.ifindex: link.name for link in self.links()}
        return self._filters(self._index(dev), dev, names)

    def _filters(self, index: int, name: str, names: dict[int, str]) -> list[Redirect]:
        """Every filter key on a device's ingress: its redirect target, or None for a key that
        does anything else (a policer, a classifier of someone's shaping)."""
        request = rtnl.dump_filters(index, INGRESS_PARENT)
        found = []
        for msg in self._ask(f"list filters of {name}", request):
            info = rtnl.TCMSG.unpack_from(msg.body)[4]
            number = _socket.ntohs(info & 0xFFFF)
            proto = _PROTOCOL_WORDS.get(number, f"0x{number:04x}")
            pref = info >> 16
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
        links = {link.ifindex: link for link in self.links()}
        qdiscs = [(_tcmsg(q), q) for q in self._ask("list qdiscs", rtnl.dump_qdiscs())]
        roots = {index: q for (index, _, parent), q in qdiscs if parent == TC_H_ROOT}
        ifbs = [
            Ifb(
                link.name,
                _kind(roots[i]) if i in roots else None,
                link.up,
                root_handle=_tcmsg(roots[i])[1] if i in roots else 0,
            )
            for i, link in links.items()
            if link.kind == "ifb"
        ]
        stats = {
            links[i].name: _stats(q) for i, q in roots.items() if i in links and _tcmsg(q)[1] != 0
        }
        names = {i: link.name for i, link in links.items()}
        filters: dict[str, list[Redirect]] = {}
        for (index, _, _), q in qdiscs:
            if _kind(q) != "ingress" or index not in links:
                continue
            name = links[index].name
            filters[name] = self._filters(index, name, names)
        kinds = {link.name: link.kind for link in links.values()}
        return Survey(kinds, ifbs, stats, filters)

    def stats(self, name: str) -> QdiscStats | None:
        """Counters of the root qdisc on ``name`` (None if only the default is there)."""
        root = self._qdisc(self._index(name), TC_H_ROOT, name)
        return None if root is None or _tcmsg(root)[1] == 0 else _stats(root)

    # --- changes ----------------------------------------------------------------------------

    def create_ifb(self, name: str) -> None:
        self._say(name, f"{self._ip} link add {name} type ifb")
        self._ask(f"create {name}", rtnl.add_ifb(name), lacks=_LACKS_IFB)

    def delete_link(self, name: str, missing_ok: bool = True) -> bool:
        if missing_ok and self.link(name) is None:
            return False
        self._say(name, f"{self._ip} link del {name}")
        self._ask(f"delete {name}", rtnl.delete_link(self._index(name)))
        return True

    def set_up(self, name: str, up: bool) -> None:
        state = "up" if up else "down"
        self._say(name, f"{self._ip} link set dev {name} {state}")
        self._ask(f"set {name} {state}", rtnl.set_up(self._index(name), up))

    def set_addr_gen_mode(self, name: str, mode: str) -> None:
        """How IPv6 makes ``name``'s link-local address when it comes up: one of
        rtnl.ADDR_GEN_MODES. ``none`` makes none, so the device sends nothing of its own (no
        DAD, router solicitation or MLD report); it does not remove an address already made."""
        self._say(name, f"{self._ip} link set dev {name} addrgenmode {mode}")
        request = rtnl.set_addr_gen_mode(self._index(name), rtnl.ADDR_GEN_MODES[mode])
        self._ask(f"set {name} addrgenmode {mode}", request)

    def add_plug(self, ifb: str, limit: int) -> None:
        """A root plug with our own handle: the kernel then refuses it over any root qdisc but
        its own default ("NLM_F_REPLACE needed to override"), where without a handle it would
        replace someone's (seen on 6.1, with tc's own ``qdisc add`` too)."""
        handle = f"{PLUG_HANDLE >> 16:x}:"
        self._say(ifb, f"{self._tc} qdisc add dev {ifb} root handle {handle} plug limit {limit}")
        request = rtnl.add_plug(self._index(ifb), limit, PLUG_HANDLE)
        self._ask(f"add plug to {ifb}", request, lacks=_LACKS_QDISC["plug"])

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
        request = rtnl.delete_filter(index, INGRESS_PARENT, pref, _protocol_number(protocol))
        self._ask(f"remove the redirect filter of {vif}", request)
        if not self._filters(index, vif, {index: vif}):
            self.remove_ingress(vif)

    def remove_plug(self, ifb: str) -> bool:
        """Delete the root qdisc of ``ifb`` if it is a plug; False if there was none."""
        if self.root_qdisc(ifb) != "plug":
            return False
        self._say(ifb, f"{self._tc} qdisc del dev {ifb} root")
        self._ask(f"remove plug from {ifb}", rtnl.delete_root(self._index(ifb)))
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
        for _, ifb in targets:
            self._say(ifb, f"{self._tc} qdisc change dev {ifb} root plug {words}", DEBUG)
        requests = [rtnl.change_plug(index, PLUG_ACTIONS[action], limit) for index, _ in targets]
        names = ", ".join(ifb for _, ifb in targets)
        with self._request(f"plug {words} on {names}"):
            answers = self._rt.batch(requests)
        return [
            PlugFailure(ifb, code, text or os.strerror(code))
            for (_, ifb), (code, text) in zip(targets, answers, strict=True)
            if code
        ]

    def add_ingress(self, vif: str) -> None:
        self._say(vif, f"{self._tc} qdisc add dev {vif} ingress")
        request = rtnl.add_ingress(self._index(vif))
        self._ask(f"add ingress qdisc to {vif}", request, lacks=_LACKS_QDISC["ingress"])

    def remove_ingress(self, vif: str) -> bool:
        """Delete ``vif``'s ingress qdisc and so its filters; False if vif or qdisc is gone."""
        if self._index_or_none(vif) is None or not self.has_ingress(vif):
            return False
        self._say(vif, f"{self._tc} qdisc del dev {vif} ingress")
        self._ask(f"remove ingress qdisc from {vif}", rtnl.delete_ingress(self._index(vif)))
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
            request = rtnl.add_u32_redirect(vif_index, ETH_P[proto], FILTER_PREF, ifb_index)
            self._ask(f"add redirect filter on {vif} to {ifb}", request, lacks=_LACKS_U32)

    # --- internals --------------------------------------------------------------------------

    def _index(self, name: str) -> int:
        index = self._index_or_none(name)
        if index is None:
            raise KernelError(detail=f"device {name} not found", code=errno.ENODEV)
        return index

    def _index_or_none(self, name: str) -> int | None:
        """The device's index: an ioctl in our own namespace, a link request in another."""
        if self.netns is None:
            try:
                return _socket.if_nametoindex(name)
            except OSError:
                return None
        link = self.link(name)
        return None if link is None else link.ifindex

    def _qdisc(self, index: int, parent: int, name: str) -> Message | None:
        """The qdisc at ``parent`` (root or ingress) of device ``index``, as the kernel answers a
        one-device request; None when there is none, or only the built-in default."""
        try:
            answer = self._ask(f"look up the qdiscs of {name}", rtnl.get_qdisc(index, parent))
        except KernelError as err:
            if err.fields.get("code") in (errno.ENOENT, errno.EINVAL):
                return None
            raise
        return next((m for m in answer if m.kind == rtnl.RTM_NEWQDISC), None)

    def _ask(
        self, what: str, request: rtnl.Request, lacks: tuple[str, str] | None = None
    ) -> list[Message]:
        """Send ``request``; its answers, or KernelError naming ``what``."""
        with self._request(what, lacks):
            return self._rt.request(request)

    def _say(self, dev: str, command: str, level: int = INFO) -> None:
        log.log(level, "%s: %s", dev, command)

    @contextmanager
    def _request(self, what: str, lacks: tuple[str, str] | None = None) -> Iterator[None]:
        """Translate the kernel's and the socket's errors into KernelError naming ``what``."""
        try:
            yield
        except OSError as err:  # RtnlError: the kernel refused; else the socket failed
            code, text = err.errno, err.strerror or str(err)
            refused = isinstance(err, RtnlError)
            if refused and lacks is not None and code in (errno.ENOENT, errno.EOPNOTSUPP):
                feature, config = _missing(lacks, text)
                raise KernelLacks(feature=feature, config=config, code=code) from None
            raise KernelError(detail=f"{what}: {text}", code=code) from None


def _missing(lacks: tuple[str, str], text: str) -> tuple[str, str]:
    """Name the missing module; the u32 filter request can also lack the mirred action."""
    if lacks == _LACKS_U32 and "action" in text.lower():
        return _LACKS_MIRRED
    return lacks


def _link(msg: Message) -> Link:
    _, _, index, flags, _ = rtnl.IFINFOMSG.unpack_from(msg.body)
    found = rtnl.attrs(msg.body, rtnl.IFINFOMSG.size)
    info = found.get(rtnl.IFLA_LINKINFO)
    kind = rtnl.text(rtnl.attrs(info).get(rtnl.IFLA_INFO_KIND)) if info is not None else None
    name = rtnl.text(found.get(rtnl.IFLA_IFNAME)) or ""
    return Link(index, name, kind, bool(flags & rtnl.IFF_UP), _addr_gen_mode(found))


def _addr_gen_mode(found: dict[int, bytes]) -> str | None:
    """IFLA_AF_SPEC / AF_INET6 / IFLA_INET6_ADDR_GEN_MODE, as ip link's word (a number it has
    no word for, as the number)."""
    inet6 = rtnl.attrs(found.get(rtnl.IFLA_AF_SPEC, b"")).get(rtnl.AF_INET6)
    mode = rtnl.attrs(inet6 or b"").get(rtnl.IFLA_INET6_ADDR_GEN_MODE, b"")
    if not mode:
        return None
    return _ADDR_GEN_WORDS.get(mode[0], str(mode[0]))


_ADDR_GEN_WORDS = {number: word for word, number in rtnl.ADDR_GEN_MODES.items()}


def _tcmsg(msg: Message) -> tuple[int, int, int]:
    """(ifindex, handle, parent) of a qdisc or filter message."""
    _, index, handle, parent, _ = rtnl.TCMSG.unpack_from(msg.body)
    return index, handle, parent


def _kind(msg: Message) -> str | None:
    return rtnl.text(rtnl.attrs(msg.body, rtnl.TCMSG.size).get(rtnl.TCA_KIND))


_PROTOCOL_WORDS = {number: word for word, number in ETH_P.items()}


def _protocol_number(word: str) -> int:
    """The ethertype of a protocol as :meth:`Netlink._filters` names it: a word of ours, or a
    number in hex (``0x8100``), which tc takes too."""
    return ETH_P[word] if word in ETH_P else int(word, 16)


def _is_key(msg: Message) -> bool:
    """Whether a u32 filter message is a key (it matches), not a hash table or divisor."""
    options = rtnl.attrs(msg.body, rtnl.TCMSG.size).get(rtnl.TCA_OPTIONS)
    return options is not None and rtnl.TCA_U32_SEL in rtnl.attrs(options)


def _mirred_targets(msg: Message) -> Iterator[int]:
    """The devices a u32 filter's mirred actions redirect to (egress)."""
    found = rtnl.attrs(msg.body, rtnl.TCMSG.size)
    if rtnl.text(found.get(rtnl.TCA_KIND)) != "u32" or rtnl.TCA_OPTIONS not in found:
        return
    acts = rtnl.attrs(found[rtnl.TCA_OPTIONS]).get(rtnl.TCA_U32_ACT)
    for act in rtnl.attrs(acts or b"").values():  # one per action, by its order
        action = rtnl.attrs(act)
        if rtnl.text(action.get(rtnl.TCA_ACT_KIND)) != "mirred":
            continue
        options = rtnl.attrs(action.get(rtnl.TCA_ACT_OPTIONS, b""))
        parms = options.get(rtnl.TCA_MIRRED_PARMS, b"")
        if len(parms) >= rtnl.MIRRED.size:
            *_, eaction, ifindex = rtnl.MIRRED.unpack_from(parms)
            if eaction == MIRRED_EGRESS_REDIRECT:
                yield ifindex


def _stats(msg: Message) -> QdiscStats:
    found = rtnl.attrs(msg.body, rtnl.TCMSG.size)
    stats2 = rtnl.attrs(found.get(TCA_STATS2, b""))
    basic, queue = stats2.get(TCA_STATS_BASIC, b""), stats2.get(TCA_STATS_QUEUE, b"")
    if len(basic) >= _BASIC.size and len(queue) >= _QUEUE.size:
        sent, packets = _BASIC.unpack_from(basic)
        qlen, backlog, drops, requeues, overlimits = _QUEUE.unpack_from(queue)
    else:  # a kernel without TCA_STATS2 (before 2.6.x); no requeues there
        legacy = found.get(TCA_STATS, b"")
        fields = _TC_STATS.unpack_from(legacy) if len(legacy) >= _TC_STATS.size else (0,) * 8
        sent, packets, drops, overlimits, _, _, qlen, backlog = fields
        requeues = 0
    return QdiscStats(
        kind=_kind(msg) or "",
        bytes=sent,
        packets=packets,
        backlog_bytes=backlog,
        backlog_packets=qlen,
        drops=drops,
        requeues=requeues,
        overlimits=overlimits,
    )


# --- named network namespaces (``ip netns``): the throwaway ones ``check`` probes the kernel in


def create_netns(name: str) -> None:
    """Create the named network namespace, as ``ip netns add NAME`` does (see rtnl)."""
    log.debug("%s: ip netns add %s", name, name)
    try:
        rtnl.create_netns(name)
    except OSError as err:
        raise KernelError(detail=f"create network namespace {name}: {_why(err)}") from None


def remove_netns(name: str) -> None:
    """Delete the named network namespace and so everything in it (``ip netns del NAME``)."""
    log.debug("%s: ip netns del %s", name, name)
    try:
        rtnl.remove_netns(name)
    except OSError as err:
        raise KernelError(detail=f"delete network namespace {name}: {_why(err)}") from None


def list_netns() -> list[str]:
    """The named network namespaces (``ip netns list``)."""
    return rtnl.list_netns()


def _why(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err) or type(err).__name__
