// Build module for etcd (deploy/controlplane.sh): etcd's server and etcdctl modules replace
// their sibling modules with local paths; a module of ours requiring them at one release
// resolves every sibling to that same published release instead.
module netweft.local/build/etcd

go 1.24

require (
	go.etcd.io/etcd/server/v3 v3.6.16
	go.etcd.io/etcd/etcdctl/v3 v3.6.16
)
