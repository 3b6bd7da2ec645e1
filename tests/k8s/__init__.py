"""Tests against a local, real Kubernetes control plane (etcd, kube-apiserver, kube-scheduler)
with KWOK's fake nodes: see cluster.py and docs/kubernetes-harness.md."""
