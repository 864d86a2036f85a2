// Package registry records which functions exist and, for each, every
// version ever deployed: the image it runs and how to run it. Versions are
// immutable; a deploy appends one and moves the alias "latest" to it in the
// same transaction, so a reader never sees a half-finished deploy.
//
// Aliases ("prod", "beta", ...) route to one version or split traffic by
// weight between two (a canary). Every alias change is one transaction that
// also remembers what the alias pointed at before, so RollbackAlias can undo
// it; Resolve reads an alias and the versions it routes to together, so an
// invocation never sees half of a change.
//
// Store is the contract every back-end fills in (the embedded bbolt store
// here, the Redis store in redisstore); package registrytest holds the
// conformance suite they all pass.
package registry

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors of the registry. Wrapped with %w; test with errors.Is.
var (
	// ErrNotFound: no such function, version or alias.
	ErrNotFound = errors.New("registry: not found")
	// ErrInvalidName: a function or alias name outside [a-z0-9][a-z0-9-]{0,62}.
	ErrInvalidName = errors.New("registry: invalid name")
	// ErrInvalidSpec: a spec the platform could not run (unknown kind, no image).
	ErrInvalidSpec = errors.New("registry: invalid function spec")
	// ErrConflict: the change contradicts the registry's state, e.g. moving
	// the alias "latest", which only deploys may move, or rolling back an
	// alias that has no earlier target.
	ErrConflict = errors.New("registry: conflict")
	// ErrInvalidRoute: alias targets the registry cannot route by (no
	// version, more than two, weights that do not add up to 100).
	ErrInvalidRoute = errors.New("registry: invalid alias route")
)

// HistoryLen is how many earlier targets an alias remembers for rollback.
const HistoryLen = 10

// Latest is the alias every deploy moves to the version it creates.
const Latest = "latest"

// Kinds of function, as stored.
const (
	KindExec  = "exec"
	KindServe = "serve"
)

// Spec is what a deploy asks for; the store assigns the version and time.
type Spec struct {
	Name        string
	ImageDigest string // "sha256:<hex>" in the image store
	Kind        string // KindExec or KindServe
	MemoryBytes uint64
	TimeoutMs   int64
	Env         []string // "KEY=VALUE"
	Args        []string // argv after argv[0]
	Limits
	Scaling
	SLA
	// AsyncRetries is how often a failed async invocation is retried;
	// nil → DefaultAsyncRetries (a pointer, so 0 can mean "never").
	AsyncRetries *int
}

// Function is the version the stores record for spec.
func (spec Spec) Function(version uint64, created time.Time) Function {
	return Function{
		Name: spec.Name, Version: version, ImageDigest: spec.ImageDigest, Kind: spec.Kind,
		MemoryBytes: spec.MemoryBytes, TimeoutMs: spec.TimeoutMs,
		Env: slices.Clone(spec.Env), Args: slices.Clone(spec.Args), Created: created.UTC(),
		Limits: spec.Limits, Scaling: spec.Scaling, SLA: spec.SLA, AsyncRetries: spec.AsyncRetries,
	}
}

// Scaling shapes a function's warm pool on each node. The zero value keeps
// no instance warm, allows as many as the node's memory holds and reaps
// idle ones after the agent's default keep-alive.
type Scaling struct {
	// MinWarm instances are kept booted and idle on a node that runs the
	// function, replaced when they crash.
	MinWarm int `json:"min_warm,omitempty"`
	// MaxInstances bounds the instances per node; 0: memory decides.
	MaxInstances int `json:"max_instances,omitempty"`
	// KeepAliveMs is how long an idle instance above MinWarm lives; 0: the
	// agent's default.
	KeepAliveMs int64 `json:"keep_alive_ms,omitempty"`
	// Fresh runs every invocation on its own snapshot restore and destroys
	// the VM afterwards: no state survives from one call to the next.
	Fresh bool `json:"fresh,omitempty"`
}

// Scaling bounds a deploy may ask for.
const (
	MaxMinWarm       = 1000
	MaxInstancesCap  = 100000
	MaxKeepAliveMs   = 24 * 3600 * 1000
	MaxSLADeadlineMs = 15 * 60 * 1000
)

// SLA is the latency a function's owner promises: DeadlineMs per
// invocation, met by Target of them (0.999 for 99.9 %). The zero value is
// no SLA.
type SLA struct {
	DeadlineMs int64   `json:"deadline_ms,omitempty"`
	Target     float64 `json:"sla_target,omitempty"`
}

