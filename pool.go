package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// hostPool is one physical host: its own *sql.DB of the inner driver, capped
// at pool_max open connections, and a semaphore of the same size that bounds
// how long a statement may wait for one of them.
//
// Between statements hv keeps the host's recently used connections itself,
// each with its session (the schema it is on, the statements prepared on
// it), for up to affinityIdle: a statement then takes the most recently
// released one, as database/sql would, but one that has its schema's
// statements prepared over one that would have to prepare them (takeIdle).
// Connections idle longer go back to the inner pool, whose health checks,
// idle limits and statistics apply as usual.
type hostPool struct {
	name     string
	peer     *Peer  // name's parts, for tracers
	key      string // what the pool is made of: driver, pool mode, connection string
	db       *sql.DB
	conns    *semaphore // pool_max
	settings atomic.Pointer[poolSettings]

	mu         sync.Mutex
	idle       []idleConn // most recently released last
	flusher    *time.Timer
	closed     bool
	retired    bool         // close once no connection is in use
	shardSlots []*semaphore // per-shard caps (shard_max), made on first use

	checked   atomic.Bool  // asked which shards moved away (moved.go)
	shards    atomic.Int64 // how many logical shards the host owns
	waits     atomic.Int64
	waitNanos atomic.Int64
	timeouts  atomic.Int64
	switches  atomic.Int64 // search_path switches sent
	perShard  [NumShards]atomic.Pointer[shardCounters]

	replica *replicaMonitor // set on a replica's pool (replica.go), nil on a primary's
}

// poolSettings are the settings of a host's pool that Reconfigure changes in
// place, without new connections.
type poolSettings struct {
	poolMax      int
	shardMax     int // per-shard cap; 0 for none
	blockTimeout time.Duration
	logger       *slog.Logger
	tracer       Tracer // Config.Tracer, told about waits (tracer.go)
}

// idleConn is a connection hv keeps between statements.
type idleConn struct {
	conn  *sql.Conn
	sess  *session // conn's session, read only while idle
	since time.Time
}

// affinityIdle is how long hv keeps an idle connection itself (takeIdle
// reads its session) before giving it back to the inner pool. It matches
// pgx's own threshold for pinging a connection that has been idle.
const affinityIdle = time.Second

// errPoolRetired is what acquire returns on a pool that left the fleet
// (Reconfigure, Reset) after the statement chose it: the statement routes
// again on the current fleet.
var errPoolRetired = errors.New("host pool retired")

// newHostPool returns the pool of host name over db.
func newHostPool(name string, db *sql.DB, s poolSettings) *hostPool {
	h := &hostPool{name: name, db: db, conns: newSemaphore(s.poolMax)}
	h.configure(s)
	return h
}

// configure applies s to the pool in place: Reconfigure with other pool
// sizes, block timeout or logger keeps the pool and its connections.
func (h *hostPool) configure(s poolSettings) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.settings.Store(&s)
	h.conns.setLimit(s.poolMax)
	h.db.SetMaxOpenConns(s.poolMax)
	h.db.SetMaxIdleConns(s.poolMax)
	for _, slot := range h.shardSlots {
		if slot != nil {
			slot.setLimit(s.shardMax)
		}
	}
}

// poolMax returns the host's connection limit.
func (h *hostPool) poolMax() int { return h.settings.Load().poolMax }

// acquire takes a connection of t's host for t's shard, waiting at most the
// pool block timeout in all for a free one: first for one of the shard's
// shard_max slots, when a cap is set, then for one of the host's pool_max.
// It takes an idle connection as takeIdle chooses, else one from the inner
// pool. The caller must give it back with h.release(conn, slot). Errors are
// *ShardError, except errPoolRetired.
func (h *hostPool) acquire(ctx context.Context, t *placement) (*sql.Conn, *semaphore, error) {
	set := h.settings.Load()
	var waited time.Time // when the first wait began
	var slot *semaphore
	if set.shardMax > 0 {
		slot = h.shardSlot(t.shard, set.shardMax)
		if err := h.take(ctx, set, slot, t, &waited); err != nil {
			return nil, nil, err
		}
	}
	if err := h.take(ctx, set, h.conns, t, &waited); err != nil {
		if slot != nil {
			slot.release()
		}
		return nil, nil, err
	}
	c, retired := h.takeIdle(t.schema)
	if retired {
		h.unlock(slot)
		return nil, nil, errPoolRetired
	}
	if c != nil {
		return c, slot, nil
	}
	// Holding a permit, the inner pool never makes us wait: it has as many
	// connections as there are permits. It may have to connect.
	c, err := h.db.Conn(ctx)
	if err != nil {
		h.unlock(slot)
		return nil, nil, &ShardError{Shard: t.shard, Host: h.name, Err: err}
	}
	return c, slot, nil
}

