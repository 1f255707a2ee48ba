"""remus-netbuf-setup end to end on the running kernel, which has no sch_plug.

Everything that does not need a working plug is covered here: the missing-plug path itself,
input validation, IFB choice, teardown in all its forms, xenstore and config failures. What needs
the plug (a successful setup, busy-by-plug IFBs, packets) runs in the kernel tier (a VM).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.bed import Bed, netbuf_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")

VIF = "vif5.0"
PATH5 = netbuf_path(5, 0)


def kernel_has_plug(bed: Bed) -> bool:
    bed.add_ifb("probe0")
    try:
        bed.tc("qdisc", "add", "dev", "probe0", "root", "plug", "limit", "1000")
    except Exception:
        return False
    finally:
        bed.ip("link", "del", "probe0")
    return True


@pytest.fixture
def noplug(bed: Bed) -> Bed:
    if kernel_has_plug(bed):
        pytest.skip("this kernel has sch_plug; the missing-plug path needs one without")
    return bed


def install_by_hand(bed: Bed, vif: str, ifb: str, domid: int, devid: int = 0) -> None:
    """What a successful setup leaves, minus the plug (this kernel has none), made with tc/ip."""
    bed.ip("link", "set", ifb, "up")
    bed.tc("qdisc", "add", "dev", vif, "ingress")
    bed.tc(
        "filter", "add", "dev", vif, "parent", "ffff:", "protocol", "all", "pref", "10",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
    )  # fmt: skip
    bed.claim(domid, devid, ifb)
    bed.xs.seed(f"{netbuf_path(domid, devid)}/hotplug-status", "connected")


def assert_one_line_failure(result: object, *words: str) -> str:
    """Exit 1, no traceback, and the one-line reason names every word."""
    assert result.returncode == 1, result  # type: ignore[attr-defined]
    stderr = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr, stderr
    reasons = [line for line in stderr.splitlines() if " failed at step " in line or "bad " in line]
    assert len(reasons) == 1, stderr
    reason = reasons[0]
    for word in words:
        assert word in reason, reason
    return reason


# --- setup on a kernel without sch_plug -----------------------------------------------------


def test_setup_without_sch_plug_fails_naming_it_and_leaves_nothing(noplug: Bed) -> None:
    bed = noplug
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    result = bed.hotplug("setup", VIF, PATH5)
    reason = assert_one_line_failure(result, VIF, "ifb0", "add plug qdisc", "sch_plug")
    assert "CONFIG_NET_SCH_PLUG" in reason
    assert bed.node(f"{PATH5}/hotplug-error") == reason.split(": ", 1)[1]
    assert bed.node(f"{PATH5}/hotplug-status") == "error"
    bed.assert_clean(VIF, "ifb0", PATH5)
    assert "ifb0" in bed.links()  # an IFB it did not create stays


def test_autocreated_ifb_is_deleted_when_setup_fails(noplug: Bed) -> None:
    bed = noplug
    bed.add_vif(VIF)
    bed.domain(5)
    result = bed.hotplug("setup", VIF, PATH5)
    assert_one_line_failure(result, "ifb0", "sch_plug")
    assert "ip link add ifb0 type ifb" in result.stderr  # the replayable log line
    assert "ifb0" not in bed.links()
    bed.assert_clean(VIF, None, PATH5)


def test_log_lines_are_replayable_commands(noplug: Bed) -> None:
    bed = noplug
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    result = bed.hotplug("setup", VIF, PATH5)
    assert "ifb0: ip link set dev ifb0 up" in result.stderr
    assert "ifb0: tc qdisc add dev ifb0 root handle 5245: plug limit 10000000" in result.stderr
    assert "rollback: bring ifb0 down" in result.stderr


def ipv6_addresses(bed: Bed, dev: str) -> list[str]:
    shown = json.loads(bed.ip("-6", "-j", "addr", "show", "dev", dev) or "[]")
    return [a["local"] for link in shown for a in link.get("addr_info", [])]


def test_ifb_is_silenced_before_it_comes_up_and_rollback_restores_its_mode(noplug: Bed) -> None:
    """An IFB that comes up with IPv6 sends its own DAD, RS and MLD into the plug: setup sets
    addrgenmode none first (the replayable line, before "up"); a failed setup sets it back."""
    bed = noplug
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    result = bed.hotplug("setup", VIF, PATH5)
    assert_one_line_failure(result, "ifb0", "add plug qdisc")
    silence = result.stderr.index("ifb0: ip link set dev ifb0 addrgenmode none")
    assert silence < result.stderr.index("ifb0: ip link set dev ifb0 up")
    assert "rollback: set ifb0 addrgenmode eui64 again" in result.stderr
    assert bed.links()["ifb0"]["inet6_addr_gen_mode"] == "eui64"
    bed.assert_clean(VIF, "ifb0", PATH5)


def test_an_up_ifb_goes_down_to_drop_its_address_and_rollback_brings_it_back(noplug: Bed) -> None:
    """An IFB picked while up has made its link-local address already, which addrgenmode none
    does not remove: it goes down first. A failed setup gives it back up, address and all."""
    bed = noplug
    bed.add_vif(VIF)
    bed.add_ifb("ifb0", up=True)
    bed.domain(5)
    assert ipv6_addresses(bed, "ifb0")
    result = bed.hotplug("setup", VIF, PATH5)
    assert_one_line_failure(result, "ifb0", "add plug qdisc")
    down = result.stderr.index("ifb0: ip link set dev ifb0 down")
    assert down < result.stderr.index("ifb0: ip link set dev ifb0 addrgenmode none")
    assert "rollback: bring ifb0 down and up again" in result.stderr
    link = bed.links()["ifb0"]
    assert link["inet6_addr_gen_mode"] == "eui64"
    assert "UP" in link["flags"]
    assert [a for a in ipv6_addresses(bed, "ifb0") if a.startswith("fe80:")]
    assert bed.root_qdisc("ifb0") != "plug"
    assert bed.node(f"{PATH5}/ifb") is None


# --- choosing the IFB -----------------------------------------------------------------------


def test_dead_domains_claim_is_ignored(noplug: Bed) -> None:
    bed = noplug
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    bed.claim(7, 0, "ifb0")  # domain 7 is not under /local/domain: dead
    result = bed.hotplug("setup", VIF, PATH5)
    assert_one_line_failure(result, "(ifb ifb0)", "sch_plug")  # it picked ifb0


def test_live_claim_makes_ifb_busy_and_natural_order(noplug: Bed) -> None:
    bed = noplug
    bed.add_vif(VIF)
    for name in ("ifb10", "ifb2", "ifb1"):
        bed.add_ifb(name)
    bed.domain(5)
    bed.domain(7)
    bed.claim(7, 0, "ifb1")
    result = bed.hotplug("setup", VIF, PATH5)
    assert_one_line_failure(result, "(ifb ifb2)")  # ifb1 busy; ifb2 before ifb10
    assert bed.node(f"{netbuf_path(7, 0)}/ifb") == "ifb1"  # the other claim untouched


def test_none_free_without_autocreate_lists_owners(bed: Bed) -> None:
    bed.configure(ifb_autocreate="no")
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.add_ifb("ifb1")
    bed.domain(5)
    bed.domain(7)
    bed.domain(8)
    bed.claim(7, 0, "ifb0")
    bed.claim(8, 1, "ifb1")
    result = bed.hotplug("setup", VIF, PATH5)
    reason = assert_one_line_failure(result, VIF, "pick IFB", "no free IFB", "ifb_autocreate")
    assert "ifb0 (claimed by domain 7 vif 0)" in reason
    assert "ifb1 (claimed by domain 8 vif 1)" in reason
    assert bed.node(f"{PATH5}/ifb") is None
    assert bed.node(f"{PATH5}/hotplug-status") == "error"
    assert not bed.has_ingress(VIF)


def test_none_free_with_autocreate_creates_next_ifb(noplug: Bed) -> None:
    bed = noplug
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    bed.domain(7)
    bed.claim(7, 0, "ifb0")
    result = bed.hotplug("setup", VIF, PATH5)
    assert_one_line_failure(result, "(ifb ifb1)", "sch_plug")
    assert "ip link add ifb1 type ifb" in result.stderr
    assert "ifb1" not in bed.links()  # created, then rolled back
    assert bed.node(f"{netbuf_path(7, 0)}/ifb") == "ifb0"


# --- bad input: rejected before anything is touched -----------------------------------------


def test_vif_missing_at_setup(bed: Bed) -> None:
    bed.add_ifb("ifb0")
    bed.domain(5)
    result = bed.hotplug("setup", "vif5.9", PATH5)
    assert_one_line_failure(result, "vif5.9", "check vif", "does not exist")
    assert not bed.is_up("ifb0")
    assert bed.node(f"{PATH5}/ifb") is None
    assert bed.node(f"{PATH5}/hotplug-status") == "error"


@pytest.mark.parametrize(
    ("env", "args", "words"),
    [
        ({}, ("bogus",), ["command must be setup or teardown"]),
        ({"vifname": VIF}, (), ["XENBUS_PATH is not set"]),
        ({"XENBUS_PATH": PATH5}, (), ["vifname is not set"]),
        ({"vifname": "vif5.0/../x", "XENBUS_PATH": PATH5}, (), ["not an interface name"]),
        ({"vifname": "averyveryverylongname", "XENBUS_PATH": PATH5}, (), ["longer than 15"]),
        ({"vifname": VIF, "XENBUS_PATH": "/local/domain/5"}, (), ["XENBUS_PATH"]),
        ({"vifname": VIF, "XENBUS_PATH": PATH5}, ("FOO=bar",), ["unknown variable 'FOO'"]),
        ({"vifname": VIF, "XENBUS_PATH": PATH5}, ("stray",), ["unexpected argument"]),
    ],
)
def test_bad_invocation_touches_nothing(
    bed: Bed, env: dict[str, str], args: tuple[str, ...], words: list[str]
) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    before = bed.xs.nodes()
    command, rest = (args[0], args[1:]) if args and args[0] == "bogus" else ("setup", args)
    result = bed.hotplug(command, env.get("vifname"), env.get("XENBUS_PATH"), args=rest)
    assert_one_line_failure(result, "bad invocation", *words)
    after = bed.xs.nodes()
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    # Only hotplug-error/status at a *valid* XENBUS_PATH may be written, nothing else.
    assert changed <= {f"{PATH5}/hotplug-error", f"{PATH5}/hotplug-status", PATH5,
                       "/libxl", "/libxl/5", "/libxl/5/remus", "/libxl/5/remus/netbuf"}  # fmt: skip
    assert not bed.has_ingress(VIF)
    assert not bed.is_up("ifb0")


def test_name_value_arguments_are_parsed_never_evaluated(noplug: Bed, tmp_path: Path) -> None:
    bed = noplug
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    marker = tmp_path / "pwned"
    payload = f"$(touch {marker})"
    result = bed.hotplug("setup", args=(f"vifname={payload}", f"XENBUS_PATH={PATH5}"))
    assert_one_line_failure(result, "not an interface name")
    assert not marker.exists()
    # Well-formed arguments override the environment.
    result = bed.hotplug("setup", "vif9.9", "/libxl/9/remus/netbuf/9",
                         args=(f"vifname={VIF}", f"XENBUS_PATH={PATH5}"))  # fmt: skip
    assert_one_line_failure(result, VIF, "sch_plug")
    assert bed.node(f"{PATH5}/hotplug-status") == "error"


# --- teardown -------------------------------------------------------------------------------


def test_teardown_frees_ifb_and_is_idempotent(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    for _ in range(2):  # libxl may call it several times
        result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0")
        assert result.returncode == 0, result.stderr
        bed.assert_clean(VIF, "ifb0", PATH5)
        assert bed.node(f"{PATH5}/hotplug-status") is None


def test_teardown_without_remus_ifb_falls_back_to_claim(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    bed.xs.seed(f"{PATH5}/hotplug-error", "earlier failure")
    result = bed.hotplug("teardown", VIF, PATH5)
    assert result.returncode == 0, result.stderr
    bed.assert_clean(VIF, "ifb0", PATH5)
    assert bed.node(f"{PATH5}/hotplug-error") is None


def test_teardown_never_touches_another_claims_ifb(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_vif("vif7.0")
    bed.add_ifb("ifb0")
    bed.add_ifb("ifb1")
    bed.domain(5)
    bed.domain(7)
    install_by_hand(bed, "vif7.0", "ifb1", 7)
    bed.claim(5, 0, "ifb0")
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb1")  # someone else's IFB
    assert result.returncode == 0, result.stderr
    bed.assert_installed("vif7.0", "ifb1", netbuf_path(7, 0))
    assert bed.node(f"{PATH5}/ifb") == "ifb0"  # claim differs from REMUS_IFB: left alone


def test_teardown_keeps_ifb_that_another_live_netbuf_also_claims(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_vif("vif7.0")
    bed.add_ifb("ifb0")
    bed.domain(5)
    bed.domain(7)
    install_by_hand(bed, "vif7.0", "ifb0", 7)
    bed.claim(5, 0, "ifb0")  # a double claim: ours must go, the IFB must stay for domain 7
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0")
    assert result.returncode == 0, result.stderr
    assert bed.node(f"{PATH5}/ifb") is None
    bed.assert_installed("vif7.0", "ifb0", netbuf_path(7, 0))


def test_teardown_after_vif_vanished(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    bed.ip("link", "del", VIF)
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0")
    assert result.returncode == 0, result.stderr
    bed.assert_clean(None, "ifb0", PATH5)


def test_teardown_after_ifb_vanished(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    bed.ip("link", "del", "ifb0")  # deleting the IFB also removes the redirect action's target
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0")
    assert result.returncode == 0, result.stderr
    bed.assert_clean(VIF, None, PATH5)


def test_teardown_with_nothing_to_undo(bed: Bed) -> None:
    bed.domain(5)
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0")
    assert result.returncode == 0, result.stderr
    assert bed.subtree("/libxl") == {}


# --- xenstore and config failures ------------------------------------------------------------


def test_xenstore_unreachable_leaves_no_kernel_residue(bed: Bed) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    result = bed.hotplug("setup", VIF, PATH5, XENSTORED_PATH="/nonexistent/xenstored.sock")
    assert_one_line_failure(result, VIF, "connect to xenstore", "/nonexistent/xenstored.sock")
    assert not bed.has_ingress(VIF)
    assert not bed.is_up("ifb0")
    assert bed.root_qdisc("ifb0") is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("plug_limit=0\n", ["plug_limit", ":1"]),
        ("protocols=ipv6\n", ["protocols must be one of all, ip"]),
        ("# fine\nifb_autocreate=maybe\n", ["ifb_autocreate", ":2"]),
        ("plug_limt=100\n", ["unknown key 'plug_limt'"]),
        ("lock_dir=relative/dir\n", ["lock_dir must be an absolute path"]),
        ("just words\n", ["expected key=value"]),
    ],
)
def test_config_errors(bed: Bed, text: str, words: list[str]) -> None:
    bed.add_vif(VIF)
    bed.domain(5)
    bed.conf.write_text(text)
    result = bed.hotplug("setup", VIF, PATH5)
    assert_one_line_failure(result, VIF, "read config", str(bed.conf), *words)
    assert bed.node(f"{PATH5}/hotplug-status") == "error"


def test_missing_config_file_named_by_env_is_an_error(bed: Bed) -> None:
    result = bed.hotplug("teardown", VIF, PATH5, REMUS_NETBUF_CONF="/nonexistent.conf")
    assert_one_line_failure(result, "/nonexistent.conf", "cannot read")


# --- a config broken while a netbuf is up: teardown needs lock_dir alone ----------------------


def warnings_of(result: object) -> list[str]:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    return [line for line in stderr.splitlines() if ": teardown: ignoring key " in line]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("plug_limit = 0", ["key 'plug_limit'", ":2: plug_limit must be bytes"]),
        ("plug_limt=100", ["key 'plug_limt'", ":2: unknown key 'plug_limt'"]),
        ("protocols=ipv6", ["key 'protocols'", ":2: protocols must be one of all, ip"]),
    ],
)
def test_teardown_frees_everything_despite_a_bad_key_other_than_lock_dir(
    bed: Bed, line: str, words: list[str]
) -> None:
    """The bug the real-Xen tier found: a typo made while a netbuf was up failed its teardown
    at 'read config', so the claim and the IFB stayed for ever. Now: one warning, exit 0."""
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    bed.conf.write_text(f"lock_dir={bed.lock_dir}\n{line}\n")
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0")
    assert result.returncode == 0, result.stderr
    assert " failed" not in result.stderr, result.stderr
    (warning,) = warnings_of(result)
    assert warning.startswith(f"remus-netbuf-setup: {VIF}: teardown: ignoring key "), warning
    for word in [str(bed.conf), *words]:
        assert word in warning, warning
    bed.assert_clean(VIF, "ifb0", PATH5)  # the vif's ingress, the IFB's plug and claim: gone
    assert set(bed.subtree(PATH5)) == {PATH5}  # no hotplug-status, no hotplug-error: no node
    assert (bed.lock_dir / "pickifb").exists()  # the file's lock_dir was read, and used


def test_setup_failing_on_a_bad_config_then_libxls_teardown_leave_nothing(bed: Bed) -> None:
    """libxl runs teardown right after a failed setup: it must not fail on the same file."""
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    kernel = {dev: bed.qdiscs(dev) for dev in (VIF, "ifb0")}
    bed.conf.write_text(f"lock_dir={bed.lock_dir}\nplug_limit = 0\n")
    setup = bed.hotplug("setup", VIF, PATH5)
    assert_one_line_failure(setup, VIF, "read config", f"{bed.conf}:2", "plug_limit")
    assert bed.node(f"{PATH5}/hotplug-status") == "error"
    teardown = bed.hotplug("teardown", VIF, PATH5)  # no REMUS_IFB: setup wrote no claim
    assert teardown.returncode == 0, teardown.stderr
    assert " failed" not in teardown.stderr, teardown.stderr
    assert len(warnings_of(teardown)) == 1, teardown.stderr
    assert set(bed.subtree(PATH5)) == {PATH5}  # no claim, hotplug-status or hotplug-error
    assert {dev: bed.qdiscs(dev) for dev in (VIF, "ifb0")} == kernel
    assert not bed.is_up("ifb0")
    assert not bed.lock_dir.exists()  # nothing to undo: no lock taken


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("lock_dir=relative/dir\nplug_limit=0\n", [":1: lock_dir must be an absolute path"]),
        ("lock_dir={lock}\nlock_dir=/tmp\n", [":2: lock_dir is set twice"]),
        ("lock_dir {lock}\n", [":1: expected key=value"]),  # is it lock_dir? it cannot say
    ],
)
def test_a_bad_lock_dir_still_fails_teardown_after_freeing_the_vif(
    bed: Bed, text: str, words: list[str]
) -> None:
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    bed.conf.write_text(text.format(lock=bed.lock_dir))
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0")
    reason = assert_one_line_failure(
        result, VIF, "read config", "(ifb ifb0)", str(bed.conf), *words
    )
    assert f"{VIF}: tc qdisc del dev {VIF} ingress" in result.stderr  # the guest first
    assert not bed.has_ingress(VIF)
    assert bed.node(f"{PATH5}/ifb") == "ifb0"  # no lock, so the claim and the IFB stay
    assert bed.is_up("ifb0")
    assert bed.node(f"{PATH5}/hotplug-status") == "error"
    assert bed.node(f"{PATH5}/hotplug-error") == reason.split(": ", 1)[1]
    assert warnings_of(result) == []


def test_drop_in_script_runs_from_a_checkout(bed: Bed) -> None:
    """scripts/remus-netbuf-setup, as linked into /etc/xen/scripts, under the system python3."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "remus-netbuf-setup"
    bed.add_vif(VIF)
    bed.add_ifb("ifb0")
    bed.domain(5)
    install_by_hand(bed, VIF, "ifb0", 5)
    result = bed.hotplug("teardown", VIF, PATH5, remus_ifb="ifb0", program=str(script))
    assert result.returncode == 0, result.stderr
    bed.assert_clean(VIF, "ifb0", PATH5)
