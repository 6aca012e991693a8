package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// hostPool is one physical host: its own *sql.DB of the inner driver, capped
// at pool_max open connections, and a semaphore of the same size that bounds
// how long a statement may wait for one of them.
//
// Between statements hv keeps the host's recently used connections itself,
// each with the schema it is on, for up to affinityIdle: a statement for a
// shard then takes a connection already on that shard's schema when there
// is one, which saves the round trip of switching search_path. Connections
// idle longer go back to the inner pool, whose health checks, idle limits and
// statistics apply as usual.
type hostPool struct {
	name         string
	db           *sql.DB
	permits      chan struct{}
	poolMax      int
	shardMax     int // per-shard cap; 0 for none
	blockTimeout time.Duration
	logger       *slog.Logger

	mu         sync.Mutex
	idle       []idleConn // most recently released last
	flusher    *time.Timer
	closed     bool
	retired    bool            // close once no connection is in use
	shardSlots []chan struct{} // per-shard semaphores (shardMax > 0), made on first use

	shards    atomic.Int64 // how many logical shards the host owns
	waits     atomic.Int64
	waitNanos atomic.Int64
	timeouts  atomic.Int64
	switches  atomic.Int64 // search_path switches sent
	perShard  [NumShards]atomic.Pointer[shardCounters]
}

// idleConn is a connection hv keeps between statements.
type idleConn struct {
	conn   *sql.Conn
	phys   *physConn // conn's driver connection, read only while idle
	schema string    // the schema its search_path is on, "" when unknown
	since  time.Time
}

// affinityIdle is how long hv keeps an idle connection for shard affinity
// before giving it back to the inner pool. It matches pgx's own threshold
// for pinging a connection that has been idle.
const affinityIdle = time.Second

// acquire takes a connection of the host for shard (whose schema is schema),
// waiting at most the pool block timeout in all for a free one: first for
// one of the shard's shard_max slots, when a cap is set, then for one of the
// host's pool_max. It prefers, in order: an idle connection on schema; a
// connection from the inner pool while the host has fewer than pool_max
// connections open (in time, every shard of a host with no more shards than
// pool_max gets its own); the least recently used idle connection. The
// caller must release it with h.release.
func (h *hostPool) acquire(ctx context.Context, shard int, schema string) (*sql.Conn, error) {
	var waited time.Time // when the first wait began
	var slot chan struct{}
	if h.shardMax > 0 {
		slot = h.shardSlot(shard)
		if err := h.take(ctx, slot, shard, &waited); err != nil {
			return nil, err
		}
	}
	if err := h.take(ctx, h.permits, shard, &waited); err != nil {
		if slot != nil {
			<-slot
		}
		return nil, err
	}
	if c := h.takeIdle(schema); c != nil {
		return c, nil
	}
	// Holding a permit, the inner pool never makes us wait: it has as many
	// connections as there are permits. It may have to connect.
	c, err := h.db.Conn(ctx)
	if err != nil {
		h.unlock(shard)
		return nil, fmt.Errorf("hv: shard %d on host %s: %w", shard, h.name, err)
	}
	return c, nil
}

// shardSlot returns the semaphore that caps shard's connections.
func (h *hostPool) shardSlot(shard int) chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shardSlots == nil {
		h.shardSlots = make([]chan struct{}, NumShards)
	}
	if h.shardSlots[shard] == nil {
		h.shardSlots[shard] = make(chan struct{}, h.shardMax)
	}
	return h.shardSlots[shard]
}

// unlock gives back shard's slot and the host permit held by a statement.
func (h *hostPool) unlock(shard int) {
	<-h.permits
	if h.shardMax > 0 {
		<-h.shardSlot(shard)
	}
}

