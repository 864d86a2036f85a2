package logstoretest

import (
	"testing"

	"github.com/kilnfaas/kiln/internal/redistest"
)

// StartRedis runs a real redis-server until the test ends and returns its
// URL (see redistest.Start).
func StartRedis(t testing.TB) string { return redistest.Start(t, "the Redis log store") }
