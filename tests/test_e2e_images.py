"""The real-Xen tier's initramfs images load the modules they pack.

A guest whose init named ``/mods/xen-netfront.ko`` while the image held ``xen_netfront.ko``
booted without a network: every stream scenario of ``make e2e`` then failed on a timeout.
Both inits now load what ``/mods/order`` names, and this checks that each name has its file.
"""

from __future__ import annotations

import gzip
import lzma
import subprocess
from pathlib import Path

import pytest

from tools import e2e_images as images
from tools import vm


def unpacked(image: Path, into: Path) -> Path:
    into.mkdir()
    cpio = gzip.decompress(image.read_bytes())
    subprocess.run(
        [str(images.BUSYBOX), "cpio", "-id"], cwd=into, input=cpio, check=True, capture_output=True
    )
    return into


@pytest.mark.host_tools(
    "builds a real-Xen tier initramfs with the host's busybox cpio: that tier's images are built "
    "on the host"
)
@pytest.mark.parametrize("compressed", [False, True])
def test_the_guest_image_holds_every_module_its_order_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    monkeypatch.setattr(images, "CACHE", tmp_path / "cache")
    modules = tmp_path / "modules"
    (modules / "kernel/drivers/net").mkdir(parents=True)
    source = modules / images.GUEST_MODULES[0]
    if compressed:  # trixie's and sid's modules are .ko.xz
        source.with_name(source.name + ".xz").write_bytes(lzma.compress(b"\x7fELF netfront"))
        wanted = [images.GUEST_MODULES[0] + ".xz"]
    else:
        source.write_bytes(b"\x7fELF netfront")
        wanted = list(images.GUEST_MODULES)
    kernel = vm.Kernel("6.1.0-test", tmp_path / "vmlinuz", modules)
    image = images.initrd("guest", kernel, images.GUEST_INIT, wanted, images.GUEST_APPLETS, {})
    root = unpacked(image, tmp_path / "root")
    order = (root / "mods" / "order").read_text().split()
    assert order == ["xen_netfront"]
    assert all((root / "mods" / f"{name}.ko").read_bytes() == b"\x7fELF netfront" for name in order)


@pytest.mark.parametrize("init", [images.GUEST_INIT, images.DOM0_INIT])
def test_each_init_loads_modules_by_the_order_file_only(init: Path) -> None:
    insmods = [line for line in init.read_text().splitlines() if "insmod" in line]
    assert insmods and all("/mods/$m.ko" in line for line in insmods), insmods
