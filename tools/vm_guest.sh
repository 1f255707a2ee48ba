#!/bin/bash
# The guest side of tools/vm.py: what vng runs as root once the VM is up.
#
# On top of virtme-ng's own init (the host's / read-only over 9p, throwaway overlays on /etc
# /usr /var /tmp, tmpfs on /run /var/tmp /var/cache ...): the directories the job needs exposed at
# their own paths, the host's Python unpacked into a tmpfs and bound over its own paths (9p
# makes a cold import 3x slower), the guest's speed against the host's, the kernel modules the
# tests need, lo up. Then the command the host wrote to the work dir,
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

# The directories the host listed in expose (the repo, the venv, the cache ...) as the host has
# them, writable, the writes thrown away: vng's tmpfs hides a checkout under /var/tmp, and its
# command line cannot carry a path with a space. A plain (non-recursive) bind of / is the host's
# root as 9p serves it, under none of the guest's mounts; each directory gets an overlay whose
# lower layer comes from there, through a bind at a plain path (overlay options split at , and :).
exposed=/run/remus-netbuf-exposed
mkdir -p "$exposed/host"
mount --bind / "$exposed/host"
n=0
while IFS= read -r -d '' dir; do
    n=$((n + 1))
    layer="$exposed/$n"
    mkdir -p "$layer/lower" "$layer/upper" "$layer/work" "$dir" &&
        mount --bind "$exposed/host$dir" "$layer/lower" &&
        mount -t overlay -o "lowerdir=$layer/lower,upperdir=$layer/upper,workdir=$layer/work" \
            "exposed$n" "$dir" || echo "vm_guest: could not expose $dir" >>"$err"
done <"$work/expose" 2>>"$err"

if [ -n "$REMUS_NETBUF_VM_TARBALL" ]; then
    mkdir -p /run/pyroot
    mount -t tmpfs -o mode=0755 pyroot /run/pyroot
    if tar -C /run/pyroot -xf "$REMUS_NETBUF_VM_TARBALL" 2>>"$err"; then
        while IFS= read -r dir; do # same paths, now in RAM
            mount --bind "/run/pyroot$dir" "$dir"
        done <<<"$REMUS_NETBUF_VM_PYDIRS"
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