// Limits say who may call a function and how much. Each gateway enforces
// them on its own (they are not shared between gateways), so N gateways
// admit up to N times a concurrency or rate limit. The zero value is a
// public function with no concurrency or rate limit and the gateway's
// default body limit.
type Limits struct {
	// Private functions answer only callers with an API key.
	Private bool `json:"private,omitempty"`
	// MaxConcurrency bounds the invocations in flight at one gateway; 0: none.
	MaxConcurrency int `json:"max_concurrency,omitempty"`
	// RatePerSecond is a token bucket's refill rate at one gateway, and
	// RateBurst its size (0 → the rate rounded up, at least 1); 0: no limit.
	RatePerSecond float64 `json:"rate_per_second,omitempty"`
	RateBurst     int     `json:"rate_burst,omitempty"`
	// MaxBodyBytes bounds a request body; 0: the gateway's default.
	MaxBodyBytes int64 `json:"max_body_bytes,omitempty"`
}

// Function is one immutable version of a function.
type Function struct {
	Name        string    `json:"name"`
	Version     uint64    `json:"version"`
	ImageDigest string    `json:"digest"`
	Kind        string    `json:"kind"`
	MemoryBytes uint64    `json:"memory_bytes"`
	TimeoutMs   int64     `json:"timeout_ms"`
	Env         []string  `json:"env,omitempty"`
	Args        []string  `json:"args,omitempty"`
	Created     time.Time `json:"created"`
	Limits
	Scaling
	SLA
	AsyncRetries *int `json:"async_retries,omitempty"` // nil: DefaultAsyncRetries
}

// Async retry limits: the default when a deploy names none, and the most
// a deploy may ask for (with the workers' default backoff, 20 retries
// already span more than an hour).
const (
	DefaultAsyncRetries = 3
	MaxAsyncRetries     = 20
)

// AsyncRetryLimit is how often a failed async invocation of f is retried.
func (f Function) AsyncRetryLimit() int {
	if f.AsyncRetries == nil {
		return DefaultAsyncRetries
	}
	return *f.AsyncRetries
}

// Target is one version an alias routes to and its share of the traffic,
// in percent.
type Target struct {
	Version uint64 `json:"version"`
	Weight  uint32 `json:"weight"`
}

// Alias is where an alias routes now and, newest first, where it routed
// before its recent changes (what RollbackAlias goes back to).
type Alias struct {
	Name    string     `json:"name"`
	Targets []Target   `json:"versions"`
	History [][]Target `json:"history,omitempty"`
}

// Routed is one version a reference may run, with its share in percent.
type Routed struct {
	Function
	Weight uint32 `json:"weight"`
}

// Route is what a reference resolved to at one instant: the alias (empty
// when the reference named a version) and the versions it routes to, whose
// weights add up to 100.
type Route struct {
	Alias   string
	Targets []Routed
}

// Pick chooses the version one invocation runs; n is uniform in [0, 100).
// Routes from a Store always have at least one target.
func (r Route) Pick(n int) Function {
	for _, t := range r.Targets {
		if n < int(t.Weight) {
			return t.Function
		}
		n -= int(t.Weight)
	}
	return r.Targets[len(r.Targets)-1].Function
}

