package hv

import (
	"errors"
	"iter"
	"slices"
	"strings"
)

// ShardSet is the set of logical shards a host owns: a list of half-open
// ranges, in the order they were written. In a DSN it is written as the
// ranges separated by commas (shards=1-5,6-9), or as the empty value
// (shards=”), for a host that owns no shard yet and may receive some
// (MoveShard). Validate refuses empty ranges and ranges that overlap, also
// across hosts.
type ShardSet []ShardRange

// Shards returns the set of one range [start, end).
func Shards(start, end int) ShardSet { return ShardSet{{Start: start, End: end}} }

// Contains reports whether shard n is in the set.
func (s ShardSet) Contains(n int) bool {
	for _, r := range s {
		if r.Contains(n) {
			return true
		}
	}
	return false
}

// Len returns the number of shards in the set.
func (s ShardSet) Len() int {
	n := 0
	for _, r := range s {
		n += r.Len()
	}
	return n
}

// String returns the set in DSN form: the ranges separated by commas, or
// "" for the empty set.
func (s ShardSet) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// All yields the shards of the set in ascending order.
func (s ShardSet) All() iter.Seq[int] {
	return func(yield func(int) bool) {
		for _, n := range s.List() {
			if !yield(n) {
				return
			}
		}
	}
}

// List returns the shards of the set in ascending order.
func (s ShardSet) List() []int {
	out := make([]int, 0, s.Len())
	for _, r := range s {
		for n := r.Start; n < r.End; n++ {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// First returns the lowest shard of the set, and false when it is empty.
func (s ShardSet) First() (int, bool) {
	if s.Len() == 0 {
		return 0, false
	}
	first := -1
	for _, r := range s {
		if r.Len() > 0 && (first < 0 || r.Start < first) {
			first = r.Start
		}
	}
	return first, true
}

// Without returns the set without shard n (a range holding it is split);
// s is not changed.
func (s ShardSet) Without(n int) ShardSet {
	out := make(ShardSet, 0, len(s)+1)
	for _, r := range s {
		if !r.Contains(n) {
			out = append(out, r)
			continue
		}
		if n > r.Start {
			out = append(out, ShardRange{r.Start, n})
		}
		if n+1 < r.End {
			out = append(out, ShardRange{n + 1, r.End})
		}
	}
	return out
}

// With returns the set with shard n added, joined to a range that ends or
// starts next to it when there is one; s is not changed.
func (s ShardSet) With(n int) ShardSet {
	if s.Contains(n) {
		return slices.Clone(s)
	}
	out := slices.Clone(s)
	for i, r := range out {
		switch {
		case r.End == n:
			out[i].End = n + 1
			return out
		case r.Start == n+1:
			out[i].Start = n
			return out
		}
	}
	return append(out, ShardRange{n, n + 1})
}

// parseShardSet parses the DSN form of a set ("" for none).
func parseShardSet(v string) (ShardSet, error) {
	if v == "" {
		return ShardSet{}, nil
	}
	var s ShardSet
	for _, part := range strings.Split(v, ",") {
		a, b, ok := strings.Cut(part, "-")
		start, err1 := dsnCount(a)
		end, err2 := dsnCount(b)
		if !ok || err1 != nil || err2 != nil {
			return nil, errors.New("not a range")
		}
		s = append(s, ShardRange{Start: start, End: end})
	}
	return s, nil
}