// takeIdle returns the idle connection to run a statement on schema, or
// nil to take one from the inner pool.
//
// With no other statement of the host in flight, it takes an idle
// connection already on schema (most recently released first); else, when
// the host owns no more shards than pool_max, none while the host has room
// for another connection: in time every shard gets a connection of its own
// and statements stop switching schema.
//
// Otherwise the statement switches a connection's schema, and the switch
// rides along with it: it takes the most recently released connection, as
// database/sql does, unless that one lacks the schema's prepared statements
// and another has them (most recent first). Under load it does so even when
// an older connection is on schema, and a host with more shards than
// pool_max opens no connection while one is idle: waking a connection that
// has been idle longer costs the host's CPUs more than the switch costs the
// server (BenchmarkRandomShard: 16 shards with 8 goroutines, 256 shards).
func (h *hostPool) takeIdle(schema string) *sql.Conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := len(h.idle)
	if n == 0 {
		return nil
	}
	pick := n - 1
	if idle := len(h.permits) == 1; idle && h.idle[pick].schema != schema {
		pick = h.mostRecent(func(ic *idleConn) bool { return ic.schema == schema })
		// Every permit holder, other than us, holds a connection; so do
		// the idle ones. Room for one more: let the inner pool give it.
		if pick < 0 && n < h.poolMax && h.shards.Load() <= int64(h.poolMax) && !h.retired {
			return nil
		}
	}
	if pick < 0 || h.idle[pick].schema != schema && !h.idle[pick].phys.prepared(schema) {
		pick = n - 1
		if i := h.mostRecent(func(ic *idleConn) bool { return ic.phys.prepared(schema) }); i >= 0 {
			pick = i
		}
	}
	c := h.idle[pick].conn
	copy(h.idle[pick:], h.idle[pick+1:])
	h.idle[n-1] = idleConn{}
	h.idle = h.idle[:n-1]
	return c
}

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

// take puts a token in sem (a host's permits or a shard's slots), waiting
// at most what is left of the block timeout since *waited (set when the
// first wait begins).
func (h *hostPool) take(ctx context.Context, sem chan struct{}, shard int, waited *time.Time) error {
	select {
	case sem <- struct{}{}:
		return nil
	default:
	}
	now := time.Now()
	sc := h.counters(shard)
	if waited.IsZero() {
		*waited = now
		h.waits.Add(1)
		sc.waits.Add(1)
	}
	defer func() {
		d := int64(time.Since(now))
		h.waitNanos.Add(d)
		sc.waitNanos.Add(d)
	}()
	if left := h.blockTimeout - now.Sub(*waited); left > 0 {
		t := time.NewTimer(left)
		defer t.Stop()
		select {
		case sem <- struct{}{}:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("hv: shard %d on host %s: waiting for a connection: %w", shard, h.name, context.Cause(ctx))
		case <-t.C:
		}
	}
	h.timeouts.Add(1)
	sc.timeouts.Add(1)
	limit := fmt.Sprintf("all %d connections of the host", h.poolMax)
	if sem != h.permits {
		limit = fmt.Sprintf("the shard's %d connections (shard_max)", h.shardMax)
	}
	if h.logger != nil {
		h.logger.LogAttrs(ctx, slog.LevelWarn, "hv: pool timeout",
			slog.Int("shard", shard), slog.String("host", h.name), slog.String("busy", limit),
			slog.Duration("block_timeout", h.blockTimeout))
	}
	return fmt.Errorf("%w: shard %d on host %s: %s busy for %v",
		ErrPoolTimeout, shard, h.name, limit, h.blockTimeout)
}

