package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// hostPool is one physical host: its own *sql.DB of the inner driver, capped
// at pool_max open connections, and a semaphore of the same size that bounds
// how long a statement may wait for one of them.
type hostPool struct {
	name         string
	shards       ShardRange
	db           *sql.DB
	permits      chan struct{}
	poolMax      int
	blockTimeout time.Duration
	logger       *slog.Logger

	waits     atomic.Int64
	waitNanos atomic.Int64
	timeouts  atomic.Int64
}

// acquire takes a connection of the host for shard, waiting at most the pool
// block timeout for a free one. The caller must release it with h.release.
func (h *hostPool) acquire(ctx context.Context, shard int) (*sql.Conn, error) {
	select {
	case h.permits <- struct{}{}:
	default:
		if err := h.wait(ctx, shard); err != nil {
			return nil, err
		}
	}
	// Holding a permit, the inner pool never makes us wait: it has as many
	// connections as there are permits. It may have to connect.
	c, err := h.db.Conn(ctx)
	if err != nil {
		<-h.permits
		return nil, fmt.Errorf("hv: shard %d on host %s: %w", shard, h.name, err)
	}
	return c, nil
}

func (h *hostPool) wait(ctx context.Context, shard int) error {
	start := time.Now()
	h.waits.Add(1)
	defer func() { h.waitNanos.Add(int64(time.Since(start))) }()
	if h.blockTimeout > 0 {
		t := time.NewTimer(h.blockTimeout)
		defer t.Stop()
		select {
		case h.permits <- struct{}{}:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("hv: shard %d on host %s: waiting for a connection: %w", shard, h.name, context.Cause(ctx))
		case <-t.C:
		}
	}
	h.timeouts.Add(1)
	if h.logger != nil {
		h.logger.LogAttrs(ctx, slog.LevelWarn, "hv: pool timeout",
			slog.Int("shard", shard), slog.String("host", h.name),
			slog.Int("pool_max", h.poolMax), slog.Duration("block_timeout", h.blockTimeout))
	}
	return fmt.Errorf("%w: shard %d on host %s: all %d connections busy for %v",
		ErrPoolTimeout, shard, h.name, h.poolMax, h.blockTimeout)
}

// release gives a connection taken with acquire back to the host's pool.
func (h *hostPool) release(c *sql.Conn) {
	_ = c.Close() // ErrConnDone when Raw already discarded it.
	<-h.permits
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
}

// useSchema sets search_path with setPath unless the session is known to be
// on schema already. What it remembers is set only after a successful switch.
func (p *physConn) useSchema(ctx context.Context, schema, setPath string) error {
	if p.schema == schema {
		return nil
	}
	p.schema = ""
	ex, ok := p.Conn.(driver.ExecerContext)
	if !ok {
		return errors.New("hv: inner driver connection does not implement ExecerContext")
	}
	if _, err := ex.ExecContext(ctx, setPath, nil); err != nil {
		return err
	}
	p.schema = schema
	return nil
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
	inner driver.Connector
}

func (t trackingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	c, err := t.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &physConn{Conn: c}, nil
}

func (t trackingConnector) Driver() driver.Driver { return t.inner.Driver() }

// query runs a statement that returns rows on the inner connection, after
// converting its arguments. A statement that may change search_path makes
// the connection forget its schema, and so does any error. Outside a
// transaction, a statement the server refused with "cached plan must not
// change result type" (the inner driver's cached plan was made on another
// shard's schema, whose table differs) is sent once more: the server raises
// it before executing anything, and the inner driver has dropped the plan.
func (p *physConn) query(ctx context.Context, query string, args []driver.NamedValue, inTx bool) (driver.Rows, error) {
	nargs, err := p.convert(args)
	if err != nil {
		return nil, err
	}
	q, ok := p.Conn.(driver.QueryerContext)
	if !ok {
		return nil, errors.New("hv: inner driver connection does not implement QueryerContext")
	}
	if changesSearchPath(query) {
		p.schema = ""
	}
	rows, err := q.QueryContext(ctx, query, nargs)
	if err != nil && !inTx && isStalePlan(err) {
		rows, err = q.QueryContext(ctx, query, nargs)
	}
	if err != nil {
		p.schema = ""
	}
	return rows, err
}

// exec is query for statements that return no rows.
func (p *physConn) exec(ctx context.Context, query string, args []driver.NamedValue, inTx bool) (driver.Result, error) {
	nargs, err := p.convert(args)
	if err != nil {
		return nil, err
	}
	ex, ok := p.Conn.(driver.ExecerContext)
	if !ok {
		return nil, errors.New("hv: inner driver connection does not implement ExecerContext")
	}
	if changesSearchPath(query) {
		p.schema = ""
	}
	res, err := ex.ExecContext(ctx, query, nargs)
	if err != nil && !inTx && isStalePlan(err) {
		res, err = ex.ExecContext(ctx, query, nargs)
	}
	if err != nil {
		p.schema = ""
	}
	return res, err
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
