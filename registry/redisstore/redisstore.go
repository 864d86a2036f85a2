// Package redisstore is the registry.Store for clusters of Kiln nodes: every
// gateway and scheduler reads and writes one Redis, so a deploy on one node is
// visible on all. It passes the same conformance suite (registrytest) as the
// embedded bbolt store and returns the same sentinel errors.
//
// Key layout, all under the prefix "kiln:":
//
//	kiln:functions            set    names of every existing function
//	kiln:fn:<name>:seq        string last version handed out (INCR counter)
//	kiln:fn:<name>:versions   hash   decimal version -> registry.Function JSON
//	kiln:fn:<name>:aliases    hash   alias ("latest", "prod", ...) -> decimal version
//
// A function exists exactly when its name is in kiln:functions; the three
// per-function keys appear with its first deploy and go with its deletion,
// so a function deployed again after deletion starts over at version 1 with
// no aliases, as in the bbolt store.
//
// Every write that touches more than one key (deploy, alias flip, delete) is
// one Lua script, which Redis runs atomically: two nodes deploying the same
// function at once get distinct consecutive versions and "latest" ends on the
// highest. Lookups by alias are scripts too, so resolving an alias and
// reading its version is one consistent read.
//
// The scripts name kiln:functions alongside the per-function keys, which
// would land in different hash slots, so the store needs a single Redis
// primary (replicas and Sentinel are fine), not Redis Cluster.
package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kilnfaas/kiln/registry"
)

// Prefix begins every key the store writes, so the registry can share a
// Redis database with other Kiln state.
const Prefix = "kiln:"

const keyFunctions = Prefix + "functions"

// fnKeys are the per-function keys, in the order the scripts take them.
type fnKeys struct{ seq, versions, aliases string }

func keysOf(name string) fnKeys {
	base := Prefix + "fn:" + name + ":"
	return fnKeys{seq: base + "seq", versions: base + "versions", aliases: base + "aliases"}
}

// A version hash field holds registry.Function as JSON with Version left 0:
// the field's name is the version. The script assigns the number after the
// Go side has encoded the JSON, and re-encoding JSON inside Lua would round
// uint64 fields through doubles.

// putScript appends a version and moves "latest" to it in one step.
// KEYS: functions, seq, versions, aliases. ARGV: name, record JSON.
var putScript = redis.NewScript(`
local v = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], v, ARGV[2])
redis.call('HSET', KEYS[4], 'latest', v)
redis.call('SADD', KEYS[1], ARGV[1])
return v
`)

// Result codes of the scripts below; Go turns them into sentinel errors.
const (
	codeOK          = 0
	codeNoFunction  = 1
	codeNoAlias     = 2
	codeNoVersion   = 3
	codeUnknownCode = -1
)

// getScript resolves an alias (when ARGV[2] is not empty) or takes the
// version in ARGV[1], and returns {code, version, record JSON}.
// KEYS: functions, versions, aliases. ARGV: version, alias, name.
var getScript = redis.NewScript(`
if redis.call('SISMEMBER', KEYS[1], ARGV[3]) == 0 then return {1} end
local v = ARGV[1]
if ARGV[2] ~= '' then
  v = redis.call('HGET', KEYS[3], ARGV[2])
  if not v then return {2} end
end
local data = redis.call('HGET', KEYS[2], v)
if not data then return {3} end
return {0, v, data}
`)

// aliasScript points an alias at a version only if the function and the
// version exist at that instant, so a concurrent delete cannot leave a
// dangling alias behind.
// KEYS: functions, versions, aliases. ARGV: name, version, alias.
var aliasScript = redis.NewScript(`
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 1 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return 3 end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[2])
return 0
`)

// deleteScript removes a function and its three keys together.
// KEYS: functions, seq, versions, aliases. ARGV: name.
var deleteScript = redis.NewScript(`
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 1 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return 0
`)

// Store is a registry.Store kept in Redis. It is safe for concurrent use;
// the go-redis client pools connections.
type Store struct {
	rdb *redis.Client
	now func() time.Time
}

var _ registry.Store = (*Store)(nil)

// New connects to the Redis at url ("redis://[:password@]host:port/db", or
// rediss:// for TLS) and checks that it answers before returning, so a
// misconfigured address fails at start-up rather than on the first deploy.
func New(ctx context.Context, url string) (*Store, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("registry: redis url: %w", err)
	}
	rdb := redis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("registry: redis %s: %w", opts.Addr, err)
	}
	return &Store{rdb: rdb, now: time.Now}, nil
}

// PutFunction implements registry.Store.
func (s *Store) PutFunction(ctx context.Context, spec registry.Spec) (uint64, error) {
	if err := registry.CheckSpec(spec); err != nil {
		return 0, err
	}
	data, err := json.Marshal(registry.Function{
		Name: spec.Name, ImageDigest: spec.ImageDigest, Kind: spec.Kind,
		MemoryBytes: spec.MemoryBytes, TimeoutMs: spec.TimeoutMs,
		Env: spec.Env, Args: spec.Args, Created: s.now().UTC(), Limits: spec.Limits,
	})
	if err != nil {
		return 0, fmt.Errorf("registry: put %s: %w", spec.Name, err)
	}
	k := keysOf(spec.Name)
	v, err := putScript.Run(ctx, s.rdb, []string{keyFunctions, k.seq, k.versions, k.aliases}, spec.Name, data).Int64()
	if err != nil {
		return 0, fmt.Errorf("registry: put %s: %w", spec.Name, err)
	}
	return uint64(v), nil
}

