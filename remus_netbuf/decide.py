"""Decisions as plain functions over plain data: no kernel, no xenstore, no clock.

Which IFB is free, what name a new one gets, and what a teardown must undo are decided here from
snapshots the side-effect modules took, so each rule is unit-tested on its own. Names are
matched and split by hand, not with ``re``, which a setup would import for this alone.
"""

from __future__ import annotations

from .record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable

NETBUF_ROOT = "/libxl"


class Ifb(Record):
    """An IFB device as the kernel shows it."""

    __slots__ = ("name", "root_qdisc", "up", "root_handle")

    def __init__(
        self,
        name: str,
        root_qdisc: str | None,  # kind of the root qdisc (pfifo_fast once up); None: none listed
        up: bool = False,
        root_handle: int = 0,  # the root qdisc's (our plug's: netlink.PLUG_HANDLE, 5245:); 0: none
    ) -> None:
        self.name = name
        self.root_qdisc = root_qdisc
        self.up = up
        self.root_handle = root_handle

    @property
    def added_root(self) -> bool:
        """Whether the root qdisc was added (it has a handle), not the kernel's own."""
        return self.root_handle != 0


class Claim(Record):
    """``/libxl/<domid>/remus/netbuf/<devid>/ifb = <ifb>``: a netbuf's claim on an IFB."""

    __slots__ = ("domid", "devid", "ifb")

    def __init__(self, domid: int, devid: int, ifb: str) -> None:
        self.domid = domid
        self.devid = devid
        self.ifb = ifb

    @property
    def path(self) -> str:
        return netbuf_path(self.domid, self.devid)


def netbuf_path(domid: int, devid: int) -> str:
    return f"{NETBUF_ROOT}/{domid}/remus/netbuf/{devid}"


def natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key that puts ifb2 before ifb10: the runs of text and of ASCII digits in turn, text
    first and last (either may be empty), each run of digits as its number."""
    parts = [""]  # text, digits, text, ...: the digits at odd positions
    for char in name:
        in_digits = len(parts) % 2 == 0
        if ("0" <= char <= "9") == in_digits:
            parts[-1] += char
        else:
            parts.append(char)
    if len(parts) % 2 == 0:
        parts.append("")
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


def live_claims(claims: Iterable[Claim], live_domids: Collection[int]) -> list[Claim]:
    """The claims whose domain still exists; a dead domain's claim is ignored."""
    return [claim for claim in claims if claim.domid in live_domids]


def is_ifb_name(name: str) -> bool:
    """Whether ``name`` is ``ifbN`` (N: ASCII digits), as the ifb module, Xen's scripts and we
    name IFBs."""
    number = name[3:]
    return name.startswith("ifb") and number.isascii() and number.isdigit()


class Choice(Record):
    """The outcome of picking: the IFB, or None with the reason listing every IFB's owner."""

    __slots__ = ("ifb", "reason", "up")

    def __init__(self, ifb: str | None, reason: str, up: bool = False) -> None:
        self.ifb = ifb
        self.reason = reason
        self.up = up  # whether the chosen IFB was already up (then rollback leaves it up)


def pick_ifb(
    names: Iterable[str],
    claims: Iterable[Claim],
    live_domids: Collection[int],
    own_path: str,
    probe: Callable[[str], Ifb | None],
) -> Choice:
    """Pick the first free IFB in natural order.

    Candidates are the links named ``ifbN``; an IFB of another name is someone else's (an
    admin's ingress shaping, say) and is never taken. Free means: no live domain's netbuf
    claims it and, as ``probe`` finds it in the kernel, it is an IFB whose root qdisc is the
    kernel's own (none, or the default it attaches): a plug, or any root qdisc someone added
    (an admin's shaping), makes it busy. A claim at ``own_path`` is our own (left by an earlier
    run for this same netbuf) and is about to be overwritten, so it does not make an IFB busy.
    Only unclaimed candidates are probed, up to the first free one: picking costs one probe in
    the usual case, however many netbufs the host has.
    """
    owners: dict[str, list[str]] = {}
    for claim in live_claims(claims, live_domids):
        if claim.path != own_path:
            owners.setdefault(claim.ifb, []).append(f"domain {claim.domid} vif {claim.devid}")
    busy = []
    for name in sorted((n for n in names if is_ifb_name(n)), key=natural_key):
        if name in owners:
            busy.append(f"{name} (claimed by {', '.join(owners[name])})")
            continue
        ifb = probe(name)
        if ifb is None:
            continue  # not an IFB, or gone meanwhile
        if ifb.root_qdisc == "plug":
            busy.append(f"{name} (has a plug, unclaimed)")
        elif ifb.added_root:
            busy.append(f"{name} (root {ifb.root_qdisc}, not ours)")
        else:
            return Choice(name, f"{name} is free", ifb.up)
    if not busy:
        return Choice(None, "there are no IFB devices")
    return Choice(None, "all busy: " + "; ".join(busy))


