"""The first setup on a dom0 whose ifb module is not loaded, on a kernel with sch_plug.

Setup's own request to create ``ifb0`` loads the module, which makes its ``numifbs`` IFBs in the
initial namespace before the request is carried out: with the kernel's default of 2 (a dom0
without systemd, whose ``numifbs=0`` hides this) the request then met the ``ifb0`` it had just
made, and the first ``xl remus`` failed ("create ifb0: File exists"). These tests run where the
module makes its IFBs, in the VM's initial namespace, with the module unloaded first, and run
setup first: ``remus-netbuf check`` would load the module and hide the case.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bed import Bed, Result, make_bed, netbuf_path, sh

pytestmark = pytest.mark.vm(weight=30)

MODPROBE_CONF = Path("/etc/modprobe.d/zz-remus-netbuf-test.conf")  # after systemd.conf: it wins
VIFS = ("vif5.0", "vif6.0")
PATHS = (netbuf_path(5), netbuf_path(6))


def ifb_module_loaded() -> bool:
    return Path("/sys/module/ifb").exists()


@pytest.fixture
def dom0(tmp_path: Path) -> Iterator[Bed]:
    """The VM's initial namespace as the dom0, the ifb module unloaded; the VM's own state
    (the module loaded with no IFB of its own) restored after."""
    yield from make_bed(tmp_path, initial=True)
    MODPROBE_CONF.unlink(missing_ok=True)
    for vif in VIFS:
        sh("ip", "link", "del", vif, check=False)
    sh("rmmod", "ifb", check=False)
    sh("modprobe", "ifb", "numifbs=0")


def unload_ifb(numifbs: int) -> None:
    """No ifb module, and modprobe configured to load it with ``numifbs`` IFBs."""
    MODPROBE_CONF.write_text(f"options ifb numifbs={numifbs}\n")
    if ifb_module_loaded():
        sh("rmmod", "ifb")
    assert not ifb_module_loaded()


def setups_at_once(dom0: Bed, count: int) -> list[Result]:
    results: list[Result | None] = [None] * count
    start = threading.Barrier(count)

    def one(n: int) -> None:
        start.wait()
        results[n] = dom0.hotplug("setup", VIFS[n], PATHS[n])

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


@pytest.mark.parametrize("numifbs", [0, 2])
@pytest.mark.parametrize("guests", [1, 2])
def test_first_setup_with_the_ifb_module_unloaded(dom0: Bed, numifbs: int, guests: int) -> None:
    """One guest, or two set up at once: each setup succeeds, on its own IFB, named as the
    module names them."""
    unload_ifb(numifbs)
    for n in range(guests):
        dom0.add_vif(VIFS[n], peer=f"g{n}first")
        dom0.domain(5 + n)
    results = setups_at_once(dom0, guests)
    for result in results:
        assert result.returncode == 0, result.stderr
    assert ifb_module_loaded()
    ifbs = [dom0.node(f"{PATHS[n]}/ifb") for n in range(guests)]
    assert sorted(ifb or "" for ifb in ifbs) == [f"ifb{n}" for n in range(guests)]
    for n, ifb in enumerate(ifbs):
        assert ifb is not None
        dom0.assert_installed(VIFS[n], ifb, PATHS[n])
        assert dom0.root_qdisc(ifb) == "plug"
    if numifbs == 2:  # the first request made the module's ifb0: picked again, not failed
        assert any("picking again" in result.stderr for result in results)
    for n, ifb in enumerate(ifbs):
        result = dom0.hotplug("teardown", VIFS[n], PATHS[n], remus_ifb=ifb)
        assert result.returncode == 0, result.stderr
        dom0.assert_clean(VIFS[n], ifb, PATHS[n])


def test_modprobe_conf_reaches_the_modules_autoload(dom0: Bed) -> None:
    """The case above is the one reported: with numifbs=2, a bare ``ip link add ifb0 type ifb``
    on an unloaded module fails with EEXIST (iproute2, not our code, as the observer)."""
    unload_ifb(2)
    done = subprocess.run(
        ["ip", "link", "add", "ifb0", "type", "ifb"], capture_output=True, text=True
    )
    assert done.returncode != 0 and "File exists" in done.stderr, done
    assert {"ifb0", "ifb1"} <= set(dom0.links())
