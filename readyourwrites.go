package hv

// Read-your-writes: a unit of work (a request) remembers, per shard, the
// WAL position of its last write there; its replica reads of that shard go
// to a replica only once the replica has replayed that position
// (replicaMonitor.fit), else to the primary.
//
// The position is the primary's pg_current_wal_insert_lsn() read on the
// same connection right after the write (after COMMIT for a transaction):
// it is at or past the end of the write's WAL, commit record included, so
// a replica whose replay position reaches it sees the write. On hv's pgx
// path an ExecContext with arguments of a statement the connection has
// prepared carries that read in its own round trip (session_lsn.go);
// otherwise, and after the COMMIT of a read-write transaction, it costs a
// round trip of its own. Reads pay a map lookup under a mutex. Units
// without WithReadYourWrites pay nothing.

import (
	"context"
	"math"
	"sync"
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

// readYourWrites is one unit of work's last write position per shard.
type readYourWrites struct {
	mu     sync.Mutex
	writes map[int]rywWrite
}

// rywWrite is a write's position on the primary it went to.
type rywWrite struct {
	primary *hostPool
	lsn     uint64 // math.MaxUint64: unknown, read from the primary
}

// rywFrom returns the unit of work on ctx, or nil.
func rywFrom(ctx context.Context) *readYourWrites {
	r, _ := ctx.Value(rywKey{}).(*readYourWrites)
	return r
}

// needs returns the position a replica must have replayed to serve the
// unit's read of p's shard: 0 when the unit wrote nothing there, the
// largest position when the write went to another primary than p's (a
// shard that moved) or its position is unknown. r may be nil.
func (r *readYourWrites) needs(p *placement) uint64 {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	w, ok := r.writes[p.shard]
	r.mu.Unlock()
	switch {
	case !ok:
		return 0
	case w.primary != p.host:
		return math.MaxUint64
	}
	return w.lsn
}

// record notes a write to p's shard at lsn, keeping the later of two
// positions on the same primary.
func (r *readYourWrites) record(p *placement, lsn uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.writes == nil {
		r.writes = make(map[int]rywWrite)
	}
	// An unknown position stays until a known later one replaces it.
	if w, ok := r.writes[p.shard]; ok && w.primary == p.host && w.lsn != math.MaxUint64 && lsn != math.MaxUint64 && w.lsn > lsn {
		return
	}
	r.writes[p.shard] = rywWrite{primary: p.host, lsn: lsn}
}

// noteWrite records, for unit of work r (if any), the write the
// connection's session just made on its primary placement (a committed
// transaction), reading its position on the same connection. A failure to
// read it makes the unit read the shard from the primary.
func (c *conn) noteWrite(ctx context.Context, r *readYourWrites) {
	if r == nil || c.place == nil || c.place.onReplica() {
		return
	}
	lsn := uint64(math.MaxUint64)
	_ = withSession(c.phys, func(s *session) error {
		if n, ok := s.readLSN(ctx, c.place); ok {
			lsn = n
		}
		return nil
	})
	r.record(c.place, lsn)
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
