package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kilnfaas/kiln/builder"
	"github.com/kilnfaas/kiln/gateway/outcome"
	"github.com/kilnfaas/kiln/store/registry"
)

// DeployParams are a deploy's settings, from the query string, multipart
// form fields, or a JSON part named "spec" (later sources override earlier).
type DeployParams struct {
	Name    string   `json:"name"`
	Kind    string   `json:"kind,omitempty"`
	Memory  string   `json:"memory,omitempty"`  // "64M", "128MiB", "1G" or bytes
	Timeout string   `json:"timeout,omitempty"` // "5s", "300ms" or milliseconds
	Env     []string `json:"env,omitempty"`
	Args    []string `json:"args,omitempty"`
	LimitParams
	ScalingParams
	SLAParams
	AsyncRetries string `json:"async_retries,omitempty"` // 0..20; "" → 3
}

// Deployed is the answer to a successful deploy.
type Deployed struct {
	Name        string `json:"name"`
	Version     uint64 `json:"version"`
	Digest      string `json:"digest"`
	Kind        string `json:"kind"`
	MemoryBytes uint64 `json:"memory_bytes"`
	TimeoutMs   int64  `json:"timeout_ms"`
	registry.Limits
	registry.Scaling
	registry.SLA
	AsyncRetries int `json:"async_retries"`
}

func (p *DeployParams) fromValues(v url.Values) {
	if s := v.Get("name"); s != "" {
		p.Name = s
	}
	if s := v.Get("kind"); s != "" {
		p.Kind = s
	}
	if s := v.Get("memory"); s != "" {
		p.Memory = s
	}
	if s := v.Get("timeout"); s != "" {
		p.Timeout = s
	}
	if e := v["env"]; len(e) > 0 {
		p.Env = e
	}
	if a := v["args"]; len(a) > 0 {
		p.Args = a
	}
	p.LimitParams.fromValues(v)
	p.optionsFromValues(v)
	if s := v.Get("async_retries"); s != "" {
		p.AsyncRetries = s
	}
}

// Values encodes p as the query string of a raw-body deploy.
func (p DeployParams) Values() url.Values {
	v := url.Values{}
	v.Set("name", p.Name)
	for k, s := range map[string]string{"kind": p.Kind, "memory": p.Memory, "timeout": p.Timeout, "async_retries": p.AsyncRetries} {
		if s != "" {
			v.Set(k, s)
		}
	}
	for _, e := range p.Env {
		v.Add("env", e)
	}
	for _, a := range p.Args {
		v.Add("args", a)
	}
	p.LimitParams.addValues(v)
	p.addOptionValues(v)
	return v
}

// A multipart deploy's parts other than the program (settings, env, args,
// the "spec" JSON) are held in memory while the upload is read, so they are
// bounded in number and size: without bounds 3,200 fields of 64 KiB took a
// gateway from 90 to 349 MB (docs/SECURITY.md). The program itself is held
// in memory too, up to MaxUploadBytes, because the image is built from it
// in one piece; nothing spills to disk.
const (
	// maxFormParts bounds the parts of one upload: a deploy has a few
	// dozen settings; env and args may repeat.
	maxFormParts = 1000
	// maxFieldBytes bounds one part other than the program.
	maxFieldBytes = 64 << 10
	// maxFormBytes bounds every part other than the program together.
	maxFormBytes = 1 << 20
	// uploadOverhead is what an upload may carry beyond the program:
	// the parts other than it, their headers and the boundaries.
	uploadOverhead = maxFormBytes + 1<<20
)

// Why an upload is refused with 413.
var (
	errTooBig       = errors.New("too big")
	errFormTooLarge = errors.New("upload form too large")
)

