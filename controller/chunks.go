package controller

import (
	"iter"
	"slices"
)

// chunkSize is the length chunked lists are cut into: a change copies one
// chunk of it and the list of chunks, 20,000 elements are 79 chunks.
const chunkSize = 256

// chunks is an immutable sorted list kept in chunks, so that a small change
// to a long list makes a new list that shares every chunk it did not touch.
// The view hub keeps view peers and rules this way: one gateway joining
// the national service's view of 20,000 peers then copies a chunk and 79
// slice headers, not the 20,000 peers.
type chunks[T any] struct {
	parts [][]T // each non-empty; never modified once shared
	n     int
}

// chunked cuts s into chunks; s must not be modified afterwards.
func chunked[T any](s []T) chunks[T] {
	c := chunks[T]{n: len(s)}
	for len(s) > 0 {
		k := min(chunkSize, len(s))
		c.parts = append(c.parts, s[:k:k])
		s = s[k:]
	}
	return c
}

// Len is the number of elements.
func (c chunks[T]) Len() int { return c.n }

// All yields the elements in order.
func (c chunks[T]) All() iter.Seq[T] {
	return func(yield func(T) bool) {
		for _, p := range c.parts {
			for _, x := range p {
				if !yield(x) {
					return
				}
			}
		}
	}
}

// Slice returns the elements as one new slice.
func (c chunks[T]) Slice() []T {
	out := make([]T, 0, c.n)
	for _, p := range c.parts {
		out = append(out, p...)
	}
	return out
}

// find returns the chunk where x belongs by cmp, and its place in it: the
// first element not before x.
func (c chunks[T]) find(x T, cmp func(T, T) int) (part, i int) {
	part, _ = slices.BinarySearchFunc(c.parts, x, func(p []T, x T) int { return cmp(p[len(p)-1], x) })
	if part == len(c.parts) {
		if part == 0 {
			return 0, 0
		}
		return part - 1, len(c.parts[part-1]) // after the last element
	}
	i, _ = slices.BinarySearchFunc(c.parts[part], x, cmp)
	return part, i
}

// Insert returns the list with xs, sorted by cmp and none of them in c,
// added in order.
func (c chunks[T]) Insert(xs []T, cmp func(T, T) int) chunks[T] {
	if len(xs) == 0 {
		return c
	}
	if len(xs) > chunkSize {
		return chunked(mergeSorted(c.Slice(), xs, cmp))
	}
	out := chunks[T]{parts: slices.Clone(c.parts), n: c.n + len(xs)}
	if len(out.parts) == 0 {
		return chunked(slices.Clone(xs))
	}
	for len(xs) > 0 {
		part, _ := out.find(xs[0], cmp)
		// The elements of xs that belong in this chunk: those before the next chunk's first.
		k := len(xs)
		if part+1 < len(out.parts) {
			next := out.parts[part+1][0]
			k, _ = slices.BinarySearchFunc(xs, next, cmp)
		}
		merged := mergeSorted(out.parts[part], xs[:k], cmp)
		xs = xs[k:]
		if len(merged) > 2*chunkSize { // split, so that no chunk grows without bound
			h := len(merged) / 2
			out.parts = slices.Insert(out.parts, part+1, merged[h:len(merged):len(merged)])
			merged = merged[:h:h]
		}
		out.parts[part] = merged
	}
	return out
}

// Delete returns the list without the elements from index lo up to hi.
func (c chunks[T]) Delete(lo, hi int) chunks[T] {
	if lo >= hi {
		return c
	}
	out := chunks[T]{parts: make([][]T, 0, len(c.parts)), n: c.n - (hi - lo)}
	base := 0
	for _, p := range c.parts {
		end := base + len(p)
		switch {
		case end <= lo || base >= hi:
			out.parts = append(out.parts, p)
		default:
			keep := make([]T, 0, len(p))
			keep = append(keep, p[:max(0, lo-base)]...)
			keep = append(keep, p[min(len(p), hi-base):]...)
			if len(keep) > 0 {
				out.parts = append(out.parts, keep)
			}
		}
		base = end
	}
	return out
}

// Search returns the index of the first element for which before is
// false, elements being ordered so that before is true of a prefix.
func (c chunks[T]) Search(before func(T) bool) int {
	// The first chunk whose last element is not before, then the place in it.
	part, _ := slices.BinarySearchFunc(c.parts, true, func(p []T, _ bool) int {
		if before(p[len(p)-1]) {
			return -1
		}
		return 1
	})
	if part == len(c.parts) {
		return c.n
	}
	base := 0
	for _, p := range c.parts[:part] {
		base += len(p)
	}
	i, _ := slices.BinarySearchFunc(c.parts[part], true, func(x T, _ bool) int {
		if before(x) {
			return -1
		}
		return 1
	})
	return base + i
}

// Range returns the elements from index lo up to hi as a new slice.
func (c chunks[T]) Range(lo, hi int) []T {
	var out []T
	base := 0
	for _, p := range c.parts {
		end := base + len(p)
		if end > lo && base < hi {
			out = append(out, p[max(0, lo-base):min(len(p), hi-base)]...)
		}
		base = end
	}
	return out
}

// At returns the element at index i.
func (c chunks[T]) At(i int) T {
	for _, p := range c.parts {
		if i < len(p) {
			return p[i]
		}
		i -= len(p)
	}
	panic("chunks: index out of range")
}

// mergeSorted returns a new slice of a and b, both sorted by cmp, in order.
func mergeSorted[T any](a, b []T, cmp func(T, T) int) []T {
	out := make([]T, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if cmp(b[0], a[0]) < 0 {
			out, b = append(out, b[0]), b[1:]
		} else {
			out, a = append(out, a[0]), a[1:]
		}
	}
	return append(append(out, a...), b...)
}
