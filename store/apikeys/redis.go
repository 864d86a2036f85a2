package apikeys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Key layout of the Redis store, beside the registry's keys (redisstore):
//
//	kiln:apikeys          hash  name -> record JSON (hash, created)
//	kiln:apikeys:byhash   hash  hex SHA-256 -> name
//	kiln:apikeys:used     hash  name -> last use, Unix milliseconds
//
// Last use lives apart so that recording it never rewrites the record.
// Every write that touches two keys is one Lua script, so a reader never
// sees a name without its hash or the reverse.
const (
	redisKeys   = "kiln:apikeys"
	redisByHash = "kiln:apikeys:byhash"
	redisUsed   = "kiln:apikeys:used"
)

// KEYS: keys, byhash. ARGV: name, hex hash, record JSON.
var redisAdd = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 2 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 0
`)

// KEYS: keys, byhash, used. ARGV: hex hash. Returns {} or {name, record, used}.
var redisLookup = redis.NewScript(`
local name = redis.call('HGET', KEYS[2], ARGV[1])
if not name then return {} end
local rec = redis.call('HGET', KEYS[1], name)
if not rec then return {} end
return {name, rec, redis.call('HGET', KEYS[3], name) or ''}
`)

// KEYS: keys, used. ARGV: name, Unix ms.
var redisTouch = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
`)

// KEYS: keys, byhash, used. ARGV: name.
var redisRevoke = redis.NewScript(`
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return 1 end
local ok, r = pcall(cjson.decode, rec)
if ok and type(r) == 'table' and type(r.hash) == 'string' then
  redis.call('HDEL', KEYS[2], r.hash)
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 0
`)

// Redis is the Store of a cluster: every gateway reads the same keys, so a
// key created or revoked through one gateway holds at all of them at once.
type Redis struct{ rdb *redis.Client }

var _ Store = (*Redis)(nil)

// OpenRedis connects to the Redis at url ("redis://[:password@]host:port/db",
// rediss:// for TLS) and checks that it answers.
func OpenRedis(ctx context.Context, url string) (*Redis, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("apikeys: redis url: %w", err)
	}
	rdb := redis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("apikeys: redis %s: %w", opts.Addr, err)
	}
	return &Redis{rdb: rdb}, nil
}

// Add implements Store.
func (s *Redis) Add(ctx context.Context, name string, h Hash, created time.Time) error {
	if err := CheckName(name); err != nil {
		return err
	}
	data, err := json.Marshal(record{Hash: h.String(), Created: created.UTC()})
	if err != nil {
		return err
	}
	code, err := redisAdd.Run(ctx, s.rdb, []string{redisKeys, redisByHash}, name, h.String(), data).Int()
	switch {
	case err != nil:
		return fmt.Errorf("apikeys: add %s: %w", name, err)
	case code == 1:
		return fmt.Errorf("%w: %s", ErrExists, name)
	case code == 2:
		return fmt.Errorf("%w: the same key is already stored under another name", ErrExists)
	}
	return nil
}

// Lookup implements Store.
func (s *Redis) Lookup(ctx context.Context, h Hash) (Key, error) {
	res, err := redisLookup.Run(ctx, s.rdb, []string{redisKeys, redisByHash, redisUsed}, h.String()).StringSlice()
	if err != nil {
		return Key{}, fmt.Errorf("apikeys: lookup: %w", err)
	}
	if len(res) != 3 {
		return Key{}, ErrNotFound
	}
	return decodeRedis(res[0], res[1], res[2])
}

func decodeRedis(name, rec, used string) (Key, error) {
	var r record
	if err := json.Unmarshal([]byte(rec), &r); err != nil {
		return Key{}, fmt.Errorf("apikeys: key %s: %w", name, err)
	}
	if ms, err := strconv.ParseInt(used, 10, 64); err == nil {
		r.LastUsed = time.UnixMilli(ms).UTC()
	}
	return r.key(name)
}

// Touch implements Store.
func (s *Redis) Touch(ctx context.Context, name string, t time.Time) error {
	if err := redisTouch.Run(ctx, s.rdb, []string{redisKeys, redisUsed}, name, t.UnixMilli()).Err(); err != nil {
		return fmt.Errorf("apikeys: touch %s: %w", name, err)
	}
	return nil
}

// List implements Store.
func (s *Redis) List(ctx context.Context) ([]Key, error) {
	// Two reads, not one script: a key revoked between them merely has no
	// last use, and a listing needs no stronger view than that.
	recs, err := s.rdb.HGetAll(ctx, redisKeys).Result()
	if err != nil {
		return nil, fmt.Errorf("apikeys: list: %w", err)
	}
	used, err := s.rdb.HGetAll(ctx, redisUsed).Result()
	if err != nil {
		return nil, fmt.Errorf("apikeys: list: %w", err)
	}
	out := make([]Key, 0, len(recs))
	for name, rec := range recs {
		k, err := decodeRedis(name, rec, used[name])
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Any implements Store.
func (s *Redis) Any(ctx context.Context) (bool, error) {
	n, err := s.rdb.HLen(ctx, redisKeys).Result()
	if err != nil {
		return false, fmt.Errorf("apikeys: %w", err)
	}
	return n > 0, nil
}

// Revoke implements Store.
func (s *Redis) Revoke(ctx context.Context, name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	code, err := redisRevoke.Run(ctx, s.rdb, []string{redisKeys, redisByHash, redisUsed}, name).Int()
	if err != nil {
		return fmt.Errorf("apikeys: revoke %s: %w", name, err)
	}
	if code == 1 {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return nil
}

// Close implements Store.
func (s *Redis) Close() error {
	if err := s.rdb.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return err
	}
	return nil
}
