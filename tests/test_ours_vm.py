"""Touch only what is ours, on a kernel with sch_plug (the kernel tier): what needs a working
plug. An admin's shaping beside a netbuf survives its setup; the kernel itself refuses a plug
over someone's root qdisc; an IFB a netbuf frees (teardown, rollback, gc) is left as fresh as
one never used, so Xen's own script can take it again; a whole netbuf set up again is left as
it is. Judged by the real ``tc``/``ip`` and the stand-in's tree; the cases without a plug are in
test_ours_native.py.
"""

from __future__ import annotations

import pytest

from remus_netbuf.errors import KernelError
from remus_netbuf.netlink import Netlink
from tests.bed import Bed, netbuf_path
from tests.test_ours_native import shaping

pytestmark = pytest.mark.vm(weight=40)

VIF = "vif5.0"
PATH5 = netbuf_path(5, 0)


def fresh(bed: Bed, ifb: str) -> bool:
    """As an IFB never used: down, and no qdisc the kernel lists (``tc`` shows at most the
    built-in noop, which a dump leaves out). Xen's script takes an IFB only when
    ``nl-qdisc-list -d IFB`` lists nothing: a default qdisc attached while the IFB was up
    (pfifo_fast, fq_codel) would make it busy for good."""
    return not bed.is_up(ifb) and bed.qdiscs(ifb) == []


def test_setup_beside_an_admins_shaping_takes_another_ifb_and_the_kernel_refuses_a_plug_over_it(
    bed: Bed,
) -> None:
    bed.add_vif(VIF)
    bed.add_vif("eth1")
    bed.add_ifb("ifb0")
    bed.domain(5)
    shaped = shaping(bed, "eth1", "ifb0")
    qdisc = bed.tc("qdisc", "show", "dev", "ifb0")
    result = bed.hotplug("setup", VIF, PATH5)
    assert result.returncode == 0, result.stderr
    assert bed.node(f"{PATH5}/ifb") == "ifb1"  # autocreated: ifb0 is the admin's
    bed.assert_installed(VIF, "ifb1", PATH5)
    assert (bed.tc("qdisc", "show", "dev", "ifb0"), bed.filters("eth1")) == (qdisc, shaped)
    # Not a check-then-act: the request itself cannot replace a root qdisc.
    with Netlink(bed.ns) as nl, pytest.raises(KernelError, match="add plug to ifb0: NLM_F_REP"):
        nl.add_plug("ifb0", 1000)
    assert bed.tc("qdisc", "show", "dev", "ifb0") == qdisc


def test_a_freed_ifb_is_left_fresh_by_teardown_rollback_and_gc(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    result = bed.hotplug("setup", VIF, PATH5)
    assert result.returncode == 0, result.stderr
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0")
    assert result.returncode == 0, result.stderr
    assert fresh(bed, "ifb0"), bed.qdiscs("ifb0")

    # Rollback after the plug: the vif has someone's ingress qdisc, so setup fails after it
    # plugged ifb0; the old claim of this path comes back exactly.
    bed.tc("qdisc", "add", "dev", VIF, "ingress")
    bed.claim(5, 0, "ifb7")
    result = bed.hotplug("setup", VIF, PATH5)
    assert result.returncode == 1 and "add ingress qdisc" in result.stderr, result
    assert fresh(bed, "ifb0"), bed.qdiscs("ifb0")
    assert bed.node(f"{PATH5}/ifb") == "ifb7"

    # gc: a plug no live netbuf claims.
    bed.ip("link", "set", "ifb0", "up")
    bed.tc("qdisc", "add", "dev", "ifb0", "root", "plug", "limit", "1000")
    result = bed.cli("gc")
    assert result.returncode == 0 and "did unplug ifb0" in result.stdout, result
    assert fresh(bed, "ifb0"), bed.qdiscs("ifb0")


def test_setup_of_a_whole_netbuf_changes_nothing(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    result = bed.hotplug("setup", VIF, PATH5)
    assert result.returncode == 0, result.stderr
    before = (bed.tc("qdisc", "show"), bed.filters(VIF), bed.xs.nodes())
    again = bed.hotplug("setup", VIF, PATH5)
    assert again.returncode == 0, again.stderr
    assert "already whole on ifb0" in again.stderr
    assert (bed.tc("qdisc", "show"), bed.filters(VIF), bed.xs.nodes()) == before
