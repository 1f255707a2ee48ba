"""``status --format prometheus``: parsed back with prometheus_client's own parser.

From a snapshot (plain data) to the exposition; the atomic ``--output``; a failed scan; the extra
imported only on this path; and end to end on this kernel, a real ``remus-netbuf`` process in a
bed. The drops of a real plug that overflowed are in tests/test_metrics_vm.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import remus_netbuf
from remus_netbuf import cli
from remus_netbuf.audit import Plugged, Snapshot
from remus_netbuf.decide import Claim, Ifb
from remus_netbuf.metrics import Scrape, exposition, write
from tests.bed import BIN, Bed, netbuf_path
from tests.elfstub import NETBUF, PLAIN, write_stub

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, sorted labels) -> value), by prometheus_client."""
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def netbuf(domid: int, vif: str, ifb: str) -> tuple[tuple[str, str], ...]:
    return (("devid", "0"), ("domid", str(domid)), ("ifb", ifb), ("vif", vif))


def hotplug_states(samples: Samples, labels: tuple[tuple[str, str], ...]) -> dict[str, float]:
    """status -> value of remus_netbuf_hotplug_status for one netbuf."""
    found = {}
    for (name, got), value in samples.items():
        extra = dict(got)
        state = extra.pop("status", None)
        if name == "remus_netbuf_hotplug_status" and tuple(sorted(extra.items())) == labels:
            found[str(state)] = value
    return found


SNAP = Snapshot(
    claims=[Claim(5, 0, "ifb0"), Claim(7, 0, "ifb2")],
    live_domids={5},
    ifbs=[Ifb("ifb0", "plug", True), Ifb("ifb1", None), Ifb("ifb2", None, True)],
    plugs={"ifb0": Plugged(backlog_bytes=1400, backlog_packets=10, drops=3, overlimits=4)},
    redirects={"vif5.0": {"ifb0"}},
    vif_names={netbuf_path(5): "vif5.0", netbuf_path(7): "vif7.0"},
    hotplug_status={netbuf_path(5): "connected"},
)


def test_a_snapshot_as_prometheus_reads_it_back() -> None:
    types, samples = parse(exposition(Scrape(SNAP, 0.25)))
    five, seven = netbuf(5, "vif5.0", "ifb0"), netbuf(7, "vif7.0", "ifb2")
    assert types == {
        "remus_netbuf_up": "gauge",
        "remus_netbuf_scrape_duration_seconds": "gauge",
        "remus_netbuf_backlog_bytes": "gauge",
        "remus_netbuf_backlog_packets": "gauge",
        "remus_netbuf_drops": "counter",
        "remus_netbuf_overlimits": "counter",
        "remus_netbuf_redirect_ok": "gauge",
        "remus_netbuf_hotplug_status": "gauge",
        "remus_netbuf_anomalies": "gauge",
        "remus_netbuf_free_ifbs": "gauge",
    }
    expected = {
        ("remus_netbuf_up", ()): 1,
        ("remus_netbuf_scrape_duration_seconds", ()): 0.25,
        ("remus_netbuf_backlog_bytes", five): 1400,
        ("remus_netbuf_backlog_bytes", seven): 0,
        ("remus_netbuf_backlog_packets", five): 10,
        ("remus_netbuf_backlog_packets", seven): 0,
        ("remus_netbuf_drops_total", five): 3,
        ("remus_netbuf_drops_total", seven): 0,
        ("remus_netbuf_overlimits_total", five): 4,
        ("remus_netbuf_overlimits_total", seven): 0,
        ("remus_netbuf_redirect_ok", five): 1,
        ("remus_netbuf_redirect_ok", seven): 0,
    }
    for key, value in expected.items():
        assert samples.pop(key) == value, key
    assert hotplug_states(samples, five) == {"connected": 1, "error": 0, "none": 0}
    assert hotplug_states(samples, seven) == {"connected": 0, "error": 0, "none": 1}
    anomalies = {
        dict(labels)["kind"]: v for (name, labels), v in samples.items() if "anomalies" in name
    }
    assert anomalies == {
        "bad-config": 0,
        "claim-not-ifb": 0,
        "claim-without-plug": 0,
        "claim-without-redirect": 0,
        "dead-domain-claim": 1,
        "double-claim": 0,
        "unclaimed-plug": 0,
        "unclaimed-redirect": 0,
    }


