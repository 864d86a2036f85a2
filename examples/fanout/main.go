// Command fanout is a serve function that splits one job over N
// goroutines and combines their answers: it counts the primes below n
// (query n, default 100000, at most 10000000), worker w taking the w-th
// slice of the range, and answers JSON with the total and each worker's
// share. Inside Kiln the goroutines share one vCPU (the guest kernel
// schedules threads cooperatively), so this shows that the Go scheduler,
// channels and sync.WaitGroup work there, not a speed-up.
package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"github.com/kilnfaas/kiln/sdk/go"
)

const (
	defaultN       = 100_000
	maxN           = 10_000_000
	defaultWorkers = 4
	maxWorkers     = 64
)

type share struct {
	Worker int `json:"worker"`
	From   int `json:"from"`
	To     int `json:"to"`
	Primes int `json:"primes"`
}

type result struct {
	N       int     `json:"n"`
	Workers int     `json:"workers"`
	Primes  int     `json:"primes"`
	Shares  []share `json:"shares"`
}

func isPrime(k int) bool {
	if k < 2 {
		return false
	}
	for d := 2; d*d <= k; d++ {
		if k%d == 0 {
			return false
		}
	}
	return true
}

// countPrimes counts the primes below n with workers goroutines.
func countPrimes(ctx context.Context, n, workers int) (result, error) {
	results := make(chan share, workers)
	var wg sync.WaitGroup
	step := (n + workers - 1) / workers
	for w := 0; w < workers; w++ {
		from, to := min(w*step, n), min((w+1)*step, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := share{Worker: w, From: from, To: to}
			for k := from; k < to; k++ {
				if k%4096 == 0 && ctx.Err() != nil {
					return
				}
				if isPrime(k) {
					s.Primes++
				}
			}
			results <- s
		}()
	}
	wg.Wait()
	close(results)
	if err := ctx.Err(); err != nil {
		return result{}, fmt.Errorf("fanout: gave up at the caller's deadline: %w", err)
	}
	r := result{N: n, Workers: workers, Shares: make([]share, workers)}
	for s := range results {
		r.Shares[s.Worker] = s
		r.Primes += s.Primes
	}
	return r, nil
}

func intParam(req *kiln.Request, name string, def, lo, hi int) (int, error) {
	s := req.Query.Get(name)
	if s == "" {
		return def, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < lo || v > hi {
		return 0, fmt.Errorf("%s=%q: want an integer from %d to %d", name, s, lo, hi)
	}
	return v, nil
}

func handle(ctx context.Context, req *kiln.Request) (*kiln.Response, error) {
	n, err := intParam(req, "n", defaultN, 0, maxN)
	if err != nil {
		return kiln.Text(400, err.Error()+"\n"), nil
	}
	workers, err := intParam(req, "workers", defaultWorkers, 1, maxWorkers)
	if err != nil {
		return kiln.Text(400, err.Error()+"\n"), nil
	}
	r, err := countPrimes(ctx, n, workers)
	if err != nil {
		return nil, err
	}
	return kiln.JSON(200, r)
}

func main() {
	kiln.Serve(handle)
}
