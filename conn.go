package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"time"
)

// conn is hv's virtual connection: what the outer *sql.DB pools. It holds a
// physical connection of one host only while database/sql has it checked out
// and a statement has needed one: from the first statement until the
// connection goes back to the outer pool (IsValid) or is closed. A *sql.Conn
// or *sql.Tx therefore stays on one physical connection and one shard.
//
// conn routes; the session behind the physical connection sends
// (session.go).
type conn struct {
	connector     *Connector
	ownsConnector bool

	// intended is the shard named by the context the connection was checked
	// out with (db.Conn(hv.WithShard(ctx, n))), or -1; intendedErr is why
	// that context's shard key could not be mapped.
	intended    int
	intendedErr error
	// fixed is the shard of a connection of Connector.ForShard, for its
	// whole life (forshard.go), or -1.
	fixed int

	// The physical lease, when held: where the shard lives, the inner
	// pool's connection and the shard_max slot it holds.
	place   *placement
	phys    *sql.Conn
	slot    *semaphore
	tx      *tx
	rows    *rows // the open rows, if any: rowsBuf, one at a time
	rowsBuf rows
}

var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
)

// checkout records the shard the checkout context names.
func (c *conn) checkout(ctx context.Context) {
	c.intended, c.intendedErr = c.fixed, nil
	if c.fixed >= 0 {
		return
	}
	if s, ok, err := c.connector.shardOf(ctx, c.connector.fleet.Load()); ok {
		c.intended = s
	} else {
		c.intendedErr = err
	}
}

// ResetSession is called by database/sql each time it hands the connection
// out again; the context is the caller's, so it carries the shard.
func (c *conn) ResetSession(ctx context.Context) error {
	if c.connector.closed.Load() {
		return driver.ErrBadConn
	}
	c.release()
	c.checkout(ctx)
	return nil
}

// IsValid is called by database/sql each time the connection goes back to
// the outer pool: the physical connection goes back to its host's pool.
func (c *conn) IsValid() bool {
	c.release()
	c.intended, c.intendedErr = c.fixed, nil
	return !c.connector.closed.Load()
}

// Close releases the physical connection, if any.
func (c *conn) Close() error {
	c.release()
	if c.ownsConnector {
		return c.connector.Close()
	}
	return nil
}

// release gives the physical connection back to its host. A connection
// with a transaction still open is discarded rather than pooled.
func (c *conn) release() {
	if c.phys == nil {
		return
	}
	if c.rows != nil {
		_ = c.rows.Close()
	}
	if c.tx != nil {
		c.tx = nil
		discard(c.phys)
	}
	c.place.host.release(c.phys, c.slot)
	c.place, c.phys, c.slot = nil, nil, nil
}

// CheckNamedValue passes every argument through unchanged; the inner
// driver's own conversion runs when the statement executes.
func (c *conn) CheckNamedValue(*driver.NamedValue) error { return nil }

// route returns the shard a statement with ctx runs on, mapped on fleet f:
// the shard the connection is pinned to, else the one on ctx, else the
// checkout's.
func (c *conn) route(ctx context.Context, f *fleet) (int, error) {
	s, ok, err := c.connector.shardOf(ctx, f)
	if err != nil {
		return 0, err
	}
	pinned := c.intended
	if c.place != nil {
		pinned = c.place.shard
	}
	switch {
	case pinned >= 0 && ok && s != pinned:
		return 0, errorf(ErrShardMismatch, "statement for shard %d on a connection of shard %d", s, pinned)
	case pinned >= 0:
		return pinned, nil
	case ok:
		return s, nil
	case c.intendedErr != nil:
		return 0, c.intendedErr
	}
	return 0, ErrNoShard
}

// lease routes ctx and makes sure the connection holds a physical connection
// of the shard's host. The fleet is read once, so that a shard mapped from
// a key is placed by the same generation; a pool retired by Reconfigure
// between the two makes the statement route again on the new fleet.
func (c *conn) lease(ctx context.Context) error {
	return c.leaseOn(ctx, c.connector.fleet.Load(), replicaFrom(ctx) && c.tx == nil)
}

// leaseOn is lease on fleet f, which may be replaced while it runs; replica
// asks for a replica of the shard's host (replica.go). A connection that
// holds a physical one keeps it, replica or primary: a *sql.Conn stays on
// one physical connection.
func (c *conn) leaseOn(ctx context.Context, f *fleet, replica bool) error {
	for {
		shard, err := c.route(ctx, f)
		if err != nil || c.phys != nil {
			return err
		}
		if c.connector.closed.Load() {
			return ErrClosed
		}
		p, err := f.place(shard)
		if err != nil {
			return err
		}
		p, pc, slot, err := f.acquireFor(ctx, p, replica)
		if err == errPoolRetired {
			next := c.connector.fleet.Load()
			if next == f { // closed, not reconfigured
				return ErrClosed
			}
			f = next
			continue
		}
		if err != nil {
			return err
		}
		if !p.host.checked.Load() && c.connector.checkHost(ctx, f, p, pc) { // moved.go
			p.host.release(pc, slot)
			f = c.connector.fleet.Load()
			continue
		}
		c.place, c.phys, c.slot = p, pc, slot
		return nil
	}
}

