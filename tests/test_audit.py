"""What ``status`` reports and ``gc`` may repair, from hand-built snapshots: no kernel, no xenstore.

A :class:`World` is built the way the system gets into a state: ``netbuf()`` leaves what a
successful setup leaves (claim, IFB up with a plug, the vif's redirect, hotplug-status), and
the other builders add the strays. Every anomaly kind is checked with its repairs, and the rule
that gc repairs only what belongs to no live netbuf is checked on random worlds too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remus_netbuf.audit import (
    VIF_NAME,
    Anomaly,
    Plugged,
    Repair,
    Row,
    Snapshot,
    anomalies,
    rows,
    vif_name,
)
from remus_netbuf.decide import Claim, Ifb, netbuf_path

KIND_ORDER = [
    "bad-config",
    "dead-domain-claim",
    "claim-not-ifb",
    "claim-without-plug",
    "claim-without-redirect",
    "unclaimed-plug",
    "unclaimed-redirect",
    "double-claim",
]


@dataclass
class World:
    """A snapshot under construction."""

    claims: list[Claim] = field(default_factory=list)
    live: set[int] = field(default_factory=set)
    ifbs: dict[str, Ifb] = field(default_factory=dict)
    plugs: dict[str, Plugged] = field(default_factory=dict)
    redirects: dict[str, set[str]] = field(default_factory=dict)
    vif_names: dict[str, str] = field(default_factory=dict)
    hotplug: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str | None] = field(default_factory=dict)
    backend_vifs: set[str] = field(default_factory=set)
    config_error: str | None = None

    def netbuf(
        self,
        domid: int,
        devid: int,
        ifb: str,
        vifname: str | None = None,
        live: bool = True,
        backlog: tuple[int, int] = (0, 0),
    ) -> World:
        """What a successful setup leaves (for a dead domain: what its missed teardown left)."""
        path = netbuf_path(domid, devid)
        vif = vif_name(domid, devid, vifname)
        self.claim(domid, devid, ifb, live=live)
        self.vif_names[path] = vif
        self.plug(ifb, Plugged(backlog[0], backlog[1], 0))
        self.redirect(vif, ifb)
        self.hotplug[path] = "connected"
        return self

    def claim(self, domid: int, devid: int, ifb: str, live: bool = True) -> World:
        self.claims.append(Claim(domid, devid, ifb))
        if live:
            self.live.add(domid)
        return self

    def ifb(self, name: str, root: str | None = None, up: bool = False) -> World:
        self.ifbs[name] = Ifb(name, root, up)
        return self

    def plug(self, name: str, counters: Plugged | None = None) -> World:
        self.ifb(name, "plug", up=True)
        self.plugs[name] = counters or Plugged()
        return self

    def redirect(self, vif: str, ifb: str) -> World:
        self.redirects.setdefault(vif, set()).add(ifb)
        return self

    def snapshot(self) -> Snapshot:
        return Snapshot(
            claims=list(self.claims),
            live_domids=set(self.live),
            ifbs=list(self.ifbs.values()),
            plugs=dict(self.plugs),
            redirects={vif: set(targets) for vif, targets in self.redirects.items()},
            vif_names=dict(self.vif_names),
            hotplug_status=dict(self.hotplug),
            kinds=dict(self.kinds),
            backend_vifs=set(self.backend_vifs),
            config_error=self.config_error,
        )


def kinds(found: list[Anomaly]) -> list[str]:
    return [a.kind for a in found]


def repairs(found: list[Anomaly]) -> list[str]:
    return [str(r) for a in found for r in a.repairs]


def only(found: list[Anomaly], kind: str) -> Anomaly:
    matching = [a for a in found if a.kind == kind]
    assert len(matching) == 1, found
    return matching[0]


# --- vif names ------------------------------------------------------------------------------


def test_vif_name_is_libxls_default_unless_the_backend_names_it() -> None:
    assert vif_name(3, 1, None) == "vif3.1"
    assert vif_name(3, 1, "web0") == "web0"
    assert vif_name(3, 1, "") == "vif3.1"  # an empty vifname node is no name


# --- rows -----------------------------------------------------------------------------------


def test_row_of_a_healthy_netbuf() -> None:
    snap = World().netbuf(3, 0, "ifb0", backlog=(1500, 3)).snapshot()
    assert rows(snap) == [
        Row(
            domid=3,
            devid=0,
            vif="vif3.0",
            ifb="ifb0",
            live=True,
            ifb_exists=True,
            ifb_up=True,
            root_qdisc="plug",
            backlog_bytes=1500,
            backlog_packets=3,
            drops=0,
            redirect=True,
            hotplug_status="connected",
        )
    ]
    assert anomalies(snap) == []


def test_row_of_a_claim_whose_ifb_is_gone() -> None:
    snap = World().claim(3, 0, "ifb9").snapshot()
    (row,) = rows(snap)
    assert (row.vif, row.live, row.ifb_exists, row.ifb_up, row.root_qdisc) == (
        "vif3.0",
        True,
        False,
        False,
        None,
    )
    assert (row.backlog_bytes, row.backlog_packets, row.drops) == (0, 0, 0)
    assert (row.redirect, row.hotplug_status) == (False, None)


def test_row_of_a_dead_domain_and_an_ifb_without_plug() -> None:
    snap = World().claim(7, 1, "ifb2", live=False).ifb("ifb2", "pfifo_fast", up=False).snapshot()
    (row,) = rows(snap)
    assert (row.live, row.ifb_exists, row.ifb_up, row.root_qdisc) == (
        False,
        True,
        False,
        "pfifo_fast",
    )


def test_row_redirect_means_this_vif_to_this_ifb() -> None:
    world = World().claim(3, 0, "ifb0").plug("ifb0")
    world.redirect("vif3.0", "ifb1")  # to another IFB
    world.redirect("vif4.0", "ifb0")  # from another vif
    (row,) = rows(world.snapshot())
    assert row.redirect is False


def test_row_uses_the_backends_vifname() -> None:
    snap = World().netbuf(3, 0, "ifb0", vifname="web0").snapshot()
    (row,) = rows(snap)
    assert (row.vif, row.redirect) == ("web0", True)
    assert anomalies(snap) == []


def test_rows_are_ordered_by_domid_then_devid_numerically() -> None:
    world = World()
    for domid, devid in [(12, 0), (3, 10), (3, 2), (9, 0)]:
        world.netbuf(domid, devid, f"ifb{domid}x{devid}")
    order = [(r.domid, r.devid) for r in rows(world.snapshot())]
    assert order == [(3, 2), (3, 10), (9, 0), (12, 0)]


# --- anomalies: one kind at a time ----------------------------------------------------------


def test_dead_domain_claim_is_repaired_by_removing_the_claim() -> None:
    snap = World().claim(7, 0, "ifb9", live=False).snapshot()
    (anomaly,) = anomalies(snap)
    assert anomaly == Anomaly(
        "dead-domain-claim",
        "/libxl/7/remus/netbuf/0/ifb = ifb9, but domain 7 does not exist",
        [Repair("remove-claim", "/libxl/7/remus/netbuf/0")],
        ifb="ifb9",
        domid=7,
        devid=0,
        path="/libxl/7/remus/netbuf/0",
    )
    assert str(anomaly.repairs[0]) == "remove-claim /libxl/7/remus/netbuf/0"


def test_dead_domains_whole_netbuf_is_undone_by_gc() -> None:
    """A domain that died without teardown leaves claim, plug and redirect: gc undoes all."""
    snap = World().netbuf(7, 0, "ifb0", live=False).snapshot()
    found = anomalies(snap)
    assert kinds(found) == ["dead-domain-claim", "unclaimed-plug", "unclaimed-redirect"]
    assert repairs(found) == [
        "remove-claim /libxl/7/remus/netbuf/0",
        "unplug ifb0",
        "remove-redirect vif7.0 to ifb0",
    ]
    assert only(found, "unclaimed-plug").detail == "ifb0 has a plug but no live netbuf claims it"


@pytest.mark.parametrize(
    ("world", "why"),
    [
        (World().claim(3, 0, "ifb9"), "which does not exist"),
        (World().claim(3, 0, "ifb0").ifb("ifb0", None, up=True), "which has no plug"),
        (World().claim(3, 0, "ifb0").ifb("ifb0", "htb", up=True), "which has no plug"),
    ],
    ids=["ifb-missing", "default-qdisc", "other-qdisc"],
)
def test_live_claim_without_plug_is_reported_and_left_to_the_admin(world: World, why: str) -> None:
    (anomaly,) = anomalies(world.snapshot())
    assert anomaly.kind == "claim-without-plug"
    assert anomaly.detail == f"/libxl/3/remus/netbuf/0/ifb = {world.claims[0].ifb}, {why}"
    assert anomaly.repairs == []  # a live netbuf's: gc must not touch it


def test_dead_claim_without_plug_is_only_a_dead_domain_claim() -> None:
    found = anomalies(World().claim(7, 0, "ifb9", live=False).snapshot())
    assert kinds(found) == ["dead-domain-claim"]


def test_unclaimed_plugs_are_unplugged_in_natural_order() -> None:
    world = World().netbuf(3, 0, "ifb1")
    for name in ("ifb10", "ifb2"):
        world.plug(name)
    found = anomalies(world.snapshot())
    assert kinds(found) == ["unclaimed-plug", "unclaimed-plug"]
    assert repairs(found) == ["unplug ifb2", "unplug ifb10"]


def test_ifb_without_plug_and_without_claim_is_free_not_an_anomaly() -> None:
    snap = World().ifb("ifb0").ifb("ifb1", "pfifo_fast", up=True).snapshot()
    assert anomalies(snap) == []
    assert rows(snap) == []


def test_unclaimed_redirect_on_a_vif_of_no_netbuf_is_removed() -> None:
    snap = World().ifb("ifb0").redirect("vif9.0", "ifb0").snapshot()
    (anomaly,) = anomalies(snap)
    assert anomaly == Anomaly(
        "unclaimed-redirect",
        "vif9.0 redirects to ifb0, which no live netbuf claims for it",
        [Repair("remove-redirect", "vif9.0", "ifb0")],
        ifb="ifb0",
        vif="vif9.0",
    )


def test_a_redirect_that_is_not_a_netbufs_leftover_is_no_anomaly() -> None:
    """An admin's shaping: from a device that is no vif, or into an IFB with a root of its
    own. Only a vif's redirect into a plugged or bare IFB is a netbuf's leftover."""
    world = World().plug("ifb0").ifb("ifb1", "tbf", up=True)
    world.ifbs["ifb1"] = Ifb("ifb1", "tbf", True, root_handle=0x10000)
    world.ifb("ifb-shape", "tbf").redirect("eth1", "ifb0").redirect("eth2", "ifb-shape")
    world.redirect("vif3.1", "ifb1")  # a live guest's vif without netbuf, shaped through ifb1
    found = anomalies(world.snapshot())
    assert kinds(found) == ["unclaimed-plug"]  # ifb0's plug; eth1 and vif3.1 left alone
    world.backend_vifs.add("web7")  # dom0's backend names this vif: a vif after all
    world.redirect("web7", "ifb0")
    assert repairs([only(anomalies(world.snapshot()), "unclaimed-redirect")]) == [
        "remove-redirect web7 to ifb0"
    ]


def test_a_claim_on_a_device_that_is_no_ifb_is_its_own_anomaly() -> None:
    world = World().claim(3, 0, "eth1")
    world.kinds.update({"eth1": "veth", "ifb0": "ifb"})
    (anomaly,) = anomalies(world.snapshot())
    assert (anomaly.kind, anomaly.ifb, anomaly.domid, anomaly.repairs) == (
        "claim-not-ifb",
        "eth1",
        3,
        [],
    )
    assert "no IFB (kind veth)" in anomaly.detail


def test_a_broken_config_is_an_anomaly() -> None:
    world = World()
    world.config_error = "config /etc/xen/remus-netbuf.conf:3: unknown key 'plug_limt'"
    (anomaly,) = anomalies(world.snapshot())
    assert (anomaly.kind, anomaly.detail, anomaly.repairs) == (
        "bad-config",
        world.config_error,
        [],
    )


def test_unclaimed_redirect_beside_a_live_one_is_left_alone() -> None:
    """gc never touches a live netbuf's vif: the admin tears it down."""
    world = World().netbuf(3, 0, "ifb0").ifb("ifb5").ifb("ifb4")
    world.redirect("vif3.0", "ifb5").redirect("vif3.0", "ifb4")
    found = anomalies(world.snapshot())
    assert kinds(found) == ["unclaimed-redirect", "unclaimed-redirect"]
    assert [a.detail for a in found] == [
        "vif3.0 redirects to ifb4, which no live netbuf claims for it",
        "vif3.0 redirects to ifb5, which no live netbuf claims for it",
    ]
    assert repairs(found) == []


