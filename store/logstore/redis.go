package logstore

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisPrefix begins every key of the Redis store: kiln:logs:NAME is the
// stream of function NAME. Each stream entry is one line, with the fields
//
//	v  version      i  invocation id   a  attempt (omitted for 0)
//	n  node         o  outcome         l  the line
//
// and the entry's stream id (milliseconds-sequence, assigned by Redis) is
// its cursor and its time. Every XADD trims the stream with MAXLEN ~.
const RedisPrefix = "kiln:logs:"

// followBlock bounds one XREAD BLOCK, so a follower notices its context
// ending promptly even where go-redis only checks it between commands.
const followBlock = 5 * time.Second

// readBatch is how many entries one XRANGE of a filtered read asks for.
const readBatch = 500

// Redis is the Store of a cluster: every gateway appends to and reads one
// Redis.
type Redis struct {
	rdb *redis.Client
	// follow serves blocking reads on a pool of its own, so that many
	// `kiln logs -f` never make appends wait for a connection.
	follow *redis.Client
	limits Limits
}

// NewRedis connects to the Redis at url (redis://…) and checks that it answers.
func NewRedis(ctx context.Context, url string, limits Limits) (*Redis, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("logstore: redis url: %w", err)
	}
	rdb := redis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("%w: redis %s: %v", ErrUnavailable, opts.Addr, err)
	}
	fopts := *opts
	return &Redis{rdb: rdb, follow: redis.NewClient(&fopts), limits: limits.withDefaults()}, nil
}

func redisKey(function string) string { return RedisPrefix + function }

func (s *Redis) fail(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// Append implements Store: the lines go in one MULTI/EXEC, so a reader
// sees all of an invocation's lines or none.
func (s *Redis) Append(ctx context.Context, r Record) error {
	if err := CheckRecord(r); err != nil {
		return err
	}
	lines := Lines(r.Stderr)
	if len(lines) == 0 {
		return nil
	}
	key := redisKey(r.Function)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, l := range lines {
			vals := []any{"v", r.Version, "i", r.InvocationID}
			if r.Attempt != 0 {
				vals = append(vals, "a", r.Attempt)
			}
			vals = append(vals, "n", r.Node, "o", r.Outcome, "l", l)
			p.XAdd(ctx, &redis.XAddArgs{Stream: key, MaxLen: int64(s.limits.MaxEntries), Approx: true, Values: vals})
		}
		return nil
	})
	if err != nil {
		return s.fail(err)
	}
	return nil
}

var streamID = regexp.MustCompile(`^[0-9]{1,20}(-[0-9]{1,20})?$`)

// parseID splits a stream id; "" is the start of the stream.
func parseID(id string) (ms, seq uint64, err error) {
	if id == "" {
		return 0, 0, nil
	}
	if !streamID.MatchString(id) {
		return 0, 0, fmt.Errorf("%w: cursor %q: use the cursor of an entry this store returned", ErrInvalid, id)
	}
	a, b, _ := strings.Cut(id, "-")
	ms, err1 := strconv.ParseUint(a, 10, 64)
	if b != "" {
		seq, err = strconv.ParseUint(b, 10, 64)
	}
	if err1 != nil || err != nil {
		return 0, 0, fmt.Errorf("%w: cursor %q out of range", ErrInvalid, id)
	}
	return ms, seq, nil
}

// idAfter reports whether stream id a comes after b.
func idAfter(a, b string) bool {
	am, as, _ := parseID(a)
	bm, bs, _ := parseID(b)
	return am > bm || am == bm && as > bs
}

func decodeMessage(function string, m redis.XMessage) Entry {
	ms, _, _ := parseID(m.ID)
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	e := Entry{Cursor: m.ID, Time: time.UnixMilli(int64(ms)).UTC(), Function: function,
		InvocationID: str("i"), Node: str("n"), Outcome: str("o"), Line: str("l")}
	e.Version, _ = strconv.ParseUint(str("v"), 10, 64)
	e.Attempt, _ = strconv.Atoi(str("a"))
	return e
}

// Read implements Store. It first takes the newest id and reads no
// further, so its cursor covers exactly what it looked at.
func (s *Redis) Read(ctx context.Context, function string, q Query) (Page, error) {
	q, err := checkQuery(function, q)
	if err != nil {
		return Page{}, err
	}
	if _, _, err := parseID(q.After); err != nil {
		return Page{}, err
	}
	key := redisKey(function)
	page := Page{Cursor: q.After}
	last, err := s.rdb.XRevRangeN(ctx, key, "+", "-", 1).Result()
	if err != nil {
		return Page{}, s.fail(err)
	}
	if len(last) == 0 || (q.After != "" && !idAfter(last[0].ID, q.After)) {
		return page, nil
	}
	end := last[0].ID
	page.Cursor = end
	if q.After == "" {
		lo := "-"
		if !q.Since.IsZero() && q.Since.UnixMilli() > 0 {
			lo = strconv.FormatInt(q.Since.UnixMilli(), 10)
		}
		hi := end
		for {
			msgs, err := s.rdb.XRevRangeN(ctx, key, hi, lo, readBatch).Result()
			if err != nil {
				return Page{}, s.fail(err)
			}
			for _, m := range msgs {
				if e := decodeMessage(function, m); q.matches(e) {
					page.Entries = append(page.Entries, e)
					if len(page.Entries) == q.Limit {
						break
					}
				}
			}
			if len(page.Entries) == q.Limit || len(msgs) < readBatch {
				break
			}
			hi = "(" + msgs[len(msgs)-1].ID
		}
		for i, j := 0, len(page.Entries)-1; i < j; i, j = i+1, j-1 {
			page.Entries[i], page.Entries[j] = page.Entries[j], page.Entries[i]
		}
		return page, nil
	}
	lo := "(" + q.After
	for {
		msgs, err := s.rdb.XRangeN(ctx, key, lo, end, readBatch).Result()
		if err != nil {
			return Page{}, s.fail(err)
		}
		for _, m := range msgs {
			if e := decodeMessage(function, m); q.matches(e) {
				page.Entries = append(page.Entries, e)
				if len(page.Entries) == q.Limit {
					page.Cursor = e.Cursor
					return page, nil
				}
			}
		}
		if len(msgs) < readBatch {
			return page, nil
		}
		lo = "(" + msgs[len(msgs)-1].ID
	}
}

// Follow implements Store with XREAD BLOCK.
func (s *Redis) Follow(ctx context.Context, function string, q Query) (Page, error) {
	if _, err := checkQuery(function, q); err != nil {
		return Page{}, err
	}
	if _, _, err := parseID(q.After); err != nil {
		return Page{}, err
	}
	if q.After == "" {
		q.After = "0"
	}
	for {
		res, err := s.follow.XRead(ctx, &redis.XReadArgs{
			Streams: []string{redisKey(function), q.After}, Count: 1, Block: followBlock,
		}).Result()
		if ctx.Err() != nil {
			return Page{}, ctx.Err()
		}
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return Page{}, s.fail(err)
		}
		if len(res) > 0 && len(res[0].Messages) > 0 {
			return s.Read(ctx, function, q)
		}
	}
}

// Delete implements Store.
func (s *Redis) Delete(ctx context.Context, function string) error {
	if err := checkFunction(function); err != nil {
		return err
	}
	if err := s.rdb.Del(ctx, redisKey(function)).Err(); err != nil {
		return s.fail(err)
	}
	return nil
}

// Close implements Store.
func (s *Redis) Close() error { return errors.Join(s.rdb.Close(), s.follow.Close()) }

var _ Store = (*Redis)(nil)
