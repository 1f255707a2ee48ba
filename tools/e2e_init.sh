#!/bin/sh
# /init of the e2e tier's dom0 initramfs (busybox + the 9p/virtio/overlay modules).
# dom0's root: the host's / over 9p (read-only, cache=loose: cache=none makes every exec take
# 1-2 s under TCG and Xen's hotplug scripts then overrun libxl's 40 s), under the Xen userland
# tree (9p tag xenroot) and, above it, the netbuf-enabled libxenlight (tag netbuf), with a tmpfs
# on top; the work dir (tag work, read-write) at /e2e. Then PID 1 is e2e_stage=... (bash).
# With e2e_root=own (Xen 4.20), xenroot is a whole root (trixie's): the host's / is no layer,
# only the checkout (e2e_repo=DIR) is bound in from it, at its own path. Either way the Xen
# tree is also bound at /mnt/e2e-xen, where dom0 finds Debian's libxenlight under ours.
# With e2e_root=installed (Xen 4.17), the host's / is the only layer: dom0 installs Debian's Xen
# and our packages with dpkg and apt (tools/e2e_dom0.sh, tools/e2e_dom0.py).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for arg in $(cat /proc/cmdline); do
    case $arg in
    e2e_stage=*) stage=${arg#e2e_stage=} ;;
    e2e_root=*) own=${arg#e2e_root=} ;;
    e2e_repo=*) repo=${arg#e2e_repo=} ;;
    esac
done
echo "E2E: initramfs up $(cat /proc/uptime)"
for m in $(cat /mods/order); do
    insmod /mods/$m.ko || echo "E2E: insmod $m failed"
done
fail() { echo "E2E: $*"; echo o >/proc/sysrq-trigger; sleep 1000; }
opts=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /layers/host /layers/xen /layers/netbuf /rw
for i in 1 2 3 4 5 6 7 8 9 10; do [ -n "$(ls /sys/bus/virtio/drivers/9pnet_virtio 2>/dev/null | grep virtio)" ] && break; sleep 0.5; done
mount -t 9p -o $opts,ro,cache=loose host /layers/host || fail "9p host mount failed"
mount -t 9p -o $opts,ro,cache=loose xenroot /layers/xen || fail "9p xenroot mount failed"
mount -t 9p -o $opts,ro,cache=loose netbuf /layers/netbuf || fail "9p netbuf mount failed"
mount -t tmpfs -o size=768m tmpfs /rw
mkdir -p /rw/upper /rw/work
lower=/layers/netbuf:/layers/xen:/layers/host
[ "$own" = own ] && lower=/layers/netbuf:/layers/xen
[ "$own" = installed ] && lower=/layers/host
mount -t overlay -o lowerdir=$lower,upperdir=/rw/upper,workdir=/rw/work \
    overlay /newroot || fail "overlay mount failed"
if [ "$own" = own ]; then
    mkdir -p "/newroot$repo"
    mount --bind "/layers/host$repo" "/newroot$repo" || fail "bind $repo failed"
fi
mkdir -p /newroot/mnt/e2e-xen
mount --bind /layers/xen /newroot/mnt/e2e-xen
mkdir -p /newroot/e2e
mount -t 9p -o $opts,cache=none work /newroot/e2e || fail "9p work mount failed"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
echo "E2E: switching root $(cat /newroot/proc/uptime)"
exec switch_root /newroot /bin/bash "$stage"
