package controller

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestIssuePool(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p := startIssuePool(ctx, &wg, 1)

	ran := false
	if err := p.do(context.Background(), func() { ran = true }); err != nil || !ran {
		t.Fatalf("do: %v, ran %v", err, ran)
	}

	// The one goroutine busy: a caller whose context ends is not run.
	release := make(chan struct{})
	busy := make(chan struct{})
	go p.do(context.Background(), func() { close(busy); <-release })
	<-busy
	waitCtx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.do(waitCtx, func() { t.Error("ran after its context ended") }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("busy pool: %v", err)
	}
	close(release)

	stop() // wakes the idle goroutine out of its select: no send can reach it
	wg.Wait()
	if err := p.do(context.Background(), func() { t.Error("ran on a stopped pool") }); !errors.Is(err, errShuttingDown) {
		t.Fatalf("stopped pool: %v", err)
	}
}
