"""Output buffering proven on a kernel with sch_plug (the kernel tier: a VM).

Driven the way libxl drives it: ``remus-netbuf-setup`` installs the netbuf, the plug API runs the
epochs, ``remus-netbuf-setup teardown`` removes it. The verdicts come from ``tc``/``ip`` and from
packets a guest namespace sends and dom0 receives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from remus_netbuf.errors import PlugError
from remus_netbuf.plug import Plug
from tests.bed import Bed, netbuf_path
from tests.packets import Wire

pytestmark = pytest.mark.vm

VIF = "vif5.0"
PATH5 = netbuf_path(5, 0)


@pytest.fixture
def wire(bed: Bed) -> Iterator[Wire]:
    peer = bed.add_vif(VIF)
    bed.domain(5)
    w = Wire(bed.ns, VIF, peer)
    yield w
    w.close()


@pytest.fixture
def wire4(bed: Bed) -> Iterator[Wire]:
    """A guest without IPv6: it sends nothing of its own, so the plug's counts are the test's."""
    peer = bed.add_vif(VIF)
    bed.domain(5)
    w = Wire(bed.ns, VIF, peer, ipv6=False)
    yield w
    w.close()


def setup_ok(bed: Bed, vif: str = VIF, path: str = PATH5) -> str:
    result = bed.hotplug("setup", vif, path)
    assert result.returncode == 0, result.stderr
    ifb = bed.node(f"{path}/ifb")
    assert ifb is not None
    return ifb


def held_of(wire: Wire, plug: Plug, count: int, size: int) -> tuple[int, int]:
    """Send ``count`` datagrams into the plug; (packets held, packets dropped) by them.

    sch_plug has no dump operation, so its limit cannot be read back (``tc`` shows none): it
    is measured by what the plug accepts.
    """
    before = plug.stats()
    wire.send("fill", v4=count, size=size)
    after = plug.stats()
    return after.backlog_packets - before.backlog_packets, after.drops - before.drops


# --- the hotplug contract on a real plug -------------------------------------------------


def test_setup_installs_plug_passing_libxls_check_and_teardown_leaves_nothing(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    bed.xs.seed(f"{PATH5}/hotplug-error", "stale, from an earlier failed run")
    ifb = setup_ok(bed)
    assert ifb == "ifb0"
    bed.assert_installed(VIF, ifb, PATH5)
    assert bed.root_qdisc(bed.node(f"{PATH5}/ifb") or "") == "plug"  # what libxl checks
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb=ifb)
    assert result.returncode == 0, result.stderr
    bed.assert_clean(VIF, ifb, PATH5)
    assert bed.subtree(PATH5) == {} or set(bed.subtree(PATH5)) == {PATH5}


def test_configured_protocols_on_an_autocreated_ifb(bed: Bed) -> None:
    bed.configure(protocols="ip")
    bed.add_vif(VIF)
    bed.domain(5)
    ifb = setup_ok(bed)  # autocreated: there was no IFB
    assert ifb == "ifb0"
    bed.assert_installed(VIF, ifb, PATH5, protocols="ip")
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb=ifb)
    assert result.returncode == 0, result.stderr
    bed.assert_clean(VIF, ifb, PATH5)


def test_default_limit_holds_a_burst_without_drops(bed: Bed, wire4: Wire) -> None:
    ifb = setup_ok(bed)  # plug_limit 10000000
    with Plug(ifb, netns=bed.ns) as plug:
        held, dropped = held_of(wire4, plug, 200, 1000)
        assert (held, dropped) == (200, 0)


def test_second_vif_gets_another_ifb_and_plugged_unclaimed_ifb_is_busy(bed: Bed) -> None:
    for name in ("ifb0", "ifb1", "ifb2"):
        bed.add_ifb(name)
    bed.tc("qdisc", "add", "dev", "ifb0", "root", "plug", "limit", "1000")  # nobody claims it
    bed.add_vif(VIF)
    bed.add_vif("vif5.1")
    bed.domain(5)
    first = setup_ok(bed, VIF, PATH5)
    second = setup_ok(bed, "vif5.1", netbuf_path(5, 1))
    assert (first, second) == ("ifb1", "ifb2")
    bed.assert_installed("vif5.1", "ifb2", netbuf_path(5, 1))
    assert bed.root_qdisc("ifb0") == "plug"  # the busy IFB untouched
    assert not bed.is_up("ifb0")


def test_teardown_after_ifb_deleted(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.domain(5)
    ifb = setup_ok(bed)
    bed.ip("link", "del", ifb)
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb=ifb)
    assert result.returncode == 0, result.stderr
    bed.assert_clean(VIF, None, PATH5)


def test_teardown_without_remus_ifb_after_success(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.domain(5)
    ifb = setup_ok(bed)
    result = bed.hotplug("teardown", VIF, PATH5)
    assert result.returncode == 0, result.stderr
    bed.assert_clean(VIF, ifb, PATH5)


def destroy_domain(bed: Bed, domid: int, vif: str) -> None:
    """What ``xl destroy`` does before libxl's remus code runs our teardown: the domain's
    directories go (``/libxl/<domid>``, and our claim with it) and so does its vif."""
    bed.xs.remove(f"/libxl/{domid}")
    bed.xs.remove(f"/local/domain/{domid}")
    bed.ip("link", "del", vif)


def test_teardown_after_xl_destroy_frees_the_ifb_whose_claim_went_with_the_domain(
    bed: Bed,
) -> None:
    """Forced failover: the primary destroyed under ``xl remus``. Without its claim, REMUS_IFB
    is freed all the same: its root is our plug (5245:) and no other live netbuf claims it."""
    bed.add_vif(VIF)
    bed.domain(5)
    ifb = setup_ok(bed)
    destroy_domain(bed, 5, VIF)
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb=ifb)
    assert result.returncode == 0, result.stderr
    assert f"{ifb}: tc qdisc del dev {ifb} root" in result.stderr
    bed.assert_clean(None, ifb, PATH5)
    assert bed.root_qdisc(ifb) is None  # left fresh: down, then unplugged
    status = bed.cli("status")
    assert (status.returncode, "anomalies: none" in status.stdout) == (0, True), status


@pytest.mark.parametrize("whose", ["live claim", "xen script plug"])
def test_teardown_after_xl_destroy_leaves_an_ifb_not_provably_the_netbufs(
    bed: Bed, whose: str
) -> None:
    """Without a claim, REMUS_IFB is left plugged when another live netbuf claims it, or when
    its plug is not ours (Xen's script adds one with a handle the kernel picks)."""
    bed.add_vif(VIF)
    bed.domain(5)
    if whose == "live claim":
        ifb = setup_ok(bed)
        bed.domain(7)
        bed.claim(7, 0, ifb)
    else:
        ifb = "ifb0"
        bed.add_ifb(ifb, up=True)
        bed.tc("qdisc", "add", "dev", ifb, "root", "plug", "limit", "1000")
    before = bed.tc("qdisc", "show", "dev", ifb)
    destroy_domain(bed, 5, VIF)
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb=ifb)
    assert result.returncode == 0, result.stderr
    assert "left alone" in result.stderr
    assert bed.is_up(ifb) and bed.root_qdisc(ifb) == "plug"
    assert bed.tc("qdisc", "show", "dev", ifb) == before


