"""``remus-netbuf status`` output, byte for byte, against golden files in tests/golden/.

Rendered by :func:`remus_netbuf.status.render_json` / :func:`render_table` from hand-built
snapshots; ``UPDATE_GOLDEN=1 pytest tests/test_status_golden.py`` rewrites the files (review the
diff before committing it).

``status --json`` document, version 1 (keys sorted, two-space indent, one trailing newline)::

    {
      "version": 1,            # bumped on any incompatible change
      "netbufs": [             # one per claim /libxl/<domid>/remus/netbuf/<devid>/ifb,
        {                      #   ordered by domid, then devid
          "domid": 3,          # the guest's domain id
          "devid": 0,          # the vif's device id within the guest
          "vif": "vif3.0",     # dom0's vif: the backend's vifname if set, else vif<domid>.<devid>
          "ifb": "ifb0",       # the IFB the netbuf claims (the value of .../ifb)
          "live": true,        # the domain is listed under /local/domain
          "ifb_exists": true,  # a link of that name exists
          "ifb_up": true,      # and it is up (false when it does not exist)
          "root_qdisc": "plug",  # kind of the IFB's root qdisc: "plug" when buffering; the
                                 #   kernel's default (e.g. "pfifo_fast") on an IFB that has
                                 #   been up without one; null: none, or no IFB
          "backlog_bytes": 1500,   # bytes the plug holds now (0 without a plug)
          "backlog_packets": 3,    # packets the plug holds now: the unreleased epochs
          "drops": 0,          # packets the plug dropped, over its byte limit, since it was added
          "redirect": true,    # the vif's ingress redirects to this IFB
          "hotplug_status": "connected"  # .../hotplug-status; null when absent or empty
        }
      ],
      "anomalies": [           # grouped by kind in this order, then by name: bad-config,
        {                      #   dead-domain-claim, claim-not-ifb, claim-without-plug,
                               #   claim-without-redirect, unclaimed-plug,
                               #   unclaimed-redirect, double-claim
          "kind": "unclaimed-plug",
          "detail": "ifb10 has a plug but no live netbuf claims it",   # one line, for people
          "gc": ["unplug ifb10"],  # what `remus-netbuf gc` does about it, each "ACTION TARGET":
                                   #   "remove-claim <netbuf path>", "unplug <ifb>",
                                   #   "remove-redirect <vif> to <ifb>"; [] when it belongs to
                                   #   a live netbuf: gc leaves it for the admin
          "ifb": "ifb10",      # what it names, for monitors; null where it does not apply:
          "vif": null,         #   the vif,
          "domid": null,       #   the domain and device of the netbuf's claim,
          "devid": null,
          "path": null         #   the claim's /libxl/<domid>/remus/netbuf/<devid>
        }
      ]
    }

Anomaly kinds: ``bad-config`` (the configuration does not parse: setup, teardown and gc would
fail on it), ``dead-domain-claim`` (a claim of a domain that no longer exists; gc removes the
claim with its hotplug-status and hotplug-error), ``claim-not-ifb`` (a live claim names a device
that is no IFB; teardown and gc never touch it), ``claim-without-plug`` (a live claim whose IFB
is missing or has no plug; left alone), ``claim-without-redirect`` (a live claim whose IFB has
its plug but whose vif does not redirect to it: the guest's output is not buffered; left alone),
``unclaimed-plug`` (an IFB with a plug that no live netbuf claims; gc brings it down and unplugs
it), ``unclaimed-redirect`` (a vif's ingress redirects to an IFB with a plug, or a bare one,
that no live netbuf claims for that vif; gc removes that filter, and the ingress qdisc once no
other filter is left, unless the vif is a live netbuf's; a redirect from a device that is no
vif, or into an IFB with a root qdisc of its own, is someone's shaping and no anomaly),
``double-claim`` (two live netbufs claim one IFB; left alone).
Exit status: 0 no anomaly, 2 anomalies, 1 failure.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from remus_netbuf.audit import Plugged, Snapshot
from remus_netbuf.decide import Claim, Ifb, netbuf_path
from remus_netbuf.status import render_json, render_table

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def empty() -> Snapshot:
    return Snapshot([], set(), [Ifb("ifb0", None)], {}, {}, {}, {})


def clean() -> Snapshot:
    """Two healthy netbufs (one on a vif the guest config renamed) and a free IFB."""
    return Snapshot(
        claims=[Claim(3, 0, "ifb0"), Claim(12, 1, "ifb1")],
        live_domids={3, 12},
        ifbs=[Ifb("ifb0", "plug", True), Ifb("ifb1", "plug", True), Ifb("ifb2", None)],
        plugs={"ifb0": Plugged(1500, 3, 0), "ifb1": Plugged(0, 0, 17)},
        redirects={"vif3.0": {"ifb0"}, "web12": {"ifb1"}},
        vif_names={netbuf_path(3, 0): "vif3.0", netbuf_path(12, 1): "web12"},
        hotplug_status={netbuf_path(3, 0): "connected", netbuf_path(12, 1): "connected"},
    )


def every_anomaly() -> Snapshot:
    """One healthy netbuf and every anomaly, each kind more than once where it has variants."""
    return Snapshot(
        claims=[
            Claim(3, 0, "ifb0"),  # healthy, but its vif also redirects to ifb5
            Claim(4, 0, "ifb9"),  # claim-without-plug: IFB missing
            Claim(5, 0, "ifb2"),  # claim-without-plug: no plug
            Claim(6, 0, "ifb3"),  # double-claim with 8/0
            Claim(7, 0, "ifb1"),  # dead domain: claim, plug and redirect left behind
            Claim(8, 0, "ifb3"),
            Claim(9, 0, "ifb4"),  # claim-without-redirect: plugged, but vif9.0 bypasses it
            Claim(10, 0, "eth1"),  # claim-not-ifb: a typo names dom0's uplink
        ],
        live_domids={3, 4, 5, 6, 8, 9, 10},
        ifbs=[
            Ifb("ifb0", "plug", True),
            Ifb("ifb1", "plug", True),
            Ifb("ifb2", None, True),
            Ifb("ifb3", "plug", True),
            Ifb("ifb4", "plug", True),
            Ifb("ifb5", None),
            Ifb("ifb6", "pfifo_fast", True),
            Ifb("ifb10", "plug"),  # unclaimed-plug
            Ifb("ifb11", "tbf", True, root_handle=0x10000),  # an admin's shaping: no anomaly
        ],
        plugs={
            "ifb0": Plugged(0, 0, 0),
            "ifb1": Plugged(9000, 6, 2),
            "ifb3": Plugged(120, 1, 0),
            "ifb10": Plugged(0, 0, 0),
        },
        redirects={
            "vif3.0": {"ifb0", "ifb5"},  # unclaimed-redirect beside a live one: left alone
            "vif6.0": {"ifb3"},
            "vif8.0": {"ifb3"},
            "vif7.0": {"ifb1"},  # the dead domain's
            "vif9.0": {"ifb6"},  # unclaimed-redirect on a vif of no netbuf
            "eth1": {"ifb0"},  # no vif: someone's, no anomaly
            "vif3.1": {"ifb11"},  # shaping through an IFB with its own root: no anomaly
        },
        vif_names={netbuf_path(d, 0): f"vif{d}.0" for d in (3, 4, 5, 6, 7, 8)},
        hotplug_status={
            netbuf_path(3, 0): "connected",
            netbuf_path(4, 0): "connected",
            netbuf_path(6, 0): "connected",
            netbuf_path(7, 0): "connected",
            netbuf_path(8, 0): "error",
        },
        kinds={"eth1": "veth", "ifb0": "ifb"},
        config_error="config /etc/xen/remus-netbuf.conf:3: unknown key 'plug_limt'",
    )


CASES = {"empty": empty, "clean": clean, "anomalies": every_anomaly}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(("suffix", "render"), [("json", render_json), ("txt", render_table)])
def test_status_output_matches_golden_file(name: str, suffix: str, render: object) -> None:
    path = GOLDEN / f"status-{name}.{suffix}"
    text = render(CASES[name]())  # type: ignore[operator]
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(text.encode())
    assert text.encode() == path.read_bytes(), f"rerun with UPDATE_GOLDEN=1 and review {path}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_json_and_table_say_the_same(name: str) -> None:
    snap = CASES[name]()
    doc = json.loads(render_json(snap))
    table = render_table(snap).splitlines()
    assert doc["version"] == 1
    titles = table[0].split()
    body = table[1 : table.index("")]
    if not doc["netbufs"]:
        assert body == ["(no netbufs)"]
        body = []
    for netbuf, line in zip(doc["netbufs"], body, strict=True):
        cells = dict(zip(titles, re.split(r"\s{2,}", line), strict=True))
        dead = "" if netbuf["live"] else " (dead)"
        assert cells["DOMID"] == f"{netbuf['domid']}{dead}"
        assert (cells["DEVID"], cells["VIF"], cells["IFB"]) == (
            str(netbuf["devid"]),
            netbuf["vif"],
            netbuf["ifb"],
        )
        link = "missing" if not netbuf["ifb_exists"] else "up" if netbuf["ifb_up"] else "down"
        assert (cells["LINK"], cells["ROOT"]) == (link, netbuf["root_qdisc"] or "-")
        assert cells["BACKLOG"] == f"{netbuf['backlog_bytes']}b/{netbuf['backlog_packets']}p"
        assert cells["DROPS"] == str(netbuf["drops"])
        assert cells["REDIRECT"] == ("yes" if netbuf["redirect"] else "no")
        assert cells["HOTPLUG"] == (netbuf["hotplug_status"] or "-")
    assert f"anomalies: {len(doc['anomalies']) or 'none'}" in table
    for anomaly in doc["anomalies"]:
        assert any(f"  {anomaly['kind']}: {anomaly['detail']} [" in line for line in table)
        for repair in anomaly["gc"]:
            assert any(anomaly["detail"] in line and repair in line for line in table)


def test_json_fields_are_the_documented_ones() -> None:
    doc = json.loads(render_json(every_anomaly()))
    assert set(doc) == {"version", "netbufs", "anomalies"}
    documented = set(
        __doc__.split("``status --json``")[1].split("Anomaly kinds")[0].split('"')[1::2]
    )
    for netbuf in doc["netbufs"]:
        assert set(netbuf) <= documented
    for anomaly in doc["anomalies"]:
        assert set(anomaly) == {"kind", "detail", "gc", "ifb", "vif", "domid", "devid", "path"}
