"""The decisions: which IFB is free, what a new one is called, what a teardown frees."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remus_netbuf.decide import (
    Choice,
    Claim,
    Ifb,
    free_ifbs,
    is_ifb_name,
    live_claims,
    natural_key,
    netbuf_path,
    next_ifb_name,
    pick_ifb,
    plan_teardown,
)

OWN = "/libxl/5/remus/netbuf/0"


def pick(
    ifbs: list[Ifb], claims: list[Claim], live: set[int], own: str, probed: list[str] | None = None
) -> Choice:
    """pick_ifb over a snapshot of the kernel: the names, and the IFBs the probe finds."""
    known = {i.name: i for i in ifbs}

    def probe(name: str) -> Ifb | None:
        if probed is not None:
            probed.append(name)
        return known.get(name)

    return pick_ifb(list(known), claims, live, own, probe)


def test_claim_path_is_the_netbuf_node() -> None:
    assert Claim(domid=7, devid=2, ifb="ifb0").path == "/libxl/7/remus/netbuf/2"
    assert netbuf_path(7, 2) == Claim(7, 2, "ifb9").path


# natural_key


def test_natural_key_puts_ifb2_before_ifb10() -> None:
    names = ["ifb10", "ifb2", "ifb1", "ifb0", "ifb100", "ifb9"]
    assert sorted(names, key=natural_key) == ["ifb0", "ifb1", "ifb2", "ifb9", "ifb10", "ifb100"]


def test_natural_key_splits_text_and_numbers() -> None:
    assert natural_key("ifb10") == ("ifb", 10, "")
    assert natural_key("a1b22") == ("a", 1, "b", 22, "")
    assert natural_key("eth") == ("eth",)


def test_natural_key_tolerates_any_link_name() -> None:
    odd = "ifb1\u00b2"  # the kernel allows any name without '/', ':' or white space
    assert natural_key(odd)[:2] == ("ifb", 1)
    assert pick([Ifb(odd, None), Ifb("ifb0", None)], [], set(), OWN).ifb == "ifb0"


# live_claims


def test_live_claims_drops_dead_domains() -> None:
    claims = [Claim(1, 0, "ifb0"), Claim(2, 0, "ifb1"), Claim(3, 1, "ifb2")]
    assert live_claims(claims, {1, 3}) == [claims[0], claims[2]]
    assert live_claims(claims, set()) == []
    assert live_claims([], {1}) == []


# pick_ifb


def test_pick_ifb_takes_the_first_free_in_natural_order() -> None:
    ifbs = [Ifb("ifb10", None), Ifb("ifb2", None), Ifb("ifb3", None)]
    choice = pick(ifbs, [], {1}, OWN)
    assert choice.ifb == "ifb2"
    assert "ifb2" in choice.reason


def test_pick_ifb_plug_on_unclaimed_ifb_is_busy() -> None:
    ifbs = [Ifb("ifb0", "plug"), Ifb("ifb1", "noqueue")]
    assert pick(ifbs, [], {5}, OWN).ifb == "ifb1"


@pytest.mark.parametrize("root_qdisc", [None, "noqueue", "pfifo_fast", "fq_codel"])
def test_pick_ifb_other_root_qdiscs_are_free(root_qdisc: str | None) -> None:
    assert pick([Ifb("ifb0", root_qdisc)], [], {5}, OWN).ifb == "ifb0"


def test_pick_ifb_live_domains_claim_is_busy() -> None:
    ifbs = [Ifb("ifb0", None), Ifb("ifb1", None)]
    assert pick(ifbs, [Claim(3, 0, "ifb0")], {3, 5}, OWN).ifb == "ifb1"


def test_pick_ifb_dead_domains_claim_is_ignored() -> None:
    ifbs = [Ifb("ifb0", None), Ifb("ifb1", None)]
    assert pick(ifbs, [Claim(3, 0, "ifb0")], {5}, OWN).ifb == "ifb0"


def test_pick_ifb_claim_at_own_path_is_ignored() -> None:
    ifbs = [Ifb("ifb0", None), Ifb("ifb1", None)]
    assert pick(ifbs, [Claim(5, 0, "ifb0")], {5}, OWN).ifb == "ifb0"


def test_pick_ifb_claim_by_same_domain_other_vif_is_busy() -> None:
    ifbs = [Ifb("ifb0", None), Ifb("ifb1", None)]
    assert pick(ifbs, [Claim(5, 1, "ifb0")], {5}, OWN).ifb == "ifb1"


def test_pick_ifb_claim_on_missing_ifb_does_not_matter() -> None:
    assert pick([Ifb("ifb0", None)], [Claim(3, 0, "ifb7")], {3}, OWN).ifb == "ifb0"


def test_pick_ifb_all_busy_reason_lists_every_ifb_and_owner() -> None:
    ifbs = [Ifb("ifb10", None), Ifb("ifb2", "plug"), Ifb("ifb0", "plug")]
    claims = [Claim(3, 0, "ifb10"), Claim(4, 1, "ifb10"), Claim(6, 0, "ifb0"), Claim(9, 0, "ifb2")]
    choice = pick(ifbs, claims, {3, 4, 6}, OWN)
    assert choice.ifb is None
    assert choice.reason == (
        "all busy: ifb0 (claimed by domain 6 vif 0); "
        "ifb2 (has a plug, unclaimed); "
        "ifb10 (claimed by domain 3 vif 0, domain 4 vif 1)"
    )


def test_pick_ifb_no_ifbs_at_all() -> None:
    choice = pick([], [Claim(3, 0, "ifb0")], {3}, OWN)
    assert choice.ifb is None
    assert choice.reason == "there are no IFB devices"


def test_pick_ifb_probes_only_unclaimed_candidates_up_to_the_first_free() -> None:
    ifbs = [Ifb(f"ifb{n}", None) for n in range(64)]
    claims = [Claim(d, 0, f"ifb{d - 2}") for d in range(2, 65)]  # ifb0..ifb62 claimed
    probed: list[str] = []
    own = netbuf_path(1, 0)
    assert pick(ifbs, claims, set(range(1, 65)), own, probed).ifb == "ifb63"
    assert probed == ["ifb63"]  # the claimed ones cost nothing


def test_pick_ifb_takes_only_ifbN_names_and_skips_what_is_no_ifb() -> None:
    names = ["shaper0", "ifb0", "ifbx", "ifb1", "eth0"]
    kernel = {"shaper0": Ifb("shaper0", None), "ifb1": Ifb("ifb1", None, up=True)}
    probed: list[str] = []

    def probe(name: str) -> Ifb | None:
        probed.append(name)
        return kernel.get(name)  # ifb0 is, say, a dummy: the probe finds no IFB

    choice = pick_ifb(names, [], set(), OWN, probe)
    assert (choice.ifb, choice.up) == ("ifb1", True)
    assert probed == ["ifb0", "ifb1"]  # an admin's shaper0 IFB is never a candidate


IFB_NAMES = st.integers(0, 20).map(lambda n: f"ifb{n}")
DOMIDS = st.integers(1, 8)


@st.composite
def ifb_worlds(draw: st.DrawFn) -> tuple[list[Ifb], list[Claim], set[int], str]:
    names = draw(st.lists(IFB_NAMES, unique=True, max_size=8))
    qdiscs = st.sampled_from([None, "plug", "noqueue", "pfifo_fast"])
    ifbs = [Ifb(name, draw(qdiscs), draw(st.booleans())) for name in names]
    claim = st.builds(Claim, DOMIDS, st.integers(0, 3), IFB_NAMES)
    claims = draw(st.lists(claim, max_size=10))
    live = draw(st.sets(DOMIDS))
    own = netbuf_path(draw(DOMIDS), draw(st.integers(0, 3)))
    return ifbs, claims, live, own


@settings(max_examples=300)
@given(ifb_worlds())
def test_pick_ifb_property(world: tuple[list[Ifb], list[Claim], set[int], str]) -> None:
    ifbs, claims, live, own = world
    taken = {c.ifb for c in claims if c.domid in live and c.path != own}
    free = sorted(
        (i.name for i in ifbs if i.root_qdisc != "plug" and i.name not in taken), key=natural_key
    )
    choice = pick(ifbs, claims, live, own)
    if free:
        assert choice.ifb == free[0]
    else:
        assert choice.ifb is None
        for ifb in ifbs:
            assert ifb.name in choice.reason


# free_ifbs (what check and the metrics count)


def test_free_ifbs_are_unplugged_ifbN_that_no_live_domain_claims() -> None:
    ifbs = [
        Ifb("ifb10", None),
        Ifb("ifb2", "pfifo_fast", True),
        Ifb("ifb0", "plug", True),  # busy, even unclaimed
        Ifb("ifb1", None),  # claimed by live domain 5
        Ifb("ifb3", None),  # claimed by dead domain 7: free
        Ifb("shaper0", None),  # not ours to take
    ]
    claims = [Claim(5, 0, "ifb1"), Claim(7, 0, "ifb3")]
    assert free_ifbs(ifbs, claims, {5}) == ["ifb2", "ifb3", "ifb10"]


@settings(max_examples=300)
@given(ifb_worlds())
def test_free_ifbs_first_is_what_pick_ifb_picks_for_a_new_netbuf(
    world: tuple[list[Ifb], list[Claim], set[int], str],
) -> None:
    ifbs, claims, live, _ = world
    fresh = netbuf_path(99, 0)  # a netbuf with no claim of its own yet
    free = free_ifbs(ifbs, claims, live)
    assert pick(ifbs, claims, live, fresh).ifb == (free[0] if free else None)


# next_ifb_name


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (set(), "ifb0"),
        ({"ifb0"}, "ifb1"),
        ({"ifb0", "ifb1", "ifb2"}, "ifb3"),
        ({"ifb1", "ifb2"}, "ifb0"),
        ({"ifb0", "ifb2", "ifb3"}, "ifb1"),
        ({"ifb0", "ifb1", "ifb10", "eth0", "vif1.0"}, "ifb2"),
        ({"eth0", "lo"}, "ifb0"),
    ],
)
def test_next_ifb_name_lowest_free_index(existing: set[str], expected: str) -> None:
    assert next_ifb_name(existing) == expected


# plan_teardown: every combination of REMUS_IFB, own claim, claims elsewhere and whether
# REMUS_IFB's root is a netbuf's plug (looked at only when there is no claim)


R = "ifb1"  # what libxl passed as REMUS_IFB
OTHER = "ifb4"


@pytest.mark.parametrize("elsewhere", [(), (R,), (OTHER,), (R, OTHER)])
@pytest.mark.parametrize("remus_ifb", [None, R])
def test_plan_teardown_without_claim_leaves_an_ifb_without_our_plug(
    remus_ifb: str | None, elsewhere: tuple[str, ...]
) -> None:
    """No claim, and REMUS_IFB absent, or an IFB whose root is not a netbuf's plug (a plug of
    Xen's script, someone's shaping, none, or no such IFB): nothing is freed."""
    plan = plan_teardown(remus_ifb, None, elsewhere, remus_ifb_ours=False)
    assert (plan.free_ifb, plan.remove_claim) == (None, False)
    assert "no claim" in plan.why


@pytest.mark.parametrize("elsewhere", [(), (OTHER,)])
def test_plan_teardown_without_claim_frees_remus_ifb_with_our_plug(
    elsewhere: tuple[str, ...],
) -> None:
    """xl destroy removed /libxl/<domid>, and our claim with it, before libxl ran teardown:
    REMUS_IFB, plugged by a netbuf and claimed by no other, is freed; there is no claim to
    remove."""
    plan = plan_teardown(R, None, elsewhere, remus_ifb_ours=True)
    assert (plan.free_ifb, plan.remove_claim) == (R, False)
    assert "no claim" in plan.why and R in plan.why and "freeing" in plan.why


@pytest.mark.parametrize("elsewhere", [(R,), (R, OTHER)])
def test_plan_teardown_without_claim_never_frees_remus_ifb_claimed_elsewhere(
    elsewhere: tuple[str, ...],
) -> None:
    plan = plan_teardown(R, None, elsewhere, remus_ifb_ours=True)
    assert (plan.free_ifb, plan.remove_claim) == (None, False)
    assert "claimed by another netbuf" in plan.why


def test_plan_teardown_without_claim_or_remus_ifb_frees_nothing() -> None:
    plan = plan_teardown(None, None, (), remus_ifb_ours=True)
    assert (plan.free_ifb, plan.remove_claim) == (None, False)


@pytest.mark.parametrize("ours", [False, True])
@pytest.mark.parametrize("remus_ifb", [None, R])
def test_plan_teardown_frees_own_claim(remus_ifb: str | None, ours: bool) -> None:
    """Claim equals REMUS_IFB, or REMUS_IFB absent: fall back to the claim."""
    plan = plan_teardown(remus_ifb, R, (OTHER,), remus_ifb_ours=ours)
    assert (plan.free_ifb, plan.remove_claim) == (R, True)
    assert R in plan.why


@pytest.mark.parametrize("ours", [False, True])
@pytest.mark.parametrize("remus_ifb", [None, R])
def test_plan_teardown_never_frees_an_ifb_claimed_elsewhere(
    remus_ifb: str | None, ours: bool
) -> None:
    plan = plan_teardown(remus_ifb, R, (R, OTHER), remus_ifb_ours=ours)
    assert (plan.free_ifb, plan.remove_claim) == (None, True)
    assert "also claimed" in plan.why


@pytest.mark.parametrize("ours", [False, True])
@pytest.mark.parametrize("elsewhere", [(), (R,), (OTHER,), (R, OTHER)])
def test_plan_teardown_claim_differs_from_remus_ifb(elsewhere: tuple[str, ...], ours: bool) -> None:
    plan = plan_teardown(R, OTHER, elsewhere, remus_ifb_ours=ours)
    assert (plan.free_ifb, plan.remove_claim) == (None, False)
    assert R in plan.why and OTHER in plan.why


@given(
    st.one_of(st.none(), IFB_NAMES),
    st.one_of(st.none(), IFB_NAMES),
    st.sets(IFB_NAMES, max_size=5),
    st.booleans(),
)
def test_plan_teardown_contract(
    remus_ifb: str | None, own: str | None, elsewhere: set[str], ours: bool
) -> None:
    plan = plan_teardown(remus_ifb, own, elsewhere, remus_ifb_ours=ours)
    may_remove = own is not None and remus_ifb in (None, own)
    assert plan.remove_claim == may_remove
    if own is not None:  # the claim decides; REMUS_IFB's root is not even looked at
        assert plan.free_ifb == (own if may_remove and own not in elsewhere else None)
        assert plan == plan_teardown(remus_ifb, own, elsewhere, remus_ifb_ours=not ours)
    else:  # only REMUS_IFB with a netbuf's plug can be freed
        assert plan.free_ifb == (remus_ifb if ours and remus_ifb not in elsewhere else None)
    # Whatever the inputs: an IFB another live netbuf claims is never freed, and only the IFB
    # this netbuf claims or, unclaimed, REMUS_IFB with a netbuf's plug.
    assert plan.free_ifb not in elsewhere
    assert plan.free_ifb in {None, own if own is not None else remus_ifb if ours else None}


# natural_key and is_ifb_name agree with the regular expressions they replaced (issue 11: a
# setup imported re for them alone), kept here as the reference

OLD_IFB_NAME = re.compile(r"ifb[0-9]+")
LINK_NAMES = st.one_of(
    st.text(st.sampled_from("ifb09a.-_ \u0663\u00b2\uff11") | st.characters(), max_size=12),
    st.from_regex(r"(ifb|vif|eth)?[0-9]{0,3}(\.[0-9]{1,2})?", fullmatch=True),
    st.sampled_from(["", "ifb", "IFB0", "ifb 0", "ifb0\n", "ifb\u0663", "ifb+1", "ifb007"]),
)


def old_natural_key(name: str) -> tuple[str | int, ...]:
    parts = re.split(r"([0-9]+)", name)
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


@settings(max_examples=2000, deadline=None)
@given(LINK_NAMES)
def test_natural_key_and_ifb_names_agree_with_the_old_regex(name: str) -> None:
    assert natural_key(name) == old_natural_key(name)
    assert is_ifb_name(name) == bool(OLD_IFB_NAME.fullmatch(name))
