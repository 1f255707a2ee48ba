"""A plugged IFB sends nothing of its own: proven with packets, on a kernel with sch_plug.

An IFB that comes up with IPv6 makes a link-local address and sends DAD, router solicitations
and MLD reports out through its root qdisc: into the plug, counted with the guest's packets.
Setup makes it silent first (``addrgenmode none``), whether it creates the IFB or picks one that
was up with its address made already. The guests here send nothing of their own either (no
IPv6, no address): every packet a plug holds is a frame the test sent, so the counts are exact.
``tc -s`` counts what the plug holds; the guest's own interface counters what it sent.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from remus_netbuf.plug import Plug
from tests.bed import Bed, netbuf_path, sh
from tests.packets import socket_in
from tests.vmtier import scaled

pytestmark = pytest.mark.vm(weight=40)

# Seconds of a guest sending nothing. Not scaled by the tier's slowdown, which is Python's: the
# IPv6 timers (DAD after up to 1 s, router solicitations every 4 s, MLD reports within 1 s) run on
# the guest's clock, which keeps wall time under TCG. Before setup silenced the IFB, 10 s caught
# them every time.
IDLE = 10.0
ETHERTYPE = 0x88B5  # IEEE "local experimental": nothing in dom0 answers or forwards it


class QuietGuest:
    """A guest namespace behind ``vif`` with no IPv6 and no address: it sends only what the
    test sends, raw frames through an AF_PACKET socket."""

    def __init__(self, bed: Bed, vif: str) -> None:
        self.ns = "rnb-quiet-" + uuid.uuid4().hex[:8]
        self.peer = bed.add_vif(vif)  # both ends up: the peer's IPv6 starts in dom0's namespace
        sh("ip", "netns", "add", self.ns)
        for key in ("all", "default"):
            sh(
                "ip",
                "netns",
                "exec",
                self.ns,
                "sysctl",
                "-qw",
                f"net.ipv6.conf.{key}.disable_ipv6=1",
            )
        bed.ip("link", "set", self.peer, "down")
        bed.ip("link", "set", self.peer, "netns", self.ns)
        sh("ip", "-n", self.ns, "link", "set", self.peer, "up")
        self.raw = socket_in(self.ns, socket.AF_PACKET, socket.SOCK_RAW)
        self.raw.bind((self.peer, 0))

    def close(self) -> None:
        self.raw.close()
        sh("ip", "netns", "del", self.ns, check=False)

    def send(self, count: int) -> None:
        frame = b"\xff" * 6 + b"\x02" + b"\x00" * 5 + ETHERTYPE.to_bytes(2, "big") + b"x" * 50
        for _ in range(count):
            self.raw.send(frame)

    def sent(self) -> int:
        """Packets the guest's interface has sent, as the kernel counts them."""
        shown = json.loads(sh("ip", "-n", self.ns, "-s", "-j", "link", "show", self.peer).stdout)
        return int(shown[0]["stats64"]["tx"]["packets"])


@pytest.fixture
def guests(bed: Bed) -> Iterator[list[QuietGuest]]:
    bed.domain(5)
    made = [QuietGuest(bed, "vif5.0"), QuietGuest(bed, "vif5.1")]
    yield made
    for guest in made:
        guest.close()


def held_and_sent(bed: Bed, ifb: str) -> tuple[int, int]:
    stats = bed.root_stats(ifb)
    return stats["qlen"], stats["packets"]


def ipv6_addresses(bed: Bed, dev: str) -> list[str]:
    shown = json.loads(bed.ip("-6", "-j", "addr", "show", "dev", dev) or "[]")
    return [a["local"] for link in shown for a in link.get("addr_info", [])]


def test_plugs_hold_only_the_guests_packets(bed: Bed, guests: list[QuietGuest]) -> None:
    """ifb0 is up with its link-local address made before setup picks it; ifb1 is created by
    setup. After an idle spell both plugs hold nothing; then exactly the guest's frames, and an
    epoch's release lets exactly its frames out."""
    bed.add_ifb("ifb0", up=True)
    deadline = time.monotonic() + scaled(10)
    while not ipv6_addresses(bed, "ifb0"):  # made once it is up: the case to silence
        assert time.monotonic() < deadline, "ifb0 never got its link-local address"
        time.sleep(0.1)
    paths = [netbuf_path(5, 0), netbuf_path(5, 1)]
    for n, path in enumerate(paths):
        result = bed.hotplug("setup", f"vif5.{n}", path)
        assert result.returncode == 0, result.stderr
        assert f"ifb{n}: ip link set dev ifb{n} addrgenmode none" in result.stderr
    assert [bed.node(f"{path}/ifb") for path in paths] == ["ifb0", "ifb1"]
    for ifb in ("ifb0", "ifb1"):
        assert bed.links()[ifb]["inet6_addr_gen_mode"] == "none"
        assert ipv6_addresses(bed, ifb) == []
    time.sleep(IDLE)
    assert [held_and_sent(bed, ifb) for ifb in ("ifb0", "ifb1")] == [(0, 0), (0, 0)]

    guest = guests[1]
    before = guest.sent()
    guest.send(3)
    assert guest.sent() - before == 3
    assert held_and_sent(bed, "ifb1") == (3, 0)
    with Plug("ifb1", netns=bed.ns) as plug:
        plug.buffer()  # the epoch of those 3 ends; the next one's packets queue behind it
        guest.send(4)
        assert plug.release_one() is not None
    assert held_and_sent(bed, "ifb1") == (4, 3)
    assert guest.sent() - before == 7
    assert held_and_sent(bed, "ifb0") == (0, 0)  # the other guest sent nothing

    for n, path in enumerate(paths):
        result = bed.hotplug("teardown", f"vif5.{n}", path, remus_ifb=f"ifb{n}")
        assert result.returncode == 0, result.stderr
        bed.assert_clean(f"vif5.{n}", f"ifb{n}", path)
    # What stays changed on a freed IFB: down, no qdisc, and addrgenmode none.
    assert bed.links()["ifb0"]["inet6_addr_gen_mode"] == "none"