def test_free_ifbs_counts_what_setup_could_take() -> None:
    _, samples = parse(exposition(Scrape(SNAP, 0.0)))
    # ifb0 is plugged and claimed; ifb1 is free; ifb2 is claimed by dead domain 7: free as well.
    assert samples[("remus_netbuf_free_ifbs", ())] == 2


def test_a_failed_scan_is_up_0_and_its_duration() -> None:
    types, samples = parse(exposition(Scrape(None, 0.5, "xenstore: cannot connect")))
    assert set(types) == {"remus_netbuf_up", "remus_netbuf_scrape_duration_seconds"}
    assert samples == {
        ("remus_netbuf_up", ()): 0,
        ("remus_netbuf_scrape_duration_seconds", ()): 0.5,
    }


@pytest.mark.parametrize("buffering", [True, False])
def test_libxenlights_buffering_is_written_even_when_the_scan_fails(buffering: bool) -> None:
    for snap in (SNAP, None):
        _, samples = parse(exposition(Scrape(snap, 0.5, None if snap else "down", buffering)))
        assert samples[("remus_netbuf_libxenlight_buffering", ())] == int(buffering)


def test_no_libxenlight_no_buffering_series(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("remus_netbuf.libxenlight.search_dirs", lambda: [str(tmp_path)])
    from remus_netbuf.metrics import libxenlight_buffers

    assert libxenlight_buffers() is None
    write_stub(tmp_path / "libxenlight.so.4.17", **PLAIN)
    assert libxenlight_buffers() is False
    write_stub(tmp_path / "libxenlight.so.4.17", **NETBUF)
    assert libxenlight_buffers() is True


def test_output_is_replaced_atomically_never_rewritten_in_place(tmp_path: Path) -> None:
    target = tmp_path / "remus-netbuf.prom"
    target.write_text("old\n")
    reader = tmp_path / "what-a-reader-had-open"
    os.link(target, reader)  # the inode a reader may be reading while we write
    write(Scrape(SNAP, 0.1), str(target))
    assert reader.read_text() == "old\n"  # untouched: the new file was renamed over the name
    assert target.stat().st_ino != reader.stat().st_ino
    assert parse(target.read_text())[1][("remus_netbuf_up", ())] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name, reader.name]  # no temp


def test_without_prometheus_client_the_error_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    monkeypatch.delitem(sys.modules, "remus_netbuf.metrics", raising=False)
    monkeypatch.delattr(remus_netbuf, "metrics", raising=False)
    assert cli.main(["status", "--format", "prometheus"]) == 1
    err = capsys.readouterr().err
    assert err.endswith(
        "--format prometheus needs prometheus_client: pip install 'remus-netbuf[metrics]'\n"
    )


