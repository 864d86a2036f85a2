// Package testnet starts servers on 127.0.0.1 for tests: a gRPC server, a
// nats-server with JetStream, a listener that never answers, and free
// addresses. It imports no Kiln role, so the in-package tests of a role
// (which cannot import internal/teststack without an import cycle) serve
// their fakes of its peers with it too; teststack builds the whole stack
// on it. Everything it starts stops at the test's end (t.Cleanup).
package testnet

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ServeGRPC serves a gRPC server, its services added by register, on a
// free port of 127.0.0.1 and returns the address.
func ServeGRPC(t testing.TB, register func(*grpc.Server), opts ...grpc.ServerOption) string {
	t.Helper()
	lis := Listen(t)
	ServeGRPCOn(t, lis, register, opts...)
	return lis.Addr().String()
}

// ServeGRPCOn serves a gRPC server on lis, for a test that stops it
// (Stop) and serves again on the same address; the test's end stops it too.
func ServeGRPCOn(t testing.TB, lis net.Listener, register func(*grpc.Server), opts ...grpc.ServerOption) *grpc.Server {
	t.Helper()
	srv := grpc.NewServer(opts...)
	register(srv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return srv
}

// Dial opens a plaintext client connection to addr.
func Dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Listen listens on a free port of 127.0.0.1; the test's end closes it.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	return lis
}

// handedOut remembers every address FreeAddr returned: the kernel may offer
// a port again before the server given it has bound.
var handedOut sync.Map

// FreeAddr is an address of 127.0.0.1 nothing listens on now, for a server
// a test starts by address, or for a peer that is not there. No two calls
// in one test binary return the same one.
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a := l.Addr().String()
		l.Close()
		if _, taken := handedOut.LoadOrStore(a, true); !taken {
			return a
		}
	}
	t.Fatal("no unused port after 100 tries")
	return ""
}

// Hanging is the address of a listener that accepts connections and never
// answers, for the timeouts of a client.
func Hanging(t testing.TB) string {
	t.Helper()
	lis := Listen(t)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return lis.Addr().String()
}

// NATS starts a real nats-server with JetStream in this process, on a free
// port of 127.0.0.1 with its files in a temporary directory, and returns
// its client URL. Its payload limit is the one kiln up's embedded server
// has (room for a 6 MiB async request).
func NATS(t testing.TB) string {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, MaxPayload: 8 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready after 10s")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv.ClientURL()
}
