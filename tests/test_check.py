"""``remus-netbuf check``: each check's ok and FAIL path.

The verdicts are plain functions, tested here without a kernel. End to end, on this kernel (no
sch_plug): one real ``remus-netbuf check`` process on a healthy bed, whose only FAIL must be the
plug, naming sch_plug, with nothing outside its throwaway namespace touched; then forked runs
for the FAIL and warn paths that need xenstore and the kernel. The ok path of the kernel probe
is in tests/test_check_vm.py, on Debian's kernel.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remus_netbuf.audit import Anomaly
from remus_netbuf.check import (
    FAIL,
    OK,
    WARN,
    Result,
    anomaly_verdict,
    check_config,
    check_lock_dir,
    check_script,
    exit_status,
    ifb_verdict,
    kernel_verdicts,
    render_json,
    render_text,
    xenstore_verdict,
)
from remus_netbuf.config import Config
from remus_netbuf.errors import KernelError, KernelLacks
from remus_netbuf.xlconf import KEY
from tests.bed import BIN, Bed, sh
from tests.elfstub import NETBUF, write_stub
from tests.forkrun import Runner
from tools import vm

OURS = str(BIN / "remus-netbuf-setup")  # this installation's: the venv running the tests
NAMES = [
    "config",
    "kernel-ifb",
    "kernel-plug",
    "kernel-ingress",
    "kernel-redirect",
    "xenstore",
    "lock-dir",
    "free-ifbs",
    "xl-script",
    "libxenlight",
    "anomalies",
]
PLUG_LACKS = KernelLacks(feature="sch_plug", config="CONFIG_NET_SCH_PLUG", code=errno.ENOENT)

# --- the verdicts, as plain functions -------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "status"),
    [([], 0), ([OK, OK], 0), ([OK, WARN], 2), ([WARN, FAIL, OK], 1), ([FAIL], 1)],
)
def test_exit_status_0_all_ok_1_any_fail_2_warnings_only(levels: list[str], status: int) -> None:
    assert exit_status([Result(f"c{i}", level, "d") for i, level in enumerate(levels)]) == status


def test_text_is_one_line_per_check_with_the_fix_then_a_count() -> None:
    results = [Result("a", OK, "fine"), Result("b", FAIL, "broken", "mend it")]
    assert render_text(results) == (
        "ok    a: fine\nFAIL  b: broken [fix: mend it]\ncheck: 1 FAIL, 0 warn, 1 ok\n"
    )


def test_json_lists_every_check_and_the_verdict() -> None:
    doc = json.loads(render_json([Result("a", OK, "fine"), Result("b", FAIL, "no", "mend")]))
    assert doc == {
        "version": 1,
        "result": "fail",
        "checks": [
            {"name": "a", "level": "ok", "detail": "fine", "fix": ""},
            {"name": "b", "level": "fail", "detail": "no", "fix": "mend"},
        ],
    }


def test_kernel_probe_that_worked_is_four_ok_lines() -> None:
    done: dict[str, KernelError | None] = dict.fromkeys(NAMES[1:5])
    results = kernel_verdicts(done, 4096)
    assert [(r.name, r.level) for r in results] == [(n, OK) for n in NAMES[1:5]]
    assert "4096 bytes" in results[1].detail


@pytest.mark.parametrize(
    ("feature", "config"),
    [
        ("ifb", "CONFIG_IFB"),
        ("sch_plug", "CONFIG_NET_SCH_PLUG"),
        ("sch_ingress", "CONFIG_NET_SCH_INGRESS"),
        ("act_mirred", "CONFIG_NET_ACT_MIRRED"),
    ],
)
def test_a_missing_module_names_the_module_and_config_option(feature: str, config: str) -> None:
    step = {"ifb": 1, "sch_plug": 2, "sch_ingress": 3, "act_mirred": 4}[feature]
    done: dict[str, KernelError | None] = dict.fromkeys(NAMES[1:5])
    done[NAMES[step]] = KernelLacks(feature=feature, config=config, code=errno.ENOENT)
    (failed,) = [r for r in kernel_verdicts(done, 1) if r.level != OK]
    assert failed.name == NAMES[step]
    assert failed.level == FAIL
    assert failed.detail == f"kernel has no {feature} ({config})"
    assert f"modprobe {feature}" in failed.fix and f"{config}=m" in failed.fix


def test_without_ingress_the_redirect_is_not_tried() -> None:
    lacks = KernelLacks(feature="sch_ingress", config="CONFIG_NET_SCH_INGRESS", code=2)
    done = {"kernel-ifb": None, "kernel-plug": None, "kernel-ingress": lacks}
    results = {r.name: r for r in kernel_verdicts(done, 1)}
    assert results["kernel-ingress"].level == FAIL
    assert results["kernel-redirect"].level == WARN
    assert "not tried" in results["kernel-redirect"].detail


def test_xenstore_verdicts() -> None:
    assert xenstore_verdict("/s", 3) == Result("xenstore", OK, "/s answers: 3 domains besides dom0")
    missing = xenstore_verdict("/s", None)
    assert missing.level == WARN and "/local/domain does not exist" in missing.detail


@pytest.mark.parametrize(
    ("free", "autocreate", "level", "words"),
    [
        (["ifb0", "ifb1"], True, OK, "2 free (ifb0, ifb1); ifb_autocreate=yes makes more"),
        ([], True, OK, "0 free; ifb_autocreate=yes makes more"),
        (["ifb3"], False, OK, "1 free (ifb3); ifb_autocreate=no: room for 1 more vifs"),
        ([], False, FAIL, "no free IFB and ifb_autocreate=no: the next setup fails"),
    ],
)
def test_free_ifbs_and_whether_autocreate_covers_the_rest(
    free: list[str], autocreate: bool, level: str, words: str
) -> None:
    result = ifb_verdict(free, autocreate)
    assert (result.name, result.level, result.detail) == ("free-ifbs", level, words)
    assert bool(result.fix) == (level == FAIL)


def test_anomalies_are_a_warning_counted_by_kind() -> None:
    assert anomaly_verdict([]) == Result("anomalies", OK, "none")
    found = [Anomaly("unclaimed-plug", "x"), Anomaly("unclaimed-plug", "y"), Anomaly("b", "z")]
    result = anomaly_verdict(found)
    assert result.level == WARN
    assert result.detail == "3: b x1, unclaimed-plug x2"
    assert "remus-netbuf gc" in result.fix


# --- the config and lock_dir checks, on files -----------------------------------------------


def test_config_ok_shows_the_values_in_force(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("plug_limit=5000\nifb_autocreate=no\n")
    config, (result,) = check_config({"REMUS_NETBUF_CONF": str(conf)})
    assert config == Config(plug_limit=5000, ifb_autocreate=False)
    assert result.level == OK
    assert result.detail == (
        f"{conf}: plug_limit=5000 protocols=all ifb_autocreate=no lock_dir=/var/run/xen-hotplug"
    )


def test_config_that_does_not_parse_fails_naming_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("# fine\nplug_limt=5000\n")
    config, (result,) = check_config({"REMUS_NETBUF_CONF": str(conf)})
    assert config == Config()  # the checks after it use the defaults
    assert result.level == FAIL
    assert f"config {conf}:2: unknown key 'plug_limt'" in result.detail


def test_lock_dir_missing_or_a_directory_is_ok_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "run" / "xen-hotplug"
    result = check_lock_dir(Config(lock_dir=str(missing)))
    assert result.level == OK and "setup creates it root-only" in result.detail
    assert not missing.parent.exists()
    missing.mkdir(parents=True, mode=0o700)
    assert check_lock_dir(Config(lock_dir=str(missing))).level == OK


@pytest.mark.parametrize("what", ["dir-link", "lock-link", "file"])
def test_lock_dir_that_pickifb_lock_would_refuse_fails(tmp_path: Path, what: str) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    lock_dir = tmp_path / "lock"
    if what == "dir-link":
        lock_dir.symlink_to(real)
    elif what == "lock-link":
        lock_dir.mkdir(mode=0o700)
        (lock_dir / "pickifb").symlink_to(real / "x")
    else:
        lock_dir.write_text("")
    result = check_lock_dir(Config(lock_dir=str(lock_dir)))
    assert result.level == FAIL
    assert result.detail.startswith(f"lock {lock_dir}")
    assert ("is not a directory" if what == "file" else "symbolic link") in result.detail


# --- the script xl runs ---------------------------------------------------------------------


def xl_conf(tmp_path: Path, script: str | None) -> str:
    path = tmp_path / "xl.conf"
    path.write_text("# xl.conf\n" + (f'{KEY}="{script}"\n' if script else ""))
    return str(path)


def executable(path: Path, text: str, mode: int = 0o755) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_xl_script_ok_when_it_is_this_installation_even_through_a_link(tmp_path: Path) -> None:
    result = check_script(xl_conf(tmp_path, OURS))
    assert result == Result("xl-script", OK, f"xl runs {OURS} ({KEY} in {tmp_path}/xl.conf): "
                            "this installation")  # fmt: skip
    link = tmp_path / "remus-netbuf-setup"
    link.symlink_to(OURS)
    assert check_script(xl_conf(tmp_path, str(link))).level == OK


def test_xl_script_warns_naming_the_path_of_xens_shell_script(tmp_path: Path) -> None:
    xen = executable(tmp_path / "remus-netbuf-setup", "#!/bin/bash\n# Xen's\nifb=...\n")
    result = check_script(xl_conf(tmp_path, xen))
    assert result.level == WARN
    assert result.detail == (
        f"xl runs {xen} ({KEY} in {tmp_path}/xl.conf): a /bin/bash script, not this "
        "installation (Xen's own script?)"
    )
    assert "make install" in result.fix and f"xl remus -N {OURS}" in result.fix


def test_xl_script_of_the_debian_package_is_the_one_beside_the_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sbin = tmp_path / "usr" / "sbin"  # the package's: /usr/sbin/remus-netbuf{,-setup}
    sbin.mkdir(parents=True)
    script = executable(sbin / "remus-netbuf-setup", (BIN / "remus-netbuf-setup").read_text())
    executable(sbin / "remus-netbuf", "#!/usr/bin/python3\n")
    monkeypatch.setattr(sys, "argv", [str(sbin / "remus-netbuf"), "check"])
    assert check_script(xl_conf(tmp_path, script)).level == OK
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)  # the system's python3: no venv
    other = check_script(xl_conf(tmp_path, OURS))
    assert other.level == WARN and "not this installation" in other.detail
    assert other.fix == f'{KEY}="{script}" in xl.conf, or xl remus -N {script}'  # no make install


def test_xl_script_warns_for_another_remus_netbuf(tmp_path: Path) -> None:
    other = executable(tmp_path / "other", (BIN / "remus-netbuf-setup").read_text())
    result = check_script(xl_conf(tmp_path, other))
    assert result.level == WARN
    assert "remus-netbuf, but not this installation" in result.detail


def test_xl_script_without_setting_is_xens_default_path(tmp_path: Path) -> None:
    result = check_script(xl_conf(tmp_path, None))
    default = "/etc/xen/scripts/remus-netbuf-setup"
    assert result.detail.startswith(f"xl runs {default} (the default: {KEY} is not set in ")
    assert check_script(str(tmp_path / "no-xl.conf")).detail.startswith(f"xl runs {default} ")


def test_xl_script_fails_when_missing_or_not_executable(tmp_path: Path) -> None:
    missing = check_script(xl_conf(tmp_path, str(tmp_path / "gone")))
    assert missing.level == FAIL and missing.detail.endswith("which does not exist")
    plain = executable(tmp_path / "plain", "#!/bin/sh\n", mode=0o644)
    result = check_script(xl_conf(tmp_path, plain))
    assert result.level == FAIL and result.detail.endswith("which is not an executable file")


# --- end to end on this kernel ----------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")


def levels(stdout: str) -> dict[str, tuple[str, str]]:
    """name -> (level, the rest of the line) from check's text output."""
    found = {}
    for line in stdout.splitlines()[:-1]:
        level, _, rest = line.partition("  ")
        name, _, detail = rest.strip().partition(": ")
        found[name] = (level.strip(), detail)
    return found


