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
//	kiln:fn:<name>:aliases    hash   alias ("latest", "prod", ...) -> targets, "3" or "3:90,4:10"
//	kiln:fn:<name>:history    hash   alias -> earlier targets, newest first, "2|1:50,2:50"
//
// Targets and histories are registry.FormatTargets and FormatHistory text,
// the same as in the bbolt store, which the scripts read with string
// patterns.
//
// A function exists exactly when its name is in kiln:functions; the
// per-function keys appear with its first deploy and go with its deletion,
// so a function deployed again after deletion starts over at version 1 with
// no aliases, as in the bbolt store.
//
// Every write that touches more than one key (deploy, alias flip with its
// history, rollback, delete) is one Lua script, which Redis runs atomically:
// two nodes deploying the same function at once get distinct consecutive
// versions and "latest" ends on the highest, and an alias and its history
// never disagree. Resolving an alias is a script too, so the alias and the
// versions it routes to are one consistent read; multi-key reads without
// logic are MULTI/EXEC.
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

	"github.com/kilnfaas/kiln/store/registry"
)

// Prefix begins every key the store writes, so the registry can share a
// Redis database with other Kiln state.
const Prefix = "kiln:"

const keyFunctions = Prefix + "functions"

// fnKeys are the per-function keys, in the order the scripts take them.
type fnKeys struct{ seq, versions, aliases, history string }

func keysOf(name string) fnKeys {
	base := Prefix + "fn:" + name + ":"
	return fnKeys{seq: base + "seq", versions: base + "versions", aliases: base + "aliases", history: base + "history"}
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
	codeNoHistory   = 4
	codeUnknownCode = -1
)

// resolveScript takes the targets of an alias (when ARGV[2] is not empty)
// or the version in ARGV[1], and returns {code, targets, then each target's
// version and record JSON}; for codeNoVersion, {code, version}.
// KEYS: functions, versions, aliases. ARGV: version, alias, name.
var resolveScript = redis.NewScript(`
if redis.call('SISMEMBER', KEYS[1], ARGV[3]) == 0 then return {1} end
local t = ARGV[1]
if ARGV[2] ~= '' then
  t = redis.call('HGET', KEYS[3], ARGV[2])
  if not t then return {2} end
end
local out = {0, t}
for part in string.gmatch(t, '[^,]+') do
  local v = string.match(part, '^%d+')
  local data = redis.call('HGET', KEYS[2], v)
  if not data then return {3, v} end
  out[#out+1] = v
  out[#out+1] = data
end
return out
`)

// setAliasScript points an alias at targets only if the function and every
// target version exist at that instant, so a concurrent delete cannot leave
// a dangling alias behind, and pushes the alias's old targets (when they
// differ) onto its history, keeping ARGV[4] entries. Returns {code, history}
// or {codeNoVersion, version}.
// KEYS: functions, versions, aliases, history.
// ARGV: name, alias, targets, history length, then each target version.
var setAliasScript = redis.NewScript(`
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return {1} end
for i = 5, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then return {3, ARGV[i]} end
end
local old = redis.call('HGET', KEYS[3], ARGV[2])
local h = redis.call('HGET', KEYS[4], ARGV[2]) or ''
if old and old ~= ARGV[3] then
  local kept = {old}
  for e in string.gmatch(h, '[^|]+') do
    if #kept >= tonumber(ARGV[4]) then break end
    kept[#kept+1] = e
  end
  h = table.concat(kept, '|')
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
if h == '' then redis.call('HDEL', KEYS[4], ARGV[2]) else redis.call('HSET', KEYS[4], ARGV[2], h) end
return {0, h}
`)

// rollbackScript moves an alias to the newest entry of its history and
// drops that entry. Returns {code, targets, history}.
// KEYS: functions, aliases, history. ARGV: name, alias.
var rollbackScript = redis.NewScript(`
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return {1} end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return {2} end
local h = redis.call('HGET', KEYS[3], ARGV[2])
if not h or h == '' then return {4} end
local top, rest = h, ''
local i = string.find(h, '|', 1, true)
if i then top = string.sub(h, 1, i - 1); rest = string.sub(h, i + 1) end
redis.call('HSET', KEYS[2], ARGV[2], top)
if rest == '' then redis.call('HDEL', KEYS[3], ARGV[2]) else redis.call('HSET', KEYS[3], ARGV[2], rest) end
return {0, top, rest}
`)

// deleteAliasScript removes an alias and its history together.
// KEYS: functions, aliases, history. ARGV: name, alias.
var deleteAliasScript = redis.NewScript(`
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 1 end
if redis.call('HDEL', KEYS[2], ARGV[2]) == 0 then return 2 end
redis.call('HDEL', KEYS[3], ARGV[2])
return 0
`)

