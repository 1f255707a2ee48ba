"""The real-Xen tier's dom0 installed as a Debian admin installs it (Xen 4.17).

dom0 boots with Debian's Xen installed by dpkg (tools/e2e_dom0.sh). Then, as the README says:
``apt install`` our .deb, one line in xl.conf, ``remus-netbuf check`` (it fails: Debian's
libxenlight cannot buffer), ``apt install`` the netbuf libxenmisc of ``make xen-netbuf-debs``,
check again (it passes). Every scenario then runs that installed system. At the end, a Debian
update is simulated (Debian's own libxenmisc of the same version put back: check must say the
library lost network buffering, and how to get it back), and our package is purged: nothing of
it may be left.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from tools.e2e_base import WORK, XL_CONF, XL_LINE, Scenario, failing, remus_netbuf_check, sh
from tools.e2e_xl import plugged_ifbs

PACKAGE = "remus-netbuf"
APT = ("apt-get", "install", "-y", "--no-install-recommends")  # dom0 has no network
ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def our_debs() -> tuple[str, list[str]]:
    """Our .deb and the netbuf Xen .debs, as the host built them."""
    ours, *xen = os.environ.get("E2E_OUR_DEBS", "").split()
    return ours, xen


def debians_libxenmisc() -> str:
    """Debian's own libxenmisc .deb of the version dom0 runs (among what dom0 installed)."""
    return next(d for d in os.environ.get("E2E_XEN_DEBS", "").split() if "/libxenmisc" in d)


def apt_install(sc: Scenario, *debs: str, extra: tuple[str, ...] = ()) -> bool:
    done = sh(*APT, *extra, *debs, env=ENV, timeout=600)
    with open(WORK / "apt.log", "a") as log:
        log.write(f"$ {' '.join(APT + extra)} {' '.join(debs)}\n{done.stdout}{done.stderr}")
    names = " ".join(f"./{Path(d).name}" for d in debs)
    return sc.check(
        f"apt install {names}", done.returncode == 0, (done.stderr or done.stdout)[-400:]
    )


def package_files() -> list[str]:
    """What dpkg says our package installed (files and links; not directories)."""
    listed = sh("dpkg-query", "-L", PACKAGE).stdout.split("\n")
    return [p for p in listed if p and not os.path.isdir(p) and os.path.lexists(p)]


class Installing:
    """The scenarios install, update and purge, as methods Dom0 takes on."""

    installed_files: list[str]

    def scenario(self, name: str) -> contextlib.AbstractContextManager[Scenario]:
        raise NotImplementedError

    def install(self) -> None:
        ours, xen = our_debs()
        with self.scenario("install") as sc:
            if not apt_install(sc, ours):
                return
            self.installed_files = package_files()
            sc.figures["the package's files"] = self.installed_files
            for needed in ("/usr/sbin/remus-netbuf-setup", "/usr/sbin/remus-netbuf"):
                sc.check(f"it installs {needed}", needed in self.installed_files)
            with open(XL_CONF, "a") as conf:  # the admin's one line (README: Install)
                conf.write(f"\n# remus-netbuf (README: Install)\n{XL_LINE}\n")
            rc, lines = remus_netbuf_check("before the netbuf Xen .deb")
            sc.check(
                "check fails before the netbuf Xen .deb, naming libxenlight only",
                rc == 1 and failing(lines) == ["libxenlight"],
                f"exit {rc}, FAIL: {failing(lines)}: {lines.get('libxenlight')}",
            )
            if not apt_install(sc, *xen):
                return
            rc, lines = remus_netbuf_check("installed")
            level, detail = lines.get("libxenlight", ("none", ""))
            sc.check("check passes: no FAIL", rc in (0, 2) and not failing(lines), f"exit {rc}")
            sc.check("check: the installed libxenlight buffers", level == "ok", detail)
            script = lines.get("xl-script", ("none", ""))
            sc.check("check: xl.conf's script is ours", script[0] == "ok", script[1])

    def update(self) -> None:
        """Debian's update, simulated: Debian's build of libxenmisc replaces ours."""
        ours, xen = our_debs()
        with self.scenario("update") as sc:
            debian = debians_libxenmisc()
            if not apt_install(sc, debian, extra=("--allow-downgrades",)):
                return
            rc, lines = remus_netbuf_check("after Debian's update")
            level, detail = lines.get("libxenlight", ("none", ""))
            sc.check("check fails on libxenlight", rc == 1 and level == "FAIL", detail)
            sc.check(
                "it says the library lost network buffering", "lost network buffering" in detail
            )
            fix = detail.split("[fix: ", 1)[-1]
            sc.check(
                "it names make xen-netbuf-debs and the package to apt install",
                "make xen-netbuf-debs" in fix and f"./dist/xen-netbuf/{Path(xen[0]).name}" in fix,
                fix,
            )
            if not apt_install(sc, *xen):
                return
            rc, lines = remus_netbuf_check("after reinstalling the netbuf .deb")
            sc.check("check passes again", not failing(lines), f"exit {rc}: {failing(lines)}")

    def purge(self) -> None:
        """apt purge: with xl.conf still naming our script (the package says so and leaves
        xl.conf alone), then the admin removes the line; nothing of ours may be left."""
        with self.scenario("purge") as sc:
            done = sh("apt-get", "purge", "-y", PACKAGE, env=ENV, timeout=600)
            sc.check("apt purge remus-netbuf", done.returncode == 0, done.stderr[-300:])
            said = [ln for ln in (done.stdout + done.stderr).splitlines() if "xl.conf" in ln]
            sc.check("the package says xl.conf still names its script", said, said)
            text = XL_CONF.read_text()
            sc.check("it leaves xl.conf alone", XL_LINE in text)
            XL_CONF.write_text(
                text.replace(XL_LINE, "").replace("# remus-netbuf (README: Install)\n", "")
            )
            left = [p for p in self.installed_files if os.path.lexists(p)]
            sc.check("no file of the package is left", not left, left)
            conf = Path("/etc/xen/remus-netbuf.conf")
            sc.check("its conffile is gone", not conf.exists(), conf)
            status = sh("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", PACKAGE).stdout.strip()
            sc.check("dpkg knows no remus-netbuf", status in ("", "un", "pn"), status or "none")
            sc.check("xl.conf names no script of ours", "remus-netbuf" not in XL_CONF.read_text())
            claims = [
                ln
                for ln in sh("xenstore-ls", "-f", "/libxl").stdout.splitlines()
                if "/remus/netbuf/" in ln
            ]
            sc.check("no claim in xenstore", not claims, claims)
            sc.check("no IFB holds a plug", not plugged_ifbs(), plugged_ifbs())
            redirects = [
                dev
                for dev in re.findall(r"^\d+: ([^:@]+)", sh("ip", "-o", "link").stdout, re.M)
                if "mirred" in sh("tc", "filter", "show", "dev", dev, "ingress").stdout
            ]
            sc.check("no link redirects its ingress", not redirects, redirects)
