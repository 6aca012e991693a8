package hv

import (
	"fmt"
	"sort"
	"strings"
)

// pgxKeywords are connection keywords pgx knows beyond libpq's; they are
// never taken for misspellings.
var pgxKeywords = map[string]bool{
	"default_query_exec_mode": true, "statement_cache_capacity": true,
	"description_cache_capacity": true, "min_read_buffer_size": true,
	"servicefile": true, "target_session_attrs": true, "sslinline": true,
	"binary_parameters": true, "disable_prepared_binary_result": true,
	"krbspn": true,
}

// suggestKeyword returns the libpq keyword k is most likely a misspelling
// of, or "" when k is known (to libpq, pgx or hv) or near none: within one
// edit for keywords of up to 5 letters, two for longer ones. Keys with a
// '.' (extension settings, pg_stat_statements.track) are never suggested
// for.
func suggestKeyword(k string) string {
	if libpqKeywords[k] || pgxKeywords[k] || secretParams[k] || strings.Contains(k, ".") {
		return ""
	}
	limit := 2
	if len(k) <= 5 {
		limit = 1
	}
	best, bestD := "", limit+1
	keys := make([]string, 0, len(libpqKeywords))
	for kw := range libpqKeywords {
		keys = append(keys, kw)
	}
	sort.Strings(keys)
	for _, kw := range keys {
		if kw == "database" {
			continue // suggest dbname
		}
		if d := editDistance(k, kw); d < bestD {
			best, bestD = kw, d
		}
	}
	return best
}

// nearSecret reports whether k is, or looks like a misspelling of, a
// keyword whose value is secret, so that its value is never shown.
func nearSecret(k string) bool {
	for s := range secretParams {
		if k == s || editDistance(k, s) <= 2 {
			return true
		}
	}
	return false
}

// editDistance is the optimal string alignment distance between a and b:
// insertions, deletions, substitutions and transpositions of adjacent
// bytes.
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// Unowned returns the shards between the lowest and the highest shard the
// hosts own that no host owns, as half-open ranges in order. A fleet
// whose ranges were written inclusively (shards=1-8; shards=9-16) leaves
// one shard unowned between each pair of hosts (8), and one past the last
// range (16) that Unowned cannot see: see UnownedHint.
func (c *Config) Unowned() []ShardRange {
	rs := make([]ShardRange, 0, len(c.Hosts))
	for _, h := range c.Hosts {
		rs = append(rs, h.Shards...)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start < rs[j].Start })
	var gaps []ShardRange
	for i := 1; i < len(rs); i++ {
		if rs[i].Start > rs[i-1].End {
			gaps = append(gaps, ShardRange{Start: rs[i-1].End, End: rs[i].Start})
		}
	}
	return gaps
}

// UnownedHint returns a sentence naming the shards no host owns between
// the hosts' ranges, or "" when there are none. When every gap is one
// shard wide, the ranges were likely written inclusively, and the hint
// says so and shows the DSN's half-open ranges that were probably meant.
func (c *Config) UnownedHint() string {
	gaps := c.Unowned()
	if len(gaps) == 0 {
		return ""
	}
	var names []string
	single := true
	for _, g := range gaps {
		if g.Len() == 1 {
			names = append(names, fmt.Sprint(g.Start))
		} else {
			names = append(names, fmt.Sprintf("%d to %d", g.Start, g.End-1))
			single = false
		}
	}
	msg := fmt.Sprintf("no host owns shard(s) %s, between the hosts' ranges", strings.Join(names, ", "))
	if !single {
		return msg
	}
	rs := make([]ShardRange, 0, len(c.Hosts))
	for _, h := range c.Hosts {
		rs = append(rs, h.Shards...)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start < rs[j].Start })
	var meant []string
	for _, r := range rs {
		meant = append(meant, fmt.Sprintf("shards=%d-%d", r.Start, r.End+1))
	}
	last := rs[len(rs)-1]
	return msg + fmt.Sprintf(": DSN ranges are half-open (shards=%s is shards %d to %d); if the ranges were meant inclusively, shard %d is unowned too: write %s",
		last, last.Start, last.End-1, last.End, strings.Join(meant, "; "))
}