// release gives a connection taken with acquire back: hv keeps it for
// shard affinity if it is healthy and not in a transaction, and the inner
// pool gets it otherwise (or has already discarded it).
func (h *hostPool) release(c *sql.Conn, shard int) {
	schema, keep, broken := "", false, false
	var phys *physConn
	if err := c.Raw(func(dc any) error {
		pc := dc.(*physConn)
		phys, schema, keep = pc, pc.schema, pc.reusable()
		broken = !keep && pc.closed()
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
			h.idle = append(h.idle, idleConn{conn: c, phys: phys, schema: schema, since: time.Now()})
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
	h.unlock(shard)
	h.closeIfRetiredAndIdle()
}

// retire marks the pool as no longer part of the fleet: it is closed as
// soon as no statement uses it.
func (h *hostPool) retire() {
	h.mu.Lock()
	h.retired = true
	h.mu.Unlock()
	h.closeIfRetiredAndIdle()
}

func (h *hostPool) closeIfRetiredAndIdle() {
	h.mu.Lock()
	done := h.retired && !h.closed && len(h.permits) == 0
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
	h.db.SetMaxIdleConns(h.poolMax)
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

// physConn is a physical connection of the inner driver, wrapped so that hv
// can remember which schema the session's search_path is set to. Its fields
// are only touched inside (*sql.Conn).Raw, under the inner pool's lock.
type physConn struct {
	driver.Conn
	// schema is the schema search_path is known to be set to, or "" when
	// unknown. It is set only after a successful switch and cleared on any
	// error or statement that may change search_path.
	schema string
	// switches counts the host's search_path switches.
	switches *atomic.Int64
	// txMode is pool_mode=transaction (txmode.go): no session-level SET, no
	// schema remembered; pending is the schema useSchema named for the next
	// statement outside a transaction, which sets it with SET LOCAL.
	txMode  bool
	pending string
	ext     string // the extension schema, after pending on search_path (searchpath.go)
	// px is hv's own statement path on a pgx connection (pgxsession.go),
	// nil where statements go through the inner driver's own.
	px *pgxSession
}

// target is where a statement must run: the shard's schema, the statement
// that switches a session to it, the shard's counters, and whether a
// transaction is open (its schema was set before BEGIN and stays).
type target struct {
	schema, setPath string
	counters        *shardCounters
	inTx            bool
}

// useSchema sets search_path to t's schema unless the session is known to
// be on it already or a transaction is open. What it remembers is set only
// after a successful switch.
func (p *physConn) useSchema(ctx context.Context, t target) error {
	if p.txMode {
		p.pending = t.schema
		return nil
	}
	if t.inTx || p.schema == t.schema {
		return nil
	}
	return p.switchSchema(ctx, t)
}

// switchSchema sends t's SET search_path in a round trip of its own.
func (p *physConn) switchSchema(ctx context.Context, t target) error {
	p.schema = ""
	p.countSwitch(t)
	if err := p.execPlain(ctx, t.setPath); err != nil {
		return err
	}
	p.schema = t.schema
	return nil
}

// countSwitch counts a search_path switch sent for t's shard.
func (p *physConn) countSwitch(t target) {
	p.switches.Add(1)
	t.counters.switches.Add(1)
}

// prepared reports whether hv has statements prepared for schema on the
// connection, so that a switch to schema finds them.
func (p *physConn) prepared(schema string) bool {
	return p != nil && p.px != nil && p.px.prepared(schema)
}

// reusable reports whether the connection may serve another statement
// without the inner pool's check: open, valid and not in a transaction.
func (p *physConn) reusable() bool {
	if sc, ok := p.Conn.(*stdlib.Conn); ok {
		pg := sc.Conn().PgConn()
		return !pg.IsClosed() && pg.TxStatus() == 'I'
	}
	return p.IsValid()
}

// closed reports whether the connection is known to be closed.
func (p *physConn) closed() bool {
	if sc, ok := p.Conn.(*stdlib.Conn); ok {
		return sc.Conn().PgConn().IsClosed()
	}
	return !p.IsValid()
}

// ResetSession forwards the inner pool's health check to the inner driver.
func (p *physConn) ResetSession(ctx context.Context) error {
	if r, ok := p.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

// IsValid forwards the inner pool's validity check to the inner driver.
func (p *physConn) IsValid() bool {
	if v, ok := p.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// convert applies the inner driver's argument conversion, the way
// database/sql would have, had hv not passed the values through unchanged.
func (p *physConn) convert(args []driver.NamedValue) ([]driver.NamedValue, error) {
	if len(args) == 0 {
		return args, nil
	}
	if _, ok := p.Conn.(*stdlib.Conn); ok {
		return args, nil // pgx accepts every value as it is.
	}
	checker, hasChecker := p.Conn.(driver.NamedValueChecker)
	out := make([]driver.NamedValue, len(args))
	for i, nv := range args {
		err := driver.ErrSkip
		if hasChecker {
			err = checker.CheckNamedValue(&nv)
		}
		if err == driver.ErrSkip {
			nv.Value, err = driver.DefaultParameterConverter.ConvertValue(nv.Value)
		}
		if err != nil {
			return nil, fmt.Errorf("hv: converting argument $%d (%T): %w", nv.Ordinal, args[i].Value, err)
		}
		out[i] = nv
	}
	return out, nil
}

// trackingConnector wraps the inner driver's connector so every physical
// connection it opens is a *physConn.
type trackingConnector struct {
	inner    driver.Connector
	switches *atomic.Int64
	txMode   bool
	ext      string
}

func (t trackingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	c, err := t.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	p := &physConn{Conn: c, switches: t.switches, txMode: t.txMode, ext: t.ext}
	if !t.txMode {
		p.px = newPgxSession(c)
	}
	return p, nil
}

func (t trackingConnector) Driver() driver.Driver { return t.inner.Driver() }

// query runs a statement that returns rows on t's schema: through hv's own
// path on pgx when it serves the statement, else on the inner connection
// after switching schema, converting the arguments first. A statement that
// may change search_path makes the connection forget its schema, and so
// does any error. Outside a transaction, a statement the server refused
// with "cached plan must not change result type" (the inner driver's cached
// plan was made on another shard's schema, whose table differs) is sent
// once more: the server raises it before executing anything, and the inner
// driver has dropped the plan.
func (p *physConn) query(ctx context.Context, t target, query string, args []driver.NamedValue) (driver.Rows, error) {
	if p.px != nil && p.px.serves(p, t, query, args) {
		return p.px.query(ctx, p, t, query, args)
	}
	if err := p.useSchema(ctx, t); err != nil {
		return nil, err
	}
	nargs, err := p.convert(args)
	if err != nil {
		return nil, err
	}
	q, ok := p.Conn.(driver.QueryerContext)
	if !ok {
		return nil, errors.New("hv: inner driver connection does not implement QueryerContext")
	}
	if p.txMode && !t.inTx {
		return p.queryLocal(ctx, q, query, nargs)
	}
	p.forgetFor(query)
	rows, err := q.QueryContext(ctx, query, nargs)
	if err != nil && !t.inTx && isStalePlan(err) {
		rows, err = q.QueryContext(ctx, query, nargs)
	}
	if err != nil {
		p.schema = ""
	}
	return rows, err
}

// exec is query for statements that return no rows.
func (p *physConn) exec(ctx context.Context, t target, query string, args []driver.NamedValue) (driver.Result, error) {
	if p.px != nil && p.px.serves(p, t, query, args) {
		return p.px.exec(ctx, p, t, query, args)
	}
	if err := p.useSchema(ctx, t); err != nil {
		return nil, err
	}
	return p.execInner(ctx, query, args, t.inTx)
}

// execInner runs query on the inner connection after converting its
// arguments, on the schema the session is on (in pool_mode=transaction, on
// the one useSchema named).
func (p *physConn) execInner(ctx context.Context, query string, args []driver.NamedValue, inTx bool) (driver.Result, error) {
	nargs, err := p.convert(args)
	if err != nil {
		return nil, err
	}
	ex, ok := p.Conn.(driver.ExecerContext)
	if !ok {
		return nil, errors.New("hv: inner driver connection does not implement ExecerContext")
	}
	if p.txMode && !inTx {
		return p.execLocal(ctx, ex, query, nargs)
	}
	p.forgetFor(query)
	res, err := ex.ExecContext(ctx, query, nargs)
	if err != nil && !inTx && isStalePlan(err) {
		res, err = ex.ExecContext(ctx, query, nargs)
	}
	if err != nil {
		p.schema = ""
	}
	return res, err
}

// forgetFor makes the connection forget its schema before a statement that
// may change search_path, and hv's prepared statements before one that may
// drop them (DEALLOCATE, DISCARD).
func (p *physConn) forgetFor(query string) {
	if changesSearchPath(query) {
		p.schema = ""
	}
	if p.px != nil {
		switch firstKeyword(query) {
		case "deallocate", "discard":
			p.px.forget()
		}
	}
}

// isStalePlan reports whether err is PostgreSQL's "cached plan must not
// change result type" (SQLSTATE 0A000 is shared with other "feature not
// supported" errors, hence the message check).
func isStalePlan(err error) bool {
	var se interface {
		SQLState() string
		error
	}
	return errors.As(err, &se) && se.SQLState() == "0A000" &&
		strings.Contains(se.Error(), "cached plan must not change result type")
}
