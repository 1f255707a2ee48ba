"""Which kernel the kernel tier boots (tools/vm.py): REMUS_NETBUF_VM_KERNEL, the Debian suite.

No network and no VM: the suite setting, apt-cache's answers as Debian's archive gave them
(bookworm, trixie and sid, 2026-12), each suite's package layout as fake extracted trees, a
whole fetch from fake packages built with dpkg-deb, and the private apt a non-host suite uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vmtier import TierRun
from tools import privapt, vm

# `apt-cache depends linux-image-amd64`, then `apt-cache depends linux-image-V`, per suite.
META = {
    "bookworm": "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n",
    "trixie": "linux-image-amd64\n  Depends: linux-image-6.12.117+deb13-amd64\n",
    "sid": (
        "linux-image-amd64\n  Depends: linux-base-amd64\n"
        "  Depends: linux-image-7.2.13+deb14-amd64\n"
    ),
}
IMAGE = {
    "bookworm": """linux-image-6.1.0-57-amd64
  PreDepends: linux-base
  Depends: kmod
 |Depends: initramfs-tools
  Depends: <linux-initramfs-tool>
    initramfs-tools
    dracut
  Recommends: firmware-linux-free
  Recommends: apparmor
""",
    "trixie": """linux-image-6.12.117+deb13-amd64
  PreDepends: linux-base
  Depends: kmod
 |Depends: initramfs-tools
  Depends: <linux-initramfs-tool>
    dracut
    initramfs-tools
    tiny-initramfs
  Conflicts: linux-image-6.12.117+deb13-amd64-unsigned
  Replaces: linux-image-6.12.117+deb13-amd64-unsigned
""",
    "sid": """linux-image-7.2.13+deb14-amd64
  PreDepends: linux-base
 |Depends: dracut
 |Depends: initramfs-tools
  Depends: <linux-initramfs-tool>
    dracut
    initramfs-tools
    tiny-initramfs
  Depends: linux-base-7.2.13+deb14-amd64
  Depends: linux-binary-7.2.13+deb14-amd64
  Depends: linux-modules-7.2.13+deb14-amd64
  Suggests: linux-doc-7.2