// shardSlot returns the semaphore that caps shard's connections.
func (h *hostPool) shardSlot(shard, shardMax int) *semaphore {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shardSlots == nil {
		h.shardSlots = make([]*semaphore, NumShards)
	}
	if h.shardSlots[shard] == nil {
		h.shardSlots[shard] = newSemaphore(shardMax)
	}
	return h.shardSlots[shard]
}

// unlock gives back the host permit and the shard's slot (if any) held by
// a statement.
func (h *hostPool) unlock(slot *semaphore) {
	h.conns.release()
	if slot != nil {
		slot.release()
	}
}

// takeIdle returns the idle connection to run a statement on schema, or
// nil to take one from the inner pool; retired is set (and no connection
// returned) when the pool has left the fleet.
//
// It takes the most recently released connection, the switch riding along
// with the statement when that one is on another schema, unless it lacks
// the schema's prepared statements and another has them (most recent
// first): a preparation costs a round trip, a switch does not. Keeping the
// host's few recently used connections busy beats keeping a connection per
// shard, even where pool_max would allow one: a switch costs the server a
// statement of its own, but spreading statements over a backend per shard
// measured dearer (BenchmarkPolicy, README Performance), and a sequential
// client holds one connection per host, not one per shard.
func (h *hostPool) takeIdle(schema string) (c *sql.Conn, retired bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.retired || h.closed {
		return nil, true
	}
	n := len(h.idle)
	if n == 0 {
		return nil, false
	}
	pick := n - 1
	if perShardWhenAlone.Load() && h.conns.inUse() == 1 && !h.idle[pick].sess.on(schema) {
		pick = h.mostRecent(func(ic *idleConn) bool { return ic.sess.on(schema) })
		// Every permit holder, other than us, holds a connection; so do
		// the idle ones. Room for one more: let the inner pool give it.
		poolMax := int64(h.poolMax())
		if pick < 0 && int64(n) < poolMax && h.shards.Load() <= poolMax {
			return nil, false
		}
	}
	if pick < 0 || !h.idle[pick].sess.on(schema) && !h.idle[pick].sess.prepared(schema) {
		pick = n - 1
		if i := h.mostRecent(func(ic *idleConn) bool { return ic.sess.prepared(schema) }); i >= 0 {
			pick = i
		}
	}
	c = h.idle[pick].conn
	copy(h.idle[pick:], h.idle[pick+1:])
	h.idle[n-1] = idleConn{}
	h.idle = h.idle[:n-1]
	return c, false
}

// perShardWhenAlone, set by BenchmarkPolicy only, adds the rule hv used to
// follow for a statement alone on its host: a connection already on its
// schema, else, while the host owns no more shards than pool_max and has
// room, a new connection, so that every shard ends up with one of its own
// and a sequential client never switches. It lets one run compare both
// rules side by side (via=hv-alone).
var perShardWhenAlone atomic.Bool

// mostRecent returns the index of the most recently released idle
// connection for which ok holds, or -1. Called with h.mu held. An idle
// connection is in no statement's hands, and h.mu orders its reading after
// the statement that released it.
func (h *hostPool) mostRecent(ok func(*idleConn) bool) int {
	for i := len(h.idle) - 1; i >= 0; i-- {
		if ok(&h.idle[i]) {
			return i
		}
	}
	return -1
}

// take takes a token of sem (the host's permits or a shard's slots),
// waiting at most what is left of the block timeout since *waited (set when
// the first wait begins).
func (h *hostPool) take(ctx context.Context, set *poolSettings, sem *semaphore, t *placement, waited *time.Time) error {
	if sem.tryAcquire() {
		return nil
	}
	now := time.Now()
	sc := t.counters
	if waited.IsZero() {
		*waited = now
		h.waits.Add(1)
		sc.waits.Add(1)
	}
	ok, err := sem.acquire(ctx, set.blockTimeout-now.Sub(*waited))
	d := int64(time.Since(now))
	h.waitNanos.Add(d)
	sc.waitNanos.Add(d)
	switch {
	case ok:
	case err != nil:
		err = &ShardError{Shard: t.shard, Host: h.name, Err: fmt.Errorf("waiting for a connection: %w", err)}
	default:
		err = h.timedOut(ctx, set, sem, t)
	}
	if set.tracer != nil {
		h.traceWait(ctx, set, t, now, err)
	}
	return err
}

// timedOut counts and logs a wait for sem that ended in the block timeout,
// and returns its error.
func (h *hostPool) timedOut(ctx context.Context, set *poolSettings, sem *semaphore, t *placement) error {
	h.timeouts.Add(1)
	t.counters.timeouts.Add(1)
	limit := fmt.Sprintf("all %d connections of the host", set.poolMax)
	if sem != h.conns {
		limit = fmt.Sprintf("the shard's %d connections (shard_max)", set.shardMax)
	}
	if set.logger != nil {
		set.logger.LogAttrs(ctx, slog.LevelWarn, "hv: pool timeout",
			slog.Int("shard", t.shard), slog.String("host", h.name), slog.String("busy", limit),
			slog.Duration("block_timeout", set.blockTimeout))
	}
	return &ShardError{Shard: t.shard, Host: h.name,
		Err: errorf(ErrPoolTimeout, "%s busy for %v", limit, set.blockTimeout)}
}

