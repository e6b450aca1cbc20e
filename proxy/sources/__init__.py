"""Where Services and endpoints come from: the Kubernetes API or etcd."""
