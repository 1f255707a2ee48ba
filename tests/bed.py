"""The functional test bed: a private network namespace, veth "vifs", IFBs, a stand-in xenstored.

The product runs as libxl runs it: ``remus-netbuf-setup`` as a separate process, here inside the
namespace (``ip netns exec``), talking the real xenstore wire protocol to our stand-in. What it
did is then checked with the real ``tc`` and ``ip`` (JSON output), an observer independent of
the product's netlink code, and by reading the stand-in's tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.vmtier import scaled
from tests.xenstored_standin import XenstoredStandin

BIN = Path(sys.executable).parent
SETUP = str(BIN / "remus-netbuf-setup")
CLI = str(BIN / "remus-netbuf")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=scaled(30))


def netbuf_path(domid: int, devid: int = 0) -> str:
    return f"/libxl/{domid}/remus/netbuf/{devid}"


@dataclass
class Result:
    """What one product run did: exit status and output."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if "failed" in line or "bad" in line]


class Bed:
    """One namespace plus one stand-in xenstored; every test gets its own."""

    def __init__(
        self, tmp: Path, xs: XenstoredStandin, xs_socket: str, initial: bool = False
    ) -> None:
        self.tmp = tmp
        self.xs_socket = xs_socket
        self.ns = "rnb-" + uuid.uuid4().hex[:10]
        self.xs = xs
        self.conf = tmp / "remus-netbuf.conf"
        self.lock_dir = tmp / "lock"
        self.configure()
        if initial:  # a name for the initial namespace (a dom0's), where modules make devices
            sh("ip", "netns", "attach", self.ns, "1")
        else:
            sh("ip", "netns", "add", self.ns)
        self.ip("link", "set", "lo", "up")

    def close(self) -> None:
        sh("ip", "netns", "del", self.ns, check=False)

    # --- building -----------------------------------------------------------------------

    def configure(self, **keys: object) -> None:
        lines = [f"lock_dir={self.lock_dir}"] + [f"{k}={v}" for k, v in keys.items()]
        self.conf.write_text("\n".join(lines) + "\n")

    def add_vif(self, vif: str, peer: str | None = None) -> str:
        """A veth pair standing in for a vif; returns the peer (the guest's side)."""
        peer = peer or "g" + vif.replace("vif", "").replace(".", "x")
        self.ip("link", "add", vif, "type", "veth", "peer", "name", peer)
        self.ip("link", "set", vif, "up")
        self.ip("link", "set", peer, "up")
        return peer

    def add_ifb(self, name: str, up: bool = False) -> None:
        self.ip("link", "add", name, "type", "ifb")
        if up:
            self.ip("link", "set", name, "up")

    def domain(self, domid: int) -> None:
        """Make a domain live (listed under /local/domain)."""
        self.xs.seed(f"/local/domain/{domid}/name", f"guest{domid}")

    def claim(self, domid: int, devid: int, ifb: str) -> None:
        self.xs.seed(f"{netbuf_path(domid, devid)}/ifb", ifb)

    # --- running the product ------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "XENSTORED_PATH": self.xs_socket,
            "REMUS_NETBUF_CONF": str(self.conf),
        }
        # coverage.py's subprocess measurement travels in COVERAGE_* variables.
        env.update({k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")})
        env.update(extra)
        return env

    def hotplug(
        self,
        command: str,
        vif: str | None = None,
        xenbus_path: str | None = None,
        remus_ifb: str | None = None,
        args: Sequence[str] = (),
        program: str = SETUP,
        **extra_env: str,
    ) -> Result:
        """Run ``remus-netbuf-setup COMMAND`` in the namespace the way libxl does."""
        env = self.env(**extra_env)
        for name, value in (
            ("vifname", vif),
            ("XENBUS_PATH", xenbus_path),
            ("REMUS_IFB", remus_ifb),
        ):
            if value is not None:
                env[name] = value
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, program, command, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=scaled(30),
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def cli(self, *args: str, **extra_env: str) -> Result:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, CLI, *args],
            capture_output=True,
            text=True,
            env=self.env(**extra_env),
            timeout=scaled(30),
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    # --- observing, with the real iproute2 --------------------------------------------------

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.ns, *args).stdout

    def tc(self, *args: str) -> str:
        return sh("tc", "-n", self.ns, *args).stdout

    def links(self) -> dict[str, dict[str, Any]]:
        out = sh("ip", "-n", self.ns, "-j", "-d", "link", "show").stdout
        return {link["ifname"]: link for link in json.loads(out)}

    def is_up(self, dev: str) -> bool:
        return "UP" in self.links()[dev]["flags"]

    def qdiscs(self, dev: str) -> list[dict[str, Any]]:
        out = sh("tc", "-n", self.ns, "-j", "qdisc", "show", "dev", dev).stdout
        return [q for q in json.loads(out or "[]") if q.get("kind") not in ("noqueue", "noop")]

    def root_qdisc(self, dev: str) -> str | None:
        for q in self.qdiscs(dev):
            if q.get("root"):
                return str(q["kind"])
        return None

    def root_stats(self, dev: str) -> dict[str, Any]:
        """The root qdisc of ``dev`` with its counters, as ``tc -s -j`` shows it."""
        shown = json.loads(sh("tc", "-n", self.ns, "-s", "-j", "qdisc", "show", "dev", dev).stdout)
        (root,) = [q for q in shown if q.get("root")]
        return dict(root)

    def has_ingress(self, dev: str) -> bool:
        return any(q["kind"] == "ingress" for q in self.qdiscs(dev))

    def filters(self, vif: str) -> str:
        """The ingress filters as tc prints them (text: mirred's target is named there)."""
        return sh("tc", "-n", self.ns, "filter", "show", "dev", vif, "ingress").stdout

    def node(self, path: str) -> str | None:
        return self.xs.nodes().get(path)

    def subtree(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self.xs.nodes().items() if k.startswith(prefix)}

    # --- verdicts -------------------------------------------------------------------------

    def assert_installed(
        self, vif: str, ifb: str, xenbus_path: str, protocols: str = "all"
    ) -> None:
        assert self.node(f"{xenbus_path}/ifb") == ifb
        assert self.node(f"{xenbus_path}/hotplug-status") == "connected"
        assert self.node(f"{xenbus_path}/hotplug-error") is None
        assert self.is_up(ifb)
        assert self.has_ingress(vif)
        filters = self.filters(vif)
        assert f"mirred (Egress Redirect to device {ifb})" in filters, filters
        assert f"protocol {protocols} " in filters, filters

    def assert_clean(self, vif: str | None, ifb: str | None, xenbus_path: str) -> None:
        """Zero residue: no ingress on the vif, the IFB down with no plug, no claim left."""
        links = self.links()
        if vif is not None and vif in links:
            assert not self.has_ingress(vif), self.tc("qdisc", "show", "dev", vif)
        if ifb is not None and ifb in links:
            assert self.root_qdisc(ifb) != "plug", self.tc("qdisc", "show", "dev", ifb)
            assert not self.is_up(ifb)
        assert self.node(f"{xenbus_path}/ifb") is None


def make_bed(tmp: Path, initial: bool = False) -> Iterator[Bed]:
    """A Bed for one test (a generator, for a pytest fixture); ``initial``: in the initial
    network namespace, not a private one (only in the kernel tier's throwaway VM)."""
    sockdir = tempfile.mkdtemp(prefix="rnb-", dir="/tmp")  # AF_UNIX paths must stay short
    socket_path = os.path.join(sockdir, "xenstored.sock")
    xs = XenstoredStandin(socket_path).start()
    bed = Bed(tmp, xs, socket_path, initial)
    try:
        yield bed
    finally:
        bed.close()
        xs.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
