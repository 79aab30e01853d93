package controller

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestChunks checks chunked lists against plain sorted slices through
// random inserts and deletes, large enough to split chunks, and that a
// change leaves the list it was made from as it was.
func TestChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var want []int
	for i := range 3000 {
		want = append(want, 2*i)
	}
	c := chunked(slices.Clone(want))
	for step := range 400 {
		before, beforeList := slices.Clone(want), c
		if rng.IntN(2) == 0 {
			// Insert a few odd numbers not present, sometimes a long run.
			n := 1 + rng.IntN(5)
			if rng.IntN(20) == 0 {
				n = 300 + rng.IntN(300)
			}
			seen := map[int]bool{}
			var xs []int
			for range n {
				x := 2*rng.IntN(4000) + 1
				if !seen[x] && !slices.Contains(want, x) {
					seen[x] = true
					xs = append(xs, x)
				}
			}
			slices.Sort(xs)
			c = c.Insert(xs, cmp.Compare[int])
			want = append(want, xs...)
			slices.Sort(want)
		} else if len(want) > 0 {
			lo := rng.IntN(len(want))
			hi := min(len(want), lo+rng.IntN(600))
			if got := c.Search(func(x int) bool { return x < want[lo] }); got != lo {
				t.Fatalf("step %d: Search found %d, want %d", step, got, lo)
			}
			if got := c.Range(lo, hi); !slices.Equal(got, want[lo:hi]) {
				t.Fatalf("step %d: Range(%d, %d) = %d elements, want %d", step, lo, hi, len(got), hi-lo)
			}
			c = c.Delete(lo, hi)
			want = slices.Delete(want, lo, hi)
		}
		if got := c.Slice(); !slices.Equal(got, want) || c.Len() != len(want) {
			t.Fatalf("step %d: %d elements, want %d (equal %v)", step, c.Len(), len(want), slices.Equal(got, want))
		}
		if !slices.Equal(beforeList.Slice(), before) {
			t.Fatalf("step %d: the list the change was made from changed", step)
		}
		for _, p := range c.parts {
			if len(p) == 0 || len(p) > 2*chunkSize {
				t.Fatalf("step %d: a chunk of %d", step, len(p))
			}
		}
		if len(want) > 0 {
			if i := rng.IntN(len(want)); c.At(i) != want[i] {
				t.Fatalf("step %d: At(%d) = %d, want %d", step, i, c.At(i), want[i])
			}
		}
	}
}
