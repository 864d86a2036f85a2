// Package cluster holds Kiln's multi-process integration tests: they build
// bin/kiln and a nats-server once, then start on 127.0.0.1, as separate
// processes on free ports, a real redis-server, a real NATS server with
// JetStream, `kiln scheduler`, `kiln gateway`s and three `kiln agent
// --runtime process` (no KVM on the hosts that run them), and drive them
// over HTTP the way a user would: deploy, invoke, kill -9 an agent under
// load, freeze one, restart Redis, restart the scheduler; chaos_test.go
// kills Redis, NATS and the scheduler under an open-loop load
// (internal/teststack/openloop) and checks that no async invocation is
// lost and nothing leaks.
//
// The package has no code of its own; see cluster_test.go. docs/CLUSTER.md
// says how to run the roles by hand.
package cluster
