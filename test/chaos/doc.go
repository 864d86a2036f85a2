// Package chaos strikes faults at a running Kiln under an open-loop load
// (internal/teststack/openloop) and checks that the platform takes them as
// it promises: no async invocation lost, sync calls failing during the
// fault with a clear error (a 5xx or 429 with a JSON error, never a hang),
// sync success back for good within a stated bound after the fault ends,
// and no reservation or instance leaked afterwards.
//
// Here the faults hit `kiln up` (platform.Up, in this process) with the
// KVM runtime: kill -9 of a vmhost worker process and SIGSTOP of one (the
// agent's watchdog must kill it). The multi-process cluster's faults
// (Redis, NATS and the scheduler restarted) are in test/cluster's
// chaos_test.go, on that package's process harness. KILN_BENCH=1 repeats
// each fault for the medians in docs/BENCHMARKS.md ("Chaos").
//
// The package has no code of its own; see kvm_test.go.
package chaos
