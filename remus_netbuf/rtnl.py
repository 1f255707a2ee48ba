"""The rtnetlink wire format: one socket, the requests the netbuf sends, attributes read back.

Stdlib only, and on purpose: importing pyroute2 took 150 ms, more than a whole hotplug run may
(issue 11), and its asyncio core alone costs most of that however little of it is imported. The
netbuf needs a dozen fixed requests, built here as iproute2 builds them: the bytes of each match
what the ``ip``/``tc`` command that :mod:`.netlink` logs for it sends (checked with strace, and
pinned in tests/test_rtnl.py), so the replayable log says exactly what was done.

Every request asks for an ack and reads until it, so a failure is always the kernel's own errno
and, with extended acks, its own words (:class:`RtnlError`). A socket is opened in the caller's
namespace or in a named one (``ip netns``), which is then never created.
"""

from __future__ import annotations

import _socket  # the C module alone: socket.py adds enum and selectors, nothing used here
import errno
import os
import select
import struct

from .record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_ECHO, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x8, 0x10
NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x300, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # in an ack
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
NLA_F_NESTED = 0x8000
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
IFLA_IFNAME, IFLA_LINKINFO, IFLA_EXT_MASK, IFLA_INFO_KIND = 3, 18, 29, 1
RTEXT_FILTER_VF, RTEXT_FILTER_SKIP_STATS = 1, 8
IFF_UP = 1
IFLA_AF_SPEC, AF_INET6, IFLA_INET6_ADDR_GEN_MODE = 26, 10, 8
# enum in6_addr_gen_mode, as ip link names them (addrgenmode WORD)
ADDR_GEN_MODES = {"eui64": 0, "none": 1, "stable_secret": 2, "random": 3}
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_U32_SEL, TCA_U32_ACT, TC_U32_TERMINAL = 5, 7, 1
TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_MIRRED_PARMS = 1, 2, 2
TC_ACT_STOLEN, TCA_EGRESS_REDIR = 4, 1
TC_H_ROOT, TC_H_INGRESS, INGRESS_HANDLE = 0xFFFFFFFF, 0xFFFFFFF1, 0xFFFF0000
TCQ_PLUG_LIMIT = 3
CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"  # where ip netns keeps its namespaces
ANSWER_TIMEOUT = 5.0  # seconds to wait for each answer of the kernel
RECV_SIZE = 65536  # a dump sends at most 32 KiB a datagram; a single answer is far smaller
DUMP_TRIES = 3  # a dump the kernel marks as interrupted (the table changed) is taken again

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
NLA = struct.Struct("=HH")  # len, type
PLUG_QOPT = struct.Struct("=iI")  # struct tc_plug_qopt: int action; __u32 limit
U32_SEL = struct.Struct("=BBBxHHhhI")  # struct tc_u32_sel without its keys
U32_KEY = struct.Struct("=IIii")  # mask, val, off, offmask
MIRRED = struct.Struct("=IIiiiiI")  # struct tc_mirred: tc_gen, eaction, ifindex
ERRNO = struct.Struct("=i")

Request = tuple[int, int, bytes]  # message type, flags, body: what Socket.request sends
Ack = tuple[int, str]  # errno (0: success) and the kernel's words, of one NLMSG_ERROR


class RtnlError(OSError):
    """A request failed: the kernel's errno and, with an extended ack, its own words (or why
    no usable answer came back)."""

    def __init__(self, code: int, text: str = "") -> None:
        super().__init__(code, text or os.strerror(code))


class Message(Record):
    """One answer: its type and what follows the netlink header."""

    __slots__ = ("kind", "body")

    def __init__(self, kind: int, body: bytes) -> None:
        self.kind = kind
        self.body = body