def probe_namespaces() -> set[str]:
    return {n for n in sh("ip", "netns", "list").stdout.split() if n.startswith("remus-netbuf-")}


@needs_root
def test_check_on_this_kernel_fails_naming_sch_plug_and_touches_nothing_outside(
    bed: Bed, tmp_path: Path
) -> None:
    if vm.host_has_sch_plug():
        pytest.skip("this kernel has sch_plug: tests/test_check_vm.py covers it here")
    from tests.forkrun import kernel_state

    bed.add_ifb("ifb0")
    bed.add_ifb("ifb1")
    bed.domain(5)
    before = (kernel_state(bed.ns), probe_namespaces())
    libxl = write_stub(tmp_path / "libxenlight.so.4.17", **NETBUF)  # this host has no Xen
    result = bed.cli("check", "--xl-conf", xl_conf(tmp_path, OURS), "--libxenlight", str(libxl))
    assert result.returncode == 1, result
    assert result.stderr == "", result.stderr
    found = levels(result.stdout)
    assert list(found) == NAMES
    assert found.pop("kernel-plug") == (
        FAIL,
        "kernel has no sch_plug (CONFIG_NET_SCH_PLUG) [fix: modprobe sch_plug; if there is no "
        "such module, boot a kernel built with CONFIG_NET_SCH_PLUG=m (Debian's stock kernel has "
        "it)]",
    )
    assert {name: level for name, (level, _) in found.items()} == dict.fromkeys(found, OK)
    assert found["free-ifbs"][1] == "2 free (ifb0, ifb1); ifb_autocreate=yes makes more"
    assert found["xenstore"][1] == f"{bed.xs_socket} answers: 1 domain besides dom0"
    assert found["libxenlight"][1].startswith(f"{libxl}: network buffering built in: needs ")
    assert result.stdout.splitlines()[-1] == "check: 1 FAIL, 0 warn, 10 ok"
    assert (kernel_state(bed.ns), probe_namespaces()) == before


