#!/usr/bin/env bash
# One command for the multi-VM test network (issue 14):
#
#   vagrant/run.sh [--provider lxc|libvirt] [--nodes N] [--backend vxlan|host-gw] [--keep]
#   vagrant/run.sh --down RUN_DIR        # remove a cluster kept with --keep
#
# installs the host packages (vagrant/setup.sh), builds or reuses the box (vagrant/box/build.sh),
# runs `vagrant up`, checks the cluster (vagrant/check.py: pods on every node reach each other,
# the demo service answers through its ClusterIP from every node and through its NodePort from a
# host that is not a node) and destroys it unless --keep. Exit status 0 only if every check
# passed; any failure exits non-zero. lxc: system containers (CI); libvirt: VMs under plain qemu
# emulation, libvirtd and virtlogd started inside the run's namespaces (vagrant/lib/libvirtd.sh).
#
# Nothing happens in the root network namespace: a run makes a network namespace `nwvg-<id>`
# (its bridges are the "physical" networks, its own address is the non-node client) and a
# private mount namespace (kept by a holder process, cgroup mounts intact) where /etc/lxc is the
# run's own (lxc.lxcpath under the run directory). Every vagrant and lxc-* call runs there,
# entered with `nsenter --net` (not `ip netns exec`, which remounts /sys and hides cgroups).
# VAGRANT_HOME, Vagrant's machine state, the containers and the logs live in the run directory
# (/var/tmp/netweft-vagrant.XXXXXX), removed at the end, also on failure (unless --keep).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
provider=lxc nodes=3 backend=vxlan keep="" down=""
usage() { echo "usage: vagrant/run.sh [--provider lxc|libvirt] [--nodes N] [--backend vxlan|host-gw] [--keep] | --down RUN_DIR" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --provider) provider=${2:?}; shift 2 ;;
    --provider=*) provider=${1#*=}; shift ;;
    --nodes) nodes=${2:?}; shift 2 ;;
    --nodes=*) nodes=${1#*=}; shift ;;
    --backend) backend=${2:?}; shift 2 ;;
    --backend=*) backend=${1#*=}; shift ;;
    --keep) keep=1; shift ;;
    --down) down=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "run.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
case "$provider" in lxc|libvirt) ;; *) echo "run.sh: --provider: lxc or libvirt (got '$provider')" >&2; exit 2 ;; esac
[[ "$nodes" =~ ^[1-9][0-9]?$ ]] && [ "$nodes" -ge 2 ] \
    || { echo "run.sh: --nodes: a number from 2 to 99 (got '$nodes')" >&2; exit 2; }
case "$backend" in vxlan|host-gw) ;; *) echo "run.sh: --backend: vxlan or host-gw (got '$backend')" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root" >&2; exit 1; }

t0=$(date +%s)
say() { echo "[run.sh $(( $(date +%s) - t0 ))s] $*" >&2; }

# Inside the run's namespaces: the holder's mount namespace and the run's network namespace.
inside() {
    local run=$1; shift
    nsenter --target "$(cat "$run/holder.pid")" --mount --net="/run/netns/$(cat "$run/netns")" -- \
        env -C "$run" "$@"
}

teardown() {        # teardown RUN_DIR: everything a run made, in reverse; tolerant of half-made runs
    local run=$1 ns holder pids
    ns=$(cat "$run/netns" 2>/dev/null || true)
    holder=$(cat "$run/holder.pid" 2>/dev/null || true)
    if [ -n "$holder" ] && [ -n "$ns" ] && [ -e "/run/netns/$ns" ] && kill -0 "$holder" 2>/dev/null; then
        inside "$run" timeout 300 bash "$here/lib/inside.sh" down >>"$run/teardown.log" 2>&1 \
            || { tail -20 "$run/teardown.log" >&2
                 echo "run.sh: orderly teardown failed (above); killing what is left" >&2; }
    fi
    # Whatever is still running in the run's network namespace was started by this run.
    if [ -n "$ns" ] && [ -e "/run/netns/$ns" ]; then
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
        ip netns delete "$ns" 2>/dev/null || true
    fi
    if [ -n "$holder" ]; then kill "$holder" 2>/dev/null || true; fi
    rm -rf "$run"
}

if [ -n "$down" ]; then
    [ -f "$down/netns" ] || { echo "run.sh: --down: $down is not a run directory (no netns file)" >&2; exit 1; }
    teardown "$down"
    echo "removed $down"
    exit 0
fi

bash "$here/setup.sh" "$provider"
# netweft on the host too, for check.py (the lab's matrix and whoami client): the checkout's .venv.
python=$here/../.venv/bin/python
[ -x "$python" ] || bash "$here/../deploy/setup.sh" >&2
say "building or reusing the $provider box"
box=$(bash "$here/box/build.sh" "$provider")
say "box: $box"

run=$(mktemp -d /var/tmp/netweft-vagrant.XXXXXX)
ns="nwvg-${run##*.}"
echo "$ns" > "$run/netns"
status=1
finish() {
    if [ -n "$keep" ]; then
        echo "kept: $run (enter: nsenter -t $(cat "$run/holder.pid" 2>/dev/null) -m --net=/run/netns/$ns; remove: vagrant/run.sh --down $run)" >&2
    else
        teardown "$run"
        say "removed the cluster, the namespaces and $run"
    fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

ip netns add "$ns"
# The holder keeps the private mount namespace (a copy of the host's mounts, cgroups included).
unshare --mount --propagation private sleep infinity &
echo $! > "$run/holder.pid"
for _ in $(seq 50); do
    [ "$(readlink "/proc/$(cat "$run/holder.pid")/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] && break
    sleep 0.1
done
say "network namespace $ns, run directory $run"
if inside "$run" env NODES="$nodes" BACKEND="$backend" PROVIDER="$provider" BOX="$box" PYTHON="$python" \
        bash "$here/lib/inside.sh" up; then
    status=0
    say "PASS: $nodes $provider nodes, backend $backend"
else
    say "FAIL: see the output above and the logs in $run (kept only with --keep)"
fi
