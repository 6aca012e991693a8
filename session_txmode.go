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
//   - Query outside a transaction, on pgx in exec mode (the mode hv gives
//     each host unless it sets one): one extended-protocol batch,
//     `SELECT pg_catalog.set_config('search_path', $1, true)` and the
//     statement as an unnamed statement (arguments encoded as pgx's
//     QueryExecModeExec encodes them), with one Sync. The statements of one
//     batch share an implicit transaction: the LOCAL setting holds for the
//     statement and is gone after the Sync, and PgBouncer keeps the server
//     connection until the ReadyForQuery that ends it. One round trip, as
//     in session mode. (SET LOCAL in such a batch works too, but warns
//     "SET LOCAL can only be used in transaction blocks"; set_config does
//     not.) Rows are converted as stdlib converts them (session_pgx_rows.go).
//   - Query outside a transaction otherwise (the host sets
//     simple_protocol or describe_exec, or the arguments carry pgx
//     options): `BEGIN; SET LOCAL search_path TO "x"`, the query, and
//     COMMIT (ROLLBACK on error) when its rows are closed: two more round
//     trips.
//
// pgx's statement cache (named prepared statements, which PgBouncer before
// 1.21 cannot follow across server connections) is turned off by giving
// each host default_query_exec_mode=exec unless it sets one of the modes in
// txModeExecModes.
//
// A host that sets default_query_exec_mode=cache_statement says its pooler
// keeps protocol-level named statements across server connections
// (PgBouncer 1.21 or later with max_prepared_statements above 0). There a
// Query outside a transaction goes through hv's statement path
// (session_pgx.go) in its local form: a statement prepared once per schema
// and SQL text, and per schema a prepared set_config('search_path', …,
// true), sent together as one batch with one Sync. The server then runs
// cached plans instead of parsing and planning two unnamed statements on
// every call. The pooler prepares a statement on a server connection that
// lacks it just before its Bind, that is after the batch's set_config, so
// it is parsed under its own schema's search_path, as hv parsed it.
//
// hv.Raw hands out the connection on no schema in this mode: the code given
// it qualifies its names or sets search_path LOCAL in a transaction.