@needs_root
def test_check_fails_on_busy_ifbs_and_an_unsafe_lock_dir_and_warns_on_the_rest(
    bed: Bed, runner: Runner, tmp_path: Path
) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    (tmp_path / "lock-link").symlink_to(real)
    bed.conf.write_text(f"lock_dir={tmp_path / 'lock-link'}\nifb_autocreate=no\n")
    bed.add_ifb("ifb0")
    bed.domain(5)
    bed.claim(5, 0, "ifb0")  # busy: a live domain claims it
    bed.claim(7, 0, "ifb9")  # domain 7 is gone: an anomaly
    xen = executable(tmp_path / "xen-script", "#!/bin/bash\n")
    outcome = runner.run(runner.cli("check", "--json", "--xl-conf", xl_conf(tmp_path, xen)))
    assert outcome.returncode == 1, outcome
    doc = json.loads(outcome.stdout)
    assert doc["result"] == "fail"
    checks = {c["name"]: c for c in doc["checks"]}
    assert [c["name"] for c in doc["checks"]] == NAMES
    assert checks["config"]["level"] == "ok"
    assert checks["lock-dir"]["level"] == "fail"  # JSON's levels are lower case
    assert "is a symbolic link; refusing" in checks["lock-dir"]["detail"]
    assert checks["free-ifbs"]["level"] == "fail"
    assert "ifb_autocreate=no" in checks["free-ifbs"]["detail"]
    assert checks["xl-script"]["level"] == "warn"
    assert xen in checks["xl-script"]["detail"]
    assert checks["anomalies"]["level"] == "warn"
    assert "dead-domain-claim x1" in checks["anomalies"]["detail"]
    assert sorted(os.listdir(real)) == []  # nothing was created through the link