def test_redirect_into_a_live_netbufs_ifb_from_another_vif_is_stray() -> None:
    world = World().netbuf(3, 0, "ifb0").redirect("vif4.0", "ifb0")
    (anomaly,) = anomalies(world.snapshot())
    assert (anomaly.kind, repairs([anomaly])) == (
        "unclaimed-redirect",
        ["remove-redirect vif4.0 to ifb0"],
    )


def test_custom_vifname_owns_its_redirect_and_the_default_name_does_not() -> None:
    world = World().netbuf(3, 0, "ifb0", vifname="web0")
    assert anomalies(world.snapshot()) == []
    world.redirect("vif3.0", "ifb0")  # the name libxl would have used, had there been no vifname
    (anomaly,) = anomalies(world.snapshot())
    assert (anomaly.kind, repairs([anomaly])) == (
        "unclaimed-redirect",
        ["remove-redirect vif3.0 to ifb0"],
    )


def test_unclaimed_redirects_in_natural_vif_order() -> None:
    world = World().ifb("ifb0")
    for vif in ("vif10.0", "vif2.0", "vif2.1"):
        world.redirect(vif, "ifb0")
    assert repairs(anomalies(world.snapshot())) == [
        "remove-redirect vif2.0 to ifb0",
        "remove-redirect vif2.1 to ifb0",
        "remove-redirect vif10.0 to ifb0",
    ]