def next_ifb_name(existing: Collection[str]) -> str:
    """The lowest ``ifbN`` not taken by any link."""
    number = 0
    while f"ifb{number}" in existing:
        number += 1
    return f"ifb{number}"


class TeardownPlan(Record):
    """What a teardown undoes beyond what it always undoes (the vif's ingress, the status nodes)."""

    __slots__ = ("free_ifb", "remove_claim", "why")

    def __init__(self, free_ifb: str | None, remove_claim: bool, why: str) -> None:
        self.free_ifb = free_ifb  # bring down and unplug this IFB
        self.remove_claim = remove_claim  # remove XENBUS_PATH/ifb
        self.why = why


def plan_teardown(
    remus_ifb: str | None,
    own_claim: str | None,
    claimed_elsewhere: Collection[str],
    *,
    remus_ifb_ours: bool,
) -> TeardownPlan:
    """Decide which IFB a teardown frees.

    ``remus_ifb`` is what libxl passed (absent after a failed setup), ``own_claim`` the value of
    ``XENBUS_PATH/ifb``, ``claimed_elsewhere`` the IFBs claimed by other live netbufs, and
    ``remus_ifb_ours`` whether ``remus_ifb`` is an IFB whose root qdisc is a netbuf's plug (the
    plug with our own handle, ``5245:``, which only our setup gives one). An IFB is freed only
    when no other live netbuf claims it and either this netbuf's claim names it, or there is no
    claim and it is ``remus_ifb`` with a netbuf's plug. The second case is failover: ``xl
    destroy`` of the primary removes ``/libxl/<domid>``, and our claim with it, before libxl's
    remus code runs this teardown; left alone, the IFB would stay plugged, holding the dead
    guest's packets, until gc. Without a claim there is none to remove.
    """
    if own_claim is None:
        if remus_ifb is None:
            return TeardownPlan(None, False, "no claim at XENBUS_PATH, no REMUS_IFB: nothing freed")
        if not remus_ifb_ours:
            why = f"no claim at XENBUS_PATH, {remus_ifb} has no netbuf's plug: left alone"
            return TeardownPlan(None, False, why)
        if remus_ifb in claimed_elsewhere:
            return TeardownPlan(
                None,
                False,
                f"no claim at XENBUS_PATH, {remus_ifb} is claimed by another netbuf: left alone",
            )
        return TeardownPlan(
            remus_ifb,
            False,
            f"no claim at XENBUS_PATH (gone with the domain?), REMUS_IFB {remus_ifb} has a "
            "netbuf's plug no other netbuf claims: freeing it",
        )
    if remus_ifb is not None and remus_ifb != own_claim:
        return TeardownPlan(
            None, False, f"claim is {own_claim}, not REMUS_IFB {remus_ifb}: both left alone"
        )
    if own_claim in claimed_elsewhere:
        return TeardownPlan(
            None, True, f"{own_claim} is also claimed by another netbuf: only the claim removed"
        )
    return TeardownPlan(own_claim, True, f"freeing {own_claim}")


def free_ifbs(
    ifbs: Iterable[Ifb], claims: Iterable[Claim], live_domids: Collection[int]
) -> list[str]:
    """The IFBs a setup could pick now, in natural order: named ``ifbN``, no plug as root qdisc,
    claimed by no live domain (``check`` and the metrics count them; :func:`pick_ifb` picks)."""
    claimed = {claim.ifb for claim in live_claims(claims, live_domids)}
    names = (
        ifb.name
        for ifb in ifbs
        if is_ifb_name(ifb.name) and ifb.root_qdisc != "plug" and ifb.name not in claimed
    )
    return sorted(names, key=natural_key)