// Store is a function registry. Implementations are safe for concurrent use.
type Store interface {
	// PutFunction records a new version of spec.Name (creating the function
	// on its first deploy) and moves "latest" to it atomically.
	PutFunction(ctx context.Context, spec Spec) (version uint64, err error)
	// GetFunction resolves ref: "" or "latest" for the newest deploy, a
	// decimal version number, or an alias. For an alias that splits
	// traffic it returns the alias's first target; invocations use Resolve.
	GetFunction(ctx context.Context, name, ref string) (Function, error)
	// Resolve reads ref (as GetFunction takes it) and every version it
	// routes to in one consistent read.
	Resolve(ctx context.Context, name, ref string) (Route, error)
	// ListFunctions returns the latest version of every function, by name.
	ListFunctions(ctx context.Context) ([]Function, error)
	// DeleteFunction removes a function with all its versions and aliases.
	DeleteFunction(ctx context.Context, name string) error
	// Versions returns every version of a function, oldest first.
	Versions(ctx context.Context, name string) ([]Function, error)
	// SetAlias points alias at one existing version or splits it between
	// two (see CheckTargets), creating the alias if needed, and pushes what
	// it pointed at before onto its history. "latest" is reserved.
	SetAlias(ctx context.Context, name, alias string, to []Target) (Alias, error)
	// GetAlias returns one alias, "latest" included.
	GetAlias(ctx context.Context, name, alias string) (Alias, error)
	// Aliases returns every alias of a function, by name.
	Aliases(ctx context.Context, name string) ([]Alias, error)
	// DeleteAlias removes an alias and its history. "latest" is reserved.
	DeleteAlias(ctx context.Context, name, alias string) error
	// RollbackAlias points alias back at the newest entry of its history
	// and drops that entry: ErrConflict for "latest" or an empty history.
	RollbackAlias(ctx context.Context, name, alias string) (Alias, error)
	// Close releases the store; calls after Close fail.
	Close() error
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidName reports whether s may name a function or an alias: a DNS label
// in lower case, so it fits in URLs, metric labels and hostnames unchanged.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// CheckName returns ErrInvalidName, with the rule, when s is not a ValidName.
func CheckName(s string) error {
	if !ValidName(s) {
		return fmt.Errorf("%w: %q: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit", ErrInvalidName, s)
	}
	return nil
}

// CheckSpec validates a spec before a store records it.
func CheckSpec(s Spec) error {
	if err := CheckName(s.Name); err != nil {
		return err
	}
	if s.Kind != KindExec && s.Kind != KindServe {
		return fmt.Errorf("%w: kind %q: want %q or %q", ErrInvalidSpec, s.Kind, KindExec, KindServe)
	}
	if s.ImageDigest == "" {
		return fmt.Errorf("%w: no image digest", ErrInvalidSpec)
	}
	if s.TimeoutMs < 0 {
		return fmt.Errorf("%w: negative timeout %d ms", ErrInvalidSpec, s.TimeoutMs)
	}
	if r := s.AsyncRetries; r != nil && (*r < 0 || *r > MaxAsyncRetries) {
		return fmt.Errorf("%w: %d async retries: use 0 to %d", ErrInvalidSpec, *r, MaxAsyncRetries)
	}
	if l := s.Limits; l.MaxConcurrency < 0 || l.RateBurst < 0 || l.MaxBodyBytes < 0 || !(l.RatePerSecond >= 0 && l.RatePerSecond <= 1e9) {
		return fmt.Errorf("%w: limits %+v: each must be 0 (none) or positive", ErrInvalidSpec, l)
	}
	if c := s.Scaling; c.MinWarm < 0 || c.MinWarm > MaxMinWarm || c.MaxInstances < 0 || c.MaxInstances > MaxInstancesCap ||
		c.KeepAliveMs < 0 || c.KeepAliveMs > MaxKeepAliveMs {
		return fmt.Errorf("%w: scaling %+v: min_warm 0..%d, max_instances 0..%d, keep_alive up to 24h", ErrInvalidSpec, c, MaxMinWarm, MaxInstancesCap)
	}
	if c := s.Scaling; c.MaxInstances > 0 && c.MinWarm > c.MaxInstances {
		return fmt.Errorf("%w: min_warm %d is more than max_instances %d", ErrInvalidSpec, c.MinWarm, c.MaxInstances)
	}
	if c := s.Scaling; c.Fresh && c.MinWarm > 0 {
		return fmt.Errorf("%w: a fresh function keeps no warm instances: drop min_warm or fresh", ErrInvalidSpec)
	}
	if l := s.SLA; l.DeadlineMs < 0 || l.DeadlineMs > MaxSLADeadlineMs || !(l.Target >= 0 && l.Target < 1) {
		return fmt.Errorf("%w: SLA deadline %d ms target %v: the deadline is 1 ms to 15 min, the target a fraction below 1 such as 0.999", ErrInvalidSpec, l.DeadlineMs, l.Target)
	}
	if l := s.SLA; (l.DeadlineMs == 0) != (l.Target == 0) {
		return fmt.Errorf("%w: an SLA needs both a deadline and a target", ErrInvalidSpec)
	}
	return nil
}

// ParseRef splits a reference into a version number (when ref is decimal)
// or an alias ("" meaning latest).
func ParseRef(ref string) (version uint64, alias string, err error) {
	if ref == "" {
		return 0, Latest, nil
	}
	if ref[0] >= '0' && ref[0] <= '9' {
		if v, err := strconv.ParseUint(ref, 10, 64); err == nil && v > 0 {
			return v, "", nil
		}
	}
	if err := CheckName(ref); err != nil {
		return 0, "", err
	}
	return 0, ref, nil
}

// One routes all traffic to version v.
func One(v uint64) []Target { return []Target{{Version: v, Weight: 100}} }

// CheckTargets validates where an alias is to route and returns it in the
// stored form: one version (weight 0 means 100), or two distinct versions
// with weights from 1 to 99 that add up to 100.
func CheckTargets(to []Target) ([]Target, error) {
	switch len(to) {
	case 0:
		return nil, fmt.Errorf("%w: no version given", ErrInvalidRoute)
	case 1:
		t := to[0]
		if t.Version == 0 {
			return nil, fmt.Errorf("%w: version 0: versions start at 1", ErrInvalidRoute)
		}
		if t.Weight != 0 && t.Weight != 100 {
			return nil, fmt.Errorf("%w: a single version takes all traffic: give weight 100 or none, or name a second version to split with", ErrInvalidRoute)
		}
		return One(t.Version), nil
	case 2:
		a, b := to[0], to[1]
		if a.Version == 0 || b.Version == 0 {
			return nil, fmt.Errorf("%w: version 0: versions start at 1", ErrInvalidRoute)
		}
		if a.Version == b.Version {
			return nil, fmt.Errorf("%w: version %d given twice: a split needs two different versions", ErrInvalidRoute, a.Version)
		}
		if a.Weight == 0 || b.Weight == 0 || a.Weight >= 100 || b.Weight >= 100 || a.Weight+b.Weight != 100 {
			return nil, fmt.Errorf("%w: weights %d and %d: each must be 1-99 and together 100 (percent of traffic)", ErrInvalidRoute, a.Weight, b.Weight)
		}
		return []Target{a, b}, nil
	default:
		return nil, fmt.Errorf("%w: %d versions: an alias routes to one version or splits between two", ErrInvalidRoute, len(to))
	}
}

// FormatTargets is the stored form of targets, already checked: "3" for
// one version, "3:90,4:10" for a split. Both stores keep it as text so the
// Redis scripts can read it without decoding JSON.
func FormatTargets(to []Target) string {
	if len(to) == 1 && to[0].Weight == 100 {
		return strconv.FormatUint(to[0].Version, 10)
	}
	var b []byte
	for i, t := range to {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, t.Version, 10)
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(t.Weight), 10)
	}
	return string(b)
}