// GetFunction implements registry.Store.
func (s *Store) GetFunction(ctx context.Context, name, ref string) (registry.Function, error) {
	if err := registry.CheckName(name); err != nil {
		return registry.Function{}, err
	}
	version, alias, err := registry.ParseRef(ref)
	if err != nil {
		return registry.Function{}, err
	}
	return s.get(ctx, name, version, alias)
}

// get runs getScript for one function; exactly one of version and alias is set.
func (s *Store) get(ctx context.Context, name string, version uint64, alias string) (registry.Function, error) {
	k := keysOf(name)
	res, err := getScript.Run(ctx, s.rdb, []string{keyFunctions, k.versions, k.aliases},
		strconv.FormatUint(version, 10), alias, name).Slice()
	if err != nil {
		return registry.Function{}, fmt.Errorf("registry: get %s: %w", name, err)
	}
	switch code := scriptCode(res); code {
	case codeOK:
	case codeNoFunction:
		return registry.Function{}, fmt.Errorf("%w: function %s", registry.ErrNotFound, name)
	case codeNoAlias:
		return registry.Function{}, fmt.Errorf("%w: %s has no alias %q", registry.ErrNotFound, name, alias)
	case codeNoVersion:
		return registry.Function{}, fmt.Errorf("%w: %s has no version %d", registry.ErrNotFound, name, version)
	default:
		return registry.Function{}, fmt.Errorf("registry: get %s: unexpected script reply %v", name, res)
	}
	vs, _ := res[1].(string)
	data, _ := res[2].(string)
	return decode(name, vs, data)
}

// scriptCode reads the leading status code of a script's array reply.
func scriptCode(res []any) int64 {
	if len(res) == 0 {
		return codeUnknownCode
	}
	code, ok := res[0].(int64)
	if !ok || (code == codeOK && len(res) != 3) {
		return codeUnknownCode
	}
	return code
}

// decode turns a version hash field and its value into a Function.
func decode(name, version, data string) (registry.Function, error) {
	v, err := strconv.ParseUint(version, 10, 64)
	if err != nil {
		return registry.Function{}, fmt.Errorf("registry: %s: bad version field %q: %w", name, version, err)
	}
	var f registry.Function
	if err := json.Unmarshal([]byte(data), &f); err != nil {
		return registry.Function{}, fmt.Errorf("registry: %s version %d: %w", name, v, err)
	}
	f.Version = v
	return f, nil
}

// ListFunctions implements registry.Store. Each entry is read consistently
// (its latest alias and that version together), but the list as a whole is
// not one snapshot: a function deleted while the list is read is left out,
// as if the list had been taken just after the delete.
func (s *Store) ListFunctions(ctx context.Context) ([]registry.Function, error) {
	names, err := s.rdb.SMembers(ctx, keyFunctions).Result()
	if err != nil {
		return nil, fmt.Errorf("registry: list: %w", err)
	}
	sort.Strings(names)
	out := make([]registry.Function, 0, len(names))
	for _, name := range names {
		f, err := s.get(ctx, name, 0, registry.Latest)
		if errors.Is(err, registry.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("registry: list: %w", err)
		}
		out = append(out, f)
	}
	return out, nil
}

// DeleteFunction implements registry.Store.
func (s *Store) DeleteFunction(ctx context.Context, name string) error {
	if err := registry.CheckName(name); err != nil {
		return err
	}
	k := keysOf(name)
	code, err := deleteScript.Run(ctx, s.rdb, []string{keyFunctions, k.seq, k.versions, k.aliases}, name).Int64()
	if err != nil {
		return fmt.Errorf("registry: delete %s: %w", name, err)
	}
	if code == codeNoFunction {
		return fmt.Errorf("%w: function %s", registry.ErrNotFound, name)
	}
	return nil
}

// Versions implements registry.Store. HGETALL reads the whole hash in one
// command, so the versions listed are those of one instant.
func (s *Store) Versions(ctx context.Context, name string) ([]registry.Function, error) {
	if err := registry.CheckName(name); err != nil {
		return nil, err
	}
	all, err := s.rdb.HGetAll(ctx, keysOf(name).versions).Result()
	if err != nil {
		return nil, fmt.Errorf("registry: versions %s: %w", name, err)
	}
	// A function has at least one version for as long as it exists, so an
	// empty hash means there is no such function.
	if len(all) == 0 {
		return nil, fmt.Errorf("%w: function %s", registry.ErrNotFound, name)
	}
	out := make([]registry.Function, 0, len(all))
	for v, data := range all {
		f, err := decode(name, v, data)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// SetAlias implements registry.Store.
func (s *Store) SetAlias(ctx context.Context, name, alias string, version uint64) error {
	if err := registry.CheckName(name); err != nil {
		return err
	}
	if err := registry.CheckAlias(alias); err != nil {
		return err
	}
	k := keysOf(name)
	code, err := aliasScript.Run(ctx, s.rdb, []string{keyFunctions, k.versions, k.aliases},
		name, strconv.FormatUint(version, 10), alias).Int64()
	if err != nil {
		return fmt.Errorf("registry: alias %s/%s: %w", name, alias, err)
	}
	switch code {
	case codeOK:
		return nil
	case codeNoFunction:
		return fmt.Errorf("%w: function %s", registry.ErrNotFound, name)
	case codeNoVersion:
		return fmt.Errorf("%w: %s has no version %d", registry.ErrNotFound, name, version)
	default:
		return fmt.Errorf("registry: alias %s/%s: unexpected script reply %d", name, alias, code)
	}
}

// Close implements registry.Store; it closes the connection pool, after
// which every call fails with redis.ErrClosed wrapped.
func (s *Store) Close() error { return s.rdb.Close() }