// release gives a connection taken with acquire back: hv keeps it (for
// takeIdle) if it is healthy and not in a transaction, and the inner
// pool gets it otherwise (or has already discarded it).
func (h *hostPool) release(c *sql.Conn, slot *semaphore) {
	keep, broken := false, false
	var sess *session
	if err := withSession(c, func(s *session) error {
		sess, keep = s, s.reusable()
		broken = !keep && s.closed()
		return nil
	}); err != nil {
		broken = true // sql.ErrConnDone: already discarded as bad
	}
	if broken {
		// The server closed this connection (restart, failover,
		// pg_terminate_backend): those hv keeps idle are likely gone too,
		// and a dead connection is only noticed on use, so they are not
		// handed out again. The inner pool pings a connection that has been
		// idle a second or more before handing it out.
		h.purgeIdle()
	}
	if keep {
		h.mu.Lock()
		if !h.closed && !h.retired {
			h.idle = append(h.idle, idleConn{conn: c, sess: sess, since: time.Now()})
			if h.flusher == nil {
				h.flusher = time.AfterFunc(affinityIdle, h.flush)
			}
			c = nil
		}
		h.mu.Unlock()
	}
	if c != nil {
		_ = c.Close()
	}
	h.unlock(slot)
	h.closeIfRetiredAndIdle()
}

// retire marks the pool as no longer part of the fleet: statements that
// chose it before get errPoolRetired from acquire, and it is closed as soon
// as no statement uses it.
func (h *hostPool) retire() {
	h.mu.Lock()
	h.retired = true
	h.mu.Unlock()
	h.closeIfRetiredAndIdle()
}

// closeIfRetiredAndIdle closes a retired pool that no statement uses. A
// statement holding a permit keeps it open: acquire checks retired after
// taking its permit, under h.mu, as this does before closing.
func (h *hostPool) closeIfRetiredAndIdle() {
	h.mu.Lock()
	done := h.retired && !h.closed && h.conns.inUse() == 0
	h.mu.Unlock()
	if done {
		_ = h.close()
	}
}

// purgeIdle discards every idle connection of the host: those hv keeps
// and those of the inner pool (whose health check only pings a connection
// that has not been handed out for a second).
func (h *hostPool) purgeIdle() {
	h.mu.Lock()
	idle := h.idle
	h.idle = nil
	h.mu.Unlock()
	for _, ic := range idle {
		discard(ic.conn)
		_ = ic.conn.Close()
	}
	h.db.SetMaxIdleConns(-1) // closes the inner pool's idle connections
	h.db.SetMaxIdleConns(h.poolMax())
}

// flush gives connections idle for affinityIdle or longer back to the inner
// pool, and runs again while hv keeps any.
func (h *hostPool) flush() {
	h.mu.Lock()
	cutoff := time.Now().Add(-affinityIdle)
	n := 0
	for n < len(h.idle) && !h.idle[n].since.After(cutoff) {
		n++
	}
	old := make([]*sql.Conn, n)
	for i := range n {
		old[i] = h.idle[i].conn
	}
	rest := copy(h.idle, h.idle[n:])
	clear(h.idle[rest:])
	h.idle = h.idle[:rest]
	h.flusher = nil
	if len(h.idle) > 0 && !h.closed {
		h.flusher = time.AfterFunc(time.Until(h.idle[0].since.Add(affinityIdle)), h.flush)
	}
	h.mu.Unlock()
	for _, c := range old {
		_ = c.Close()
	}
}

// close gives every connection back and closes the inner pool.
func (h *hostPool) close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	idle := h.idle
	h.idle = nil
	if h.flusher != nil {
		h.flusher.Stop()
		h.flusher = nil
	}
	h.mu.Unlock()
	for _, ic := range idle {
		_ = ic.conn.Close()
	}
	if h.replica != nil {
		h.replica.close()
	}
	return h.db.Close()
}

// stats returns the inner pool's statistics, counting the connections hv
// keeps between statements as idle rather than in use.
func (h *hostPool) stats() sql.DBStats {
	h.mu.Lock()
	kept := len(h.idle)
	h.mu.Unlock()
	st := h.db.Stats()
	kept = min(kept, st.InUse)
	st.InUse -= kept
	st.Idle += kept
	return st
}

// discard closes the physical connection instead of pooling it again.
func discard(c *sql.Conn) {
	_ = c.Raw(func(any) error { return driver.ErrBadConn })
}
