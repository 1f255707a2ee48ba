"""Packets for the buffering proofs: a guest namespace that sends, a dom0 side that receives.

The guest is a namespace holding the peer of a veth whose dom0 end is the vif. Its UDP (IPv4 and
IPv6) and ARP leave the guest, arrive as ingress on the vif, are redirected into the IFB's plug,
and, once released, re-enter the dom0 stack as if received on the vif. A UDP socket in dom0
counts what arrived; ARP is observed by the neighbour entry dom0 learns from the request.

Sockets are created inside a namespace by a short-lived thread that ``setns``-es itself there
(namespaces are per thread); a socket stays in the namespace it was made in.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections import Counter
from typing import Any

CLONE_NEWNET = 0x40000000
DOM0_V4, GUEST_V4 = "10.77.0.1", "10.77.0.2"  # the addresses of a Wire of subnet 77
DOM0_V6, GUEST_V6 = "fd77::1", "fd77::2"
PORT = 7777
SO_SNDBUFFORCE = 32
_libc = ctypes.CDLL(None, use_errno=True)


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def socket_in(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside network namespace ``ns``."""
    made: list[Any] = []

    def make() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind, proto))
        except BaseException as err:  # handed to the caller
            made.append(err)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]  # type: ignore[no-any-return]


def mac_of(ns: str, dev: str) -> str:
    return str(json.loads(_run("ip", "-n", ns, "-j", "link", "show", dev))[0]["address"])


def addresses(subnet: int) -> tuple[str, str, str, str]:
    """dom0's and the guest's IPv4 and IPv6 addresses on a wire (77: the module's constants)."""
    return f"10.{subnet}.0.1", f"10.{subnet}.0.2", f"fd{subnet}::1", f"fd{subnet}::2"


class Wire:
    """A guest behind ``vif`` (in dom0 namespace ``dom0``) and a receiver on dom0's side.

    Several wires in one dom0 (a domain with several vifs) each need their own ``subnet``.
    A guest with IPv6 sends some of its own (router solicitations, MLD reports) whenever its
    kernel likes; a test that counts every packet in the plug uses ``ipv6=False``, whose guest
    sends nothing but the test's frames.
    """

    def __init__(self, dom0: str, vif: str, peer: str, subnet: int = 77, ipv6: bool = True) -> None:
        self.dom0, self.vif, self.peer = dom0, vif, peer
        self.dom0_v4, self.guest_v4, self.dom0_v6, self.guest_v6 = addresses(subnet)
        self.guest = "rnb-guest-" + uuid.uuid4().hex[:8]
        _run("ip", "netns", "add", self.guest)
        _run("ip", "-n", dom0, "link", "set", peer, "netns", self.guest)
        g = ("ip", "-n", self.guest)
        d = ("ip", "-n", dom0)
        self.ipv6 = ipv6
        if not ipv6:  # before the link is up, so the guest never makes an IPv6 address
            _run(
                "ip",
                "netns",
                "exec",
                self.guest,
                "sysctl",
                "-qw",
                f"net.ipv6.conf.{peer}.disable_ipv6=1",
            )
        _run(*g, "link", "set", "lo", "up")
        _run(*g, "link", "set", peer, "up")
        _run(*g, "addr", "add", f"{self.guest_v4}/24", "dev", peer)
        _run(*d, "addr", "add", f"{self.dom0_v4}/24", "dev", vif)
        if ipv6:
            _run(*g, "addr", "add", f"{self.guest_v6}/64", "dev", peer, "nodad")
            _run(*d, "addr", "add", f"{self.dom0_v6}/64", "dev", vif, "nodad")
        # Static neighbours, so UDP never waits on ARP/ND that the plug may be holding.
        vif_mac = mac_of(dom0, vif)
        for addr in (self.dom0_v4, self.dom0_v6)[: 2 if ipv6 else 1]:
            _run(*g, "neigh", "replace", addr, "lladdr", vif_mac, "dev", peer, "nud", "permanent")
        self.peer_mac = mac_of(self.guest, peer)
        self.rx4 = socket_in(dom0, socket.AF_INET, socket.SOCK_DGRAM)
        self.rx4.bind((self.dom0_v4, PORT))
        self.rx6 = socket_in(dom0, socket.AF_INET6, socket.SOCK_DGRAM)
        if ipv6:  # unbound, it never receives
            self.rx6.bind((self.dom0_v6, PORT))
        self.tx4 = socket_in(self.guest, socket.AF_INET, socket.SOCK_DGRAM)
        self.tx6 = socket_in(self.guest, socket.AF_INET6, socket.SOCK_DGRAM)
        # Held packets stay charged to the sending socket (the kernel keeps the socket
        # reference across the veth), so a default send buffer would block the sender long
        # before the plug's limit: give the guest's sockets room, and never block.
        for sock in (self.tx4, self.tx6):
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 64 << 20)
        self.raw = socket_in(self.guest, socket.AF_PACKET, socket.SOCK_RAW)
        self.raw.bind((peer, 0))
        self.received: Counter[str] = Counter()

    def close(self) -> None:
        for sock in (self.rx4, self.rx6, self.tx4, self.tx6, self.raw):
            sock.close()
        subprocess.run(["ip", "netns", "del", self.guest], check=False)

    # --- sending, from the guest --------------------------------------------------------

    def send(self, label: str, v4: int = 0, v6: int = 0, size: int = 64) -> None:
        """Send ``v4``/``v6`` UDP datagrams whose payload starts with ``label``."""
        assert self.ipv6 or not v6, "this wire's guest has no IPv6"
        body = label.encode().ljust(size, b".")
        for _ in range(v4):
            self.tx4.sendto(body, socket.MSG_DONTWAIT, (self.dom0_v4, PORT))
        for _ in range(v6):
            self.tx6.sendto(body, socket.MSG_DONTWAIT, (self.dom0_v6, PORT))

    def send_arp(self) -> None:
        """One ARP request from the guest: who has dom0's IPv4 address, tell the guest's."""
        mac = bytes.fromhex(self.peer_mac.replace(":", ""))
        frame = (
            b"\xff" * 6
            + mac
            + struct.pack("!H", 0x0806)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + mac
            + socket.inet_aton(self.guest_v4)
            + b"\x00" * 6
            + socket.inet_aton(self.dom0_v4)
        )
        self.raw.send(frame)

    # --- receiving, in dom0 -------------------------------------------------------------

    def drain(self, settle: float = 0.5) -> Counter[str]:
        """Collect what arrives until nothing has come for ``settle`` seconds; counts by label."""
        got: Counter[str] = Counter()
        deadline = time.monotonic() + settle
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.rx4, self.rx6], [], [], left)
            for sock in ready:
                data = sock.recv(65535)
                family = "v4" if sock is self.rx4 else "v6"
                got[f"{family}:{data.split(b'.', 1)[0].decode()}"] += 1
                deadline = time.monotonic() + settle
        self.received.update(got)
        return got

    def dom0_learned_guest_arp(self) -> bool:
        """Whether dom0 has a neighbour entry for the guest (made by the guest's ARP request)."""
        out = _run("ip", "-n", self.dom0, "-j", "neigh", "show", self.guest_v4, "dev", self.vif)
        return any(entry.get("lladdr") for entry in json.loads(out or "[]"))
