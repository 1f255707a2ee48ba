"""Smoke tests of the UML tier (tests/umltier.py).

Inside UML: the kernel is the 6.1 with sch_plug, and a plug qdisc goes on an IFB in a namespace.
From the host: the plugin carries inner results out (the real assertion of a failure), boots
nothing when no uml test is selected, and skips or, on CI, fails when UML cannot run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# --- inside UML ---------------------------------------------------------------------------


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


@pytest.mark.uml
def test_inside_uml_the_kernel_is_6_1() -> None:
    assert os.environ.get("REMUS_NETBUF_IN_UML") == "1"
    assert os.uname().release.startswith("6.1."), os.uname()
    assert os.uname().nodename == "remus-netbuf-uml"


@pytest.mark.uml
def test_inside_uml_plug_goes_on_an_ifb_in_a_namespace() -> None:
    ns = "uml-smoke"
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


@pytest.mark.uml
def test_passes_in_uml():
    pass


@pytest.mark.uml
def test_fails_in_uml():
    answer = 6 * 7
    assert answer == 41, "deliberate failure inside UML"


@pytest.mark.uml
def test_skips_in_uml():
    pytest.skip("deliberate skip inside UML")


def test_on_host():
    pass
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    uml: in UML\n")
    (tmp_path / "test_tiny.py").write_text(TINY_TESTS)
    return tmp_path


OUTER = [sys.executable, "-m", "pytest", "-p", "tests.umltier", "-p", "no:cacheprovider", "-rA"]


def outer_pytest(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """An outer pytest with the plugin, on project; the UML work dir goes there too."""
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    base |= {"PYTHONPATH": str(REPO), "REMUS_NETBUF_UML_WORKDIR": str(project)}
    return subprocess.run(
        [*OUTER, *args], cwd=project, env=base | env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture
def fake_kernel(tmp_path: Path) -> tuple[Path, Path]:
    """A 'kernel' that records each start and dies before init, as a broken UML would."""
    booted = tmp_path / "booted"
    kernel = tmp_path / "fake-linux.uml"
    kernel.write_text(f"#!/bin/sh\necho boot >>{booted}\necho 'fake: no init' >&2\nexit 1\n")
    kernel.chmod(0o755)
    return kernel, booted


def test_without_uml_tests_selected_uml_never_boots(
    tiny: Path, fake_kernel: tuple[Path, Path]
) -> None:
    kernel, booted = fake_kernel
    done = outer_pytest(tiny, "-m", "not uml", REMUS_NETBUF_UML_KERNEL=str(kernel))
    assert done.returncode == 0, done.stdout
    assert "1 passed, 3 deselected" in done.stdout
    assert not booted.exists()


def test_when_uml_does_not_boot_uml_tests_skip_once_booted(
    tiny: Path, fake_kernel: tuple[Path, Path]
) -> None:
    kernel, booted = fake_kernel
    done = outer_pytest(tiny, REMUS_NETBUF_UML_KERNEL=str(kernel), REMUS_NETBUF_UML_SHARDS="1")
    assert done.returncode == 0, done.stdout
    assert "1 passed, 3 skipped" in done.stdout
    assert "UML did not boot (exit 1)" in done.stdout
    assert booted.read_text() == "boot\n"  # once for the session, not once per test


def test_on_ci_uml_tests_fail_when_uml_cannot_run(tiny: Path) -> None:
    done = outer_pytest(tiny, CI="true", REMUS_NETBUF_UML_KERNEL="/nonexistent/linux.uml")
    assert done.returncode == 1, done.stdout
    assert "3 failed, 1 passed" in done.stdout
    assert "'/nonexistent/linux.uml' not found" in done.stdout


@pytest.mark.uml(on_host=True)
def test_inner_results_come_out_as_outer_results(tiny: Path) -> None:
    done = outer_pytest(tiny)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 2 passed, 1 skipped" in done.stdout
    assert "AssertionError: deliberate failure inside UML" in done.stdout
    assert "assert 42 == 41" in done.stdout
    skipped = [ln for ln in done.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert skipped[0].startswith("SKIPPED [1] test_tiny.py:"), skipped  # the test, not the plugin
    assert skipped[0].endswith(": deliberate skip inside UML")
    assert "uml tier" in done.stdout  # the summary with boot time and overhead


def test_shards_balance_by_weight_and_keep_collection_order() -> None:
    from tests.umltier import shard

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
