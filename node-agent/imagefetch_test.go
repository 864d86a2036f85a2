package nodeagent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/builder/image"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/imagestore"
	"github.com/kilnfaas/kiln/unikernel/abi"
)

// TestImageStoreOutageIsAPlatformError: with a real image store (an
// embedded NATS server), an image the store does not have is a bad image
// at once; when the store goes away, an image not cached yet makes the
// call a platform error after the fetch was retried — not "bad image,
// redeploy", which would send the user to redeploy a good function. An
// image already cached keeps working through the outage.
func TestImageStoreOutageIsAPlatformError(t *testing.T) {
	ctx := context.Background()
	images, err := imagestore.Embedded(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer images.Close()
	prog := fnProgram(t)
	put := func(name string) string {
		data, _, err := image.Build(image.Manifest{ABIVersion: abi.Version, Name: name, Kind: "exec", MemoryBytes: 64 << 20,
			TimeoutMS: 5000}, prog, prog)
		if err != nil {
			t.Fatal(err)
		}
		d, err := images.Put(ctx, data)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	cached, later := put("cached"), put("later")

	a, err := New(Config{Node: "n", MemoryBytes: 1 << 30, Images: images, CacheDir: t.TempDir(), Boot: ProcessBooter(t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.cache.window = 700 * time.Millisecond
	invoke := func(d string) *kilnv1.InvokeResponse {
		resp, err := a.Invoke(ctx, &kilnv1.InvokeRequest{Function: &kilnv1.FunctionSpec{Name: "f", ImageDigest: d}, Path: "/"})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if r := invoke(cached); r.Outcome != kilnv1.Outcome_OUTCOME_OK {
		t.Fatalf("with the store up: %v %s", r.Outcome, r.Error)
	}
	start := time.Now()
	if r := invoke(image.Digest([]byte("never stored"))); r.Outcome != kilnv1.Outcome_OUTCOME_BAD_IMAGE {
		t.Fatalf("an image the store does not have: %v %s, want BAD_IMAGE", r.Outcome, r.Error)
	} else if took := time.Since(start); took > a.cache.window/2 {
		t.Errorf("a missing image took %v to report: it must not be retried", took)
	}

	images.Close() // the store goes away
	start = time.Now()
	r := invoke(later)
	if r.Outcome != kilnv1.Outcome_OUTCOME_PLATFORM_ERROR || !strings.Contains(r.Error, "did not start") {
		t.Fatalf("store down: %v %q, want PLATFORM_ERROR saying the function did not start", r.Outcome, r.Error)
	}
	if took := time.Since(start); took < a.cache.window/2 {
		t.Errorf("store down: answered after %v, before the fetch was retried", took)
	}
	if _, err := a.cache.get(ctx, later); !errors.Is(err, ErrImageStore) || errors.Is(err, ErrBadImage) {
		t.Errorf("cache.get with the store down: %v, want ErrImageStore only", err)
	}
	if r := invoke(cached); r.Outcome != kilnv1.Outcome_OUTCOME_OK {
		t.Errorf("a cached image during the outage: %v %s", r.Outcome, r.Error)
	}
}
