package hv

// Transaction pool mode (pool_mode=transaction), for hosts behind PgBouncer
// in transaction pooling mode. There, consecutive transactions of one client
// connection may run on different server connections, so no session state
// survives a transaction: a session-level SET search_path could leak to
// another client and hv's memory of the schema a connection is on means
// nothing. In this mode hv therefore never sends a session-level SET and
// never remembers a schema; instead every statement carries its schema
// inside its own transaction:
//
//   - Exec outside a transaction: one simple-protocol message
//     `SET LOCAL search_path TO "shard0005"; <statement>`. PostgreSQL runs
//     the statements of one message in an implicit transaction block, so SET
//     LOCAL holds for the statement and ends with it, and PgBouncer keeps the
//     server connection for the whole message. Arguments are interpolated by
//     pgx on the client (pgx.QueryExecModeSimpleProtocol). One round trip,
//     as in session mode when the connection is already on the schema.
//     Statements that refuse to run in a transaction block (VACUUM, CREATE
//     INDEX CONCURRENTLY, ...) fail in this mode.
//   - BeginTx: one simple-protocol message `BEGIN <options>; SET LOCAL
//     search_path TO "x"`, then COMMIT/ROLLBACK: the same round trips as a
//     transaction in session mode.
//   - Query outside a transaction: `BEGIN; SET LOCAL search_path TO "x"`,
//     the query, and COMMIT (ROLLBACK on error) when its rows are closed:
//     two more round trips than in session mode, because database/sql rows
//     from pgx can only come from a message's first result. Group reads in
//     a transaction to pay them once.
//
// pgx's statement cache (named prepared statements, which PgBouncer before
// 1.21 cannot follow across server connections) is turned off by giving
// each host default_query_exec_mode=exec unless it sets one of the modes in
// txModeExecModes.

import (
	"context"
	"database/sql/driver"
	"errors"
	"reflect"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// txModeExecModes are the pgx default_query_exec_mode values that use no
// named prepared statement and no cached description, so work through a
// transaction pooler.
var txModeExecModes = map[string]bool{"exec": true, "simple_protocol": true, "describe_exec": true}

// errNoSchema guards against running a statement in transaction mode with
// no schema: it must never run on whatever search_path the server has.
var errNoSchema = errors.New("hv: pool_mode transaction: statement has no schema")

// setLocal returns the statement that sets search_path to schema (and the
// extension schema ext) for the current transaction only.
func setLocal(schema, ext string) string {
	return searchPathSQL(true, schema, ext)
}

// takePending returns the schema useSchema named for the next statement,
// and forgets it.
func (p *physConn) takePending() (string, error) {
	s := p.pending
	p.pending = ""
	if s == "" {
		return "", errNoSchema
	}
	return s, nil
}

// execLocal runs query on schema in one message with SET LOCAL.
func (p *physConn) execLocal(ctx context.Context, ex driver.ExecerContext, query string, args []driver.NamedValue) (driver.Result, error) {
	schema, err := p.takePending()
	if err != nil {
		return nil, err
	}
	if len(args) > 0 {
		a := make([]driver.NamedValue, 0, len(args)+1)
		a = append(a, driver.NamedValue{Value: pgx.QueryExecModeSimpleProtocol})
		args = append(a, args...)
	}
	return ex.ExecContext(ctx, setLocal(schema, p.ext)+"; "+query, args)
}

// queryLocal runs query on schema in a transaction of its own, which the
// returned rows commit when they are closed.
func (p *physConn) queryLocal(ctx context.Context, q driver.QueryerContext, query string, args []driver.NamedValue) (driver.Rows, error) {
	schema, err := p.takePending()
	if err != nil {
		return nil, err
	}
	if err := p.execPlain(ctx, "BEGIN; "+setLocal(schema, p.ext)); err != nil {
		return nil, err
	}
	rows, err := q.QueryContext(ctx, query, args)
	if err != nil {
		_ = p.endLocal("ROLLBACK")
		return nil, err
	}
	return &localRows{Rows: rows, p: p}, nil
}

// beginLocal starts a transaction on the pending schema with one message.
func (p *physConn) beginLocal(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	schema, err := p.takePending()
	if err != nil {
		return nil, err
	}
	begin, err := beginStatement(opts)
	if err != nil {
		return nil, err
	}
	if err := p.execPlain(ctx, begin+"; "+setLocal(schema, p.ext)); err != nil {
		return nil, err
	}
	return localTx{p: p}, nil
}

// execPlain sends a statement without arguments (simple protocol).
func (p *physConn) execPlain(ctx context.Context, stmt string) error {
	ex, ok := p.Conn.(driver.ExecerContext)
	if !ok {
		return errors.New("hv: inner driver connection does not implement ExecerContext")
	}
	_, err := ex.ExecContext(ctx, stmt, nil)
	return err
}

// endLocal sends COMMIT or ROLLBACK. A COMMIT the server turned into a
// rollback (the transaction had failed) returns pgx.ErrTxCommitRollback.
// It is not cancelled with any statement's context.
func (p *physConn) endLocal(stmt string) error {
	ctx := context.Background()
	sc, ok := p.Conn.(*stdlib.Conn)
	if !ok {
		return p.execPlain(ctx, stmt)
	}
	tag, err := sc.Conn().Exec(ctx, stmt)
	if err != nil {
		return err
	}
	if stmt == "COMMIT" && tag.String() == "ROLLBACK" {
		return pgx.ErrTxCommitRollback
	}
	return nil
}

// localTx is a transaction begun by beginLocal.
type localTx struct{ p *physConn }

func (t localTx) Commit() error   { return t.p.endLocal("COMMIT") }
func (t localTx) Rollback() error { return t.p.endLocal("ROLLBACK") }

// localRows are the rows of queryLocal: closing them ends the query's
// transaction, with COMMIT when they were read without error (the query may
// have written: INSERT ... RETURNING, nextval) and ROLLBACK otherwise.
type localRows struct {
	driver.Rows
	p     *physConn
	ended bool
}

func (r *localRows) Close() error {
	err := r.Rows.Close()
	if r.ended {
		return err
	}
	r.ended = true
	if err != nil {
		_ = r.p.endLocal("ROLLBACK")
		return err
	}
	return r.p.endLocal("COMMIT")
}

// The optional rows interfaces hv forwards.

func (r *localRows) ColumnTypeDatabaseTypeName(i int) string {
	if t, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return t.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *localRows) ColumnTypeLength(i int) (int64, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeLength); ok {
		return t.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *localRows) ColumnTypeNullable(i int) (nullable, ok bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeNullable); ok {
		return t.ColumnTypeNullable(i)
	}
	return false, false
}

func (r *localRows) ColumnTypePrecisionScale(i int) (precision, scale int64, ok bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypePrecisionScale); ok {
		return t.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func (r *localRows) ColumnTypeScanType(i int) reflect.Type {
	if t, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return t.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}
