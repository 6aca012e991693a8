package hv

import (
	"sync/atomic"
	"time"
)

// ShardStats counts what happened on one logical shard since its host's pool
// was opened. Counting costs a few uncontended atomic additions per
// statement (see BenchmarkShardCounters), so it is always on.
type ShardStats struct {
	// Shard is the logical shard.
	Shard int
	// Statements counts statements run on the shard (each shard of a
	// fan-out counts one), Errors those that failed.
	Statements, Errors int64
	// WaitCount and WaitDuration count statements that found no free
	// connection (of the host, or of the shard under shard_max) and how long
	// they waited in total; Timeouts those whose wait ended in
	// ErrPoolTimeout.
	WaitCount    int64
	WaitDuration time.Duration
	Timeouts     int64
	// SchemaSwitches counts the search_path switches sent for the shard.
	SchemaSwitches int64
}

// shardCounters are one shard's counters on one host.
type shardCounters struct {
	statements, errors         atomic.Int64
	waits, waitNanos, timeouts atomic.Int64
	switches                   atomic.Int64
}

// counters returns shard's counters on h, creating them on first use.
func (h *hostPool) counters(shard int) *shardCounters {
	p := &h.perShard[shard]
	if sc := p.Load(); sc != nil {
		return sc
	}
	p.CompareAndSwap(nil, new(shardCounters))
	return p.Load()
}

// countStatement records a statement on p's shard and whether it failed.
func (p *placement) countStatement(err error) {
	sc := p.counters
	sc.statements.Add(1)
	if err != nil {
		sc.errors.Add(1)
	}
}

// shardStats returns the counters of the shards in r, in order.
func (h *hostPool) shardStats(r ShardSet) []ShardStats {
	out := make([]ShardStats, 0, r.Len())
	for s := range r.All() {
		st := ShardStats{Shard: s}
		if sc := h.perShard[s].Load(); sc != nil {
			st.Statements, st.Errors = sc.statements.Load(), sc.errors.Load()
			st.WaitCount, st.WaitDuration = sc.waits.Load(), time.Duration(sc.waitNanos.Load())
			st.Timeouts, st.SchemaSwitches = sc.timeouts.Load(), sc.switches.Load()
		}
		out = append(out, st)
	}
	return out
}
