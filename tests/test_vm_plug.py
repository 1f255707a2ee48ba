"""The epoch guard and PlugGroup proven with packets, on a kernel with sch_plug.

The netbufs are set up by ``remus-netbuf-setup`` as libxl runs it, and every packet a plug
counts is a datagram the test sent, so that ``tc``'s counts can be checked exactly too. The
guests' own IPv6 (router solicitations, MLD reports), which comes when it pleases, is kept out by
``protocols=ip``; the IFBs send nothing of their own, as setup makes them (addrgenmode none:
tests/test_vm_silent_ifb.py). The verdicts come from the datagrams dom0 receives, counted by
label, and from ``tc -s qdisc`` as an independent observer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import pytest

from remus_netbuf.errors import EpochOutstanding
from remus_netbuf.plug import Plug, PlugGroup
from tests.bed import Bed, netbuf_path
from tests.packets import Wire

pytestmark = pytest.mark.vm(weight=30)

VIFS = ("vif5.0", "vif5.1")
PATHS = (netbuf_path(5, 0), netbuf_path(5, 1))


@pytest.fixture
def wires(bed: Bed) -> Iterator[list[Wire]]:
    """Domain 5 with two vifs, each a guest on its own subnet."""
    bed.configure(protocols="ip")
    bed.domain(5)
    made = [Wire(bed.ns, vif, bed.add_vif(vif), subnet=77 + n) for n, vif in enumerate(VIFS)]
    yield made
    for wire in made:
        wire.close()


def setup_ok(bed: Bed, n: int) -> str:
    result = bed.hotplug("setup", VIFS[n], PATHS[n])
    assert result.returncode == 0, result.stderr
    ifb = bed.node(f"{PATHS[n]}/ifb")
    assert ifb is not None
    assert bed.root_stats(ifb)["qlen"] == 0  # nothing but our datagrams will enter the plug
    return ifb


def held_and_sent(bed: Bed, ifb: str) -> tuple[int, int]:
    """(packets the plug holds, packets it has let out), as tc counts them."""
    stats = bed.root_stats(ifb)
    return stats["qlen"], stats["packets"]


def test_double_buffer_on_the_raw_kernel_lets_epoch_1_out_unacknowledged(
    bed: Bed, wires: list[Wire]
) -> None:
    """The hazard, on the kernel itself (the guard bypassed): the second buffer overwrites
    epoch 0's count with epoch 1's, and the release meant for epoch 0 lets 5 packets out."""
    wire, ifb = wires[0], setup_ok(bed, 0)
    with Plug(ifb, netns=bed.ns, guard=False) as plug:
        wire.send("e0", v4=2)
        plug.buffer()  # epoch 0 closed: 2 packets
        wire.send("e1", v4=5)
        plug.buffer()  # epoch 1 closed: 5 packets, and the kernel forgot epoch 0's 2
        assert held_and_sent(bed, ifb) == (7, 0)
        plug.release_one()  # meant for epoch 0, acknowledged alone
        arrived = wire.drain()
        assert arrived == Counter({"v4:e0": 2, "v4:e1": 3})  # 3 of epoch 1's escaped
        assert held_and_sent(bed, ifb) == (2, 5)


def test_the_guard_refuses_the_second_buffer_and_only_epoch_0_leaves(
    bed: Bed, wires: list[Wire]
) -> None:
    wire, ifb = wires[0], setup_ok(bed, 0)
    with Plug(ifb, netns=bed.ns) as plug:
        wire.send("e0", v4=2)
        plug.buffer()
        wire.send("e1", v4=5)
        with pytest.raises(EpochOutstanding, match=rf"^{ifb}: plug buffer refused: epoch 0 "):
            plug.buffer()
        assert plug.release_one() == 0
        assert wire.drain() == Counter({"v4:e0": 2})  # epoch 1 held, all 5
        assert held_and_sent(bed, ifb) == (5, 2)
        assert plug.release_one() is None  # nothing unreleased: nothing sent, nothing leaves
        assert wire.drain(settle=0.2) == Counter()
        plug.buffer()
        assert plug.release_one() == 1
        assert wire.drain() == Counter({"v4:e1": 5})
        assert held_and_sent(bed, ifb) == (0, 7)


def test_a_two_vif_domain_driven_by_plug_group_through_three_epochs(
    bed: Bed, wires: list[Wire]
) -> None:
    """for_domain finds both IFBs in xenstore; at each epoch one batch marks both plugs, and
    each release lets out exactly the released epoch's packets, on both vifs."""
    ifbs = [setup_ok(bed, 0), setup_ok(bed, 1)]
    sends = {0: (2, 3, 4), 1: (5, 1, 3)}  # per vif, per epoch: distinct, so no mix-up hides
    with PlugGroup.for_domain(5, netns=bed.ns, xenstore=bed.xs_socket) as group:
        assert group.ifbs == ifbs
        for n, wire in enumerate(wires):
            wire.send("e0", v4=sends[n][0])
        for epoch in range(3):
            group.buffer()  # checkpoint epoch+1 starts: epoch `epoch` is closed on both
            if epoch < 2:
                for n, wire in enumerate(wires):
                    wire.send(f"e{epoch + 1}", v4=sends[n][epoch + 1])
            assert [w.drain(settle=0.2) for w in wires] == [Counter(), Counter()]
            assert group.release_one() == dict.fromkeys(ifbs, epoch)
            for n, wire in enumerate(wires):
                assert wire.drain() == Counter({f"v4:e{epoch}": sends[n][epoch]})
                later = sends[n][epoch + 1] if epoch < 2 else 0
                assert held_and_sent(bed, ifbs[n]) == (later, sum(sends[n][: epoch + 1]))
        stats = group.stats()
        assert [(stats[i].packets, stats[i].backlog_packets, stats[i].drops) for i in ifbs] == [
            (9, 0, 0),
            (9, 0, 0),
        ]
    for n, wire in enumerate(wires):
        assert wire.received == Counter({f"v4:e{e}": sends[n][e] for e in range(3)})


STATS_LINE = re.compile(r"(ifb\d+): backlog 0b 0p drops 0 requeues 0 overlimits \d+ sent 0b 0p")


def test_plug_command_drives_a_domain_in_one_run(bed: Bed, wires: list[Wire]) -> None:
    ifbs = [setup_ok(bed, 0), setup_ok(bed, 1)]
    for action in ("buffer", "release", "release-all"):
        result = bed.cli("plug", "--domain", "5", action)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    result = bed.cli("plug", *ifbs, "stats")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert [STATS_LINE.fullmatch(line) is not None for line in lines] == [True, True], lines
    assert [line.split(":")[0] for line in lines] == ifbs
    for wire in wires:  # release-all took on both: they pass unbuffered
        wire.send("free", v4=2)
        assert wire.drain() == Counter({"v4:free": 2})
