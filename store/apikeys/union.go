package apikeys

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Union is a Store over several: a key in any of them is accepted and
// listed, new keys go to the first, and a revoke goes to the store that
// holds the name. A cluster's gateways use it for Redis (keys made with
// `kiln keys create`) beside a keys file (operators' keys that work even
// before anything is in Redis).
type Union []Store

var _ Store = Union(nil)

// Add implements Store: the name must be free in every store.
func (u Union) Add(ctx context.Context, name string, h Hash, created time.Time) error {
	if len(u) == 0 {
		return fmt.Errorf("%w: no key store", ErrReadOnly)
	}
	for _, s := range u[1:] {
		ks, err := s.List(ctx)
		if err != nil {
			return err
		}
		for _, k := range ks {
			if k.Name == name {
				return fmt.Errorf("%w: %s", ErrExists, name)
			}
		}
	}
	return u[0].Add(ctx, name, h, created)
}

// Lookup implements Store.
func (u Union) Lookup(ctx context.Context, h Hash) (Key, error) {
	for _, s := range u {
		k, err := s.Lookup(ctx, h)
		if !errors.Is(err, ErrNotFound) {
			return k, err
		}
	}
	return Key{}, ErrNotFound
}

// Touch implements Store.
func (u Union) Touch(ctx context.Context, name string, t time.Time) error {
	var errs []error
	for _, s := range u {
		errs = append(errs, s.Touch(ctx, name, t))
	}
	return errors.Join(errs...)
}

// List implements Store.
func (u Union) List(ctx context.Context) ([]Key, error) {
	var out []Key
	for _, s := range u {
		ks, err := s.List(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, ks...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Any implements Store.
func (u Union) Any(ctx context.Context) (bool, error) {
	for _, s := range u {
		if any, err := s.Any(ctx); err != nil || any {
			return any, err
		}
	}
	return false, nil
}

// Revoke implements Store.
func (u Union) Revoke(ctx context.Context, name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	for _, s := range u {
		if err := s.Revoke(ctx, name); !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return fmt.Errorf("%w: %s", ErrNotFound, name)
}

// Close implements Store.
func (u Union) Close() error {
	var errs []error
	for _, s := range u {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// Open is the key store of a cluster role: Redis at redisURL and the keys
// file at keysFile, either or both ("" for none). Neither gives nil: no key
// exists, and only loopback callers may manage the gateway.
func Open(ctx context.Context, redisURL, keysFile string) (Store, error) {
	var u Union
	if redisURL != "" {
		r, err := OpenRedis(ctx, redisURL)
		if err != nil {
			return nil, err
		}
		u = append(u, r)
	}
	if keysFile != "" {
		f, err := OpenFile(keysFile)
		if err != nil {
			u.Close()
			return nil, err
		}
		u = append(u, f)
	}
	switch len(u) {
	case 0:
		return nil, nil
	case 1:
		return u[0], nil
	}
	return u, nil
}
