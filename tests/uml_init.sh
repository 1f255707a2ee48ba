#!/bin/bash
# Init (PID 1) of a UML boot, started by tools/umlrun.py on the host (for the test tier
# tests/umltier.py, the demo and the benchmarks).
#
# Makes a small private system on the host's root file system (hostfs): proc, sysfs, tmpfs on
# /run (locks, sockets and /run/netns stay inside this instance) and on /tmp (unless the host
# said the repo or the work dir is there), the kernel modules the tests need, lo up. Then runs
# the command the host wrote to the work dir (the tier's: the inner pytest) and halts.
# Everything the host reads back is written to the work dir: timeline (kernel uptime at each
# step), modules (ok/FAILED per module), rc (the command's exit status); the tier's inner
# plugin writes report.jsonl. Our own output goes to the console, which the host keeps as
# console.log; the command's goes to the second one (stderr: the third, or the second too).
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
work=${REMUS_NETBUF_UML_WORK:?set on the kernel command line}

halt_now() {
    sync  # hostfs writes sit in UML's page cache until then
    halt -f || poweroff -f || echo o >/proc/sysrq-trigger
    sleep 10
}
# An init that exits panics the kernel: halt instead, whatever happens.
trap halt_now EXIT

mark() {
    local uptime rest
    read -r uptime rest </proc/uptime
    echo "$1 $uptime" >>"$work/timeline"
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mark init
# shellcheck source=/dev/null
. "$work/env"
if [ "$REMUS_NETBUF_UML_PRIVATE_TMP" = 1 ]; then
    mount -t tmpfs -o mode=1777 tmpfs /tmp
fi
echo remus-netbuf-uml >/proc/sys/kernel/hostname

# The UML kernel's modules, reached through a private module root: the host's /lib/modules
# is left alone.
release=$(uname -r)
modroot=/run/uml-modroot
mkdir -p "$modroot/lib/modules"
ln -s "/usr/lib/uml/modules/$release" "$modroot/lib/modules/$release"
: >"$work/modules"
load() {
    local out
    if out=$(modprobe -d "$modroot" "$@" 2>&1); then
        echo "ok $1" >>"$work/modules"
    else
        echo "FAILED $1: ${out:-modprobe failed}" | tr '\n' ' ' >>"$work/modules"
        echo >>"$work/modules"
    fi
}
if command -v modprobe >/dev/null; then
    load ipv6
    load veth
    load ifb numifbs=0  # tests make their own IFBs, in their own namespaces
    load sch_ingress
    load cls_u32
    load act_mirred
    load sch_plug
    load dummy
else
    echo "FAILED all modules: no modprobe (apt-get install kmod)" >>"$work/modules"
fi
ip link set lo up
mark modules

# The command writes to the second console (stderr: the third, or the second too), which the
# host has opened on a file or its own stdout: written straight through, it survives UML being
# killed on timeout.
err=${REMUS_NETBUF_UML_STDERR:-/dev/tty1}
stty -F /dev/tty1 -opost
[ "$err" = /dev/tty1 ] || stty -F "$err" -opost
mapfile -d '' -t command <"$work/command"  # NUL-terminated arguments
mark run
cd "$REMUS_NETBUF_UML_CWD" && "${command[@]}" </dev/null >/dev/tty1 2>"$err"
echo $? >"$work/rc"
mark done
