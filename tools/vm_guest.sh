#!/bin/bash
# The guest side of tools/vm.py: what vng runs as root once the VM is up.
#
# On top of virtme-ng's own init (the host's / read-only over 9p, throwaway overlays on /etc
# /usr /var /tmp and the repo, tmpfs on /run): the host's Python unpacked into a tmpfs and bound
# over its own paths (9p makes a cold import 3x slower), the guest's speed against the host's,
# the kernel modules the tests need, lo up. Then the command the host wrote to the work dir,
# its output to files there (9p writes go through at once: the host streams them, and keeps
# them if the VM dies). Everything the host reads back is in the work dir: timeline (guest
# uptime at each step), modules (ok/FAILED per module), slowdown, rc.
set -u
work=$(dirname "$(readlink -f "$0")")
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

mark() {
    local uptime rest
    read -r uptime rest </proc/uptime
    echo "$1 $uptime" >>"$work/timeline"
}
mark init
# shellcheck source=/dev/null
. "$work/env"
out="$work/out"
err="$work/out"
[ "$REMUS_NETBUF_VM_MERGED" = 1 ] || err="$work/err"
: >"$out"
: >"$err"

if [ -n "$REMUS_NETBUF_VM_TARBALL" ]; then
    mkdir -p /run/pyroot
    mount -t tmpfs -o mode=0755 pyroot /run/pyroot
    if tar -C /run/pyroot -xf "$REMUS_NETBUF_VM_TARBALL" 2>>"$err"; then
        for dir in $REMUS_NETBUF_VM_PYDIRS; do # same paths, now in RAM
            mount --bind "/run/pyroot$dir" "$dir"
        done
    fi
    mark python
    if [ -n "$REMUS_NETBUF_VM_REFERENCE" ]; then
        took=$("$REMUS_NETBUF_VM_PYTHON" -c "$REMUS_NETBUF_VM_PROBE" 2>>"$err")
        slowdown=$(awk -v a="$took" -v b="$REMUS_NETBUF_VM_REFERENCE" 'BEGIN { printf "%.1f", a / b }')
        echo "$slowdown" >"$work/slowdown"
        export REMUS_NETBUF_VM_SLOWDOWN="$slowdown"
    fi
fi

: >"$work/modules"
load() {
    local msg
    if msg=$(modprobe "$@" 2>&1); then
        echo "ok $1" >>"$work/modules"
    else
        echo "FAILED $1: ${msg:-modprobe failed}" | tr '\n' ' ' >>"$work/modules"
        echo >>"$work/modules"
    fi
}
load veth
load ifb numifbs=0 # tests make their own IFBs, in their own namespaces
load sch_ingress
load cls_u32
load act_mirred
load sch_plug
ip link set lo up
echo remus-netbuf-vm >/proc/sys/kernel/hostname
mark modules

mapfile -d '' -t command <"$work/command" # NUL-terminated arguments
mark run
cd "$REMUS_NETBUF_VM_CWD" && "${command[@]}" </dev/null >>"$out" 2>>"$err"
echo $? >"$work/rc"
mark done
sync