func (g *Gateway) deploy(w http.ResponseWriter, r *http.Request) {
	var p DeployParams
	p.fromValues(r.URL.Query())
	limit := g.cfg.MaxUploadBytes
	tooBig := fmt.Sprintf("program too big: the limit is %s; strip it (-s) or build it smaller", humanBytes(limit))
	if r.ContentLength > limit+uploadOverhead {
		writeError(w, http.StatusRequestEntityTooLarge, apiError{Error: tooBig, Function: p.Name})
		return
	}
	// Whatever the parts, the whole upload is bounded too (a chunked one
	// declares no length); MaxBytesReader also closes the connection
	// after the answer rather than reading the rest.
	body := http.MaxBytesReader(w, r.Body, limit+uploadOverhead)

	var program []byte
	var err error
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "multipart/form-data" {
		program, err = readMultipart(multipart.NewReader(body, params["boundary"]), &p, limit)
	} else {
		program, err = io.ReadAll(io.LimitReader(body, limit+1))
		if err == nil && int64(len(program)) > limit {
			err = errTooBig
		}
	}
	var overAll *http.MaxBytesError
	switch {
	case errors.Is(err, errTooBig), errors.As(err, &overAll):
		writeError(w, http.StatusRequestEntityTooLarge, apiError{Error: tooBig, Function: p.Name})
		return
	case errors.Is(err, errFormTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, apiError{Error: err.Error(), Function: p.Name})
		return
	case bodyTimedOut(err):
		writeError(w, outcome.SlowBody.Row().Status, apiError{Error: g.slowBody(), Function: p.Name})
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, apiError{Error: "reading the upload: " + err.Error(), Function: p.Name})
		return
	}

	spec, err := p.spec()
	if err != nil {
		writeError(w, http.StatusBadRequest, apiError{Error: err.Error(), Function: p.Name})
		return
	}
	limits, err := p.limits()
	if err != nil {
		writeError(w, http.StatusBadRequest, apiError{Error: err.Error(), Function: p.Name})
		return
	}
	retries, err := p.asyncRetries()
	if err != nil {
		writeError(w, http.StatusBadRequest, apiError{Error: err.Error(), Function: p.Name})
		return
	}
	scaling, err := p.scaling()
	if err != nil {
		writeError(w, http.StatusBadRequest, apiError{Error: err.Error(), Function: p.Name})
		return
	}
	sla, err := p.sla()
	if err != nil {
		writeError(w, http.StatusBadRequest, apiError{Error: err.Error(), Function: p.Name})
		return
	}
	if len(program) == 0 {
		writeError(w, http.StatusBadRequest, apiError{
			Error: "no program uploaded: send the ELF as the request body, or as a multipart file field named \"binary\"", Function: p.Name})
		return
	}
	if len(g.cfg.Kernel) == 0 {
		writeError(w, http.StatusServiceUnavailable, apiError{Error: "this gateway has no guest kernel to build images with: start it with the kernel (kiln up --kernel)", Function: p.Name})
		return
	}
	data, digest, err := builder.Build(spec, program, g.cfg.Kernel)
	if err != nil {
		msg := err.Error()
		var ee *builder.ELFError
		if errors.As(err, &ee) {
			msg = ee.Reason
		}
		code := http.StatusBadRequest
		if !errors.Is(err, builder.ErrBadELF) && !errors.Is(err, builder.ErrBadSpec) {
			code = http.StatusInternalServerError
		}
		writeError(w, code, apiError{Error: msg, Function: p.Name})
		return
	}
	if _, err := g.cfg.Images.Put(r.Context(), data); err != nil {
		g.log.Error("storing image failed", "function", p.Name, "digest", digest, "err", err)
		writeError(w, http.StatusServiceUnavailable, apiError{Error: "the image store is unavailable, retry the deploy: " + err.Error(), Function: p.Name})
		return
	}
	spec = spec.Normalize()
	version, err := g.cfg.Registry.PutFunction(r.Context(), registry.Spec{
		Name: spec.Name, ImageDigest: digest, Kind: spec.Kind, MemoryBytes: spec.MemoryBytes,
		TimeoutMs: spec.TimeoutMs, Env: spec.Env, Args: spec.Args, Limits: limits, AsyncRetries: retries,
		Scaling: scaling, SLA: sla,
	})
	if err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, registry.ErrInvalidName) || errors.Is(err, registry.ErrInvalidSpec) {
			code = http.StatusBadRequest
		}
		writeError(w, code, apiError{Error: err.Error(), Function: p.Name})
		return
	}
	g.log.Info("deployed", "function", spec.Name, "version", version, "digest", digest, "kind", spec.Kind, "program_bytes", len(program))
	writeJSON(w, http.StatusCreated, Deployed{
		Name: spec.Name, Version: version, Digest: digest, Kind: spec.Kind,
		MemoryBytes: spec.MemoryBytes, TimeoutMs: spec.TimeoutMs, Limits: limits, Scaling: scaling, SLA: sla,
		AsyncRetries: registry.Function{AsyncRetries: retries}.AsyncRetryLimit(),
	})
}

