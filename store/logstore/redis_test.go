package logstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kilnfaas/kiln/store/logstore"
	"github.com/kilnfaas/kiln/store/logstore/logstoretest"
)

func TestRedisConformance(t *testing.T) {
	url := logstoretest.StartRedis(t)
	logstoretest.Run(t, func(t *testing.T, l logstore.Limits) logstore.Store {
		opts, _ := redis.ParseURL(url)
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		if err := rdb.FlushDB(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		s, err := logstore.NewRedis(context.Background(), url, l)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, logstoretest.Options{CapSlack: 200})
}

// The stream is where the docs say, so an operator can inspect it with
// redis-cli.
func TestRedisKeyLayout(t *testing.T) {
	url := logstoretest.StartRedis(t)
	s, err := logstore.NewRedis(context.Background(), url, logstore.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Append(context.Background(), logstore.Record{Function: "hello", InvocationID: "i1", Node: "n", Outcome: "ok", Stderr: []byte("hi\n")}); err != nil {
		t.Fatal(err)
	}
	opts, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	msgs, err := rdb.XRange(context.Background(), "kiln:logs:hello", "-", "+").Result()
	if err != nil || len(msgs) != 1 || msgs[0].Values["l"] != "hi" || msgs[0].Values["i"] != "i1" {
		t.Fatalf("kiln:logs:hello holds %+v (%v)", msgs, err)
	}
}

// A Redis that went away makes every call fail with ErrUnavailable,
// promptly, rather than hang the gateway.
func TestRedisDown(t *testing.T) {
	if _, err := logstore.NewRedis(context.Background(), "redis://127.0.0.1:1/0", logstore.Limits{}); !errors.Is(err, logstore.ErrUnavailable) {
		t.Errorf("NewRedis of a closed port: %v", err)
	}
	if _, err := logstore.NewRedis(context.Background(), "http://nope", logstore.Limits{}); err == nil {
		t.Error("NewRedis accepted a non-redis URL")
	}
	url := logstoretest.StartRedis(t)
	s, err := logstore.NewRedis(context.Background(), url, logstore.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	opts, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opts)
	rdb.Shutdown(context.Background())
	rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = s.Append(ctx, logstore.Record{Function: "fn", InvocationID: "i", Stderr: []byte("x")})
	if !errors.Is(err, logstore.ErrUnavailable) {
		t.Errorf("Append to a stopped Redis: %v", err)
	}
	if _, err := s.Read(ctx, "fn", logstore.Query{}); !errors.Is(err, logstore.ErrUnavailable) {
		t.Errorf("Read from a stopped Redis: %v", err)
	}
}