@needs_root
def test_check_fails_without_xenstored_a_config_or_the_script(
    bed: Bed, runner: Runner, tmp_path: Path
) -> None:
    bed.conf.write_text("protocols=ipv6\n")
    job = runner.cli(
        "check", "--xl-conf", xl_conf(tmp_path, str(tmp_path / "gone")),
        XENSTORED_PATH=str(tmp_path / "no-socket"),
    )  # fmt: skip
    outcome = runner.run(job)
    assert outcome.returncode == 1, outcome
    found = levels(outcome.stdout)
    assert found["config"][0] == FAIL
    assert f"config {bed.conf}:1: protocols must be one of all, ip" in found["config"][1]
    assert found["xenstore"][0] == FAIL
    assert found["xenstore"][1].startswith(f"cannot connect to {tmp_path}/no-socket")
    assert "start xenstored" in found["xenstore"][1]
    assert found["free-ifbs"][0] == found["anomalies"][0] == WARN
    assert found["free-ifbs"][1].startswith("not checked")
    assert found["xl-script"][0] == FAIL


@needs_root
def test_check_warns_when_xenstore_has_no_local_domain(
    bed: Bed, runner: Runner, tmp_path: Path
) -> None:
    bed.xs.remove("/local/domain")
    outcome = runner.run(runner.cli("check", "--xl-conf", xl_conf(tmp_path, OURS)))
    found = levels(outcome.stdout)
    assert found["xenstore"][0] == WARN
    assert "/local/domain does not exist" in found["xenstore"][1]


def test_help_and_usage_of_check() -> None:
    done = subprocess.run([BIN / "remus-netbuf", "check", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "Exit 0 all ok, 1 any FAIL, 2 warnings only" in " ".join(done.stdout.split())
