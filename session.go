package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"sync/atomic"

	"github.com/jackc/pgx/v5/stdlib"
)

// session is one physical connection of a host: the inner driver's
// connection and what hv knows of its state, the schema its search_path is
// on and whether a transaction is open. It is what the host's inner
// *sql.DB pools (it is the driver.Conn hv's sessionConnector opens), and it
// is used only inside (*sql.Conn).Raw, so one goroutine at a time.
//
// Only the session's own methods (this file and the senders in
// session_pgx.go, session_std.go and session_txmode.go) change that state;
// routing code (conn.go, fanout.go) asks and sends through query, exec and
// begin.
type session struct {
	inner driver.Conn
	send  sender

	// schema is the schema search_path is known to be on, or "" when
	// unknown; written only by setSchema and forgetSchema.
	schema string
	// inTx is set while a transaction begun by begin is open.
	inTx bool
	// switches counts the host's search_path switches.
	switches *atomic.Int64
}

// sender sends a session's statements one way: hv's own pgconn path
// (pgxSender), the inner driver's own (stdSender), or pool_mode=transaction's
// (txSender). It changes the session's state only through its methods.
type sender interface {
	query(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (driver.Rows, error)
	exec(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (driver.Result, error)
	begin(ctx context.Context, s *session, t *placement, opts driver.TxOptions) (driver.Tx, error)
	// useSchema puts the session on t's schema before the caller hands the
	// inner connection out (hv.Raw).
	useSchema(ctx context.Context, s *session, t *placement) error
}

// withSession runs fn with the session behind an inner pool's connection.
func withSession(c *sql.Conn, fn func(*session) error) error {
	return c.Raw(func(dc any) error { return fn(dc.(*session)) })
}

// query runs a statement that returns rows on t's schema.
func (s *session) query(ctx context.Context, t *placement, query string, args []driver.NamedValue) (driver.Rows, error) {
	return s.send.query(ctx, s, t, query, args)
}

// exec runs a statement that returns no rows on t's schema.
func (s *session) exec(ctx context.Context, t *placement, query string, args []driver.NamedValue) (driver.Result, error) {
	return s.send.exec(ctx, s, t, query, args)
}

// begin starts a transaction on t's schema. The returned transaction ends
// it through the session, which then forgets its schema when it may have
// been undone.
func (s *session) begin(ctx context.Context, t *placement, opts driver.TxOptions) (driver.Tx, error) {
	if s.inTx {
		return nil, errors.New("a transaction is already open on this connection")
	}
	itx, err := s.send.begin(ctx, s, t, opts)
	if err != nil {
		s.forgetSchema()
		return nil, err
	}
	s.inTx = true
	return &sessionTx{s: s, inner: itx}, nil
}

// lend runs fn with the inner driver's connection on t's schema (hv.Raw).
// The session forgets its schema when fn fails: fn may have changed it.
func (s *session) lend(ctx context.Context, t *placement, fn func(driverConn any) error) error {
	if err := s.send.useSchema(ctx, s, t); err != nil {
		return err
	}
	err := fn(s.inner)
	if err != nil {
		s.forgetSchema()
	}
	return err
}

// ping checks the connection with the inner driver's Ping.
func (s *session) ping(ctx context.Context) error {
	if p, ok := s.inner.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

// on reports whether search_path is known to be on schema.
func (s *session) on(schema string) bool { return s.schema == schema }

// setSchema records that search_path is now on schema.
func (s *session) setSchema(schema string) { s.schema = schema }

// forgetSchema records that search_path is unknown: after an error, or a
// statement that may have changed it.
func (s *session) forgetSchema() { s.schema = "" }

// countSwitch counts a search_path switch sent for t's shard.
func (s *session) countSwitch(t *placement) {
	s.switches.Add(1)
	t.counters.switches.Add(1)
}

// forgetFor makes the session forget its schema before a statement that
// may change search_path.
func (s *session) forgetFor(query string) {
	if changesSearchPath(query) {
		s.forgetSchema()
	}
}

// prepared reports whether hv has statements prepared for schema on the
// session, so that a switch to schema finds them.
func (s *session) prepared(schema string) bool {
	px, ok := s.send.(*pgxSender)
	return ok && px.prepared(schema)
}

// reusable reports whether the connection may serve another statement
// without the inner pool's check: open, valid and not in a transaction.
func (s *session) reusable() bool {
	if sc, ok := s.inner.(*stdlib.Conn); ok {
		pg := sc.Conn().PgConn()
		return !pg.IsClosed() && pg.TxStatus() == 'I'
	}
	return !s.inTx && s.IsValid()
}

// closed reports whether the connection is known to be closed.
func (s *session) closed() bool {
	if sc, ok := s.inner.(*stdlib.Conn); ok {
		return sc.Conn().PgConn().IsClosed()
	}
	return !s.IsValid()
}

// sessionTx is a transaction begun by session.begin.
type sessionTx struct {
	s     *session
	inner driver.Tx
}

// Commit commits; on error the session forgets its schema (a failed
// transaction's COMMIT is a rollback, which undoes a switch made in it).
func (t *sessionTx) Commit() error { return t.end(t.inner.Commit) }

// Rollback rolls back; the session forgets its schema when the switch was
// part of the transaction (see pgxSender.begin) or the rollback failed.
func (t *sessionTx) Rollback() error { return t.end(t.inner.Rollback) }

func (t *sessionTx) end(f func() error) error {
	t.s.inTx = false
	err := f()
	if err != nil {
		t.s.forgetSchema()
	}
	return err
}

// The driver.Conn the inner *sql.DB sees. hv never prepares or begins
// through these: it sends through query, exec and begin.

var (
	_ driver.Conn            = (*session)(nil)
	_ driver.SessionResetter = (*session)(nil)
	_ driver.Validator       = (*session)(nil)
)

func (s *session) Prepare(query string) (driver.Stmt, error) { return s.inner.Prepare(query) }
func (s *session) Close() error                              { return s.inner.Close() }

func (s *session) Begin() (driver.Tx, error) { return s.inner.Begin() } //nolint:staticcheck // driver.Conn has it

// ResetSession forwards the inner pool's health check to the inner driver.
func (s *session) ResetSession(ctx context.Context) error {
	if r, ok := s.inner.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

// IsValid forwards the inner pool's validity check to the inner driver.
func (s *session) IsValid() bool {
	if v, ok := s.inner.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// sessionConnector wraps the inner driver's connector so that every
// physical connection it opens is a *session with the host's sender.
type sessionConnector struct {
	inner    driver.Connector
	switches *atomic.Int64
	txMode   bool
}

func (c sessionConnector) Connect(ctx context.Context) (driver.Conn, error) {
	ic, err := c.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	s := &session{inner: ic, switches: c.switches}
	switch std := (stdSender{}); {
	case c.txMode:
		s.send = newTxSender(ic)
	default:
		if px := newPgxSender(ic); px != nil {
			s.send = px
		} else {
			s.send = std
		}
	}
	return s, nil
}

func (c sessionConnector) Driver() driver.Driver { return c.inner.Driver() }