def test_prometheus_client_is_imported_only_by_the_metrics_path() -> None:
    code = (
        "import sys\n"
        "import remus_netbuf.cli, remus_netbuf.status, remus_netbuf.check, remus_netbuf.hotplug\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    done = subprocess.run([BIN / "python", "-c", code], capture_output=True, text=True)
    assert done.stdout == "False\n", done.stderr


@pytest.mark.parametrize("argv", [["--output", "x.prom"], ["--format", "json", "--output", "x"]])
def test_output_goes_with_the_prometheus_format_only(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", *argv]) == 1
    assert "--output goes with --format prometheus" in capsys.readouterr().err


# --- end to end on this kernel ----------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")


@needs_root
def test_status_as_prometheus_of_a_bed(bed: Bed, tmp_path: Path) -> None:
    """A netbuf whose plug this kernel cannot give (so: an anomaly, exit 2), and a free IFB."""
    bed.add_vif("vif5.0")
    bed.add_ifb("ifb0", up=True)
    bed.add_ifb("ifb1")
    bed.domain(5)
    bed.tc("qdisc", "add", "dev", "vif5.0", "ingress")
    bed.tc(
        "filter", "add", "dev", "vif5.0", "parent", "ffff:", "protocol", "all", "pref", "10",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "ifb0",
    )  # fmt: skip
    bed.claim(5, 0, "ifb0")
    bed.xs.seed(f"{netbuf_path(5)}/hotplug-status", "connected")

    printed = bed.cli("status", "--format", "prometheus")
    assert printed.returncode == 2, printed
    prom = tmp_path / "remus-netbuf.prom"
    written = bed.cli("status", "--format", "prometheus", "--output", str(prom))
    assert (written.returncode, written.stdout) == (2, ""), written

    for text in (printed.stdout, prom.read_text()):
        _, samples = parse(text)
        five = netbuf(5, "vif5.0", "ifb0")
        assert samples[("remus_netbuf_up", ())] == 1
        assert samples[("remus_netbuf_redirect_ok", five)] == 1
        assert samples[("remus_netbuf_drops_total", five)] == 0
        assert hotplug_states(samples, five) == {"connected": 1, "error": 0, "none": 0}
        assert samples[("remus_netbuf_anomalies", (("kind", "claim-without-plug"),))] == 1
        assert samples[("remus_netbuf_free_ifbs", ())] == 1
        assert 0 < samples[("remus_netbuf_scrape_duration_seconds", ())] < 30


@needs_root
def test_a_scan_that_fails_writes_up_0_and_exits_1(bed: Bed, tmp_path: Path) -> None:
    prom = tmp_path / "remus-netbuf.prom"
    prom.write_text("remus_netbuf_up 1\n")  # what the last good scrape left
    result = bed.cli(
        "status", "--format", "prometheus", "--output", str(prom),
        XENSTORED_PATH=str(tmp_path / "gone"),
    )  # fmt: skip
    assert result.returncode == 1, result
    assert result.stderr.startswith("remus-netbuf: xenstore: cannot connect to ")
    assert parse(prom.read_text())[1][("remus_netbuf_up", ())] == 0


# --- the systemd timer shipped under etc/ -------------------------------------------------------

UNITS = Path(__file__).resolve().parents[1] / "etc" / "systemd"


def exec_start() -> list[str]:
    (line,) = [
        ln for ln in (UNITS / "remus-netbuf-metrics.service").read_text().splitlines()
        if ln.startswith("ExecStart=")
    ]  # fmt: skip
    return shlex.split(line.removeprefix("ExecStart="))


def test_the_service_writes_a_prom_file_for_the_textfile_collector() -> None:
    program, *argv = exec_start()
    assert program == "/usr/local/sbin/remus-netbuf"  # where make install links it
    args = cli.build_parser().parse_args(argv)
    assert (args.command, args.format) == ("status", "prometheus")
    assert args.output == "/var/lib/prometheus/node-exporter/remus-netbuf.prom"
    service = (UNITS / "remus-netbuf-metrics.service").read_text()
    assert "\nSuccessExitStatus=2\n" in service  # anomalies are in the metrics: not a failure


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_timer_and_service(tmp_path: Path) -> None:
    for unit in UNITS.iterdir():  # as installed, with this venv's remus-netbuf (quoted: a space)
        text = unit.read_text().replace("/usr/local/sbin/remus-netbuf ", f'"{BIN}/remus-netbuf" ')
        (tmp_path / unit.name).write_text(text)
    names = sorted(str(p) for p in tmp_path.iterdir())
    done = subprocess.run(["systemd-analyze", "verify", *names], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_every_metric_the_docs_name_is_exported() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    section = docs.split("\n## The metrics\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\bremus_netbuf_[a-z_]+\b", section))
    _, samples = parse(exposition(Scrape(SNAP, 0.1, buffering=True)))
    exported = {name for name, _ in samples}
    assert "remus_netbuf_drops_total" in named  # the alert rule's
    assert named <= exported, named - exported
