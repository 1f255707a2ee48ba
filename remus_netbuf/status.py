"""``remus-netbuf status`` and ``gc``: one scan of xenstore and the kernel, a report, repairs.

The scan is read-only and takes no lock. ``gc`` takes the pickifb lock (the one setup claims
under), scans again under it, and applies only the repairs :mod:`.audit` allows: those of
anomalies that belong to no live netbuf.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from .audit import Anomaly, Plugged, Repair, Row, Snapshot, anomalies, rows, vif_name
from .log import log
from .netlink import Netlink
from .xenstore import Xenstore

JSON_VERSION = 1
BACKEND_VIF = "/local/domain/0/backend/vif"


def scan(xs: Xenstore, nl: Netlink, config_error: str | None = None) -> Snapshot:
    claims = xs.claims()
    live = xs.live_domids()
    vif_names = {
        c.path: vif_name(c.domid, c.devid, xs.read(f"{BACKEND_VIF}/{c.domid}/{c.devid}/vifname"))
        for c in claims
    }
    hotplug_status = {c.path: xs.read(f"{c.path}/hotplug-status") or "" for c in claims}
    seen = nl.survey()
    ifb_names = {i.name for i in seen.ifbs}
    plugs = {
        name: Plugged(s.backlog_bytes, s.backlog_packets, s.drops, s.overlimits)
        for name, s in seen.stats.items()
        if s.kind == "plug"
    }
    redirects = {
        dev: {f.ifb for f in keys if f.ifb in ifb_names} for dev, keys in seen.filters.items()
    }
    return Snapshot(
        claims=claims,
        live_domids=live,
        ifbs=seen.ifbs,
        plugs=plugs,
        redirects={dev: targets for dev, targets in redirects.items() if targets},
        vif_names=vif_names,
        hotplug_status={k: v for k, v in hotplug_status.items() if v},
        kinds=seen.kinds,
        backend_vifs=xs.backend_vifs(BACKEND_VIF),
        config_error=config_error,
    )


def report(snap: Snapshot) -> dict[str, Any]:
    """The ``status --json`` document (version 1; its fields: docs/cli.md)."""
    return {
        "version": JSON_VERSION,
        "netbufs": [asdict(row) for row in rows(snap)],
        "anomalies": [
            {
                "kind": a.kind,
                "detail": a.detail,
                "gc": [str(r) for r in a.repairs],
                "ifb": a.ifb,
                "vif": a.vif,
                "domid": a.domid,
                "devid": a.devid,
                "path": a.path,
            }
            for a in anomalies(snap)
        ],
    }


def render_json(snap: Snapshot) -> str:
    return json.dumps(report(snap), indent=2, sort_keys=True) + "\n"


_COLUMNS = (
    ("DOMID", "domid"),
    ("DEVID", "devid"),
    ("VIF", "vif"),
    ("IFB", "ifb"),
    ("LINK", "link"),
    ("ROOT", "root"),
    ("BACKLOG", "backlog"),
    ("DROPS", "drops"),
    ("REDIRECT", "redirect"),
    ("HOTPLUG", "hotplug"),
)


def _cells(row: Row) -> dict[str, str]:
    return {
        "domid": str(row.domid) + ("" if row.live else " (dead)"),
        "devid": str(row.devid),
        "vif": row.vif,
        "ifb": row.ifb,
        "link": ("up" if row.ifb_up else "down") if row.ifb_exists else "missing",
        "root": row.root_qdisc or "-",
        "backlog": f"{row.backlog_bytes}b/{row.backlog_packets}p",
        "drops": str(row.drops),
        "redirect": "yes" if row.redirect else "no",
        "hotplug": row.hotplug_status or "-",
    }


def render_table(snap: Snapshot) -> str:
    table = [{key: title for title, key in _COLUMNS}] + [_cells(row) for row in rows(snap)]
    widths = {key: max(len(line[key]) for line in table) for _, key in _COLUMNS}
    lines = ["  ".join(line[k].ljust(widths[k]) for _, k in _COLUMNS).rstrip() for line in table]
    if len(table) == 1:
        lines.append("(no netbufs)")
    found = anomalies(snap)
    lines.append("")
    lines.append(f"anomalies: {len(found) or 'none'}")
    for a in found:
        fix = f"gc: {', '.join(map(str, a.repairs))}" if a.repairs else f"gc leaves it: {_left(a)}"
        lines.append(f"  {a.kind}: {a.detail} [{fix}]")
    return "\n".join(lines) + "\n"


def _left(anomaly: Anomaly) -> str:
    return "fix the file" if anomaly.kind == "bad-config" else "live netbuf"


def gc(xs: Xenstore, nl: Netlink, dry_run: bool) -> list[str]:
    """Repair what belongs to no live netbuf; returns what was (or would be) done, one per line.

    Call with the pickifb lock held.
    """
    done = []
    for anomaly in anomalies(scan(xs, nl)):
        if not anomaly.repairs:
            done.append(f"left alone (live netbuf): {anomaly.kind}: {anomaly.detail}")
            continue
        for repair in anomaly.repairs:
            verb = "would" if dry_run else "did"
            done.append(f"{verb} {repair}: {anomaly.kind}: {anomaly.detail}")
            if not dry_run:
                _apply(xs, nl, repair)
    return done


def _apply(xs: Xenstore, nl: Netlink, repair: Repair) -> None:
    target = repair.target
    if repair.action == "remove-claim":
        for node in ("ifb", "hotplug-status", "hotplug-error"):
            log.info("%s: xenstore-rm %s/%s", target, target, node)
            xs.remove(f"{target}/{node}")
    elif repair.action == "unplug":
        nl.free_ifb(target)  # down, then the plug: left as a fresh IFB
    elif repair.action == "remove-redirect":
        keys = nl.ingress_filters(target)
        for pref, protocol in sorted({(k.pref, k.protocol) for k in keys if k.ifb == repair.to}):
            group = [k for k in keys if (k.pref, k.protocol) == (pref, protocol)]
            if all(k.ifb == repair.to for k in group):  # only ever a whole filter of ours
                nl.remove_redirect(target, pref, protocol)
            else:
                log.warning("%s: pref %d %s also does other things: left", target, pref, protocol)
    else:
        raise ValueError(repair.action)