// fail adds the shard and host to a statement error, and drops the physical
// connection when database/sql's Raw has discarded it.
func (c *conn) fail(err error) error {
	if err == nil {
		return nil
	}
	err = shardErr(c.place.shard, c.place.host.name, err)
	if errors.Is(err, driver.ErrBadConn) {
		c.release()
	}
	return err
}

// QueryContext runs query on the shard's schema and returns its rows; the
// physical connection stays with the rows until they are closed.
func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if route, ok := fanOutFrom(ctx); ok {
		return c.fanOutQuery(ctx, route, query, args)
	}
	if c.rows != nil {
		return nil, ErrConnBusy
	}
	ctx, tr := c.trace(ctx, OpQuery, query) // ended when the rows close
	var inner driver.Rows
	if err := c.send(ctx, &tr, func(s *session) error {
		var err error
		inner, err = s.query(ctx, c.place, query, args)
		return err
	}); err != nil {
		return nil, err
	}
	if ryw := rywFrom(ctx); ryw != nil && !c.place.onReplica() && queryWrites(query) {
		if c.tx != nil {
			c.tx.ryw = ryw // noted at COMMIT
		} else {
			ryw.record(c.place, time.Time{}, true) // it ends with its rows: unknown
		}
	}
	r := &c.rowsBuf
	*r = rows{c: c, phys: c.phys, inner: inner, traced: tr}
	c.rows = r
	return r, nil
}

// send leases a connection on the shard and runs fn on its session; a
// statement that met the fenced copy of a shard that moved (moved.go) runs
// once more, on the new owner. Errors are c.fail's, and end tr.
func (c *conn) send(ctx context.Context, tr *traced, fn func(s *session) error) error {
	for attempt := 0; ; attempt++ {
		if err := c.lease(ctx); err != nil {
			return tr.end(nil, err)
		}
		var start time.Time
		debug := c.connector.debugEnabled(ctx)
		if debug {
			start = time.Now()
		}
		err := withSession(c.phys, fn)
		c.place.countStatement(err)
		if debug {
			c.connector.logStatement(ctx, c.place, start, err)
		}
		if err == nil {
			return nil
		}
		p := c.place
		if attempt > 0 || !mayBeMoved(err) {
			return tr.end(p, c.fail(err))
		}
		if retry, err := c.afterMoved(ctx, err); !retry { // moved.go
			return tr.end(p, err)
		}
	}
}

// ExecContext runs query on the shard's schema.
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if route, ok := fanOutFrom(ctx); ok {
		return c.fanOutExec(ctx, route, query, args)
	}
	if c.rows != nil {
		return nil, ErrConnBusy
	}
	ctx, tr := c.trace(ctx, OpExec, query)
	var res driver.Result
	if err := c.send(ctx, &tr, func(s *session) error {
		var err error
		res, err = s.exec(ctx, c.place, query, args)
		return err
	}); err != nil {
		return nil, err
	}
	tr.end(c.place, nil)
	if ryw := rywFrom(ctx); ryw != nil && c.tx != nil && !c.place.onReplica() {
		c.tx.ryw = ryw // noted at COMMIT
	} else {
		c.noteWrite(ryw) // readyourwrites.go
	}
	return res, nil
}

// PrepareContext returns a statement that keeps the SQL and runs it on the
// shard of each execution's context; nothing is sent to a server here.
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if isCopyFromStdin(query) {
		return c.prepareCopy(ctx, query) // copy.go
	}
	if _, err := c.route(ctx, c.connector.fleet.Load()); err != nil && !errors.Is(err, ErrNoShard) {
		return nil, err
	}
	return &stmt{c: c, query: query}, nil
}

// Prepare is PrepareContext with a background context.
func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// BeginTx starts a transaction on the shard's schema (the session switches
// before BEGIN, on pgx in the same message).
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if c.tx != nil {
		return nil, errors.New("hv: a transaction is already open on this connection")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, ok := fanOutFrom(ctx); ok {
		return nil, ErrFanOutPinned
	}
	tctx, tr := c.trace(ctx, OpBegin, "BEGIN")
	if err := c.leaseOn(tctx, c.connector.fleet.Load(), replicaFrom(ctx) && opts.ReadOnly); err != nil {
		return nil, tr.end(nil, err)
	}
	var itx driver.Tx
	err := withSession(c.phys, func(s *session) error {
		var err error
		itx, err = s.begin(tctx, c.place, opts)
		return err
	})
	if err != nil {
		p := c.place
		return nil, tr.end(p, c.fail(err))
	}
	tr.end(c.place, nil)
	c.tx = &tx{c: c, inner: itx, ctx: ctx}
	if !opts.ReadOnly && !c.place.onReplica() {
		c.tx.ryw = rywFrom(ctx)
	}
	return c.tx, nil
}

// Begin is BeginTx with a background context and default options.
func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// Ping checks the shard's host when the context names a shard (or the
// connection is pinned to one), and every host otherwise.
func (c *conn) Ping(ctx context.Context) error {
	if _, err := c.route(ctx, c.connector.fleet.Load()); errors.Is(err, ErrNoShard) {
		return c.connector.pingAll(ctx)
	}
	if err := c.lease(ctx); err != nil {
		return err
	}
	return c.fail(withSession(c.phys, func(s *session) error { return s.ping(ctx) }))
}