// deleteScript removes a function and its keys together.
// KEYS: functions, seq, versions, aliases, history. ARGV: name.
var deleteScript = redis.NewScript(`
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 1 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
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
	data, err := json.Marshal(spec.Function(0, s.now()))
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
	r, err := s.Resolve(ctx, name, ref)
	if err != nil {
		return registry.Function{}, err
	}
	return r.Targets[0].Function, nil
}

// Resolve implements registry.Store.
func (s *Store) Resolve(ctx context.Context, name, ref string) (registry.Route, error) {
	if err := registry.CheckName(name); err != nil {
		return registry.Route{}, err
	}
	version, alias, err := registry.ParseRef(ref)
	if err != nil {
		return registry.Route{}, err
	}
	return s.resolve(ctx, name, version, alias)
}

// resolve runs resolveScript for one function; exactly one of version and
// alias is set.
func (s *Store) resolve(ctx context.Context, name string, version uint64, alias string) (registry.Route, error) {
	k := keysOf(name)
	res, err := resolveScript.Run(ctx, s.rdb, []string{keyFunctions, k.versions, k.aliases},
		strconv.FormatUint(version, 10), alias, name).Slice()
	if err != nil {
		return registry.Route{}, fmt.Errorf("registry: get %s: %w", name, err)
	}
	switch code := scriptCode(res); code {
	case codeOK:
	case codeNoFunction:
		return registry.Route{}, fmt.Errorf("%w: function %s", registry.ErrNotFound, name)
	case codeNoAlias:
		return registry.Route{}, fmt.Errorf("%w: %s has no alias %q", registry.ErrNotFound, name, alias)
	case codeNoVersion:
		return registry.Route{}, fmt.Errorf("%w: %s has no version %v", registry.ErrNotFound, name, res[1:])
	default:
		return registry.Route{}, fmt.Errorf("registry: get %s: unexpected script reply %v", name, res)
	}
	ts, _ := res[1].(string)
	to, err := registry.ParseTargets(ts)
	if err != nil || len(res) != 2+2*len(to) {
		return registry.Route{}, fmt.Errorf("registry: get %s: alias %q: unexpected script reply %v (%v)", name, alias, res, err)
	}
	r := registry.Route{Alias: alias}
	for i, t := range to {
		vs, _ := res[2+2*i].(string)
		data, _ := res[3+2*i].(string)
		f, err := decode(name, vs, data)
		if err != nil {
			return registry.Route{}, err
		}
		r.Targets = append(r.Targets, registry.Routed{Function: f, Weight: t.Weight})
	}
	return r, nil
}

// scriptCode reads the leading status code of a script's array reply.
func scriptCode(res []any) int64 {
	if len(res) == 0 {
		return codeUnknownCode
	}
	code, ok := res[0].(int64)
	if !ok || (code == codeNoVersion && len(res) != 2) {
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
		r, err := s.resolve(ctx, name, 0, registry.Latest)
		if errors.Is(err, registry.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("registry: list: %w", err)
		}
		out = append(out, r.Targets[0].Function)
	}
	return out, nil
}

// DeleteFunction implements registry.Store.
func (s *Store) DeleteFunction(ctx context.Context, name string) error {
	if err := registry.CheckName(name); err != nil {
		return err
	}
	k := keysOf(name)
	code, err := deleteScript.Run(ctx, s.rdb, []string{keyFunctions, k.seq, k.versions, k.aliases, k.history}, name).Int64()
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
func (s *Store) SetAlias(ctx context.Context, name, alias string, to []registry.Target) (registry.Alias, error) {
	if err := registry.CheckName(name); err != nil {
		return registry.Alias{}, err
	}
	if err := registry.CheckAlias(alias); err != nil {
		return registry.Alias{}, err
	}
	to, err := registry.CheckTargets(to)
	if err != nil {
		return registry.Alias{}, err
	}
	k := keysOf(name)
	args := []any{name, alias, registry.FormatTargets(to), registry.HistoryLen}
	for _, t := range to {
		args = append(args, strconv.FormatUint(t.Version, 10))
	}
	res, err := setAliasScript.Run(ctx, s.rdb, []string{keyFunctions, k.versions, k.aliases, k.history}, args...).Slice()
	if err != nil {
		return registry.Alias{}, fmt.Errorf("registry: alias %s/%s: %w", name, alias, err)
	}
	code := scriptCode(res)
	switch {
	case code == codeOK && len(res) == 2:
		hs, _ := res[1].(string)
		h, err := registry.ParseHistory(hs)
		if err != nil {
			return registry.Alias{}, err
		}
		return registry.Alias{Name: alias, Targets: to, History: h}, nil
	case code == codeNoFunction:
		return registry.Alias{}, fmt.Errorf("%w: function %s", registry.ErrNotFound, name)
	case code == codeNoVersion:
		return registry.Alias{}, fmt.Errorf("%w: %s has no version %v", registry.ErrNotFound, name, res[1])
	default:
		return registry.Alias{}, fmt.Errorf("registry: alias %s/%s: unexpected script reply %v", name, alias, res)
	}
}

// GetAlias implements registry.Store; MULTI/EXEC reads the alias and its
// history at one instant.
func (s *Store) GetAlias(ctx context.Context, name, alias string) (registry.Alias, error) {
	if err := registry.CheckName(name); err != nil {
		return registry.Alias{}, err
	}
	if err := registry.CheckName(alias); err != nil {
		return registry.Alias{}, err
	}
	k := keysOf(name)
	var (
		exists   *redis.BoolCmd
		to, hist *redis.StringCmd
	)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		exists = p.SIsMember(ctx, keyFunctions, name)
		to = p.HGet(ctx, k.aliases, alias)
		hist = p.HGet(ctx, k.history, alias)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return registry.Alias{}, fmt.Errorf("registry: alias %s/%s: %w", name, alias, err)
	}
	if !exists.Val() {
		return registry.Alias{}, fmt.Errorf("%w: function %s", registry.ErrNotFound, name)
	}
	if errors.Is(to.Err(), redis.Nil) {
		return registry.Alias{}, fmt.Errorf("%w: %s has no alias %q", registry.ErrNotFound, name, alias)
	}
	return decodeAlias(alias, to.Val(), hist.Val())
}

func decodeAlias(alias, targets, history string) (registry.Alias, error) {
	to, err := registry.ParseTargets(targets)
	if err != nil {
		return registry.Alias{}, err
	}
	h, err := registry.ParseHistory(history)
	if err != nil {
		return registry.Alias{}, err
	}
	return registry.Alias{Name: alias, Targets: to, History: h}, nil
}

// Aliases implements registry.Store.
func (s *Store) Aliases(ctx context.Context, name string) ([]registry.Alias, error) {
	if err := registry.CheckName(name); err != nil {
		return nil, err
	}
	k := keysOf(name)
	var (
		exists     *redis.BoolCmd
		all, hists *redis.MapStringStringCmd
	)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		exists = p.SIsMember(ctx, keyFunctions, name)
		all = p.HGetAll(ctx, k.aliases)
		hists = p.HGetAll(ctx, k.history)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("registry: aliases %s: %w", name, err)
	}
	if !exists.Val() {
		return nil, fmt.Errorf("%w: function %s", registry.ErrNotFound, name)
	}
	out := make([]registry.Alias, 0, len(all.Val()))
	for alias, to := range all.Val() {
		a, err := decodeAlias(alias, to, hists.Val()[alias])
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteAlias implements registry.Store.
func (s *Store) DeleteAlias(ctx context.Context, name, alias string) error {
	if err := registry.CheckName(name); err != nil {
		return err
	}
	if err := registry.CheckAlias(alias); err != nil {
		return err
	}
	k := keysOf(name)
	code, err := deleteAliasScript.Run(ctx, s.rdb, []string{keyFunctions, k.aliases, k.history}, name, alias).Int64()
	if err != nil {
		return fmt.Errorf("registry: delete alias %s/%s: %w", name, alias, err)
	}
	switch code {
	case codeOK:
		return nil
	case codeNoFunction:
		return fmt.Errorf("%w: function %s", registry.ErrNotFound, name)
	case codeNoAlias:
		return fmt.Errorf("%w: %s has no alias %q", registry.ErrNotFound, name, alias)
	default:
		return fmt.Errorf("registry: delete alias %s/%s: unexpected script reply %d", name, alias, code)
	}
}

// RollbackAlias implements registry.Store.
func (s *Store) RollbackAlias(ctx context.Context, name, alias string) (registry.Alias, error) {
	if err := registry.CheckName(name); err != nil {
		return registry.Alias{}, err
	}
	if err := registry.CheckRollback(alias); err != nil {
		return registry.Alias{}, err
	}
	k := keysOf(name)
	res, err := rollbackScript.Run(ctx, s.rdb, []string{keyFunctions, k.aliases, k.history}, name, alias).Slice()
	if err != nil {
		return registry.Alias{}, fmt.Errorf("registry: rollback %s/%s: %w", name, alias, err)
	}
	switch code := scriptCode(res); {
	case code == codeOK && len(res) == 3:
		to, _ := res[1].(string)
		h, _ := res[2].(string)
		return decodeAlias(alias, to, h)
	case code == codeNoFunction:
		return registry.Alias{}, fmt.Errorf("%w: function %s", registry.ErrNotFound, name)
	case code == codeNoAlias:
		return registry.Alias{}, fmt.Errorf("%w: %s has no alias %q", registry.ErrNotFound, name, alias)
	case code == codeNoHistory:
		return registry.Alias{}, registry.NoHistory(name, alias)
	default:
		return registry.Alias{}, fmt.Errorf("registry: rollback %s/%s: unexpected script reply %v", name, alias, res)
	}
}

// Close implements registry.Store; it closes the connection pool, after
// which every call fails with redis.ErrClosed wrapped.
func (s *Store) Close() error { return s.rdb.Close() }
