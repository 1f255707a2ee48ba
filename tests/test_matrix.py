"""make matrix's readings of its parts' output, and its table (tools/matrix.py), on real lines."""

from __future__ import annotations

from tools import matrix

CHECK_LOG = """\
vm: kernel 6.12.117+deb13-amd64 cached in /work/main/.cache/vm/kernel/trixie
6.12.117+deb13-amd64
ok    kernel-ifb: created an IFB (ifb)
ok    kernel-plug: added a plug qdisc with a limit of 10000000 bytes (sch_plug)
FAIL  kernel-redirect: kernel has no act_mirred (CONFIG_NET_ACT_MIRRED)
FAIL  xenstore: cannot connect to /var/run/xenstored/socket: No such file or directory
check: 2 FAIL, 0 warn, 2 ok
"""


def test_pytest_counts_read_the_closing_line() -> None:
    text = "tests/test_x.py ....\nshard 1/2, 3 tests passed\n"
    text += "= 1 failed, 44 passed, 2 skipped in 775.90s (0:12:55) =\n"
    assert matrix.pytest_counts(text) == {"failed": 1, "passed": 44, "skipped": 2}
    assert matrix.pytest_counts("773 passed, 51 deselected in 184.01s\n") == {"passed": 773}
    assert matrix.pytest_counts("no tests ran\n") == {}


def test_e2e_counts_take_each_scenarios_last_verdict() -> None:
    text = "e2e [ 300.1s] PASS check\ne2e [ 310.0s] FAIL two\ne2e [ 311.0s]     ok  a check\n"
    text += "e2e [ 320.0s] FAIL remus: did not run (dom0 stopped before it)\n"
    assert matrix.e2e_counts(text) == {"scenarios passed": 1, "scenarios failed": 2}


def test_check_counts_only_the_checks_own_kernel_lines() -> None:
    assert matrix.check_counts(CHECK_LOG) == {"kernel checks ok": 2, "kernel checks failed": 1}


def test_the_table_has_a_row_per_stack_and_a_column_per_tier() -> None:
    parts = {p.name: p for p in matrix.parts()}
    outcomes = [
        matrix.Outcome(parts["kernel-sid"], 0, 600.0, {"passed": 45}),
        matrix.Outcome(parts["native-sid"], 1, 180.0, {"passed": 772, "failed": 1}),
        matrix.Outcome(parts["kernel-bookworm"], 0, 420.0, {"passed": 45}),
    ]
    rows = matrix.table(outcomes)
    assert rows[0] == "| stack | unit + native | kernel tier |"
    assert rows[2].startswith("| Debian 12 bookworm") and rows[2].endswith(
        "| — | 45 passed; 7.0 min |"
    )
    assert "**FAILED** 772 passed, 1 failed; 3.0 min" in rows[3]
