package workpool

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestPool(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p := Start(ctx, &wg, 1)

	ran := false
	if err := p.Do(context.Background(), func() { ran = true }); err != nil || !ran {
		t.Fatalf("do: %v, ran %v", err, ran)
	}

	// The one goroutine busy: a caller whose context ends is not run.
	release := make(chan struct{})
	busy := make(chan struct{})
	go p.Do(context.Background(), func() { close(busy); <-release })
	<-busy
	waitCtx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.Do(waitCtx, func() { t.Error("ran after its context ended") }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("busy pool: %v", err)
	}
	close(release)

	stop() // wakes the idle goroutine out of its select: no send can reach it
	wg.Wait()
	if err := p.Do(context.Background(), func() { t.Error("ran on a stopped pool") }); !errors.Is(err, ErrStopped) {
		t.Fatalf("stopped pool: %v", err)
	}
}
