// Package kilnv1 is the gRPC contract between Kiln's roles (gateway →
// scheduler → node-agent), generated from kiln.proto by `make proto` and
// committed so a build needs no protoc; `make check` fails when the
// generated code is stale. Hand-written helpers on the generated types live
// beside it (startkind.go).
package kilnv1