def test_plug_api_errors_name_ifb_and_action(bed: Bed) -> None:
    bed.add_ifb("ifb0")
    with pytest.raises(PlugError, match="ifb0: plug open failed: root qdisc is"):
        Plug("ifb0", netns=bed.ns)
    bed.tc("qdisc", "add", "dev", "ifb0", "root", "plug", "limit", "1000")
    with Plug("ifb0", netns=bed.ns) as plug:
        with pytest.raises(PlugError, match="ifb0: plug limit failed"):
            plug.set_limit(0)
        plug.set_limit(5000)
        bed.tc("qdisc", "del", "dev", "ifb0", "root")
        with pytest.raises(PlugError, match="ifb0: plug stats failed"):
            plug.stats()


# --- packets: output commit, epoch by epoch -----------------------------------------------


def test_epochs_hold_and_release_exactly_the_released_epoch(bed: Bed, wire: Wire) -> None:
    ifb = setup_ok(bed)
    with Plug(ifb, netns=bed.ns) as plug:
        # A new plug starts closed: epoch 0 is held until libxl's first release.
        wire.send("e0", v4=3, v6=3)
        wire.send_arp()
        assert wire.drain() == Counter()
        assert not wire.dom0_learned_guest_arp()
        assert plug.stats().backlog_packets >= 7

        plug.buffer()  # checkpoint 1 starts: epoch 0 ends here
        wire.send("e1", v4=2, v6=2)
        assert wire.drain() == Counter()

        plug.release_one()  # checkpoint 1 is safe: epoch 0 (and only it) leaves
        assert wire.drain() == Counter({"v4:e0": 3, "v6:e0": 3})
        assert wire.dom0_learned_guest_arp()

        plug.buffer()
        plug.release_one()
        assert wire.drain() == Counter({"v4:e1": 2, "v6:e1": 2})

        plug.release_all()  # unplugged: later packets pass unbuffered ...
        wire.send("free", v4=2, v6=1)
        assert wire.drain() == Counter({"v4:free": 2, "v6:free": 1})

        plug.buffer()  # ... until the next buffer
        wire.send("e3", v4=1)
        assert wire.drain() == Counter()
        plug.buffer()
        plug.release_one()
        assert wire.drain() == Counter({"v4:e3": 1})
        assert plug.stats().drops == 0


def test_protocols_ip_lets_ipv6_escape_unbuffered(bed: Bed, wire: Wire) -> None:
    bed.configure(protocols="ip")
    ifb = setup_ok(bed)
    with Plug(ifb, netns=bed.ns) as plug:
        wire.send("held", v4=2, v6=2)
        assert wire.drain() == Counter({"v6:held": 2})  # IPv6 leaves: output commit broken
        plug.buffer()
        plug.release_one()
        assert wire.drain() == Counter({"v4:held": 2})


def test_protocols_all_holds_ipv6_too(bed: Bed, wire: Wire) -> None:
    ifb = setup_ok(bed)
    with Plug(ifb, netns=bed.ns) as plug:
        wire.send("held", v4=2, v6=2)
        assert wire.drain() == Counter()
        plug.buffer()
        plug.release_one()
        assert wire.drain() == Counter({"v4:held": 2, "v6:held": 2})


def test_byte_limit_drops_beyond_it_and_keeps_the_earlier_packets(bed: Bed, wire4: Wire) -> None:
    bed.configure(plug_limit=1500)
    ifb = setup_ok(bed)
    with Plug(ifb, netns=bed.ns) as plug:
        held, dropped = held_of(wire4, plug, 30, 200)  # 242 bytes each on the wire
        assert plug.stats().backlog_bytes <= 1500
        assert 1 <= held <= 6 and dropped == 30 - held
        plug.buffer()
        plug.release_one()
        assert wire4.drain()["v4:fill"] == held  # every packet that was held arrives
        plug.set_limit(10_000)  # the API raises it: now 41 of them fit
        held, dropped = held_of(wire4, plug, 60, 200)
        assert 35 <= held <= 41 and dropped == 60 - held