def test_double_claim_by_two_live_netbufs_is_left_to_the_admin() -> None:
    world = World().netbuf(3, 0, "ifb0").claim(4, 0, "ifb0")
    world.vif_names[netbuf_path(4, 0)] = "vif4.0"
    found = anomalies(world.snapshot())
    anomaly = only(found, "double-claim")
    assert anomaly.detail == "ifb0 is claimed by /libxl/3/remus/netbuf/0, /libxl/4/remus/netbuf/0"
    assert anomaly.repairs == []


def test_a_dead_claim_on_a_live_netbufs_ifb_is_no_double_claim() -> None:
    world = World().netbuf(3, 0, "ifb0").claim(7, 0, "ifb0", live=False)
    found = anomalies(world.snapshot())
    assert kinds(found) == ["dead-domain-claim"]
    assert repairs(found) == ["remove-claim /libxl/7/remus/netbuf/0"]  # the plug stays


# --- all together ---------------------------------------------------------------------------


def every_anomaly() -> World:
    world = World().netbuf(3, 0, "ifb0")
    world.netbuf(7, 0, "ifb1", live=False)  # dead: claim, plug, redirect
    world.claim(4, 0, "ifb9")  # IFB missing
    world.claim(5, 0, "ifb2").ifb("ifb2", up=True)  # no plug
    world.plug("ifb10")  # unclaimed
    world.ifb("ifb6").redirect("vif9.0", "ifb6")  # unclaimed redirect
    world.ifb("ifb5").redirect("vif3.0", "ifb5")  # beside a live one
    world.netbuf(6, 0, "ifb3").netbuf(8, 0, "ifb3")  # double: both vifs into one plug
    return world


