"""``remus-netbuf`` on a kernel with sch_plug (in the kernel tier: a VM): what the host cannot show.

A ``remus-netbuf`` process costs seconds in a TCG VM, so each test makes few of them and builds the
rest of its state with ``tc``/``ip``. Packets come from a guest namespace (tests/packets.py);
since a guest may send a little traffic of its own (IPv6 multicast reports), held-packet counts
are checked against the datagrams we sent by label, and against ``tc -s`` read around the run.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.bed import Bed, netbuf_path
from tests.packets import Wire

pytestmark = pytest.mark.vm

VIF = "vif5.0"
PATH5, PATH7 = netbuf_path(5), netbuf_path(7)
STATS = re.compile(
    r"(?P<ifb>\S+): backlog (?P<backlog_bytes>\d+)b (?P<backlog_packets>\d+)p "
    r"drops (?P<drops>\d+) requeues (?P<requeues>\d+) overlimits (?P<overlimits>\d+) "
    r"sent (?P<bytes>\d+)b (?P<packets>\d+)p\n"
)


@pytest.fixture
def wire(bed: Bed) -> Iterator[Wire]:
    peer = bed.add_vif(VIF)
    bed.domain(5)
    w = Wire(bed.ns, VIF, peer)
    yield w
    w.close()


def plug_by_hand(bed: Bed, ifb: str, limit: int = 100_000) -> None:
    bed.ip("link", "set", ifb, "up")
    bed.tc("qdisc", "add", "dev", ifb, "root", "plug", "limit", str(limit))


def redirect_by_hand(bed: Bed, vif: str, ifb: str) -> None:
    bed.tc("qdisc", "add", "dev", vif, "ingress")
    bed.tc(
        "filter", "add", "dev", vif, "parent", "ffff:", "protocol", "all", "pref", "10",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
    )  # fmt: skip


def install_by_hand(bed: Bed, vif: str, ifb: str, domid: int) -> None:
    """What a successful setup leaves (made with tc: a remus-netbuf-setup run costs seconds)."""
    plug_by_hand(bed, ifb)
    redirect_by_hand(bed, vif, ifb)
    bed.claim(domid, 0, ifb)
    bed.xs.seed(f"{netbuf_path(domid)}/hotplug-status", "connected")


def plug(bed: Bed, *args: str) -> str:
    result = bed.cli("plug", *args)
    assert result.returncode == 0, result
    return result.stdout


def stats(bed: Bed, ifb: str) -> dict[str, int]:
    match = STATS.fullmatch(plug(bed, ifb, "stats"))
    assert match is not None
    assert match["ifb"] == ifb
    return {k: int(v) for k, v in match.groupdict().items() if k != "ifb"}


def test_status_json_shows_a_real_netbuf_and_its_held_packets(bed: Bed, wire: Wire) -> None:
    result = bed.hotplug("setup", VIF, PATH5)
    assert result.returncode == 0, result.stderr
    wire.send("held", v4=4, size=100)  # a new plug starts closed: all of it stays
    before = bed.root_stats("ifb0")
    result = bed.cli("status", "--json")
    after = bed.root_stats("ifb0")
    assert result.returncode == 0, result  # a healthy netbuf is no anomaly
    doc = json.loads(result.stdout)
    assert doc["anomalies"] == []
    (row,) = doc["netbufs"]
    assert row | {"backlog_bytes": 0, "backlog_packets": 0} == {
        "domid": 5,
        "devid": 0,
        "vif": VIF,
        "ifb": "ifb0",
        "live": True,
        "ifb_exists": True,
        "ifb_up": True,
        "root_qdisc": "plug",
        "backlog_bytes": 0,
        "backlog_packets": 0,
        "drops": 0,
        "redirect": True,
        "hotplug_status": "connected",
    }
    assert 4 <= before["qlen"] <= row["backlog_packets"] <= after["qlen"]
    assert 4 * 142 <= before["backlog"] <= row["backlog_bytes"] <= after["backlog"]
    assert wire.drain(settle=0.2) == Counter()  # status only looked


def test_gc_unplugs_unclaimed_plugs_and_undoes_a_dead_domain_but_not_a_live_netbuf(
    bed: Bed,
) -> None:
    for vif in (VIF, "vif7.0"):
        bed.add_vif(vif)
    for ifb in ("ifb0", "ifb1", "ifb2"):
        bed.add_ifb(ifb)
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)  # the live netbuf
    plug_by_hand(bed, "ifb1")  # nobody claims it
    install_by_hand(bed, "vif7.0", "ifb2", 7)  # domain 7 died without its teardown

    result = bed.cli("status")
    assert result.returncode == 2, result
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"5 +0 +vif5\.0 +ifb0 +up +plug +\d+b/\d+p +0 +yes +connected", lines[1])
    assert re.fullmatch(r"7 \(dead\) +0 +vif7\.0 +ifb2 +up +plug .* yes +connected", lines[2])
    assert [line.split(":")[0].strip() for line in lines[lines.index("") + 2 :]] == [
        "dead-domain-claim",
        "unclaimed-plug",
        "unclaimed-plug",
        "unclaimed-redirect",
    ]

    result = bed.cli("gc")
    assert result.returncode == 0, result
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        f"did remove-claim {PATH7}",
        "did unplug ifb1",
        "did unplug ifb2",
        "did remove-redirect vif7.0 to ifb2",
    ]
    for ifb in ("ifb1", "ifb2"):
        assert bed.root_qdisc(ifb) != "plug"
        assert not bed.is_up(ifb)
    assert not bed.has_ingress("vif7.0")
    assert bed.subtree(f"{PATH7}/") == {}
    bed.assert_installed(VIF, "ifb0", PATH5)  # the live netbuf, untouched
    assert bed.root_qdisc("ifb0") == "plug"


def test_plug_actions_from_the_command_line(bed: Bed, wire: Wire) -> None:
    bed.add_ifb("ifb0")
    plug_by_hand(bed, "ifb0")
    redirect_by_hand(bed, VIF, "ifb0")

    wire.send("e0", v4=3)  # a new plug starts closed: held
    assert wire.drain(settle=0.2) == Counter()
    plug(bed, "ifb0", "buffer")  # epoch 0 ends here
    plug(bed, "ifb0", "release")  # and leaves
    assert wire.drain()["v4:e0"] == 3

    # Room for four more 242-byte packets beside what the guest sent of its own after the mark.
    room = bed.root_stats("ifb0")["backlog"] + 1000
    plug(bed, "ifb0", "limit", str(room))
    wire.send("fill", v4=8, size=200)
    assert wire.drain(settle=0.2) == Counter()
    plug(bed, "ifb0", "release-all")  # unplugged: what it held leaves, and later packets pass
    kept = wire.drain()["v4:fill"]
    assert 1 <= kept <= 4
    wire.send("free", v4=2)
    assert wire.drain()["v4:free"] == 2

    counters = stats(bed, "ifb0")
    observed = bed.root_stats("ifb0")
    assert (counters["backlog_bytes"], counters["backlog_packets"]) == (0, 0)
    assert 8 - kept <= counters["drops"] <= observed["drops"]
    assert 3 + kept + 2 <= counters["packets"] <= observed["packets"]
    assert counters["bytes"] <= observed["bytes"]
    assert counters["requeues"] == observed["requeues"]
