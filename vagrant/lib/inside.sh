#!/usr/bin/env bash
# The part of vagrant/run.sh that runs inside the run's namespaces (entered by run.sh with
# nsenter: the run's network namespace and its private mount namespace), in the run directory:
#   inside.sh up      networks, the run's LXC config, `vagrant up`, then vagrant/check.py
#   inside.sh down    `vagrant destroy`, then stops and removes any container left
# up reads NODES, BACKEND, PROVIDER, BOX, PYTHON (with netweft) from the environment and writes ./env for down.
set -euo pipefail
vagrant_dir=$(cd "$(dirname "$0")/.." && pwd)
RUN=$PWD
MGMT=198.51.100        # Vagrant's management network (ssh), a documentation range
CLUSTER=192.0.2        # the nodes' network (private_network in the VM Vagrantfile), ditto
BOX_NAME=netweft/debian12

case "${1:-}" in
up)
    cat > env <<ENV
export VAGRANT_HOME=$RUN/vagrant.d VAGRANT_DOTFILE_PATH=$RUN/machines VAGRANT_CWD=$vagrant_dir
export VAGRANT_DEFAULT_PROVIDER=$PROVIDER VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1
export NETWEFT_NODES=$NODES NETWEFT_BACKEND=$BACKEND NETWEFT_BOX=$BOX_NAME
export NETWEFT_SUBNET=$CLUSTER NETWEFT_MGMT_SUBNET=$MGMT NETWEFT_GATEWAY=$CLUSTER.1
ENV
    # shellcheck disable=SC1091
    . ./env

    # /sys of this network namespace (LXC finds bridges under /sys/class/net), with the host's
    # cgroup mounts carried over (what `ip netns exec` loses): a fresh sysfs on /sys, then the
    # cgroup tree bound back. Only in this private mount namespace.
    mkdir -p cgroup-keep
    mount --rbind /sys/fs/cgroup cgroup-keep
    mount -t sysfs sysfs /sys
    mount --rbind cgroup-keep /sys/fs/cgroup
    umount -R cgroup-keep

    # The run's own LXC configuration: containers under the run directory, no default NIC.
    mkdir -p etc-lxc lxc
    echo "lxc.lxcpath = $RUN/lxc" > etc-lxc/lxc.conf
    echo "lxc.net.0.type = empty" > etc-lxc/default.conf
    mount --bind etc-lxc /etc/lxc

    # The "physical" networks: two bridges in this namespace. Its address on the cluster
    # network (.1) is the non-node client for NodePort checks and the nodes' default gateway
    # (service addresses need a route to be looked up); it forwards nothing.
    ip link set lo up
    if [ "$PROVIDER" = lxc ]; then      # libvirt makes its own management network
        ip link add mgmt0 type bridge
        ip addr add "$MGMT.1/24" dev mgmt0
        ip link set mgmt0 up
    fi
    ip link add cluster0 type bridge
    ip addr add "$CLUSTER.1/24" dev cluster0
    ip link set cluster0 up

    if [ "$PROVIDER" = libvirt ]; then
        bash "$vagrant_dir/lib/libvirtd.sh" start "$RUN"
        echo "export NETWEFT_LIBVIRT_KERNEL=$BOX/vmlinuz NETWEFT_LIBVIRT_INITRD=$BOX/initrd.img" >> env
        # shellcheck disable=SC1091
        . ./env
    fi

    # The box, linked into this run's VAGRANT_HOME in Vagrant's box layout (NAME/VERSION/PROVIDER).
    mkdir -p "$VAGRANT_HOME/boxes/${BOX_NAME//\//-VAGRANTSLASH-}/0"
    ln -s "$BOX" "$VAGRANT_HOME/boxes/${BOX_NAME//\//-VAGRANTSLASH-}/0/$PROVIDER"

    failed() { tail -40 "$1" >&2; echo "inside.sh: $2 failed (log: $RUN/$1)" >&2; exit 1; }
    # Boot every node in parallel, then provision node1 (etcd, the network config) before the
    # others, which then provision in parallel (one vagrant process each).
    start=$(date +%s)
    vagrant up --provider "$PROVIDER" --no-provision > vagrant-up.log 2>&1 \
        || failed vagrant-up.log "vagrant up"
    echo "vagrant up: $NODES nodes booted in $(( $(date +%s) - start )) s" >&2
    vagrant provision node1 > provision-node1.log 2>&1 || failed provision-node1.log "vagrant provision node1"
    pids=()
    for i in $(seq 2 "$NODES"); do
        vagrant provision "node$i" > "provision-node$i.log" 2>&1 &
        pids+=($!)
    done
    for i in $(seq 2 "$NODES"); do
        wait "${pids[$((i - 2))]}" || failed "provision-node$i.log" "vagrant provision node$i"
    done
    grep -h 'FLANNEL_SUBNET' provision-node*.log | sed 's/^ *//' >&2 || true
    echo "vagrant up + provision: $NODES nodes in $(( $(date +%s) - start )) s" >&2
    vagrant ssh-config > ssh_config
    # Emulated VMs (libvirt, domain type qemu) take seconds per ssh key exchange: one session
    # per node at a time, and a longer connect timeout.
    slow=()
    [ "$PROVIDER" = libvirt ] && slow=(--ssh-per-node 1 --connect-timeout 60)
    exec "$PYTHON" "$vagrant_dir/check.py" --ssh-config ssh_config --nodes "$NODES" \
        --subnet "$CLUSTER" "${slow[@]}"
    ;;
down)
    # shellcheck disable=SC1091
    [ -f env ] && . ./env
    # Throwaway nodes: killed first (a clean halt of each costs seconds), then destroyed by
    # Vagrant, then whatever container Vagrant did not know of.
    containers() { [ -d lxc ] && lxc-ls -1 -P "$RUN/lxc" 2>/dev/null || true; }
    for c in $(containers); do lxc-stop -k -P "$RUN/lxc" -n "$c" 2>/dev/null || true; done
    if [ -S /run/libvirt/libvirt-sock ] && [ -f libvirt/libvirtd.pid ]; then     # VMs: pulled out, as containers are killed
        for d in $(virsh -q list --name 2>/dev/null); do virsh -q destroy "$d" >/dev/null 2>&1 || true; done
    fi
    if [ -f env ] && [ -d machines ]; then
        timeout 180 vagrant destroy -f --parallel || echo "inside.sh: vagrant destroy failed" >&2
    fi
    for c in $(containers); do lxc-destroy -f -P "$RUN/lxc" -n "$c" 2>/dev/null || true; done
    [ ! -f libvirt/libvirtd.pid ] || bash "$vagrant_dir/lib/libvirtd.sh" stop "$RUN"
    ;;
*) echo "usage: inside.sh up|down" >&2; exit 2 ;;
esac
