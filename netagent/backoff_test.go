package netagent

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	for _, tt := range []struct {
		name   string
		jitter float64
		want   []time.Duration
	}{
		{"low", 0, []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 500 * time.Millisecond, 500 * time.Millisecond}},
		{"high", 0.999999, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackoff(100*time.Millisecond, time.Second)
			b.jitter = func() float64 { return tt.jitter }
			for i, want := range tt.want {
				got := b.next().Round(time.Millisecond)
				if got != want {
					t.Fatalf("step %d: %v, want %v", i, got, want)
				}
			}
			b.reset()
			if got := b.next().Round(time.Millisecond); got != tt.want[0] {
				t.Fatalf("after reset: %v, want %v", got, tt.want[0])
			}
		})
	}
}
