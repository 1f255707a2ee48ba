"""The metrics of a real plug that overflowed (Debian's kernel): its drops reach Prometheus.

A netbuf is installed by hand with a small plug limit (tc: a setup process costs seconds here), a
guest sends more than the plug holds, and ``status --format prometheus --output`` (a fork in the
bed's namespace) must report what ``tc -s``, read around it, counts: drops, backlog, overlimits.
The file is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.bed import Bed, netbuf_path
from tests.forkrun import Runner
from tests.packets import Wire
from tests.test_cli_vm import plug_by_hand, redirect_by_hand
from tests.test_metrics import hotplug_states, netbuf, parse
from tests.vmtier import scaled

pytestmark = pytest.mark.vm(weight=10)
VIF = "vif5.0"
LIMIT = 1000  # bytes: four 242-byte datagrams, then drops


def test_drops_of_an_overflowing_plug_are_counted_in_the_metrics(bed: Bed, tmp_path: Path) -> None:
    peer = bed.add_vif(VIF)
    bed.domain(5)
    bed.add_ifb("ifb0")
    plug_by_hand(bed, "ifb0", limit=LIMIT)
    redirect_by_hand(bed, VIF, "ifb0")
    bed.claim(5, 0, "ifb0")
    bed.xs.seed(f"{netbuf_path(5)}/hotplug-status", "connected")
    wire = Wire(bed.ns, VIF, peer)
    try:
        wire.send("flood", v4=12, size=200)  # a new plug holds: the first four fit, then drops
        assert wire.drain(settle=0.2) == Counter()
        prom = tmp_path / "remus-netbuf.prom"
        before = bed.root_stats("ifb0")
        with Runner(bed) as runner:
            job = runner.cli("status", "--format", "prometheus", "--output", str(prom))
            outcome = runner.run(job, timeout=scaled(30))
        after = bed.root_stats("ifb0")
    finally:
        wire.close()
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "", ""), outcome
    _, samples = parse(prom.read_text())
    five = netbuf(5, VIF, "ifb0")
    assert before["drops"] >= 8
    assert before["drops"] <= samples[("remus_netbuf_drops_total", five)] <= after["drops"]
    assert before["overlimits"] <= samples[("remus_netbuf_overlimits_total", five)]
    assert samples[("remus_netbuf_overlimits_total", five)] <= after["overlimits"]
    assert before["backlog"] <= samples[("remus_netbuf_backlog_bytes", five)] <= after["backlog"]
    assert 0 < samples[("remus_netbuf_backlog_bytes", five)] <= LIMIT
    assert before["qlen"] <= samples[("remus_netbuf_backlog_packets", five)] <= after["qlen"]
    assert samples[("remus_netbuf_redirect_ok", five)] == 1
    assert hotplug_states(samples, five) == {"connected": 1, "error": 0, "none": 0}
    assert samples[("remus_netbuf_free_ifbs", ())] == 0
    assert {v for (name, _), v in samples.items() if name == "remus_netbuf_anomalies"} == {0}
    assert samples[("remus_netbuf_up", ())] == 1