""",
}
VERSION = {
    "bookworm": "6.1.0-57-amd64",
    "trixie": "6.12.117+deb13-amd64",
    "sid": "7.2.13+deb14-amd64",
}
MODULE = "kernel/net/sched/sch_plug.ko"


def layout(suite: str) -> dict[str, dict[str, str]]:
    """Each package of the suite's kernel: the files its data.tar holds, as the archive's do."""
    v = VERSION[suite]
    if suite == "bookworm":
        return {
            f"linux-image-{v}": {
                f"boot/vmlinuz-{v}": "image",
                f"lib/modules/{v}/{MODULE}": "ko",
            }
        }
    if suite == "trixie":
        return {
            f"linux-image-{v}": {
                f"boot/vmlinuz-{v}": "image",
                f"usr/lib/modules/{v}/{MODULE}.xz": "ko",
            }
        }
    return {  # sid: a meta package over the base files, the image and the modules
        f"linux-image-{v}": {f"usr/share/doc/linux-image-{v}/copyright": "meta"},
        f"linux-base-{v}": {f"usr/lib/modules/{v}/modules.builtin": "kernel/net/core/x.ko\n"},
        f"linux-binary-{v}": {f"usr/lib/modules/{v}/vmlinuz": "image"},
        f"linux-modules-{v}": {f"usr/lib/modules/{v}/{MODULE}.xz": "ko"},
    }


def extract(tree: Path, packages: dict[str, dict[str, str]]) -> Path:
    for files in packages.values():
        for name, text in files.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_text(text)
    return tree


# --- the setting ------------------------------------------------------------------------------


def test_the_default_kernel_is_debians_current_stable() -> None:
    assert vm.Options.from_env({}).kernel == "trixie"
    assert vm.Options.from_env({"REMUS_NETBUF_VM_KERNEL": ""}).kernel == "trixie"


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid"])
def test_each_suite_can_be_chosen(suite: str) -> None:
    assert vm.Options.from_env({"REMUS_NETBUF_VM_KERNEL": suite}).kernel == suite


@pytest.mark.parametrize("value", ["buster", "Trixie", "unstable", "6.12"])
def test_an_unknown_kernel_is_an_error_naming_the_choices(value: str) -> None:
    with pytest.raises(SystemExit) as err:
        vm.Options.from_env({"REMUS_NETBUF_VM_KERNEL": value})
    assert str(err.value).startswith(f"REMUS_NETBUF_VM_KERNEL={value!r}: use one of ")
    assert "bookworm, trixie, sid" in str(err.value)


def test_an_unknown_kernel_stops_pytest_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.vmtier",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        cwd=vm.REPO,
        env={**os.environ, "REMUS_NETBUF_VM_KERNEL": "buster"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 4, done.stdout + done.stderr  # pytest's usage error
    assert "ERROR: REMUS_NETBUF_VM_KERNEL='buster': use one of" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_each_suite_is_cached_in_its_own_directory(tmp_path: Path) -> None:
    dirs = {vm.kernel_dir(tmp_path, suite) for suite in vm.KERNELS}
    assert len(dirs) == 3
    assert all(d.parent == tmp_path / "kernel" for d in dirs)


# --- apt-cache's answers -----------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid"])
def test_the_kernel_package_is_what_the_meta_package_depends_on(suite: str) -> None:
    assert vm.kernel_package(META[suite]) == f"linux-image-{VERSION[suite]}"


def test_no_kernel_package_is_unavailable_with_apts_answer() -> None:
    with pytest.raises(vm.Unavailable, match="names no kernel package:\nlinux-image-amd64"):
        vm.kernel_package("linux-image-amd64\n  Depends: linux-base-amd64\n")


def test_bookworm_and_trixie_kernels_are_one_package() -> None:
    assert vm.kernel_parts(IMAGE["bookworm"], VERSION["bookworm"]) == []
    assert vm.kernel_parts(IMAGE["trixie"], VERSION["trixie"]) == []


def test_sids_kernel_is_a_meta_package_over_its_parts() -> None:
    v = VERSION["sid"]
    assert vm.kernel_parts(IMAGE["sid"], v) == [
        f"linux-base-{v}",
        f"linux-binary-{v}",
        f"linux-modules-{v}",
    ]


def test_depends_takes_alternatives_and_skips_virtual_packages() -> None:
    assert vm.depends(IMAGE["trixie"]) == ["kmod", "initramfs-tools"]


# --- the layouts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "image", "modules"),
    [
        ("bookworm", "boot/vmlinuz-{v}", "lib/modules/{v}"),
        ("trixie", "boot/vmlinuz-{v}", "usr/lib/modules/{v}"),
        ("sid", "usr/lib/modules/{v}/vmlinuz", "usr/lib/modules/{v}"),
    ],
)
def test_the_image_and_modules_are_found_where_each_suite_puts_them(
    tmp_path: Path, suite: str, image: str, modules: str
) -> None:
    v = VERSION[suite]
    tree = extract(tmp_path, layout(suite))
    assert vm.find_kernel(tree, v, suite) == vm.Kernel(
        v, tree / image.format(v=v), tree / modules.format(v=v), suite
    )


def test_a_tree_without_its_modules_is_no_kernel(tmp_path: Path) -> None:
    v = VERSION["sid"]
    packages = layout("sid")
    del packages[f"linux-modules-{v}"]  # the image alone: modprobe would find nothing
    assert vm.find_kernel(extract(tmp_path, packages), v, "sid") is None


def test_a_tree_without_its_image_is_no_kernel(tmp_path: Path) -> None:
    v = VERSION["sid"]
    packages = layout("sid")
    del packages[f"linux-binary-{v}"]
    assert vm.find_kernel(extract(tmp_path, packages), v, "sid") is None


def test_another_versions_tree_is_no_kernel(tmp_path: Path) -> None:
    tree = extract(tmp_path, layout("trixie"))
    assert vm.find_kernel(tree, "6.12.118+deb13-amd64", "trixie") is None


def test_the_label_names_the_suite_and_the_version(tmp_path: Path) -> None:
    kernel = vm.Kernel(VERSION["trixie"], tmp_path, tmp_path, "trixie")
    assert kernel.label == "Debian trixie's 6.12.117+deb13-amd64"


# --- the cache: fetched once per suite ---------------------------------------------------------


class FakeApt:
    """apt-cache and apt-get download for one suite, from the answers above: the packages are
    built with dpkg-deb from the suite's layout."""

    def __init__(self, suite: str, workdir: Path) -> None:
        self.suite, self.workdir = suite, workdir
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], cwd: Path | None) -> str:
        self.calls.append(argv)
        if argv[:2] == ["apt-cache", "depends"]:
            return META[self.suite] if argv[2] == vm.KERNEL_META else IMAGE[self.suite]
        assert argv[:2] == ["apt-get", "download"] and cwd is not None
        packages = layout(self.suite)
        for name in argv[2:]:
            root = extract(self.workdir / name, {name: packages[name]})
            (root / "DEBIAN").mkdir(exist_ok=True)
            control = f"Package: {name}\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
            (root / "DEBIAN" / "control").write_text(control + "Description: fake\n")
            deb = cwd / f"{name}_1_amd64.deb"
            subprocess.run(["dpkg-deb", "-Zgzip", "-b", str(root), str(deb)], check=True,
                           capture_output=True)  # fmt: skip
        return ""


@pytest.fixture
def linked(monkeypatch: pytest.MonkeyPatch) -> list[vm.Kernel]:
    """_link_modules recorded, not done: /lib/modules is the host's."""
    done: list[vm.Kernel] = []
    monkeypatch.setattr(vm, "_link_modules", lambda kernel, say: done.append(kernel))
    return done


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid"])
def test_a_fetch_extracts_every_package_of_the_kernel_into_one_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: list[vm.Kernel], suite: str
) -> None:
    apt = FakeApt(suite, tmp_path / "build")
    monkeypatch.setattr(vm, "_apt_for", lambda root, s: apt)
    kernel = vm.ensure_kernel(tmp_path / "cache", suite=suite)
    v = VERSION[suite]
    root = vm.kernel_dir(tmp_path / "cache", suite)
    assert vm.lines(root / "version") == [v]
    assert kernel == vm.find_kernel(root / v, v, suite)
    assert kernel.vmlinuz.read_text() == "image"
    assert (kernel.modules / "kernel").is_dir()
    downloads = [argv[2:] for argv in apt.calls if argv[0] == "apt-get"]
    assert downloads == [list(layout(suite))]  # sid: the meta package and its three parts
    assert linked == [kernel]
    assert sorted(p.name for p in root.iterdir()) == [v, "version"]  # no temporary left


