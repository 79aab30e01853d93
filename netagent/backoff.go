package netagent

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff yields capped, jittered exponential delays: each wait is drawn
// from [d/2, d) where d doubles from min up to max.
type backoff struct {
	min, max time.Duration
	n        int
	jitter   func() float64 // in [0,1); injectable for tests
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, jitter: rand.Float64}
}

func (b *backoff) next() time.Duration {
	d := b.min << min(b.n, 30)
	if d <= 0 || d > b.max {
		d = b.max
	} else {
		b.n++
	}
	return d/2 + time.Duration(b.jitter()*float64(d/2))
}

func (b *backoff) reset() { b.n = 0 }

// wait sleeps for the next delay or until ctx ends.
func (b *backoff) wait(ctx context.Context) error {
	t := time.NewTimer(b.next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
