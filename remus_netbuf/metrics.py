"""``remus-netbuf status --format prometheus``: the netbufs as node_exporter textfile metrics.

A plug drops when its buffer overflows, and each drop is a guest packet lost to output commit;
nobody sees that unless it is scraped. One ``status`` scan is turned into metric families by
:func:`families` (plain data in, prometheus_client families out) and written in the text
exposition format, with ``--output`` atomically (a temporary file renamed over the target: the
textfile collector must never read half a file). prometheus_client is an optional extra
(``remus-netbuf[metrics]``); only this path imports it.

A scrape that fails (xenstored down, say) still writes ``remus_netbuf_up 0``, so that an old file
does not go on reporting a healthy host.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .audit import Plugged, Snapshot, anomalies, rows
from .decide import free_ifbs
from .errors import NetbufError

PREFIX = "remus_netbuf_"
LABELS = ["domid", "devid", "vif", "ifb"]
HOTPLUG_STATES = ("connected", "error", "none")  # "none": no hotplug-status node
# Exported at 0 when absent, so that alerts see a series; other kinds appear when found.
ANOMALY_KINDS = (
    "bad-config",
    "claim-not-ifb",
    "claim-without-plug",
    "claim-without-redirect",
    "dead-domain-claim",
    "double-claim",
    "unclaimed-plug",
    "unclaimed-redirect",
)


@dataclass(frozen=True)
class Scrape:
    """One look at the host: the snapshot (None if it failed, then ``error`` says why)."""

    snapshot: Snapshot | None
    seconds: float
    error: str | None = None
    buffering: bool | None = None  # whether the libxenlight xl loads buffers (None: none found)

    @property
    def anomalies(self) -> int:
        return len(anomalies(self.snapshot)) if self.snapshot is not None else 0


def scrape(environ: Mapping[str, str]) -> Scrape:
    """Scan xenstore and the kernel, timing it; a failure is kept, not raised."""
    from .config import config_problem
    from .netlink import Netlink
    from .status import scan
    from .xenstore import Xenstore, socket_path

    start = time.monotonic()
    buffering = libxenlight_buffers()
    try:
        with Xenstore(socket_path(environ)) as xs, Netlink() as nl:
            snap = scan(xs, nl, config_problem(environ))
    except NetbufError as err:
        return Scrape(None, time.monotonic() - start, str(err), buffering)
    return Scrape(snap, time.monotonic() - start, buffering=buffering)


def libxenlight_buffers() -> bool | None:
    """Whether the libxenlight xl loads was built with network buffering: a Xen update from
    Debian takes a netbuf build away (check says so at length); None when there is none."""
    from .libxenlight import NotElf, find, inspect

    found = find()
    try:
        return inspect(found).netbuf if found else None
    except (OSError, NotElf):
        return None


def families(scrape: Scrape) -> list[Metric]:
    """The metric families of one scrape."""
    up = GaugeMetricFamily(PREFIX + "up", "1 if the last scan of xenstore and the kernel worked")
    up.add_metric([], 0 if scrape.snapshot is None else 1)
    took = GaugeMetricFamily(PREFIX + "scrape_duration_seconds", "seconds the scan took")
    took.add_metric([], scrape.seconds)
    health: list[Metric] = [up, took]
    if scrape.buffering is not None:
        buffering = GaugeMetricFamily(
            PREFIX + "libxenlight_buffering",
            "1 if the libxenlight xl loads has network buffering (0: xl remus cannot buffer; "
            "remus-netbuf check says why and how to rebuild it)",
        )
        buffering.add_metric([], 1 if scrape.buffering else 0)
        health.append(buffering)
    if scrape.snapshot is None:
        return health
    return [*health, *_netbufs(scrape.snapshot), *_host(scrape.snapshot)]


def _netbufs(snap: Snapshot) -> Iterator[Metric]:
    def gauge(name: str, doc: str, labels: list[str] = LABELS) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, doc, labels=labels)

    def counter(name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(PREFIX + name, doc, labels=LABELS)

    backlog_bytes = gauge("backlog_bytes", "bytes the plug holds now (the epoch's output)")
    backlog_packets = gauge("backlog_packets", "packets the plug holds now")
    drops = counter("drops", "packets the plug dropped: its buffer overflowed, output was lost")
    overlimits = counter("overlimits", "times the plug was over its byte limit")
    redirect = gauge("redirect_ok", "1 if the vif's ingress redirects to the claimed IFB")
    hotplug = gauge(
        "hotplug_status",
        "1 for the netbuf's hotplug-status in xenstore (none: no such node)",
        [*LABELS, "status"],
    )
    for row in rows(snap):
        labels = [str(row.domid), str(row.devid), row.vif, row.ifb]
        plug = snap.plugs.get(row.ifb, Plugged())
        backlog_bytes.add_metric(labels, row.backlog_bytes)
        backlog_packets.add_metric(labels, row.backlog_packets)
        drops.add_metric(labels, row.drops)
        overlimits.add_metric(labels, plug.overlimits)
        redirect.add_metric(labels, 1 if row.redirect else 0)
        status = row.hotplug_status or "none"
        for state in dict.fromkeys((*HOTPLUG_STATES, status)):
            hotplug.add_metric([*labels, state], 1 if state == status else 0)
    yield from (backlog_bytes, backlog_packets, drops, overlimits, redirect, hotplug)


def _host(snap: Snapshot) -> Iterator[Metric]:
    kinds = Counter(a.kind for a in anomalies(snap))
    found = GaugeMetricFamily(PREFIX + "anomalies", "anomalies by kind", labels=["kind"])
    for kind in sorted(set(ANOMALY_KINDS) | set(kinds)):
        found.add_metric([kind], kinds[kind])
    yield found
    free = GaugeMetricFamily(PREFIX + "free_ifbs", "IFBs a setup could take now")
    free.add_metric([], len(free_ifbs(snap.ifbs, snap.claims, snap.live_domids)))
    yield free


class _Families:
    """A collector of fixed families (the registry asks it once per exposition)."""

    def __init__(self, found: list[Metric]) -> None:
        self._found = found

    def collect(self) -> Iterator[Metric]:
        return iter(self._found)


def registry(scrape: Scrape) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Families(families(scrape)))
    return reg


def exposition(scrape: Scrape) -> str:
    """The text exposition format (what node_exporter's textfile collector reads)."""
    return generate_latest(registry(scrape)).decode("utf-8")


def write(scrape: Scrape, path: str) -> None:
    """Write the exposition to ``path`` atomically (temporary file, then rename)."""
    try:
        write_to_textfile(path, registry(scrape))
    except OSError as err:
        raise NetbufError(detail=f"write {path}: {err.strerror or err}") from None
