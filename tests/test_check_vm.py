"""``remus-netbuf check`` on Debian's kernel (sch_plug as a module): every check ok, exit 0.

The run is a fork of the test process in a bed's namespace (tests/forkrun.py), as in the other
kernel tests; the real ``remus-netbuf check`` process after ``make install`` is in
tests/test_install_vm.py. Nothing outside the throwaway namespace may change: the bed's
namespace and the VM's own, as the real ``ip``/``tc`` show them, and the list of namespaces.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bed import BIN, Bed, sh
from tests.elfstub import NETBUF, write_stub
from tests.forkrun import Runner, kernel_state
from tests.vmtier import scaled

pytestmark = pytest.mark.vm(weight=15)


def root_state() -> tuple[str, str, str]:
    """The VM's own namespace (nobody else uses it) and its list of named namespaces."""
    links = sh("ip", "-j", "-d", "link", "show").stdout
    qdiscs = sh("tc", "-j", "qdisc", "show").stdout
    return links, qdiscs, sh("ip", "netns", "list").stdout


def test_check_passes_on_debians_kernel_and_touches_nothing_outside(
    bed: Bed, tmp_path: Path
) -> None:
    bed.add_vif("vif5.0")
    bed.add_ifb("ifb0")
    bed.domain(5)
    xl_conf = tmp_path / "xl.conf"
    xl_conf.write_text(f'remus.default.netbufscript="{BIN}/remus-netbuf-setup"\n')
    libxl = write_stub(tmp_path / "libxenlight.so.4.17", **NETBUF)  # the VM has no Xen
    before = kernel_state(bed.ns), root_state()
    with Runner(bed) as runner:
        argv = ("check", "--json", "--xl-conf", str(xl_conf), "--libxenlight", str(libxl))
        outcome = runner.run(runner.cli(*argv), timeout=scaled(60))
    assert outcome.returncode == 0, outcome
    doc = json.loads(outcome.stdout)
    assert doc["result"] == "ok"
    checks = {c["name"]: c for c in doc["checks"]}
    assert {name: c["level"] for name, c in checks.items()} == dict.fromkeys(checks, "ok")
    assert [name for name in checks if name.startswith("kernel-")] == [
        "kernel-ifb", "kernel-plug", "kernel-ingress", "kernel-redirect",
    ]  # fmt: skip
    assert checks["kernel-plug"]["detail"] == (
        "added a plug qdisc with a limit of 10000000 bytes (sch_plug)"
    )
    assert checks["free-ifbs"]["detail"] == "1 free (ifb0); ifb_autocreate=yes makes more"
    assert (kernel_state(bed.ns), root_state()) == before