// readMultipart takes settings from form fields and a "spec" JSON part, and
// the program from the file part (named "binary", or the only file). Parts
// other than the program are bounded: maxFormParts of them, maxFieldBytes
// each, maxFormBytes together.
func readMultipart(mr *multipart.Reader, p *DeployParams, limit int64) ([]byte, error) {
	var program []byte
	form := url.Values{}
	var specs []DeployParams
	parts, formBytes := 0, 0
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if parts++; parts > maxFormParts {
			return nil, fmt.Errorf("%w: more than %d parts: a deploy needs its settings and one program", errFormTooLarge, maxFormParts)
		}
		if part.FormName() == "binary" || part.FileName() != "" {
			if program != nil {
				return nil, errors.New("two programs in one upload: send one file, as the part named \"binary\"")
			}
			program, err = io.ReadAll(io.LimitReader(part, limit+1))
			if err != nil {
				return nil, err
			}
			if int64(len(program)) > limit {
				return nil, errTooBig
			}
			continue
		}
		b, err := io.ReadAll(io.LimitReader(part, maxFieldBytes+1))
		if err != nil {
			return nil, err
		}
		if len(b) > maxFieldBytes {
			return nil, fmt.Errorf("%w: the part %q is over %s: settings are short; pass large data to the function some other way", errFormTooLarge, part.FormName(), humanBytes(maxFieldBytes))
		}
		if formBytes += len(b); formBytes > maxFormBytes {
			return nil, fmt.Errorf("%w: the parts other than the program are over %s together", errFormTooLarge, humanBytes(maxFormBytes))
		}
		if part.FormName() == "spec" {
			var js DeployParams
			if err := json.Unmarshal(b, &js); err != nil {
				return nil, fmt.Errorf("the \"spec\" part is not valid JSON: %v", err)
			}
			specs = append(specs, js)
			continue
		}
		form.Add(part.FormName(), string(b))
	}
	for _, js := range specs {
		mergeParams(p, js)
	}
	p.fromValues(form)
	return program, nil
}

// mergeParams lets the set fields of o override p.
func mergeParams(p *DeployParams, o DeployParams) { p.fromValues(o.Values()) }

func (p DeployParams) spec() (builder.Spec, error) {
	if p.Name == "" {
		return builder.Spec{}, errors.New("missing function name: pass ?name=NAME")
	}
	if err := registry.CheckName(p.Name); err != nil {
		return builder.Spec{}, fmt.Errorf("bad function name %q: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit", p.Name)
	}
	s := builder.Spec{Name: p.Name, Kind: p.Kind, Env: p.Env, Args: p.Args}
	if s.Kind != "" && s.Kind != registry.KindExec && s.Kind != registry.KindServe {
		return s, fmt.Errorf("bad kind %q: use %q (stdin to stdout, one run per call) or %q (the Kiln wire protocol, many calls per boot)", p.Kind, registry.KindExec, registry.KindServe)
	}
	if p.Memory != "" {
		m, err := ParseMemory(p.Memory)
		if err != nil {
			return s, err
		}
		s.MemoryBytes = m
	}
	if p.Timeout != "" {
		d, err := ParseTimeout(p.Timeout)
		if err != nil {
			return s, err
		}
		s.TimeoutMs = d.Milliseconds()
	}
	for _, e := range p.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return s, fmt.Errorf("bad env entry %q: use KEY=VALUE", e)
		}
	}
	return s, nil
}

// ParseMemory reads a memory size: bytes, or a number with K, M, G (binary
// units; "Mi", "MiB" and "MB" mean the same here).
func ParseMemory(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	num := strings.TrimRightFunc(t, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.ToUpper(strings.TrimSpace(t[len(num):]))
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I")
	shift := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30}
	sh, ok := shift[unit]
	n, err := strconv.ParseUint(num, 10, 64)
	if !ok || err != nil || n == 0 || n > (1<<40)>>sh {
		return 0, fmt.Errorf("bad memory size %q: use a size such as 64M, 256MiB or 1G", s)
	}
	return n << sh, nil
}

// ParseTimeout reads a timeout: a Go duration ("5s", "300ms") or a whole
// number of milliseconds.
func ParseTimeout(s string) (time.Duration, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 {
		return time.Duration(n) * time.Millisecond, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Millisecond {
		return 0, fmt.Errorf("bad timeout %q: use a duration such as 300ms, 5s or 2m", s)
	}
	return d, nil
}
