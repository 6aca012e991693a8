package hv

// Read-your-writes: a unit of work (a request) remembers, per shard, when
// its last write there completed; its replica reads of that shard go to a
// replica only once the replica has replayed a WAL position the primary
// reached after that write, else to the primary.
//
// The write itself costs nothing more: no position is read on its
// connection. Each replica's monitor samples the primary's
// pg_current_wal_insert_lsn() every poll, noting when it sent the query
// (replica.go). A sample sent after the write completed (the client had
// the write's ReadyForQuery, so its transaction, commit record included,
// was in the WAL) is at or past the end of the write's WAL; a replica
// whose replayed position reaches that sample has the write. Only the
// order of two events of this process (write completed, sample sent) uses
// the clock, a monotonic one; whether the replica has the write is decided
// by WAL positions, so a paused replica is never taken for one that has
// it. The price is latency, not work: a read right after a write goes to
// the primary until the next sample (replicaPollInterval) has been
// replayed. A read costs a map lookup under a mutex and a scan of the
// monitor's recent samples.

import (
	"context"
	"sync"
	"time"
)

type rywKey struct{}

// WithReadYourWrites returns a copy of ctx that marks a unit of work (a
// request, say) whose reads must see its own writes: after a write through
// a context derived from it (ExecContext on the primary, or a committed
// read-write transaction), its WithReplica reads of that shard go to a
// replica only once the replica has replayed the write, and to the primary
// until then. A QueryContext that writes (INSERT ... RETURNING) sends the
// unit's later reads of the shard to the primary. Contexts derived from
// the returned one share the unit; calling WithReadYourWrites again starts
// a new one. The unit is safe for concurrent use.
func WithReadYourWrites(ctx context.Context) context.Context {
	return context.WithValue(ctx, rywKey{}, &readYourWrites{})
}

// readYourWrites is one unit of work's last write per shard.
type readYourWrites struct {
	mu     sync.Mutex
	writes map[int]rywWrite
}

// rywWrite is a unit's last write to a shard: the primary it went to and
// when it completed, or unknown (read the shard from the primary).
type rywWrite struct {
	primary *hostPool
	done    time.Time
	unknown bool
}

// rywNeed is what a replica must have replayed to serve a read: nothing
// (none), a primary position sampled after done, or more than any replica
// is known to have (unknown).
type rywNeed struct {
	some    bool
	unknown bool
	done    time.Time
}

// rywFrom returns the unit of work on ctx, or nil.
func rywFrom(ctx context.Context) *readYourWrites {
	r, _ := ctx.Value(rywKey{}).(*readYourWrites)
	return r
}

// need returns what a replica must have replayed to serve the unit's read
// of p's shard; a write that went to another primary than p's (the shard
// moved) is unknown. r may be nil.
func (r *readYourWrites) need(p *placement) rywNeed {
	if r == nil {
		return rywNeed{}
	}
	r.mu.Lock()
	w, ok := r.writes[p.shard]
	r.mu.Unlock()
	switch {
	case !ok:
		return rywNeed{}
	case w.unknown || w.primary != p.host:
		return rywNeed{some: true, unknown: true}
	}
	return rywNeed{some: true, done: w.done}
}

// record notes a write to p's shard that completed at done, or whose end
// is unknown. The later write wins; an unknown one stays until a later
// known one replaces it.
func (r *readYourWrites) record(p *placement, done time.Time, unknown bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.writes == nil {
		r.writes = make(map[int]rywWrite)
	}
	r.writes[p.shard] = rywWrite{primary: p.host, done: done, unknown: unknown}
}

// noteWrite records, for unit r (if any), that the connection's statement
// or transaction on its primary placement has just completed a write.
func (c *conn) noteWrite(r *readYourWrites) {
	if r != nil && c.place != nil && !c.place.onReplica() {
		r.record(c.place, time.Now(), false)
	}
}

// queryWrites reports whether a statement sent with QueryContext may write:
// anything but a plain read (a WITH may hold an INSERT).
func queryWrites(query string) bool {
	switch firstKeyword(query) {
	case "select", "values", "table", "show", "explain":
		return false
	}
	return true
}