class Socket:
    """A NETLINK_ROUTE socket in the caller's namespace or the named one (``ip netns``)."""

    def __init__(self, netns: str | None = None) -> None:
        self._sock = _open(netns)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def request(self, request: Request) -> list[Message]:
        """Send one request and read until its ack (or a dump's end): the messages it answered
        with, a get's object or a dump's objects; RtnlError if the kernel refused it. A dump
        the kernel marks as interrupted (the table changed meanwhile) is taken again."""
        kind, flags, body = request
        for _ in range(DUMP_TRIES):
            seq = self._send(kind, flags | NLM_F_REQUEST, body)
            answers, interrupted = self._answers(seq)
            if not interrupted:
                return answers
        raise RtnlError(errno.EINTR, "the dump was interrupted by changes, again and again")

    def batch(self, requests: Sequence[Request]) -> list[Ack]:
        """Send every request in one write (one ``sendmsg``: one skb, whose messages rtnetlink
        handles in order and answers one by one) and read every ack back: (errno, the kernel's
        words) for each request, in order, errno 0 for success. Answers to other requests are
        skipped; only a socket failure or a missing answer raises."""
        seqs = []
        batch = bytearray()
        for kind, flags, body in requests:
            self._seq += 1
            seqs.append(self._seq)
            length = NLMSGHDR.size + len(body)
            batch += NLMSGHDR.pack(length, kind, flags | NLM_F_REQUEST, self._seq, 0) + body
        self._sock.send(batch)
        wanted = set(seqs)
        answers: dict[int, Ack] = {}
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        while len(answers) < len(wanted):
            if not poller.poll(ANSWER_TIMEOUT * 1000):
                missing = len(wanted) - len(answers)
                raise RtnlError(
                    errno.ETIMEDOUT,
                    f"{missing} of {len(wanted)} answers missing after {ANSWER_TIMEOUT:g} s",
                )
            data, _, flags, _ = self._sock.recvmsg(RECV_SIZE)
            if flags & _socket.MSG_TRUNC:
                raise RtnlError(errno.EMSGSIZE, "an answer did not fit the receive buffer")
            for seq, answer in acks_of(data).items():
                if seq in wanted:
                    answers[seq] = answer
        return [answers[seq] for seq in seqs]

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        self._sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, self._seq, 0) + body)
        return self._seq

    def _answers(self, seq: int) -> tuple[list[Message], bool]:
        answers: list[Message] = []
        interrupted = False
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        while True:
            if not poller.poll(ANSWER_TIMEOUT * 1000):
                raise RtnlError(errno.ETIMEDOUT, f"no answer in {ANSWER_TIMEOUT:g} s")
            data, _, flags, _ = self._sock.recvmsg(RECV_SIZE)
            if flags & _socket.MSG_TRUNC:
                raise RtnlError(errno.EMSGSIZE, "an answer did not fit the receive buffer")
            for kind, msg_flags, got, body in messages(data):
                if got != seq:
                    continue  # an answer to an earlier request we stopped waiting for
                if kind in (NLMSG_ERROR, NLMSG_DONE):  # the ack, or the end of a dump
                    code, words = error_of(body, msg_flags)
                    if code:
                        raise RtnlError(code, words)
                    return answers, interrupted
                interrupted |= bool(msg_flags & NLM_F_DUMP_INTR)
                answers.append(Message(kind, body))


def _open(netns: str | None) -> _socket.socket:
    if netns is None:
        return _netlink_socket()
    _check_name(netns)
    target = os.open(os.path.join(NETNS_RUN_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return _netlink_socket()  # a netlink socket stays in the namespace it was made in
            finally:
                _setns(own)
        finally:
            os.close(own)
    finally:
        os.close(target)


def _netlink_socket() -> _socket.socket:
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, 0)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # the kernel's words with an error
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # and not our whole request back
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _setns(fd: int) -> None:
    """setns(2) for this thread: os.setns from Python 3.12 on, libc's before."""
    setns = getattr(os, "setns", None)
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


# --- messages and attributes ---------------------------------------------------------------


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, body) of each netlink message in a datagram."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            break
        yield kind, flags, seq, data[offset + NLMSGHDR.size : offset + length]
        offset += align4(length)


def attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes from ``offset`` on, by type (nested/byte-order flags dropped)."""
    found = {}
    while offset + NLA.size <= len(data):
        length, kind = NLA.unpack_from(data, offset)
        if length < NLA.size:
            break
        found[kind & NLA_TYPE_MASK] = data[offset + NLA.size : offset + length]
        offset += align4(length)
    return found


def text(payload: bytes | None) -> str | None:
    """A string attribute (NUL-terminated or not)."""
    return None if payload is None else payload.split(b"\0", 1)[0].decode("ascii", "replace")


def nla(kind: int, payload: bytes) -> bytes:
    length = NLA.size + len(payload)
    return NLA.pack(length, kind) + payload + b"\0" * (align4(length) - length)


def align4(length: int) -> int:
    """Netlink messages and attributes start on 4-byte boundaries (NLMSG_ALIGN, NLA_ALIGN)."""
    return (length + 3) & ~3


def acks_of(data: bytes) -> dict[int, Ack]:
    """Every NLMSG_ERROR in a datagram by the sequence number it answers: (errno, the kernel's
    words), errno 0 for success. Other messages are skipped."""
    return {
        seq: error_of(body, flags)
        for kind, flags, seq, body in messages(data)
        if kind == NLMSG_ERROR and len(body) >= ERRNO.size
    }


def error_of(body: bytes, flags: int) -> tuple[int, str]:
    """(errno, the kernel's words) of an NLMSG_ERROR or NLMSG_DONE: (0, "") is success. The
    words are an extended ack's NLMSGERR_ATTR_MSG, after the echoed request (or its header)."""
    code = -ERRNO.unpack_from(body)[0] if len(body) >= ERRNO.size else 0
    if not code or not flags & NLM_F_ACK_TLVS:
        return code, ""
    echoed = NLMSGHDR.size if flags & NLM_F_CAPPED else NLMSGHDR.unpack_from(body, ERRNO.size)[0]
    return code, text(attrs(body, ERRNO.size + align4(echoed)).get(NLMSGERR_ATTR_MSG)) or ""


# --- the requests ---------------------------------------------------------------------------
# Each is what the ip/tc command in its docstring sends (seq and ifindex aside).


def get_link(name: str) -> Request:
    """``ip link show dev NAME``: the link, or ENODEV. Its counters are left out."""
    mask = nla(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS))
    return RTM_GETLINK, NLM_F_ACK, IFINFOMSG.pack(0, 0, 0, 0, 0) + mask + _name(name)


def dump_links() -> Request:
    return RTM_GETLINK, NLM_F_DUMP, IFINFOMSG.pack(0, 0, 0, 0, 0)


def add_ifb(name: str) -> Request:
    """``ip link add NAME type ifb``"""
    info = nla(IFLA_LINKINFO, nla(IFLA_INFO_KIND, b"ifb"))
    body = IFINFOMSG.pack(0, 0, 0, 0, 0) + _name(name) + info
    return RTM_NEWLINK, NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE, body


def set_up(index: int, up: bool) -> Request:
    """``ip link set dev DEV up|down``"""
    return RTM_NEWLINK, NLM_F_ACK, IFINFOMSG.pack(0, 0, index, IFF_UP if up else 0, IFF_UP)


def set_addr_gen_mode(index: int, mode: int) -> Request:
    """``ip link set dev DEV addrgenmode MODE``: how IPv6 makes the link-local address when the
    device comes up (``none``: it makes none, so the device sends no DAD, RS or MLD)."""
    mode_attr = nla(IFLA_INET6_ADDR_GEN_MODE, struct.pack("=B", mode))
    body = IFINFOMSG.pack(0, 0, index, 0, 0) + nla(IFLA_AF_SPEC, nla(AF_INET6, mode_attr))
    return RTM_NEWLINK, NLM_F_ACK, body


def delete_link(index: int) -> Request:
    """``ip link del DEV``"""
    return RTM_DELLINK, NLM_F_ACK, IFINFOMSG.pack(0, 0, index, 0, 0)


def get_qdisc(index: int, parent: int) -> Request:
    """The qdisc at ``parent`` of device ``index``: the kernel answers a get only when asked
    for an echo."""
    return RTM_GETQDISC, NLM_F_ACK | NLM_F_ECHO, TCMSG.pack(0, index, 0, parent, 0)


def dump_qdiscs() -> Request:
    return RTM_GETQDISC, NLM_F_DUMP, TCMSG.pack(0, 0, 0, 0, 0)


def add_plug(index: int, limit: int, handle: int = 0) -> Request:
    """``tc qdisc add dev DEV root [handle H:] plug limit LIMIT``"""
    body = _plug(index, TCQ_PLUG_LIMIT, limit, handle)
    return RTM_NEWQDISC, NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE, body


def change_plug(index: int, action: int, limit: int) -> Request:
    """``tc qdisc change dev DEV root plug ACTION`` (what libxl sends through libnl)."""
    return RTM_NEWQDISC, NLM_F_ACK, _plug(index, action, limit)


