package asyncq

import (
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/registry"
)

// Message headers of an invocation. The request itself is the message
// data, as protobuf: a 6 MiB body stays 6 MiB (JSON would inflate it by a
// third past what one NATS message may carry).
const (
	hID       = "Kiln-Id"
	hFunction = "Kiln-Function"
	hRef      = "Kiln-Ref"
	hVersion  = "Kiln-Version"
	hRetries  = "Kiln-Retries"
	hCallback = "Kiln-Callback-Url"
	hEnqueued = "Kiln-Enqueued" // Unix nanoseconds
	// Added to dead letters and callback messages.
	hError    = "Kiln-Error"
	hAttempts = "Kiln-Attempts"
	hState    = "Kiln-State"
)

func encode(inv *Invocation) (*nats.Msg, error) {
	data, err := proto.Marshal(inv.Request)
	if err != nil {
		return nil, fmt.Errorf("%w: request: %v", ErrInvalid, err)
	}
	m := nats.NewMsg(invokeSubject + inv.Function)
	m.Data = data
	m.Header.Set(hID, inv.ID)
	m.Header.Set(hFunction, inv.Function)
	if inv.Ref != "" {
		m.Header.Set(hRef, inv.Ref)
	}
	m.Header.Set(hVersion, strconv.FormatUint(inv.Version, 10))
	m.Header.Set(hRetries, strconv.Itoa(inv.Retries))
	if inv.CallbackURL != "" {
		m.Header.Set(hCallback, inv.CallbackURL)
	}
	m.Header.Set(hEnqueued, strconv.FormatInt(inv.Enqueued.UnixNano(), 10))
	return m, nil
}

// decode reads an invocation message. Anything a worker could not act on
// safely is an error: such a message is dead-lettered, never run.
func decode(h nats.Header, data []byte) (*Invocation, error) {
	inv := &Invocation{
		ID:          h.Get(hID),
		Function:    h.Get(hFunction),
		Ref:         h.Get(hRef),
		CallbackURL: h.Get(hCallback),
	}
	if !validID(inv.ID) {
		return nil, fmt.Errorf("%w: message id %q", ErrInvalid, inv.ID)
	}
	if !registry.ValidName(inv.Function) {
		return nil, fmt.Errorf("%w: message function %q", ErrInvalid, inv.Function)
	}
	var err error
	if inv.Version, err = strconv.ParseUint(h.Get(hVersion), 10, 64); err != nil {
		return nil, fmt.Errorf("%w: message version %q", ErrInvalid, h.Get(hVersion))
	}
	if inv.Retries, err = strconv.Atoi(h.Get(hRetries)); err != nil || inv.Retries < 0 || inv.Retries > MaxRetries {
		return nil, fmt.Errorf("%w: message retries %q", ErrInvalid, h.Get(hRetries))
	}
	ns, err := strconv.ParseInt(h.Get(hEnqueued), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: message enqueue time %q", ErrInvalid, h.Get(hEnqueued))
	}
	inv.Enqueued = time.Unix(0, ns)
	if inv.CallbackURL != "" {
		if err := CheckCallbackURL(inv.CallbackURL); err != nil {
			return nil, err
		}
	}
	inv.Request = &kilnv1.InvokeRequest{}
	if err := proto.Unmarshal(data, inv.Request); err != nil {
		return nil, fmt.Errorf("%w: message request: %v", ErrInvalid, err)
	}
	if inv.Request.GetFunction() == nil {
		return nil, fmt.Errorf("%w: message request names no function", ErrInvalid)
	}
	return inv, nil
}
