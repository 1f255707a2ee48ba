"""What ``status`` reports and ``gc`` repairs, decided from one snapshot: plain data in and out.

A netbuf is a claim ``/libxl/<domid>/remus/netbuf/<devid>/ifb``. The anomalies are the states
that no successful setup and no completed teardown leaves behind. Each carries the repairs that
undo it, and whether ``gc`` may apply them: only when the state belongs to no live netbuf.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace

from .decide import Claim, Ifb, live_claims, natural_key

VIF_NAME = re.compile(r"vif[0-9]+\.[0-9]+")  # libxl's name for a vif, vif<domid>.<devid>


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
    kinds: dict[str, str | None] = field(default_factory=dict)  # every link -> its kind
    backend_vifs: set[str] = field(default_factory=set)  # vifs of dom0's backend in xenstore
    config_error: str | None = None  # why the config does not parse


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
    """One undo step gc can take: remove a claim, free an IFB (down, then unplug), or remove a
    vif's redirect filter to ``to`` (and its ingress qdisc once no filter is left)."""

    action: str  # "remove-claim" | "unplug" | "remove-redirect"
    target: str  # netbuf path, IFB name or vif name
    to: str | None = None  # remove-redirect: the IFB the filter redirects to

    def __str__(self) -> str:
        return f"{self.action} {self.target}" + (f" to {self.to}" if self.to else "")


@dataclass(frozen=True)
class Anomaly:
    """A state no successful setup and no completed teardown leaves, and what it names
    (``None`` where a field does not apply), for monitors as much as for people."""

    kind: str
    detail: str
    repairs: list[Repair] = field(default_factory=list)  # empty: gc must leave it (live)
    ifb: str | None = None
    vif: str | None = None
    domid: int | None = None
    devid: int | None = None
    path: str | None = None

    @classmethod
    def of_claim(cls, kind: str, detail: str, claim: Claim, vif: str | None = None) -> Anomaly:
        return cls(
            kind,
            detail,
            ifb=claim.ifb,
            vif=vif,
            domid=claim.domid,
            devid=claim.devid,
            path=claim.path,
        )


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

    if snap.config_error is not None:
        found.append(Anomaly("bad-config", snap.config_error))
    for claim in claims:
        if claim.domid not in snap.live_domids:
            anomaly = Anomaly.of_claim(
                "dead-domain-claim",
                f"{claim.path}/ifb = {claim.ifb}, but domain {claim.domid} does not exist",
                claim,
            )
            found.append(replace(anomaly, repairs=[Repair("remove-claim", claim.path)]))
    not_ifb = [c for c in live if c.ifb not in ifbs and snap.kinds.get(c.ifb, "ifb") != "ifb"]
    for claim in not_ifb:
        found.append(
            Anomaly.of_claim(
                "claim-not-ifb",
                f"{claim.path}/ifb = {claim.ifb}, which is no IFB "
                f"(kind {snap.kinds[claim.ifb]}): teardown and gc leave that device alone",
                claim,
            )
        )
    for claim in live:
        if claim in not_ifb:
            continue
        ifb = ifbs.get(claim.ifb)
        if ifb is None or ifb.root_qdisc != "plug":
            why = "does not exist" if ifb is None else "has no plug"
            found.append(
                Anomaly.of_claim(
                    "claim-without-plug", f"{claim.path}/ifb = {claim.ifb}, which {why}", claim
                )
            )
    for claim in live:
        vif = snap.vif_names.get(claim.path, vif_name(claim.domid, claim.devid, None))
        has_plug = claim.ifb in ifbs and ifbs[claim.ifb].root_qdisc == "plug"
        if has_plug and claim.ifb not in snap.redirects.get(vif, set()):
            found.append(
                Anomaly.of_claim(
                    "claim-without-redirect",
                    f"{claim.path}/ifb = {claim.ifb}, but {vif} does not redirect to it: "
                    "the guest's output is not buffered",
                    claim,
                    vif,
                )
            )
    for name in sorted(ifbs, key=natural_key):
        if ifbs[name].root_qdisc == "plug" and name not in by_ifb:
            found.append(
                Anomaly(
                    "unclaimed-plug",
                    f"{name} has a plug but no live netbuf claims it",
                    [Repair("unplug", name)],
                    ifb=name,
                )
            )
    found += _stray_redirects(snap, live, ifbs)
    for name in sorted(by_ifb, key=natural_key):
        if len(by_ifb[name]) > 1:
            paths = ", ".join(c.path for c in by_ifb[name])
            found.append(Anomaly("double-claim", f"{name} is claimed by {paths}", ifb=name))
    return found


def _stray_redirects(snap: Snapshot, live: list[Claim], ifbs: dict[str, Ifb]) -> list[Anomaly]:
    """Redirects no live netbuf claims that are a netbuf's leftovers: on a vif (dom0's backend
    names it, or libxl's vif<domid>.<devid>) and into an IFB that has a plug or was left bare.
    A redirect from any other device, or into an IFB with a root qdisc of its own (someone's
    shaping), is not ours and no anomaly."""
    claimed_pairs = {
        (snap.vif_names.get(c.path, vif_name(c.domid, c.devid, None)), c.ifb) for c in live
    }
    vifs = snap.backend_vifs | set(snap.vif_names.values())
    found = []
    for vif in sorted(snap.redirects, key=natural_key):
        if vif not in vifs and not VIF_NAME.fullmatch(vif):
            continue
        stray = sorted(
            (
                i
                for i in snap.redirects[vif]
                if (vif, i) not in claimed_pairs
                and i in ifbs
                and (ifbs[i].root_qdisc == "plug" or not ifbs[i].added_root)
            ),
            key=natural_key,
        )
        # The vif of a live netbuf keeps its redirects, even a wrong one: gc never touches a
        # live netbuf; the admin tears it down.
        live_vif = any(v == vif for v, _ in claimed_pairs)
        for ifb in stray:
            found.append(
                Anomaly(
                    "unclaimed-redirect",
                    f"{vif} redirects to {ifb}, which no live netbuf claims for it",
                    [] if live_vif else [Repair("remove-redirect", vif, ifb)],
                    ifb=ifb,
                    vif=vif,
                )
            )
    return found
