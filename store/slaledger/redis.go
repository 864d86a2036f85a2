package slaledger

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Key layout: one hash per function and minute,
//
//	kiln:sla:<name>:<unix minute>   hash   inv, good, err, restore, boot → counts
//
// written with HINCRBY inside MULTI/EXEC together with an EXPIREAT at the
// end of its retention, so Redis forgets old minutes by itself and every
// entry is added whole or not at all, from any number of gateways.
const redisPrefix = "kiln:sla:"

var redisFields = [...]string{"inv", "good", "err", "restore", "boot"}

func redisKey(fn string, minute int64) string {
	return redisPrefix + fn + ":" + strconv.FormatInt(minute, 10)
}

// Redis is the Store for a cluster: every gateway adds to the same hashes.
type Redis struct {
	c   *redis.Client
	now func() time.Time
}

// OpenRedis connects to url (redis://host:port/db) and checks that Redis
// answers.
func OpenRedis(ctx context.Context, url string) (*Redis, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("slaledger: redis url: %w", err)
	}
	c := redis.NewClient(opts)
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("slaledger: redis at %s: %w", opts.Addr, err)
	}
	return &Redis{c: c, now: time.Now}, nil
}

// Add implements Store.
func (s *Redis) Add(ctx context.Context, entries []Entry) error {
	for _, e := range entries {
		if e.Function == "" {
			return fmt.Errorf("%w: an entry without a function", ErrInvalid)
		}
	}
	cutoff := retainedFrom(s.now())
	_, err := s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range entries {
			m := e.Minute.Truncate(time.Minute)
			if m.Before(cutoff) {
				continue
			}
			k := redisKey(e.Function, m.Unix()/60)
			for i, v := range []int64{e.Invocations, e.Good, e.Errors, e.Restores, e.Boots} {
				if v != 0 {
					p.HIncrBy(ctx, k, redisFields[i], v)
				}
			}
			p.ExpireAt(ctx, k, m.Add(Retention+time.Minute))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("slaledger: redis: %w", err)
	}
	return nil
}

// Sum implements Store: one pipelined HGETALL per minute in range.
func (s *Redis) Sum(ctx context.Context, fn string, from, to time.Time) (Counts, error) {
	if fn == "" || to.Before(from) {
		return Counts{}, fmt.Errorf("%w: function %q, range %v..%v", ErrInvalid, fn, from, to)
	}
	if cutoff := retainedFrom(s.now()); from.Before(cutoff) {
		from = cutoff
	}
	lo := from.Add(time.Minute-1).Unix() / 60
	hi := to.Add(time.Minute-1).Unix() / 60
	if hi <= lo {
		return Counts{}, nil
	}
	p := s.c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, 0, hi-lo)
	for m := lo; m < hi; m++ {
		cmds = append(cmds, p.HGetAll(ctx, redisKey(fn, m)))
	}
	if _, err := p.Exec(ctx); err != nil {
		return Counts{}, fmt.Errorf("slaledger: redis: %w", err)
	}
	var sum Counts
	for _, cmd := range cmds {
		h := cmd.Val()
		var c [len(redisFields)]int64
		for i, f := range redisFields {
			if v, ok := h[f]; ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return Counts{}, fmt.Errorf("slaledger: redis: %s field %s is %q", cmd.Args()[1], f, v)
				}
				c[i] = n
			}
		}
		sum.Add(Counts{Invocations: c[0], Good: c[1], Errors: c[2], Restores: c[3], Boots: c[4]})
	}
	return sum, nil
}

// Close implements Store.
func (s *Redis) Close() error { return s.c.Close() }
