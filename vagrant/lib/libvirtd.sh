#!/usr/bin/env bash
# libvirtd and virtlogd for run.sh's libvirt route, inside the run's namespaces (called by
# inside.sh, already in the run's network and private mount namespace):
#   libvirtd.sh start RUN_DIR   the run's own /etc/libvirt, /var/lib/libvirt, /run/libvirt,
#                               /var/log/libvirt, /var/cache/libvirt (bind mounts of directories
#                               under RUN_DIR/libvirt, only in this mount namespace), then virtlogd
#                               and libvirtd as daemons, and a storage pool "default" in RUN_DIR
#   libvirtd.sh stop RUN_DIR    stops both (their pid files), VMs first
# qemu.conf: qemu runs as root (without udev /dev/kvm is root-only, and libvirt otherwise
# re-probes qemu on every call, about 4 s each), no security driver, no cgroups of its own (the
# host's cgroup tree is shared with seven other engineers' runs). No network is autostarted:
# the package's "default" network (virbr0, NAT) is not in the run's copy.
set -euo pipefail
cmd=${1:?usage: libvirtd.sh start|stop RUN_DIR}
run=${2:?}
lv=$run/libvirt
case "$cmd" in
start)
    mkdir -p "$lv"/{etc,lib,run,log,cache,pool}
    cp -a /etc/libvirt/. "$lv/etc/"
    rm -rf "$lv/etc/qemu/networks/autostart" "$lv/etc/qemu/networks/default.xml"
    cat >> "$lv/etc/qemu.conf" <<'CONF'
# netweft run.sh (libvirt route)
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
remember_owner = 0
CONF
    mkdir -p "$lv/lib/"{qemu,dnsmasq,images,network,boot} "$lv/lib/qemu/nvram"
    mount --bind "$lv/etc" /etc/libvirt
    mount --bind "$lv/lib" /var/lib/libvirt
    mount --bind "$lv/run" /run/libvirt 2>/dev/null || { mkdir -p /run/libvirt; mount --bind "$lv/run" /run/libvirt; }
    mount --bind "$lv/log" /var/log/libvirt
    mount --bind "$lv/cache" /var/cache/libvirt 2>/dev/null \
        || { mkdir -p /var/cache/libvirt; mount --bind "$lv/cache" /var/cache/libvirt; }
    virtlogd --daemon --pid-file "$lv/virtlogd.pid"
    libvirtd --daemon --pid-file "$lv/libvirtd.pid"
    for _ in $(seq 120); do
        virsh -q version >/dev/null 2>&1 && break
        sleep 0.5
    done
    virsh -q version >/dev/null || { echo "libvirtd.sh: libvirtd did not come up" >&2; exit 1; }
    virsh -q pool-define-as default dir --target "$lv/pool" >/dev/null
    virsh -q pool-start default >/dev/null
    echo "libvirtd.sh: libvirtd $(cat "$lv/libvirtd.pid"), virtlogd $(cat "$lv/virtlogd.pid") in this namespace" >&2
    ;;
stop)
    for d in $(virsh -q list --name 2>/dev/null); do virsh -q destroy "$d" >/dev/null 2>&1 || true; done
    for p in libvirtd virtlogd; do
        [ -f "$lv/$p.pid" ] && kill "$(cat "$lv/$p.pid")" 2>/dev/null || true
    done
    ;;
*) echo "usage: libvirtd.sh start|stop RUN_DIR" >&2; exit 2 ;;
esac
