package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// ErrUnreachable: the gateway did not answer at all.
var ErrUnreachable = errors.New("cannot reach the Kiln gateway")

// apiError mirrors the gateway's JSON error body.
type apiError struct {
	Error        string `json:"error"`
	Function     string `json:"function,omitempty"`
	InvocationID string `json:"invocation_id,omitempty"`
}

// do sends one request to the gateway. A transport failure becomes
// ErrUnreachable with what to do about it; any HTTP answer is returned.
func (a *app) do(ctx context.Context, method, path string, q url.Values, hdr http.Header, body io.Reader, size int64) (*http.Response, error) {
	u := a.serverURL() + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("bad server URL %q: %w", a.serverURL(), err)
	}
	if size >= 0 && body != nil {
		req.ContentLength = size
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		hint := ""
		var op *net.OpError
		if errors.As(err, &op) {
			hint = ": is `kiln up` running? (set --server or $KILN_SERVER for another gateway)"
		}
		return nil, fmt.Errorf("%w at %s%s (%v)", ErrUnreachable, a.serverURL(), hint, err)
	}
	return resp, nil
}

// failure turns a non-2xx answer into an error carrying the gateway's
// sentence (or, for a body that is not the JSON error, the raw body).
func failure(resp *http.Response, body []byte) error {
	var e apiError
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return fmt.Errorf("%s: %s", resp.Status, e.Error)
	}
	return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
}

func (a *app) getJSON(ctx context.Context, path string, v any) error {
	resp, err := a.do(ctx, "GET", path, nil, nil, nil, -1)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return failure(resp, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("the gateway at %s answered %s with something that is not the expected JSON: %w", a.serverURL(), path, err)
	}
	return nil
}
