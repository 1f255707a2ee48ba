#!/bin/sh
# /init of the e2e tier's Xen guests (busybox + xen-netfront + e2e_udp, tools/e2e.py packs it).
# From the kernel command line: e2e_ip=ADDR/PREFIX e2e_dst=DOM0_ADDR. Brings eth0 up, then
# streams numbered UDP datagrams to dom0 (port 5001, one every 50 ms) for ever, and idles.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for arg in $(cat /proc/cmdline); do
    case $arg in
    e2e_ip=*) ip=${arg#e2e_ip=} ;;
    e2e_dst=*) dst=${arg#e2e_dst=} ;;
    esac
done
echo "GUEST: init up $(cat /proc/uptime)"
for m in $(cat /mods/order); do insmod /mods/$m.ko; done  # xen-netfront
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 1; done
ip link set lo up
ip addr add "$ip" dev eth0
ip link set eth0 up
echo "GUEST: eth0 $ip up $(cat /proc/uptime)"
/bin/e2e_udp "$dst" 5001 50 &
echo "GUEST: streaming UDP to $dst:5001"
while true; do sleep 3600; done