def delete_root(index: int) -> Request:
    """``tc qdisc del dev DEV root``"""
    return RTM_DELQDISC, NLM_F_ACK, TCMSG.pack(0, index, 0, TC_H_ROOT, 0)


def add_ingress(index: int) -> Request:
    """``tc qdisc add dev DEV ingress``"""
    body = TCMSG.pack(0, index, INGRESS_HANDLE, TC_H_INGRESS, 0) + nla(TCA_KIND, b"ingress\0")
    return RTM_NEWQDISC, NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE, body


def delete_ingress(index: int) -> Request:
    """``tc qdisc del dev DEV ingress``"""
    body = TCMSG.pack(0, index, INGRESS_HANDLE, TC_H_INGRESS, 0) + nla(TCA_KIND, b"ingress\0")
    return RTM_DELQDISC, NLM_F_ACK, body


def add_u32_redirect(index: int, protocol: int, pref: int, target: int) -> Request:
    """``tc filter add dev DEV parent ffff: protocol P pref N u32 match u32 0 0 action mirred
    egress redirect dev TARGET``: a match-all u32 whose one action steals the packet for
    ``target``'s egress."""
    parms = MIRRED.pack(0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, target)
    action = nla(TCA_ACT_KIND, b"mirred\0")
    action += nla(TCA_ACT_OPTIONS | NLA_F_NESTED, nla(TCA_MIRRED_PARMS, parms))
    selector = U32_SEL.pack(TC_U32_TERMINAL, 0, 1, 0, 0, 0, 0, 0) + U32_KEY.pack(0, 0, 0, 0)
    options = nla(TCA_U32_ACT, nla(1, action)) + nla(TCA_U32_SEL, selector)
    info = pref << 16 | _socket.htons(protocol)
    body = TCMSG.pack(0, index, 0, INGRESS_HANDLE, info)
    body += nla(TCA_KIND, b"u32\0") + nla(TCA_OPTIONS, options)
    return RTM_NEWTFILTER, NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE, body


def delete_filter(index: int, parent: int, pref: int, protocol: int) -> Request:
    """``tc filter del dev DEV parent PARENT protocol P pref N``: every filter of that
    pref/protocol group (tcm_info carries both; no kind, so any kind)."""
    info = pref << 16 | _socket.htons(protocol)
    return RTM_DELTFILTER, NLM_F_ACK, TCMSG.pack(0, index, 0, parent, info)


def dump_filters(index: int, parent: int) -> Request:
    """``tc filter show dev DEV parent PARENT``"""
    return RTM_GETTFILTER, NLM_F_DUMP, TCMSG.pack(0, index, 0, parent, 0)


def _plug(index: int, action: int, limit: int, handle: int = 0) -> bytes:
    body = TCMSG.pack(0, index, handle, TC_H_ROOT, 0) + nla(TCA_KIND, b"plug\0")
    return body + nla(TCA_OPTIONS, PLUG_QOPT.pack(action, limit))


def _name(name: str) -> bytes:
    return nla(IFLA_IFNAME, name.encode("ascii") + b"\0")


# --- named network namespaces (``ip netns``): the throwaway ones ``check`` probes the kernel in

MS_BIND, MNT_DETACH = 0x1000, 2


def create_netns(name: str) -> None:
    """``ip netns add NAME``: a new network namespace, kept by a bind mount of its nsfs file
    under /run/netns. This thread steps into it to make it, and back; no program is run."""
    _check_name(name)
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    path = os.path.join(NETNS_RUN_DIR, name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _libc_call("unshare", CLONE_NEWNET)
            try:
                _libc_call(
                    "mount", b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None
                )
            finally:
                _setns(own)
        finally:
            os.close(own)
    except OSError:
        os.unlink(path)
        raise


def remove_netns(name: str) -> None:
    """``ip netns del NAME``: its mount detached and its file removed (the namespace goes with
    its last user)."""
    _check_name(name)
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        _libc_call("umount2", path.encode(), MNT_DETACH)
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: not mounted (a half-made one)
            raise
    os.unlink(path)


def list_netns() -> list[str]:
    """``ip netns list``: the named namespaces."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _check_name(netns: str) -> None:
    if not netns or "/" in netns or netns in (".", ".."):
        raise OSError(errno.EINVAL, f"{netns!r} is not a namespace name")


def _libc_call(function: str, *args: object) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, function)(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{function}: {os.strerror(code)}")
