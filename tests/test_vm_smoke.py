"""Smoke tests of the kernel tier (tests/vmtier.py, tools/vm.py).

In the VM: the kernel is Debian's, as cached, and a plug qdisc goes on an IFB in a namespace.
From the host: the plugin carries inner results out (the real assertion of a failure), boots
nothing when no vm test is selected, and skips or, on CI, fails when the VM cannot run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import vm

REPO = Path(__file__).resolve().parents[1]

# --- in the VM ----------------------------------------------------------------------------


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


@pytest.mark.vm
def test_in_the_vm_the_kernel_is_debians_as_cached() -> None:
    if os.environ.get(vm.IN_VM) != "1":
        pytest.skip("this kernel has sch_plug: the tier runs here, without a VM")
    options = vm.Options.from_env()  # the guest has the host's REMUS_NETBUF_VM_KERNEL
    cached = vm.lines(vm.kernel_dir(options.cache, options.kernel) / "version")
    assert [os.uname().release] == cached
    assert os.uname().nodename == "remus-netbuf-vm"
    assert float(os.environ[vm.SLOWDOWN]) >= 1.0


@pytest.mark.vm
def test_plug_goes_on_an_ifb_in_a_namespace() -> None:
    ns = "vm-smoke"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", "ifb0", "type", "ifb")
        sh("ip", "-n", ns, "link", "set", "ifb0", "up")
        sh("tc", "-n", ns, "qdisc", "add", "dev", "ifb0", "root", "plug", "limit", "10000")
        assert "qdisc plug" in sh("tc", "-n", ns, "qdisc", "show", "dev", "ifb0")
    finally:
        subprocess.run(["ip", "netns", "del", ns])


# --- the plugin, driven from the host by an outer pytest on a tiny project ---------------

TINY_TESTS = """
import pytest


@pytest.mark.vm
def test_passes_in_vm():
    pass


@pytest.mark.vm
def test_fails_in_vm():
    answer = 6 * 7
    assert answer == 41, "deliberate failure in the VM"


@pytest.mark.vm
def test_skips_in_vm():
    pytest.skip("deliberate skip in the VM")


def test_on_host():
    pass
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    vm: in the VM\n")
    (tmp_path / "test_tiny.py").write_text(TINY_TESTS)
    return tmp_path


OUTER = [sys.executable, "-m", "pytest", "-p", "tests.vmtier", "-p", "no:cacheprovider", "-rA"]


def outer_pytest(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """An outer pytest with the plugin, on project; the VM work dir goes there too."""
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    base |= {"PYTHONPATH": str(REPO), "REMUS_NETBUF_VM_WORKDIR": str(project)}
    return subprocess.run(
        [*OUTER, *args], cwd=project, env=base | env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture
def broken_vng(tmp_path: Path) -> tuple[Path, Path]:
    """A 'vng' that records each start and dies before the guest's init, as a broken QEMU would."""
    booted = tmp_path / "booted"
    vng = tmp_path / "fake-vng"
    vng.write_text(f"#!/bin/sh\necho boot >>{booted}\necho 'fake: no boot' >&2\nexit 1\n")
    vng.chmod(0o755)
    return vng, booted


# Forced to QEMU: on a kernel with sch_plug the tier would otherwise run the tests here.
BROKEN = {"REMUS_NETBUF_VM": "tcg", "REMUS_NETBUF_VM_SHARDS": "1"}


def test_without_vm_tests_selected_no_vm_boots(tiny: Path, broken_vng: tuple[Path, Path]) -> None:
    vng, booted = broken_vng
    done = outer_pytest(tiny, "-m", "not vm", REMUS_NETBUF_VM_VNG=str(vng), **BROKEN)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 3 deselected" in done.stdout
    assert not booted.exists()


def test_when_the_vm_does_not_boot_vm_tests_skip_once_booted(
    tiny: Path, broken_vng: tuple[Path, Path]
) -> None:
    vng, booted = broken_vng
    done = outer_pytest(tiny, REMUS_NETBUF_VM_VNG=str(vng), **BROKEN)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 3 skipped" in done.stdout
    assert "the VM did not boot (it powered off)" in done.stdout
    assert booted.read_text() == "boot\n"  # once for the session, not once per test


def test_on_ci_vm_tests_fail_when_the_vm_cannot_run(tiny: Path) -> None:
    done = outer_pytest(tiny, CI="true", REMUS_NETBUF_VM_VNG="/nonexistent/vng", **BROKEN)
    assert done.returncode == 1, done.stdout
    assert "3 failed, 1 passed" in done.stdout
    assert "/nonexistent/vng not found" in done.stdout


@pytest.mark.vm(on_host=True)
def test_inner_results_come_out_as_outer_results(tiny: Path) -> None:
    done = outer_pytest(tiny)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 2 passed, 1 skipped" in done.stdout
    assert "deliberate failure in the VM" in done.stdout
    assert "assert 42 == 41" in done.stdout
    skipped = [ln for ln in done.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert skipped[0].startswith("SKIPPED [1] test_tiny.py:"), skipped  # the test, not the plugin
    assert skipped[0].endswith(": deliberate skip in the VM")
    assert "kernel tier" in done.stdout  # the summary: mode, boot time, overhead


def test_shards_balance_by_weight_and_keep_collection_order() -> None:
    from tests.vmtier import shard

    weights = {"a": 1.0, "heavy1": 170.0, "b": 1.0, "heavy2": 170.0, "crash": 45.0, "c": 8.0}
    groups = shard(weights, 2)
    assert sorted(sum(weights[n] for n in g) for g in groups) == [180.0, 215.0]
    assert {frozenset(g) & {"heavy1", "heavy2"} for g in groups} == {
        frozenset({"heavy1"}),
        frozenset({"heavy2"}),
    }
    for group in groups:
        assert group == [n for n in weights if n in group]  # collection order
    assert shard(weights, 1) == [list(weights)]
    assert shard({"only": 1.0}, 4) == [["only"]]
    assert shard({}, 2) == []
