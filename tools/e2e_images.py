"""What the real-Xen tier boots, cached in .cache/e2e: the initramfs images of dom0 and the
guests, the guests' UDP sender, and the netbuf build laid out at its dom0 paths.

dom0's initramfs insmods the modules in ``/mods/order`` (9p, virtio, overlay: what mounting its
root needs), in that order: 4.17's are the bookworm kernel's, named here; for a kernel of
another suite (Xen 4.20's trixie root) they are resolved from its ``modules.dep``, decompressed
(busybox's insmod takes plain ``.ko`` files).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tools import vm, xenpkg

REPO = vm.REPO
CACHE = REPO / ".cache" / "e2e"
TOOLS = REPO / "tools"
DOM0_INIT = TOOLS / "e2e_init.sh"
GUEST_INIT = TOOLS / "e2e_guest.sh"
UDP_SOURCE = TOOLS / "e2e_udp.c"
BUSYBOX = Path("/bin/busybox")
# bookworm's 6.1, in the order dom0's init loads them
DOM0_MODULES = (
    "kernel/fs/netfs/netfs.ko",
    "kernel/fs/fscache/fscache.ko",
    "kernel/net/9p/9pnet.ko",
    "kernel/fs/9p/9p.ko",
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/9p/9pnet_virtio.ko",
    "kernel/fs/overlayfs/overlay.ko",
)
# any other kernel: these and what they depend on (modules.dep), built-in ones left out
DOM0_WANTS = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
GUEST_MODULES = ("kernel/drivers/net/xen-netfront.ko",)
DOM0_APPLETS = ("sh", "mount", "mkdir", "insmod", "switch_root", "cat", "echo", "sleep", "ls")
GUEST_APPLETS = ("sh", "mount", "insmod", "cat", "echo", "sleep", "ls", "ip")


def digest(*parts: bytes | str | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            part = part.read_bytes()
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def dom0_modules(modules: Path) -> list[str]:
    """DOM0_WANTS and their dependencies, each after what it needs (from modules.dep)."""
    deps: dict[str, list[str]] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        name, _, needs = line.partition(":")
        deps[name] = needs.split()
    by_name = {_stem(path): path for path in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for need in deps.get(path, []):
            visit(need)
        if path not in order:
            order.append(path)

    for want in DOM0_WANTS:
        if want in by_name:
            visit(by_name[want])
    return order


def _stem(path: str) -> str:
    name = Path(path).name
    return name.split(".ko")[0].replace("-", "_")


def _copy_module(source: Path, target_dir: Path) -> str:
    """The module as a plain .ko in target_dir; its name."""
    name = _stem(str(source))
    target = target_dir / f"{name}.ko"
    if source.name.endswith(".ko.xz"):
        target.write_bytes(lzma.decompress(source.read_bytes()))
    elif source.name.endswith(".ko.zst"):
        with open(target, "wb") as out:
            subprocess.run(["zstd", "-dc", str(source)], stdout=out, check=True)
    elif source.name.endswith(".ko.gz"):
        target.write_bytes(gzip.decompress(source.read_bytes()))
    else:
        shutil.copy2(source, target)
    return name


def fit_to_host(tree: Path) -> None:
    """Move what the tree has under a directory that is a symlink on this host (/lib, /bin,
    /sbin on a merged-/usr Debian; /var/run) to where the link points: in dom0's overlay a
    directory in a higher layer would hide the host's link, and /bin/bash with it."""
    for path in sorted(tree.rglob("*"), key=lambda p: len(p.parts)):
        if not path.is_dir() or path.is_symlink():
            continue
        host = Path("/") / path.relative_to(tree)
        if not host.is_symlink():
            continue
        _merge(path, tree / host.resolve().relative_to("/"))
        fit_to_host(tree)
        return


def _merge(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():
        if child.is_dir() and not child.is_symlink() and (target / child.name).is_dir():
            _merge(child, target / child.name)
        else:
            child.rename(target / child.name)
    source.rmdir()


def empty_layer() -> Path:
    """An empty directory, for the netbuf layer of a dom0 that installs packages instead."""
    empty = CACHE / "empty-layer"
    empty.mkdir(parents=True, exist_ok=True)
    return empty


def netbuf_tree(xen: xenpkg.XenTree) -> Path:
    """The netbuf build's files at their dom0 paths (dom0's top read-only layer; empty when
    there is no build)."""
    stamps = (
        f"{where} {file.stat().st_mtime_ns}" for where, file in sorted(xen.netbuf_files.items())
    )
    key = digest("0644 for .so, else 0755", *stamps)
    cache = xen.cache
    tree = cache / f"netbuf-tree-{key}"
    if not tree.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache))
        for where, file in xen.netbuf_files.items():
            target = tmp / where.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            target.chmod(0o644 if ".so" in target.name else 0o755)
        tmp.chmod(0o755)
        for old in cache.glob("netbuf-tree-*"):
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(tree)
    return tree


def udp_sender() -> Path:
    binary = CACHE / f"e2e_udp-{digest(UDP_SOURCE)}"
    if not binary.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(f".{os.getpid()}")
        vm._check(["gcc", "-static", "-O2", "-Wall", "-o", str(tmp), str(UDP_SOURCE)], "gcc")
        tmp.replace(binary)
    return binary


def initrd(
    name: str,
    kernel: vm.Kernel,
    init: Path,
    modules: Sequence[str],
    applets: Sequence[str],
    binaries: dict[str, Path],
) -> Path:
    """A gzip'ed newc cpio: busybox with its applets, the modules in /mods (their load order
    in /mods/order), init as /init."""
    key = digest(kernel.version, init, *modules, *applets, *binaries.values(), BUSYBOX)
    image = CACHE / f"{name}-initrd-{key}.cpio.gz"
    if image.exists():
        return image
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        for sub in ("bin", "proc", "sys", "dev", "mods", "newroot"):
            (root / sub).mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for applet in applets:
            (root / "bin" / applet).symlink_to("busybox")
        order = [_copy_module(kernel.modules / module, root / "mods") for module in modules]
        (root / "mods" / "order").write_text("\n".join(order) + "\n")
        for binary_name, binary in binaries.items():
            shutil.copy2(binary, root / "bin" / binary_name)
        shutil.copy2(init, root / "init")
        (root / "init").chmod(0o755)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        cpio = subprocess.run(
            [str(BUSYBOX), "cpio", "-o", "-H", "newc"],
            cwd=root,
            input="\n".join([".", *names]).encode(),
            capture_output=True,
            check=True,
        )
        tmp_image = Path(tmp) / "image"
        tmp_image.write_bytes(gzip.compress(cpio.stdout, compresslevel=1))
        for old in CACHE.glob(f"{name}-initrd-*.cpio.gz"):
            old.unlink()
        tmp_image.replace(image)
    return image
