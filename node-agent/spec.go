package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kilnfaas/kiln/builder/image"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// spec is one invocation's function, resolved against its image.
type spec struct {
	name, digest string
	kind         string
	mem          uint64
	timeout      time.Duration
	args, env    []string
	img          *image.Image
	deadline     time.Time

	minWarm, maxInstances int
	keepAlive             time.Duration
	fresh                 bool
}

// key identifies the serve instances that can answer this spec: the same
// image booted the same way.
func (s *spec) key() string {
	return fmt.Sprintf("%s|%s|%d|%q|%q|%v", s.name, s.digest, s.mem, s.args, s.env, s.fresh)
}

func (a *Agent) vmConfig(s *spec) vmm.Config {
	kernel := s.img.Kernel
	if len(a.cfg.Kernel) > 0 {
		kernel = a.cfg.Kernel
	}
	return vmm.Config{
		Kernel:   kernel,
		Program:  s.img.Program,
		Args:     append([]string{s.name}, s.args...),
		Env:      s.env,
		MemSize:  s.mem,
		Hostname: s.name,
	}
}

// resolve fetches the image and merges the request's function spec over
// its manifest: the registry may override memory, timeout, env and args at
// deploy time; the kind must agree with what the image was built as.
func (a *Agent) resolve(ctx context.Context, req *kilnv1.InvokeRequest) (*spec, *kilnv1.InvokeResponse) {
	fn := req.Function
	img, err := a.cache.get(ctx, fn.ImageDigest)
	if errors.Is(err, ErrImageStore) {
		return nil, fail(kilnv1.Outcome_OUTCOME_PLATFORM_ERROR, "%v (the function did not start; retry)", err)
	}
	if err != nil {
		return nil, fail(kilnv1.Outcome_OUTCOME_BAD_IMAGE, "%v", err)
	}
	m := &img.Manifest
	s := &spec{name: fn.Name, digest: fn.ImageDigest, kind: m.Kind, mem: m.MemoryBytes, timeout: m.Timeout(),
		args: m.Args, env: m.Env, img: img}
	if s.name == "" {
		s.name = m.Name
	}
	switch fn.Kind {
	case kilnv1.Kind_KIND_EXEC, kilnv1.Kind_KIND_SERVE:
		if want := strings.ToLower(strings.TrimPrefix(fn.Kind.String(), "KIND_")); want != m.Kind {
			return nil, fail(kilnv1.Outcome_OUTCOME_BAD_IMAGE, "function is deployed as %s but its image is %s", want, m.Kind)
		}
	}
	if fn.MemoryBytes != 0 {
		s.mem = fn.MemoryBytes
		if s.mem%image.MemAlign != 0 || s.mem < image.MinMemory || s.mem > image.MaxMemory {
			return nil, fail(kilnv1.Outcome_OUTCOME_BAD_IMAGE, "memory_bytes %d is not a multiple of 2 MiB between 4 MiB and 3 GiB", s.mem)
		}
	}
	if fn.TimeoutMs > 0 {
		s.timeout = min(time.Duration(fn.TimeoutMs)*time.Millisecond, image.MaxTimeout)
	}
	if len(fn.Args) > 0 {
		s.args = fn.Args
	}
	if len(fn.Env) > 0 {
		// Later entries win in getenv implementations that scan from the
		// end, and musl/Go both take the first: drop overridden keys.
		s.env = mergeEnv(m.Env, fn.Env)
	}
	s.minWarm, s.maxInstances = int(fn.MinWarm), int(fn.MaxInstances)
	s.keepAlive = time.Duration(fn.KeepAliveMs) * time.Millisecond
	s.fresh = fn.Fresh || s.kind == image.KindExec
	if s.fresh {
		s.minWarm = 0
	}
	s.deadline = a.now().Add(s.timeout)
	if req.DeadlineUnixMs > 0 {
		if d := time.UnixMilli(req.DeadlineUnixMs); d.Before(s.deadline) {
			s.deadline = d
		}
	}
	return s, nil
}

func mergeEnv(base, over []string) []string {
	keys := map[string]bool{}
	for _, e := range over {
		k, _, _ := strings.Cut(e, "=")
		keys[k] = true
	}
	var out []string
	for _, e := range base {
		if k, _, _ := strings.Cut(e, "="); !keys[k] {
			out = append(out, e)
		}
	}
	return append(out, over...)
}
