// Package workpool runs functions on a few long-lived goroutines.
//
// What a pool gives over a goroutine per job: at most its size of jobs
// run at once, and the deep stack a job may need (ASN.1 encoding, the
// lints of an issuance) is grown once per pool goroutine rather than, by
// copying, on each of the thousands of goroutines that ask for one.
package workpool

import (
	"context"
	"errors"
	"sync"
)

// Pool is a set of goroutines that run the functions given to Do.
type Pool struct {
	jobs chan func()
	stop <-chan struct{} // closed when the pool's context ends
}

// ErrStopped is returned by Do once the pool's context has ended.
var ErrStopped = errors.New("the pool has stopped")

// Start starts size goroutines, counted in wg when it is not nil, that
// serve jobs until ctx ends.
func Start(ctx context.Context, wg *sync.WaitGroup, size int) *Pool {
	p := &Pool{jobs: make(chan func()), stop: ctx.Done()}
	serve := func() {
		for {
			select {
			case f := <-p.jobs:
				f()
			case <-ctx.Done():
				return
			}
		}
	}
	for range size {
		if wg != nil {
			wg.Go(serve)
		} else {
			go serve()
		}
	}
	return p
}

// Do runs f on a pool goroutine and returns once it has run, or without
// running it when ctx ends (or the pool stops) before a goroutine is free.
func (p *Pool) Do(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case p.jobs <- func() { defer close(done); f() }:
	case <-ctx.Done():
		return ctx.Err()
	case <-p.stop:
		return ErrStopped
	}
	<-done
	return nil
}