def test_every_kind_grouped_in_a_fixed_order() -> None:
    found = anomalies(every_anomaly().snapshot())
    assert kinds(found) == [
        "dead-domain-claim",
        "claim-without-plug",
        "claim-without-plug",
        "unclaimed-plug",
        "unclaimed-plug",
        "unclaimed-redirect",
        "unclaimed-redirect",
        "unclaimed-redirect",
        "double-claim",
    ]
    assert sorted(kinds(found), key=KIND_ORDER.index) == kinds(found)
    assert repairs(found) == [
        "remove-claim /libxl/7/remus/netbuf/0",
        "unplug ifb1",
        "unplug ifb10",
        "remove-redirect vif7.0 to ifb1",
        "remove-redirect vif9.0 to ifb6",
    ]


def test_result_does_not_depend_on_the_order_of_ifbs_and_redirects() -> None:
    snap = every_anomaly().snapshot()
    expected = (rows(snap), anomalies(snap))
    rng = random.Random(1)
    for _ in range(20):
        ifbs = rng.sample(snap.ifbs, len(snap.ifbs))
        redirects = dict(rng.sample(sorted(snap.redirects.items()), len(snap.redirects)))
        shuffled = replace(snap, ifbs=ifbs, redirects=redirects)
        assert (rows(shuffled), anomalies(shuffled)) == expected


def test_anomalies_do_not_depend_on_the_order_claims_were_made() -> None:
    world = World().claim(12, 0, "ifb8", live=False).claim(3, 0, "ifb9", live=False)
    world.claim(14, 0, "ifb7").claim(4, 0, "ifb6")  # live, IFBs missing
    world.plug("ifb0").claim(11, 0, "ifb0").claim(2, 0, "ifb0")  # double
    snap = world.snapshot()
    backwards = replace(snap, claims=snap.claims[::-1])
    assert anomalies(snap) == anomalies(backwards)
    first_kinds = [
        a for a in anomalies(snap) if a.kind in ("dead-domain-claim", "claim-without-plug")
    ]
    assert [a.detail.split("/ifb")[0] for a in first_kinds] == [
        "/libxl/3/remus/netbuf/0",
        "/libxl/12/remus/netbuf/0",
        "/libxl/4/remus/netbuf/0",
        "/libxl/14/remus/netbuf/0",
    ]
    assert only(anomalies(snap), "double-claim").detail == (
        "ifb0 is claimed by /libxl/2/remus/netbuf/0, /libxl/11/remus/netbuf/0"
    )