def test_switching_suites_fetches_nothing_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: list[vm.Kernel]
) -> None:
    cache = tmp_path / "cache"
    for suite in ("trixie", "sid"):
        monkeypatch.setattr(vm, "_apt_for", lambda root, s: FakeApt(s, tmp_path / s))
        vm.ensure_kernel(cache, suite=suite)

    def no_fetch(root: Path, suite: str) -> vm.AptRun:
        raise AssertionError(f"fetched {suite} again")

    monkeypatch.setattr(vm, "_apt_for", no_fetch)
    for suite in ("trixie", "sid", "trixie"):
        assert vm.ensure_kernel(cache, suite=suite).version == VERSION[suite]
    assert [k.suite for k in linked] == ["trixie", "sid", "trixie", "sid", "trixie"]


def test_a_cached_tree_that_lost_its_modules_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: list[vm.Kernel]
) -> None:
    apt = FakeApt("sid", tmp_path / "build")
    monkeypatch.setattr(vm, "_apt_for", lambda root, s: apt)
    kernel = vm.ensure_kernel(tmp_path / "cache", suite="sid")
    shutil.rmtree(kernel.modules / "kernel")
    assert vm.ensure_kernel(tmp_path / "cache", suite="sid") == kernel
    assert sum(argv[0] == "apt-get" for argv in apt.calls) == 2


def test_packages_without_the_kernel_are_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: list[vm.Kernel]
) -> None:
    apt = FakeApt("sid", tmp_path / "build")
    sid = IMAGE["sid"]
    monkeypatch.setitem(
        IMAGE, "sid", sid.replace("  Depends: linux-modules-7.2.13+deb14-amd64\n", "")
    )
    monkeypatch.setattr(vm, "_apt_for", lambda root, s: apt)
    with pytest.raises(vm.Unavailable, match="no vmlinuz and modules tree of 7.2.13"):
        vm.ensure_kernel(tmp_path / "cache", suite="sid")
    assert not vm.kernel_dir(tmp_path / "cache", "sid").joinpath("version").exists()


def test_an_unknown_suite_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(vm.Unavailable, match="no kernel for suite 'buster'"):
        vm.ensure_kernel(tmp_path, suite="buster")


# --- apt: the host's for bookworm, a private one for the others -------------------------------


def test_bookworm_uses_the_hosts_apt(tmp_path: Path) -> None:
    assert vm._apt_for(tmp_path, "bookworm") is vm._apt
    assert not (tmp_path / "apt").exists()


@pytest.mark.parametrize("suite", ["trixie", "sid"])
def test_another_suite_updates_a_private_apt_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suite: str
) -> None:
    ran: list[list[str]] = []

    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 0, "answer\n", "")

    monkeypatch.setattr(privapt.subprocess, "run", run)
    apt = vm._apt_for(tmp_path, suite)
    state = tmp_path / "apt"
    assert (state / "etc" / "debian.list").read_text() == (
        f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        f"http://deb.debian.org/debian {suite} main\n"
    )
    private = [
        "-o", "Dir::Etc::sourcelist=/dev/null",  # the host's sources are never read
        "-o", f"Dir::Etc::sourceparts={state / 'etc'}",
        "-o", f"Dir::State::Lists={state / 'lists'}",
    ]  # fmt: skip
    assert ran[0][0] == "apt-get" and ran[0][-2:] == ["update", "-qq"]
    assert ran[0][1:7] == private
    assert apt(["apt-cache", "depends", "linux-image-amd64"], None) == "answer\n"
    assert ran[1][0] == "apt-cache" and ran[1][1:7] == private
    assert ran[1][-2:] == ["depends", "linux-image-amd64"]


def test_a_private_apt_failure_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 100, "", "W: x\nE: Failed to fetch http://…\n")

    monkeypatch.setattr(privapt.subprocess, "run", run)
    with pytest.raises(vm.Unavailable, match="apt-get update -qq failed: E: Failed to fetch"):
        vm._apt_for(tmp_path, "sid")


# --- the logs name the kernel ------------------------------------------------------------------


def test_the_summaries_name_the_kernel() -> None:
    label = "Debian sid's 7.2.13+deb14-amd64"
    outcome = vm.Outcome(None, "tcg", label, wall=12.5)
    assert outcome.summary().startswith(f"VM (tcg, {label}) 12.5 s wall")
    run = TierRun(None, mode="tcg", kernel=label, wall=12.5, slowdown=17.0)
    assert run.summary()[0] == f"VM run (tcg, {label}, 17x slower than the host): 12.5 s wall"