// ParseTargets reads FormatTargets's form back; anything else, even an
// equivalent spelling ("03", "3:100"), is an error (a damaged store), never
// a guess, so equal routes are always equal strings.
func ParseTargets(s string) ([]Target, error) {
	var to []Target
	for _, part := range strings.Split(s, ",") {
		vs, ws, split := strings.Cut(part, ":")
		v, err := strconv.ParseUint(vs, 10, 64)
		if err != nil {
			break
		}
		t := Target{Version: v, Weight: 100}
		if split {
			w, err := strconv.ParseUint(ws, 10, 32)
			if err != nil {
				break
			}
			t.Weight = uint32(w)
		}
		to = append(to, t)
	}
	if checked, err := CheckTargets(to); err != nil || FormatTargets(checked) != s {
		return nil, fmt.Errorf("registry: damaged alias record %q", s)
	}
	return to, nil
}

// FormatHistory and ParseHistory store an alias's earlier targets, newest
// first, as FormatTargets forms joined by "|".
func FormatHistory(h [][]Target) string {
	parts := make([]string, len(h))
	for i, to := range h {
		parts[i] = FormatTargets(to)
	}
	return strings.Join(parts, "|")
}

// ParseHistory is FormatHistory's inverse; "" is an empty history.
func ParseHistory(s string) ([][]Target, error) {
	if s == "" {
		return nil, nil
	}
	var h [][]Target
	for _, part := range strings.Split(s, "|") {
		to, err := ParseTargets(part)
		if err != nil {
			return nil, err
		}
		h = append(h, to)
	}
	return h, nil
}

// SameTargets reports whether a and b route identically.
func SameTargets(a, b []Target) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func clone(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return append([]string(nil), s...)
}