def test_live_netbuf_without_its_redirect_is_an_anomaly() -> None:
    world = World().netbuf(3, 0, "ifb0")
    world.redirects.clear()  # e.g. someone ran tc qdisc del dev vif3.0 ingress
    snap = world.snapshot()
    assert rows(snap)[0].redirect is False
    found = anomalies(snap)
    assert found, "no anomaly for an unbuffered live netbuf"
    assert all(a.repairs == [] for a in found)  # live: for the admin, not gc


# --- the gc rule on random worlds -----------------------------------------------------------

IFB_NAMES = st.sampled_from([f"ifb{n}" for n in (0, 1, 2, 10)])
VIFS = st.sampled_from(["vif1.0", "vif2.0", "vif2.1", "vif3.0", "web0"])


@st.composite
def worlds(draw: st.DrawFn) -> Snapshot:
    claims = draw(
        st.lists(
            st.builds(Claim, st.integers(1, 3), st.integers(0, 1), IFB_NAMES),
            unique_by=lambda c: (c.domid, c.devid),
            max_size=5,
        )
    )
    live = draw(st.sets(st.integers(1, 3)))
    ifbs = [
        Ifb(name, draw(st.sampled_from([None, "plug", "pfifo_fast"])), draw(st.booleans()))
        for name in draw(st.sets(IFB_NAMES))
    ]
    redirects = draw(st.dictionaries(VIFS, st.sets(IFB_NAMES, min_size=1), max_size=3))
    vif_names = {c.path: draw(VIFS) if draw(st.booleans()) else f"vif{c.domid}.{c.devid}"
                 for c in claims}  # fmt: skip
    plugs = {i.name: Plugged() for i in ifbs if i.root_qdisc == "plug"}
    return Snapshot(claims, live, ifbs, plugs, redirects, vif_names, {})


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_gc_repairs_only_what_belongs_to_no_live_netbuf(snap: Snapshot) -> None:
    live = [c for c in snap.claims if c.domid in snap.live_domids]
    live_paths = {c.path for c in live}
    live_ifbs = {c.ifb for c in live}
    live_pairs = {(snap.vif_names[c.path], c.ifb) for c in live}
    for anomaly in anomalies(snap):
        for repair in anomaly.repairs:
            if repair.action == "remove-claim":
                assert repair.target not in live_paths
                assert any(c.path == repair.target for c in snap.claims)
            elif repair.action == "unplug":
                assert repair.target not in live_ifbs
            else:
                assert repair.action == "remove-redirect"
                assert (repair.target, repair.to) not in live_pairs, "gc would cut a live one"
                assert repair.target not in {v for v, _ in live_pairs}, "a live netbuf's vif"


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_every_dead_claim_unclaimed_plug_and_stray_redirect_is_found(snap: Snapshot) -> None:
    live = [c for c in snap.claims if c.domid in snap.live_domids]
    found = anomalies(snap)
    known = [kind for kind in kinds(found) if kind in KIND_ORDER]
    assert known == sorted(known, key=KIND_ORDER.index)
    dead = {c.path for c in snap.claims if c.domid not in snap.live_domids}
    assert {r.target for a in found for r in a.repairs if r.action == "remove-claim"} == dead
    plugged = {i.name for i in snap.ifbs if i.root_qdisc == "plug"} - {c.ifb for c in live}
    assert {r.target for a in found for r in a.repairs if r.action == "unplug"} == plugged
    pairs = {(snap.vif_names[c.path], c.ifb) for c in live}
    ifbs = {i.name for i in snap.ifbs}
    vifs = set(snap.vif_names.values()) | snap.backend_vifs
    redirects = {v: t for v, t in snap.redirects.items() if v in vifs or VIF_NAME.fullmatch(v)}
    stray = {(v, i) for v, targets in redirects.items() for i in targets & ifbs} - pairs
    assert {(d.vif, d.ifb) for d in found if d.kind == "unclaimed-redirect"} == stray


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 3)), unique=True, max_size=6))
def test_healthy_netbufs_on_their_own_ifbs_are_clean(ids: list[tuple[int, int]]) -> None:
    world = World()
    for n, (domid, devid) in enumerate(ids):
        world.netbuf(domid, devid, f"ifb{n}", backlog=(n * 100, n))
    snap = world.snapshot()
    assert anomalies(snap) == []
    assert all(r.live and r.redirect and r.root_qdisc == "plug" for r in rows(snap))
    assert len(rows(snap)) == len(ids)
