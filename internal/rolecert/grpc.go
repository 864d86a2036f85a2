package rolecert

import (
	"context"
	"crypto/x509"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// Policy says which roles may call which gRPC methods of a server. A key
// is a full method name ("/kiln.v1.Agent/Invoke") or a service prefix
// ending in "/" ("/kiln.v1.Agent/"); a method no key covers is refused to
// everyone, so a service added later is closed until someone opens it.
type Policy map[string][]string

// SchedulerPolicy: gateways place invocations and read the node table,
// agents hold their Connect stream, and any role may ask the health
// service (the gateway's readiness does).
var SchedulerPolicy = Policy{
	kilnv1.Scheduler_Invoke_FullMethodName:              {RoleGateway},
	kilnv1.Scheduler_ListNodes_FullMethodName:           {RoleGateway},
	kilnv1.Scheduler_Connect_FullMethodName:             {RoleAgent},
	"/" + healthpb.Health_ServiceDesc.ServiceName + "/": {RoleGateway, RoleScheduler, RoleAgent},
}

// AgentPolicy: only the scheduler calls an agent.
var AgentPolicy = Policy{
	"/" + kilnv1.Agent_ServiceDesc.ServiceName + "/": {RoleScheduler},
}

// Allow says whether id may call method: nil, or a PermissionDenied
// status naming both.
func (p Policy) Allow(method string, id Identity) error {
	roles, ok := p[method]
	if !ok {
		if i := strings.LastIndexByte(method, '/'); i > 0 {
			roles, ok = p[method[:i+1]]
		}
	}
	if ok && slices.Contains(roles, id.Role) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "rolecert: %s may not call %s", id, method)
}

// PeerCertificate is the verified leaf certificate of the peer of a gRPC
// call, or an Unauthenticated status when the call came without one (no
// TLS, or no client certificate).
func PeerCertificate(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "rolecert: no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "rolecert: the call is not over TLS")
	}
	// VerifiedChains is filled only when the handshake verified the
	// client's certificate against the CA.
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil, status.Error(codes.Unauthenticated, "rolecert: no client certificate of the cluster's CA (a role needs --tls-cert and --tls-key)")
	}
	return info.State.VerifiedChains[0][0], nil
}

// PeerIdentity is the identity in the peer's verified certificate.
func PeerIdentity(ctx context.Context) (Identity, *x509.Certificate, error) {
	cert, err := PeerCertificate(ctx)
	if err != nil {
		return Identity{}, nil, err
	}
	id, err := IdentityOf(cert)
	if err != nil {
		return Identity{}, nil, status.Errorf(codes.Unauthenticated, "%v", err)
	}
	return id, cert, nil
}

// authorize is the check of every call: a verified certificate whose role
// the policy allows for the method.
func (p Policy) authorize(ctx context.Context, method string) error {
	id, _, err := PeerIdentity(ctx)
	if err != nil {
		return err
	}
	return p.Allow(method, id)
}

// ServerOptions are the options of a role's gRPC server under mTLS: the
// server's TLS credentials and interceptors that refuse, before any
// handler runs, a call without a verified certificate (Unauthenticated)
// or from a role p does not allow (PermissionDenied).
func ServerOptions(c *Credentials, p Policy) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(c.Server()),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := p.authorize(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := p.authorize(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// AuthenticateAgent is the scheduler's check of a Register under mTLS
// (scheduler.Config.Authenticate): the peer's certificate must be an
// agent's for exactly the node name it registers. The identity it
// returns, the certificate's fingerprint, is what the scheduler holds the
// name under.
func AuthenticateAgent(ctx context.Context, node string) (string, error) {
	id, cert, err := PeerIdentity(ctx)
	if err != nil {
		return "", err
	}
	if id.Role != RoleAgent || id.Node != node {
		return "", status.Errorf(codes.PermissionDenied, "rolecert: %s may not register as node %q", id, node)
	}
	return Fingerprint(cert), nil
}
