//go:build tools

// Package tools pins the etcd server main this wrapper module builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
