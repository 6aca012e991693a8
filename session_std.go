package hv

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/jackc/pgx/v5/stdlib"
)

// stdSender sends a session's statements through the inner driver's own
// statement path (lib/pq, pgx's exec modes other than cache_statement, and
// what pgxSender leaves to it), after a switch of schema in a round trip of
// its own. Outside a transaction, a statement the server refused with
// "cached plan must not change result type" (the inner driver's cached plan
// was made on another shard's schema, whose table differs) is sent once
// more: the server raises it before executing anything, and the inner
// driver has dropped the plan.
type stdSender struct{}

func (stdSender) useSchema(ctx context.Context, s *session, t *placement) error {
	if s.inTx || s.on(t.schema) {
		return nil
	}
	return s.switchSchema(ctx, t)
}

// switchSchema sends t's SET search_path in a round trip of its own.
func (s *session) switchSchema(ctx context.Context, t *placement) error {
	s.forgetSchema()
	s.countSwitch(t)
	if err := s.execPlain(ctx, t.setPath); err != nil {
		return err
	}
	s.setSchema(t.schema)
	return nil
}

func (std stdSender) query(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (driver.Rows, error) {
	if err := std.useSchema(ctx, s, t); err != nil {
		return nil, err
	}
	return s.queryInner(ctx, query, args)
}

func (std stdSender) exec(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (driver.Result, error) {
	if err := std.useSchema(ctx, s, t); err != nil {
		return nil, err
	}
	return s.execInner(ctx, query, args)
}

// begin begins through the inner driver after a switch of its own.
// database/sql rolls back when ctx is cancelled; the inner driver must
// still be able to send that ROLLBACK, so it gets a context that is not
// cancelled with ctx.
func (std stdSender) begin(ctx context.Context, s *session, t *placement, opts driver.TxOptions) (driver.Tx, error) {
	if err := std.useSchema(ctx, s, t); err != nil {
		return nil, err
	}
	b, ok := s.inner.(driver.ConnBeginTx)
	if !ok {
		return nil, errors.New("inner driver connection does not implement ConnBeginTx")
	}
	return b.BeginTx(context.WithoutCancel(ctx), opts)
}

// queryInner runs query on the inner connection, on the schema the session
// is on, converting the arguments first.
func (s *session) queryInner(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	nargs, err := s.convert(args)
	if err != nil {
		return nil, err
	}
	q, ok := s.inner.(driver.QueryerContext)
	if !ok {
		return nil, errors.New("inner driver connection does not implement QueryerContext")
	}
	s.forgetFor(query)
	rows, err := q.QueryContext(ctx, query, nargs)
	if err != nil && !s.inTx && isStalePlan(err) {
		rows, err = q.QueryContext(ctx, query, nargs)
	}
	if err != nil {
		s.forgetSchema()
		return nil, err
	}
	return &stdRows{Rows: rows, s: s}, nil
}

// execInner is queryInner for statements that return no rows.
func (s *session) execInner(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	nargs, err := s.convert(args)
	if err != nil {
		return nil, err
	}
	ex, ok := s.inner.(driver.ExecerContext)
	if !ok {
		return nil, errors.New("inner driver connection does not implement ExecerContext")
	}
	s.forgetFor(query)
	res, err := ex.ExecContext(ctx, query, nargs)
	if err != nil && !s.inTx && isStalePlan(err) {
		res, err = ex.ExecContext(ctx, query, nargs)
	}
	if err != nil {
		s.forgetSchema()
	}
	return res, err
}

// prepareInner prepares query on the inner connection itself: lib/pq
// enters COPY FROM STDIN only from its own Prepare (copy.go).
func (s *session) prepareInner(ctx context.Context, query string) (driver.Stmt, error) {
	if p, ok := s.inner.(driver.ConnPrepareContext); ok {
		return p.PrepareContext(ctx, query)
	}
	return s.inner.Prepare(query)
}

// execPlain sends a statement without arguments (simple protocol).
func (s *session) execPlain(ctx context.Context, stmt string) error {
	ex, ok := s.inner.(driver.ExecerContext)
	if !ok {
		return errors.New("inner driver connection does not implement ExecerContext")
	}
	_, err := ex.ExecContext(ctx, stmt, nil)
	return err
}

// convert applies the inner driver's argument conversion, the way
// database/sql would have, had hv not passed the values through unchanged.
func (s *session) convert(args []driver.NamedValue) ([]driver.NamedValue, error) {
	if len(args) == 0 {
		return args, nil
	}
	if _, ok := s.inner.(*stdlib.Conn); ok {
		return args, nil // pgx accepts every value as it is.
	}
	checker, hasChecker := s.inner.(driver.NamedValueChecker)
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
			return nil, fmt.Errorf("converting argument $%d (%T): %w", nv.Ordinal, args[i].Value, err)
		}
		out[i] = nv
	}
	return out, nil
}

// stdRows are the inner driver's rows of a session's statement: the session
// forgets its schema when they end in an error, and end, when set, runs at
// Close (pool_mode=transaction ends the statement's transaction there).
type stdRows struct {
	driver.Rows
	s      *session
	end    func(err error) error
	closed bool
}

func (r *stdRows) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.Rows.Close()
	if r.end != nil {
		err = r.end(err)
	}
	if err != nil {
		r.s.forgetSchema()
	}
	return err
}

func (r *stdRows) ColumnTypeDatabaseTypeName(i int) string { return columnDatabaseTypeName(r.Rows, i) }
func (r *stdRows) ColumnTypeLength(i int) (int64, bool)    { return columnLength(r.Rows, i) }
func (r *stdRows) ColumnTypeNullable(i int) (bool, bool)   { return columnNullable(r.Rows, i) }
func (r *stdRows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	return columnPrecisionScale(r.Rows, i)
}
func (r *stdRows) ColumnTypeScanType(i int) reflect.Type { return columnScanType(r.Rows, i) }
func (r *stdRows) HasNextResultSet() bool                { return hasNextResultSet(r.Rows) }
func (r *stdRows) NextResultSet() error                  { return nextResultSet(r.Rows) }

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
