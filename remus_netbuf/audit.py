"""What ``status`` reports and ``gc`` repairs, decided from one snapshot: plain data in and out.

A netbuf is a claim ``/libxl/<domid>/remus/netbuf/<devid>/ifb``. The anomalies are the states
that no successful setup and no completed teardown leaves behind. Each carries the repairs that
undo it, and whether ``gc`` may apply them: only when the state belongs to no live netbuf.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .decide import Claim, Ifb, live_claims, natural_key


@dataclass(frozen=True)
class Plugged:
    """Counters of an IFB's plug qdisc."""

    backlog_bytes: int = 0
    backlog_packets: int = 0
    drops: int = 0
    overlimits: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Everything status needs, read once from xenstore and the kernel."""

    claims: list[Claim]
    live_domids: set[int]
    ifbs: list[Ifb]
    plugs: dict[str, Plugged]  # IFB name -> plug counters, for IFBs whose root is a plug
    redirects: dict[str, set[str]]  # vif -> IFBs its ingress redirects to
    vif_names: dict[str, str]  # netbuf path -> vif name
    hotplug_status: dict[str, str]  # netbuf path -> hotplug-status


@dataclass(frozen=True)
class Row:
    """One netbuf as ``status`` shows it."""

    domid: int
    devid: int
    vif: str
    ifb: str
    live: bool
    ifb_exists: bool
    ifb_up: bool
    root_qdisc: str | None
    backlog_bytes: int
    backlog_packets: int
    drops: int
    redirect: bool
    hotplug_status: str | None


@dataclass(frozen=True)
class Repair:
    """One undo step gc can take: remove a claim, unplug an IFB, or remove a vif's ingress."""

    action: str  # "remove-claim" | "unplug" | "remove-ingress"
    target: str  # netbuf path, IFB name or vif name

    def __str__(self) -> str:
        return f"{self.action} {self.target}"


@dataclass(frozen=True)
class Anomaly:
    kind: str
    detail: str
    repairs: list[Repair] = field(default_factory=list)  # empty: gc must leave it (live)


def vif_name(domid: int, devid: int, custom: str | None) -> str:
    """libxl's name for the vif: the backend's ``vifname`` if set, else ``vif<domid>.<devid>``."""
    return custom or f"vif{domid}.{devid}"


def rows(snap: Snapshot) -> list[Row]:
    ifbs = {i.name: i for i in snap.ifbs}
    out = []
    for claim in sorted(snap.claims, key=lambda c: (c.domid, c.devid)):
        vif = snap.vif_names.get(claim.path, vif_name(claim.domid, claim.devid, None))
        ifb = ifbs.get(claim.ifb)
        plug = snap.plugs.get(claim.ifb, Plugged())
        out.append(
            Row(
                domid=claim.domid,
                devid=claim.devid,
                vif=vif,
                ifb=claim.ifb,
                live=claim.domid in snap.live_domids,
                ifb_exists=ifb is not None,
                ifb_up=bool(ifb and ifb.up),
                root_qdisc=ifb.root_qdisc if ifb else None,
                backlog_bytes=plug.backlog_bytes,
                backlog_packets=plug.backlog_packets,
                drops=plug.drops,
                redirect=claim.ifb in snap.redirects.get(vif, set()),
                hotplug_status=snap.hotplug_status.get(claim.path),
            )
        )
    return out


def anomalies(snap: Snapshot) -> list[Anomaly]:
    """Every anomaly, in a stable order: by kind, then by name."""
    found: list[Anomaly] = []
    claims = sorted(snap.claims, key=lambda c: (c.domid, c.devid))  # not xenstore's order
    live = live_claims(claims, snap.live_domids)
    ifbs = {i.name: i for i in snap.ifbs}
    by_ifb: dict[str, list[Claim]] = defaultdict(list)
    for claim in live:
        by_ifb[claim.ifb].append(claim)

    for claim in claims:
        if claim.domid not in snap.live_domids:
            found.append(
                Anomaly(
                    "dead-domain-claim",
                    f"{claim.path}/ifb = {claim.ifb}, but domain {claim.domid} does not exist",
                    [Repair("remove-claim", claim.path)],
                )
            )
    for claim in live:
        ifb = ifbs.get(claim.ifb)
        if ifb is None or ifb.root_qdisc != "plug":
            why = "does not exist" if ifb is None else "has no plug"
            found.append(
                Anomaly("claim-without-plug", f"{claim.path}/ifb = {claim.ifb}, which {why}")
            )
    for claim in live:
        vif = snap.vif_names.get(claim.path, vif_name(claim.domid, claim.devid, None))
        has_plug = claim.ifb in ifbs and ifbs[claim.ifb].root_qdisc == "plug"
        if has_plug and claim.ifb not in snap.redirects.get(vif, set()):
            found.append(
                Anomaly(
                    "claim-without-redirect",
                    f"{claim.path}/ifb = {claim.ifb}, but {vif} does not redirect to it: "
                    "the guest's output is not buffered",
                )
            )
    for name in sorted(ifbs, key=natural_key):
        if ifbs[name].root_qdisc == "plug" and name not in by_ifb:
            found.append(
                Anomaly(
                    "unclaimed-plug",
                    f"{name} has a plug but no live netbuf claims it",
                    [Repair("unplug", name)],
                )
            )
    claimed_pairs = {
        (snap.vif_names.get(c.path, vif_name(c.domid, c.devid, None)), c.ifb) for c in live
    }
    for vif in sorted(snap.redirects, key=natural_key):
        stray = sorted(
            (i for i in snap.redirects[vif] if (vif, i) not in claimed_pairs), key=natural_key
        )
        if stray:
            # The vif of a live netbuf keeps its ingress, even a wrong one: gc never touches a
            # live netbuf; the admin tears it down.
            live_vif = any(v == vif for v, _ in claimed_pairs)
            found.append(
                Anomaly(
                    "unclaimed-redirect",
                    f"{vif} redirects to {', '.join(stray)}, which no live netbuf claims for it",
                    [] if live_vif else [Repair("remove-ingress", vif)],
                )
            )
    for name in sorted(by_ifb, key=natural_key):
        if len(by_ifb[name]) > 1:
            paths = ", ".join(c.path for c in by_ifb[name])
            found.append(Anomaly("double-claim", f"{name} is claimed by {paths}"))
    return found
