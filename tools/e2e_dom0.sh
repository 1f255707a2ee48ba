#!/bin/bash
# PID 1 of the e2e tier's Xen dom0 (tools/e2e.py boots it; e2e_init.sh switches root to it).
# Brings up what a Debian Xen dom0 runs (xenfs, the C xenstored, xen-init-dom0, xenconsoled),
# then the scenarios (tools/e2e_dom0.py, with the repo's venv, or with the root's python3 where
# dom0's root is a suite of its own: Xen 4.20's trixie), then powers off. The work dir is
# /e2e: the host passes its settings in /e2e/env and reads back stage.log, timeline, results.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
W=/e2e
LOG=$W/stage.log
: >"$LOG"
# shellcheck source=/dev/null
. "$W/env"
mark() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >>"$W/timeline"; }
say() { echo "E2E[$(cut -d' ' -f1 /proc/uptime)s]: $*" | tee -a "$LOG" >/dev/console; }
finish() {
    cp -a /var/log/xen "$W/varlogxen" 2>/dev/null
    cp /var/log/dpkg.log "$W/dpkg.log" 2>/dev/null
    dmesg >"$W/dmesg.txt" 2>&1
    mark done
    say "power off"
    sync
    echo o >/proc/sysrq-trigger
    sleep 1000
}
mark dom0
mount -t tmpfs tmpfs /run
# /tmp stays the overlay's (writable: its top layer is a tmpfs): a tmpfs over it would hide a
# checkout under /tmp, this script's own repo and the kernel modules linked from its cache
mkdir -p /run/xen /run/lock /var/log/xen /var/lib/xen
mount -t tmpfs tmpfs /var/log/xen
mount -t tmpfs tmpfs /var/lib/xen
# devtmpfs has no /dev/fd or /dev/stdin: Xen's locking.sh stats /dev/stdin, and loops for ever
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
for i in 0:stdin 1:stdout 2:stderr; do
    [ -e "/dev/${i#*:}" ] || ln -s "/proc/self/fd/${i%%:*}" "/dev/${i#*:}"
done
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
hostname dom0
say "dom0 up: kernel $(uname -r), $(cat /sys/hypervisor/type 2>/dev/null) $(cat /sys/hypervisor/version/major 2>/dev/null).$(cat /sys/hypervisor/version/minor 2>/dev/null)"
XEN=/usr/lib/xen-${E2E_XEN_BRANCH:-4.17}/bin
# The host's Python (or the own root's standard library), unpacked into RAM and bound over its own paths: cold imports over 9p are
# what makes a hotplug script overrun libxl's 40 s in TCG.
if [ -n "${E2E_TARBALL:-}" ]; then
    mkdir -p /run/pyroot
    mount -t tmpfs -o mode=0755 pyroot /run/pyroot
    if tar -C /run/pyroot -xf "$E2E_TARBALL"; then
        for dir in $E2E_PYDIRS; do mount --bind "/run/pyroot$dir" "$dir"; done
    fi
    mark python
fi
# Xen 4.17: dom0 is a Debian dom0 running Debian's Xen, installed here as an admin installs it
# (dpkg, with a policy-rc.d that keeps maintainer scripts from starting services, as in any
# image build: this script starts them below). Our packages come later (tools/e2e_dom0.py).
if [ -n "${E2E_XEN_DEBS:-}" ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    # and no man-db index rebuild at each install, man-db's own switch (as minimal images do):
    # over 9p under TCG it took 85 of the 150 s that installing Xen's packages took
    rm -f /var/lib/man-db/auto-update
    # shellcheck disable=SC2086 # a list of paths without spaces
    if DEBIAN_FRONTEND=noninteractive dpkg -i $E2E_XEN_DEBS >"$W/dpkg-xen.log" 2>&1; then
        say "Debian's Xen installed with dpkg -i ($(echo $E2E_XEN_DEBS | wc -w) packages)"
    else
        say "dpkg -i of Debian's Xen FAILED: $(tail -3 "$W/dpkg-xen.log" | tr '\n' ' ')"
    fi
    mark dpkg
fi
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-netback bridge; do
    modprobe $m || say "modprobe $m FAILED"
done
mount -t xenfs xenfs /proc/xen
ip link set lo up
$XEN/xenstored --pid-file /run/xen/xenstored.pid >>"$LOG" 2>&1
for _ in $(seq 1 120); do xenstore-read -s / >/dev/null 2>&1 && break; sleep 0.5; done
$XEN/xen-init-dom0 >>"$LOG" 2>&1 || say "xen-init-dom0 failed"
$XEN/xenconsoled --pid-file=/run/xen/xenconsoled.pid --log=guest --log-dir="$W" >>"$LOG" 2>&1
mark xen
say "xenstored, xen-init-dom0, xenconsoled started"
cd "$E2E_REPO" && "$E2E_PYTHON" -X faulthandler -m tools.e2e_dom0 >>"$LOG" 2>&1
echo $? >"$W/rc"
[ -f "$W/interactive" ] && setsid sh -c 'exec bash </dev/hvc0 >/dev/hvc0 2>&1'
finish
