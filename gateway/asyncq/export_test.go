package asyncq

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// RequestForTest is a minimal request for function fn.
func RequestForTest(id, fn string) *kilnv1.InvokeRequest {
	return &kilnv1.InvokeRequest{InvocationId: id, Function: &kilnv1.FunctionSpec{Name: fn}, Method: "POST", Path: "/"}
}

// PublishForTest puts inv in the stream as Enqueue would, but without its
// status and under a fresh message id: what a redelivery looks like to a
// worker once JetStream's duplicate window has passed.
func PublishForTest(ctx context.Context, nc *nats.Conn, inv *Invocation) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	msg, err := encode(inv)
	if err != nil {
		return err
	}
	_, err = js.PublishMsg(ctx, msg, jetstream.WithMsgID("dup-"+inv.ID))
	return err
}