import (
	"context"
	"database/sql/driver"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// txModeExecModes are the pgx default_query_exec_mode values
// pool_mode=transaction accepts: those that use no named prepared statement
// and no cached description, which work through any transaction pooler,
// and cache_statement, for a pooler that keeps named statements (above).
var txModeExecModes = map[string]bool{"exec": true, "simple_protocol": true, "describe_exec": true, "cache_statement": true}

// txSender sends statements in pool_mode=transaction: outside a
// transaction each carries its schema with a LOCAL setting; inside one the
// transaction's SET LOCAL holds and std sends them.
type txSender struct {
	std stdSender
	// px sends queries as one batch with their search_path (nil when the
	// connection is not pgx in exec or cache_statement mode). In exec mode
	// its statement cache stays empty (only unnamed statements are sent);
	// in cache_statement mode it is a local pgxSender (named).
	px *pgxSender
}

// named reports whether queries go as hv's named statements (a host in
// cache_statement mode, behind a pooler that keeps them).
func (tm *txSender) named() bool { return tm.px != nil && tm.px.local }

// newTxSender returns the transaction-mode sender for c.
func newTxSender(c driver.Conn) *txSender {
	tm := &txSender{}
	if sc, ok := c.(*stdlib.Conn); ok && sc.Conn().Config().DefaultQueryExecMode == pgx.QueryExecModeExec {
		tm.px = &pgxSender{conn: sc.Conn()}
	} else if px := newPgxSender(c); px != nil {
		px.local, tm.px = true, px
	}
	return tm
}

// useSchema does nothing: no session-level schema survives a transaction
// behind a transaction pooler.
func (*txSender) useSchema(context.Context, *session, *placement) error { return nil }

// exec runs query on t's schema in one message with SET LOCAL.
func (tm *txSender) exec(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (driver.Result, error) {
	if s.inTx {
		return s.execInner(ctx, query, args)
	}
	if len(args) > 0 {
		a := make([]driver.NamedValue, 0, len(args)+1)
		a = append(a, driver.NamedValue{Value: pgx.QueryExecModeSimpleProtocol})
		args = append(a, args...)
	}
	return s.execInner(ctx, t.localPath+"; "+query, args)
}

// query runs query on t's schema: in one batch with its search_path when
// the connection allows (batched), else in a transaction of its own, which
// the returned rows end when they are closed: with COMMIT when they were
// read without error (the query may have written: INSERT ... RETURNING,
// nextval), ROLLBACK otherwise.
func (tm *txSender) query(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (driver.Rows, error) {
	if s.inTx {
		return s.queryInner(ctx, query, args)
	}
	if tm.named() && tm.px.serves(s, t, query, args) {
		return tm.px.query(ctx, s, t, query, args)
	}
	if !tm.named() && tm.batched(args) {
		rows, err := tm.queryBatch(uncancellable(ctx), s, t, query, args)
		return rows, badConn(err)
	}
	if err := s.execPlain(ctx, "BEGIN; "+t.localPath); err != nil {
		return nil, err
	}
	rows, err := s.queryInner(ctx, query, args)
	if err != nil {
		_ = s.endLocal("ROLLBACK")
		return nil, err
	}
	r := rows.(*stdRows)
	r.end = func(err error) error {
		if err != nil {
			_ = s.endLocal("ROLLBACK")
			return err
		}
		return s.endLocal("COMMIT")
	}
	return r, nil
}

// setLocalPath is the batch's first statement: search_path for the
// batch's implicit transaction only.
const setLocalPath = "SELECT pg_catalog.set_config('search_path', $1, true)"

// batched reports whether a query with args goes as one batch: on pgx in
// exec mode, unless the arguments carry pgx options.
func (tm *txSender) batched(args []driver.NamedValue) bool {
	if tm.px == nil {
		return false
	}
	if len(args) > 0 {
		switch args[0].Value.(type) {
		case pgx.QueryRewriter, pgx.QueryExecMode, pgx.QueryResultFormats, pgx.QueryResultFormatsByOID:
			return false
		}
	}
	return true
}

// queryBatch sends set_config and query with args as one batch and returns
// the query's rows with the first row read.
func (tm *txSender) queryBatch(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (driver.Rows, error) {
	px := tm.px
	if err := px.ready(); err != nil {
		return nil, err
	}
	px.args = px.args[:0]
	for i := range args {
		px.args = append(px.args, args[i].Value)
	}
	err := px.eqb.Build(px.conn.TypeMap(), nil, px.args)
	clear(px.args) // keep no caller's values alive
	if err != nil {
		return nil, err
	}
	var b pgconn.Batch
	b.ExecParams(setLocalPath, [][]byte{[]byte(t.pathValue)}, nil, nil, nil)
	b.ExecParams(query, px.eqb.ParamValues, nil, px.eqb.ParamFormats, px.eqb.ResultFormats)
	mr := px.conn.PgConn().ExecBatch(ctx, &b)
	if err := readSet(mr); err != nil {
		return nil, err
	}
	if !mr.NextResult() {
		return nil, batchEnded(mr)
	}
	r := &px.rows
	*r = pgxRows{px: px, s: s, rr: mr.ResultReader(), mr: mr}
	if err := r.preload(); err != nil {
		return nil, err
	}
	return r, nil
}

// begin starts a transaction on t's schema with one message.
func (*txSender) begin(ctx context.Context, s *session, t *placement, opts driver.TxOptions) (driver.Tx, error) {
	begin, err := beginStatement(opts)
	if err != nil {
		return nil, err
	}
	if err := s.execPlain(ctx, begin+"; "+t.localPath); err != nil {
		return nil, err
	}
	return localTx{s: s}, nil
}

// endLocal sends COMMIT or ROLLBACK. A COMMIT the server turned into a
// rollback (the transaction had failed) returns pgx.ErrTxCommitRollback.
// It is not cancelled with any statement's context.
func (s *session) endLocal(stmt string) error {
	ctx := context.Background()
	sc, ok := s.inner.(*stdlib.Conn)
	if !ok {
		return s.execPlain(ctx, stmt)
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

// localTx is a transaction begun with hv's own BEGIN message.
type localTx struct{ s *session }

func (t localTx) Commit() error   { return t.s.endLocal("COMMIT") }
func (t localTx) Rollback() error { return t.s.endLocal("ROLLBACK") }
