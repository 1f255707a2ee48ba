"""Smoke tests of the kernel tier (tests/vmtier.py, tools/vm.py).

In the VM: the kernel is Debian's, as cached, and a plug qdisc goes on an IFB in a namespace.
From the host: the plugin carries inner results out (the real assertion of a failure), boots
nothing when no vm test is selected, and skips or, on CI, fails when the VM cannot run; the
runner runs from a checkout the guest would not see by itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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


# What the guest runs in the copy below: the copy's package and the venv's packages import, and
# the copy takes a file (which the host must not see).
ANYWHERE_PROBE = """
import pathlib, pyxs, remus_netbuf
print("package", remus_netbuf.__file__)
print("venv", pyxs.__file__)
written = pathlib.Path("written-in-the-guest")
written.write_text("yes")
print("wrote", written.read_text())
"""


@pytest.mark.vm(on_host=True)
def test_the_runner_runs_from_a_checkout_under_var_tmp_with_a_space_in_its_path() -> None:
    """vng's guest has a tmpfs on /var/tmp, and vng and the kernel's command line split paths at
    spaces: a copy of this work tree there (its venv a link to this one) runs the runner."""
    if vm.choose_mode(vm.Options.from_env()) == "native":
        pytest.skip("this kernel has sch_plug: the runner boots no VM")
    checkout = Path(tempfile.mkdtemp(prefix="rnb checkout ", dir="/var/tmp"))
    try:
        for name in ("tools", "remus_netbuf"):
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO / name, checkout / name, ignore=ignore)
        (checkout / ".venv").symlink_to(sys.prefix)
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTHONPATH")}
        env["REMUS_NETBUF_VM_CACHE"] = str(vm.Options.from_env().cache.absolute())  # no fetch
        python = str(checkout / ".venv" / "bin" / "python")
        done = subprocess.run(
            [python, "-m", "tools.vm", "--", python, "-c", ANYWHERE_PROBE],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=1000,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"package {checkout}/remus_netbuf/__init__.py\n" in done.stdout
        assert f"venv {checkout}/.venv/lib/" in done.stdout
        assert "wrote yes\n" in done.stdout
        assert "module failed" not in done.stderr  # the kernel's modules, from the cache
        assert not (checkout / "written-in-the-guest").exists()  # the guest's writes stay there
    finally:
        shutil.rmtree(checkout)


def test_the_guest_exposes_real_directories_once_and_never_over_the_work_dir(
    tmp_path: Path,
) -> None:
    repo, elsewhere, work = tmp_path / "repo", tmp_path / "else where", tmp_path / "work" / "vm-1"
    for directory in (repo / ".venv", repo / ".cache" / "vm", elsewhere, work):
        directory.mkdir(parents=True)
    (repo / "link").symlink_to(elsewhere)
    paths = [repo, repo / ".venv", repo / "link", repo / ".cache" / "vm", tmp_path / "gone"]
    paths += [tmp_path / "work", Path("/")]  # hold the work dir: an overlay there would hide it
    assert vm.exposed(paths, work) == [elsewhere.resolve(), repo.resolve()]


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
