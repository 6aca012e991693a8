package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
)

// COPY FROM STDIN through database/sql. lib/pq enters COPY mode only in its
// own Prepare (tx.Prepare(pq.CopyIn(...)), then one Exec per row and a
// last Exec without arguments), while hv's prepared statements keep only
// the SQL; so hv prepares such a statement on the inner lib/pq connection
// of the transaction and forwards the Execs to it. pgx's COPY is
// (*pgx.Conn).CopyFrom, reached through Raw.

// errCopyNeedsTx and errCopyPgx say what to use instead.
var (
	errCopyNeedsTx = errors.New("hv: COPY FROM STDIN needs a transaction on its shard: " +
		"tx, _ := db.BeginTx(hv.WithShard(ctx, n), nil); stmt, _ := tx.Prepare(pq.CopyIn(table, columns...))")
	errCopyPgx = errors.New("hv: COPY FROM STDIN cannot go through Prepare with driver=pgx: " +
		"use hv.Raw(ctx, db, shard, func(c any) error { … c.(*stdlib.Conn).Conn().CopyFrom(…) }), or driver=postgres and pq.CopyIn")
)

// isCopyFromStdin reports whether query is a COPY ... FROM STDIN statement.
func isCopyFromStdin(query string) bool {
	q := strings.TrimLeft(query, " \t\r\n\f(")
	return len(q) > 4 && strings.EqualFold(q[:4], "copy") && !isWordByte(q[4]) &&
		containsFold(q, "from stdin")
}

// prepareCopy prepares a COPY FROM STDIN statement on the inner lib/pq
// connection of the connection's transaction.
func (c *conn) prepareCopy(ctx context.Context, query string) (driver.Stmt, error) {
	if c.connector.Config().Driver == "pgx" {
		return nil, errCopyPgx
	}
	if c.tx == nil || c.phys == nil {
		return nil, errCopyNeedsTx
	}
	if _, err := c.route(ctx, c.connector.fleet.Load()); err != nil {
		return nil, err
	}
	var inner driver.Stmt
	err := withSession(c.phys, func(s *session) error {
		var err error
		inner, err = s.prepareInner(ctx, query)
		return err
	})
	if err != nil {
		return nil, c.fail(err)
	}
	return &copyStmt{c: c, phys: c.phys, inner: inner}, nil
}

// copyStmt is a COPY FROM STDIN statement prepared on the inner connection:
// each Exec with arguments sends a row, an Exec without arguments (or Close)
// ends the COPY.
type copyStmt struct {
	c     *conn
	phys  *sql.Conn // the connection the statement was prepared on
	inner driver.Stmt
}

var _ driver.StmtExecContext = (*copyStmt)(nil)

// run calls fn on the inner statement while the transaction holds the
// connection it was prepared on.
func (s *copyStmt) run(fn func() error) error {
	if s.c.phys == nil || s.c.phys != s.phys {
		return errors.New("hv: COPY statement used after its transaction ended")
	}
	return s.c.fail(s.c.phys.Raw(func(any) error { return fn() }))
}

// Close ends the COPY, if still open, and closes the inner statement.
func (s *copyStmt) Close() error {
	if s.c.phys == nil || s.c.phys != s.phys {
		return nil // the connection, and with it the statement, is gone
	}
	return s.run(s.inner.Close)
}

// NumInput is -1: a row has as many values as the COPY has columns.
func (s *copyStmt) NumInput() int { return -1 }

// Exec sends one row, or ends the COPY when args is empty.
func (s *copyStmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.ExecContext(context.Background(), namedValues(args))
}

// ExecContext is Exec with a context, which the inner statement gets when
// it takes one.
func (s *copyStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	vals := make([]driver.Value, len(args))
	for i, a := range args {
		v, err := driver.DefaultParameterConverter.ConvertValue(a.Value)
		if err != nil {
			return nil, fmt.Errorf("hv: COPY: converting value %d (%T): %w", i+1, a.Value, err)
		}
		vals[i] = v
		args[i].Value = v
	}
	var res driver.Result
	err := s.run(func() error {
		var err error
		if ec, ok := s.inner.(driver.StmtExecContext); ok {
			res, err = ec.ExecContext(ctx, args)
		} else {
			res, err = s.inner.Exec(vals) //nolint:staticcheck // the inner driver has no ExecContext
		}
		return err
	})
	return res, err
}

// Query is refused: COPY FROM STDIN returns no rows.
func (s *copyStmt) Query([]driver.Value) (driver.Rows, error) {
	return nil, errors.New("hv: COPY FROM STDIN returns no rows: use Exec")
}
