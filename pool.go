package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"log/slog"
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
