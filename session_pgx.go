package hv

// hv's own statement path on pgx connections.
//
// Two costs dominate a routed statement that database/sql and pgx's stdlib
// cannot avoid on their own:
//
//   - the schema switch: a session-level SET search_path is a round trip of
//     its own, doubling the cost of a point query;
//   - re-analysis: pgx caches one prepared statement per SQL text, and the
//     server re-analyses and re-plans a prepared statement each time it runs
//     under another search_path than last time (and fails with "cached plan
//     must not change result type" when the shards' tables differ).
//
// So on a pgx connection in the default exec mode (cache_statement) hv sends
// statements itself, through pgconn:
//
//   - it prepares each statement once per schema and SQL text, under the
//     schema's search_path, keeping at most statement_cache_capacity of them
//     per connection (least recently used go first), so the server keeps its
//     plans, and one shard's result types never meet another's;
//   - when the connection must switch schema, the SET travels in the same
//     round trip as the statement (one pgconn batch: SET, Bind, Execute,
//     Sync). Both run in the batch's implicit transaction: if the statement
//     fails, the switch is undone with it, and hv forgets the schema. A
//     transaction's switch travels with its BEGIN.
//
// Results are converted as stdlib converts them (session_pgx_rows.go). Statements
// this path does not serve go through stdlib as before, after a switch of
// their own (stdSender): statements that may change search_path, arguments
// carrying pgx options (NamedArgs, QueryExecMode, result formats), and
// connections in pgx's other exec modes.

import (
	"context"
	"database/sql/driver"
	"errors"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// pgxSender is hv's own statement path on one pgx connection, with the
// statements hv prepared on it. Like its session, it is only used inside
// (*sql.Conn).Raw.
type pgxSender struct {
	conn     *pgx.Conn
	capacity int
	// local is set in pool_mode=transaction behind a pooler that keeps
	// named statements (txSender): each statement's switch sets search_path
	// for the batch's implicit transaction only, so it travels with every
	// statement and the session never records a schema.
	local bool

	stmts      map[stmtKey]*stmtEntry
	head, tail *stmtEntry                   // most and least recently used
	schemas    map[string]*schemaStatements // the schemas with statements here
	stale      []string                     // statement names to close on the server
	seq        uint64                       // names statements hv_1, hv_2, ...

	eqb  pgx.ExtendedQueryBuilder
	args []any
	rows pgxRows // reused by each statement: a session runs one at a time
	std  stdSender
}

// schemaStatements is what the connection has prepared for one schema: the
// SET search_path that switches to it (prepared, so that a switch costs the
// server no parsing; with local, a set_config for the transaction only) and
// how many statements.
type schemaStatements struct {
	setName string
	stmts   int
}

// stmtKey names a statement: its SQL text prepared under one schema.
type stmtKey struct{ schema, sql string }

// stmtEntry is a statement prepared on the connection.
type stmtEntry struct {
	key           stmtKey
	sd            *pgconn.StatementDescription
	resultFormats []int16
	valueFuncs    []valueFunc // made by the first rows that need them
	prev, next    *stmtEntry
}

// newPgxSender returns hv's statement path for c, or nil when c's exec mode
// or statement cache leave statements to stdlib.
func newPgxSender(c driver.Conn) *pgxSender {
	sc, ok := c.(*stdlib.Conn)
	if !ok {
		return nil
	}
	cfg := sc.Conn().Config()
	if cfg.DefaultQueryExecMode != pgx.QueryExecModeCacheStatement || cfg.StatementCacheCapacity <= 0 {
		return nil
	}
	return &pgxSender{
		conn:     sc.Conn(),
		capacity: cfg.StatementCacheCapacity,
		stmts:    make(map[stmtKey]*stmtEntry),
		schemas:  make(map[string]*schemaStatements),
	}
}

// serves reports whether this path runs query with args for t.
func (px *pgxSender) serves(s *session, t *placement, query string, args []driver.NamedValue) bool {
	if s.inTx && !s.on(t.schema) {
		// The transaction changed search_path: only the server knows it.
		return false
	}
	if len(args) > 0 {
		switch args[0].Value.(type) {
		case pgx.QueryRewriter, pgx.QueryExecMode, pgx.QueryResultFormats, pgx.QueryResultFormatsByOID:
			return false
		}
	}
	if px.stmts[stmtKey{schema: t.schema, sql: query}] != nil {
		return true // it was vetted when it was prepared
	}
	return !changesSearchPath(query)
}

// prepared reports whether statements for schema are prepared here.
func (px *pgxSender) prepared(schema string) bool { return px.schemas[schema] != nil }

// useSchema switches in a round trip of its own, as stdSender does.
func (px *pgxSender) useSchema(ctx context.Context, s *session, t *placement) error {
	return px.std.useSchema(ctx, s, t)
}

// forgetFor drops hv's prepared statements before a statement that stdlib
// sends and that may drop them (DEALLOCATE, DISCARD).
func (px *pgxSender) forgetFor(query string) {
	switch firstKeyword(query) {
	case "deallocate", "discard":
		px.forget()
	}
}

// query runs query on t's schema and returns its rows, with the first row
// read. Outside a transaction, a statement the server no longer knows or
// whose result type changed (DDL, DEALLOCATE) is prepared again and sent
// once more: the server refused it before executing anything.
func (px *pgxSender) query(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (driver.Rows, error) {
	if !px.serves(s, t, query, args) {
		px.forgetFor(query)
		return px.std.query(ctx, s, t, query, args)
	}
	ctx = uncancellable(ctx)
	rows, err := px.tryQuery(ctx, s, t, query, args)
	if err != nil && !s.inTx && isStaleStatement(err) {
		rows, err = px.tryQuery(ctx, s, t, query, args)
	}
	return rows, badConn(err)
}

func (px *pgxSender) tryQuery(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (driver.Rows, error) {
	e, switching, err := px.statement(ctx, s, t, query)
	if err != nil {
		return nil, err
	}
	if err := px.encode(e, args); err != nil {
		return nil, err
	}
	r := &px.rows
	*r = pgxRows{px: px, s: s, e: e}
	if switching {
		r.mr, r.rr, err = px.sendSwitched(ctx, s, t, e)
		if err != nil {
			return nil, err
		}
		if !px.local {
			r.schema = t.schema
		}
	} else {
		r.rr = px.conn.PgConn().ExecStatement(ctx, e.sd, px.eqb.ParamValues, px.eqb.ParamFormats, e.resultFormats)
	}
	if err := r.preload(); err != nil {
		return nil, err
	}
	return r, nil
}

// exec runs a statement that returns no rows on t's schema. Without
// arguments pgx sends statements with the simple protocol (several
// statements may share the text); hv does too, and when it must switch
// schema it puts the SET in the same message if the text starts with a
// data statement (one that may run in a transaction block, as the message's
// statements do), else it switches with a round trip of its own first.
func (px *pgxSender) exec(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (driver.Result, error) {
	if !px.serves(s, t, query, args) {
		px.forgetFor(query)
		return px.std.exec(ctx, s, t, query, args)
	}
	ctx = uncancellable(ctx)
	if len(args) == 0 {
		return px.execSimple(ctx, s, t, query)
	}
	tag, err := px.tryExec(ctx, s, t, query, args)
	if err != nil && !s.inTx && isStaleStatement(err) {
		tag, err = px.tryExec(ctx, s, t, query, args)
	}
	if err != nil {
		return nil, badConn(err)
	}
	return driver.RowsAffected(tag.RowsAffected()), nil
}

func (px *pgxSender) tryExec(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (pgconn.CommandTag, error) {
	e, switching, err := px.statement(ctx, s, t, query)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	if err := px.encode(e, args); err != nil {
		return pgconn.CommandTag{}, err
	}
	if !switching {
		tag, err := px.conn.PgConn().ExecStatement(ctx, e.sd, px.eqb.ParamValues, px.eqb.ParamFormats, e.resultFormats).Close()
		if err != nil {
			s.forgetSchema()
			px.failed(e, err)
		}
		return tag, err
	}
	mr, rr, err := px.sendSwitched(ctx, s, t, e)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := rr.Close()
	if cerr := mr.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		px.failed(e, err)
		return tag, err
	}
	s.setSchema(t.schema)
	return tag, nil
}

// execSimple runs a statement without arguments with the simple protocol.
func (px *pgxSender) execSimple(ctx context.Context, s *session, t *placement, query string) (driver.Result, error) {
	if !s.inTx && !s.on(t.schema) {
		if !isDataStatement(query) {
			if err := s.switchSchema(ctx, t); err != nil {
				return nil, err
			}
			return s.execInner(ctx, query, nil)
		}
		s.forgetSchema()
		s.countSwitch(t)
		query = t.setPath + ";\n" + query
	}
	if err := px.ready(); err != nil {
		return nil, err
	}
	s.forgetFor(query)
	var tag pgconn.CommandTag
	mr := px.conn.PgConn().Exec(ctx, query)
	for mr.NextResult() {
		tag, _ = mr.ResultReader().Close()
	}
	if err := mr.Close(); err != nil {
		s.forgetSchema()
		return nil, badConn(err)
	}
	s.setSchema(t.schema)
	return driver.RowsAffected(tag.RowsAffected()), nil
}

// begin starts a transaction on t's schema. On a connection that is on
// another one it switches in the same message: "SET search_path TO …;
// BEGIN …". The SET then belongs to the transaction, so a rollback undoes
// it: the returned transaction makes the session forget its schema when it
// ends in one.
func (px *pgxSender) begin(ctx context.Context, s *session, t *placement, opts driver.TxOptions) (driver.Tx, error) {
	if s.on(t.schema) {
		return px.std.begin(ctx, s, t, opts)
	}
	begin, err := beginStatement(opts)
	if err != nil {
		return nil, err
	}
	if err := px.ready(); err != nil {
		return nil, err
	}
	s.forgetSchema()
	s.countSwitch(t)
	if err := px.conn.PgConn().Exec(ctx, t.setPath+"; "+begin).Close(); err != nil {
		return nil, badConn(err)
	}
	s.setSchema(t.schema)
	return switchedTx{s: s}, nil
}

// switchedTx is a transaction begun by begin. It ends with COMMIT or
// ROLLBACK sent through pgx, not cancelled with any statement's context.
type switchedTx struct{ s *session }

// Commit commits; a COMMIT the server turned into a rollback (the
// transaction had failed) undid the switch and returns
// pgx.ErrTxCommitRollback.
func (t switchedTx) Commit() error {
	err := t.s.endLocal("COMMIT")
	if err != nil {
		t.s.forgetSchema()
	}
	return err
}

// Rollback rolls back, the switch with it.
func (t switchedTx) Rollback() error {
	t.s.forgetSchema()
	return t.s.endLocal("ROLLBACK")
}

// statement returns the prepared statement for query on t's schema,
// preparing it when the connection has none, and whether the session must
// still switch to t's schema to run it (a preparation switches first).
func (px *pgxSender) statement(ctx context.Context, s *session, t *placement, query string) (*stmtEntry, bool, error) {
	if err := px.ready(); err != nil {
		return nil, false, err
	}
	switching := !s.inTx && !s.on(t.schema)
	key := stmtKey{schema: t.schema, sql: query}
	if e := px.stmts[key]; e != nil {
		px.touch(e)
		return e, switching, nil
	}
	e, err := px.prepare(ctx, s, t, key, switching)
	// A preparation leaves the session on the schema, unless the switch was
	// local: that one ended with the preparation's batch.
	return e, switching && px.local, err
}

// ready returns driver.ErrBadConn when the connection is closed, as stdlib
// does. (One statement at a time is the caller's rule: conn refuses a
// statement while its rows are open, with ErrConnBusy.)
func (px *pgxSender) ready() error {
	if px.conn.IsClosed() {
		return driver.ErrBadConn
	}
	return nil
}

// encode encodes args for e's parameters into px.eqb.
func (px *pgxSender) encode(e *stmtEntry, args []driver.NamedValue) error {
	px.args = px.args[:0]
	for i := range args {
		px.args = append(px.args, args[i].Value)
	}
	err := px.eqb.Build(px.conn.TypeMap(), e.sd, px.args)
	clear(px.args) // keep no caller's values alive
	return err
}

// sendSwitched sends the switch to t's schema and e with the arguments in
// px.eqb in one round trip, and returns the result of e. hv forgets the
// connection's schema until the caller has read the batch to its end
// without error.
func (px *pgxSender) sendSwitched(ctx context.Context, s *session, t *placement, e *stmtEntry) (*pgconn.MultiResultReader, *pgconn.ResultReader, error) {
	px.startSwitch(s, t)
	var b pgconn.Batch
	b.ExecPrepared(px.schemas[t.schema].setName, nil, nil, nil)
	b.ExecStatement(e.sd, px.eqb.ParamValues, px.eqb.ParamFormats, e.resultFormats)
	mr := px.conn.PgConn().ExecBatch(ctx, &b)
	err := readSet(mr)
	if err == nil {
		if mr.NextResult() { // the statement's
			return mr, mr.ResultReader(), nil
		}
		err = batchEnded(mr)
	}
	px.failed(e, err)
	return nil, nil, err
}

// readSet reads the result of the SET that opens a batch; on error the
// batch is closed.
func readSet(mr *pgconn.MultiResultReader) error {
	if !mr.NextResult() {
		return batchEnded(mr)
	}
	if _, err := mr.ResultReader().Close(); err != nil {
		_ = mr.Close()
		return err
	}
	return nil
}

// batchEnded closes a batch that has no more results than were read, and
// returns why it ended early.
func batchEnded(mr *pgconn.MultiResultReader) error {
	if err := mr.Close(); err != nil {
		return err
	}
	return errors.New("the server sent fewer results than statements")
}

// prepare prepares query under t's schema, switching first when switching
// is set, in one round trip that also prepares the schema's SET when the
// connection has none and closes the statements hv dropped. It makes room
// by dropping the least recently used statement.
func (px *pgxSender) prepare(ctx context.Context, s *session, t *placement, key stmtKey, switching bool) (*stmtEntry, error) {
	if len(px.stmts) >= px.capacity {
		px.drop(px.tail)
	}
	sch := px.schemas[key.schema]
	newSchema := sch == nil
	if newSchema {
		sch = &schemaStatements{setName: px.newName()}
	}
	name := px.newName()
	if switching {
		px.startSwitch(s, t)
	}
	pl := px.conn.PgConn().StartPipeline(ctx)
	for _, n := range px.stale {
		pl.SendDeallocate(n)
	}
	if newSchema {
		pl.SendPrepare(sch.setName, px.setSQL(t), nil)
	}
	if switching {
		pl.SendQueryPrepared(sch.setName, nil, nil, nil)
	}
	pl.SendPrepare(name, key.sql, nil)
	// The results come in order: closes, the SET's description, the SET,
	// the statement's description (the last one).
	var sd *pgconn.StatementDescription
	descriptions := 1
	if newSchema {
		descriptions = 2
	}
	err := pl.Sync()
	for err == nil && descriptions > 0 {
		var res any
		res, err = pl.GetResults()
		switch res := res.(type) {
		case *pgconn.ResultReader:
			_, err = res.Close()
		case *pgconn.StatementDescription:
			sd = res
			descriptions--
		case nil:
			if err == nil {
				err = errors.New("prepare: the server sent fewer results than requests")
			}
		}
	}
	if cerr := pl.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// The closes ran before whatever failed (Close never fails). The
		// SET's Parse may have: close the new names later.
		px.stale = append(px.stale[:0], name)
		if newSchema {
			px.stale = append(px.stale, sch.setName)
		}
		return nil, err
	}
	sd.Name, sd.SQL = name, key.sql // a pipeline's description names neither
	px.stale = px.stale[:0]
	if switching && !px.local {
		s.setSchema(t.schema)
	}
	e := &stmtEntry{key: key, sd: sd, resultFormats: make([]int16, len(sd.Fields))}
	for i := range sd.Fields {
		e.resultFormats[i] = resultFormat(sd.Fields[i].DataTypeOID)
	}
	px.stmts[key] = e
	px.schemas[key.schema] = sch
	sch.stmts++
	px.pushFront(e)
	return e, nil
}

// startSwitch records that a statement switches s to t's schema: the
// session forgets its schema until the switch is known to have run; a
// session-level switch is counted (a local one is part of every statement).
func (px *pgxSender) startSwitch(s *session, t *placement) {
	s.forgetSchema()
	if !px.local {
		s.countSwitch(t)
	}
}

// setSQL returns the statement that switches to t's schema: SET
// search_path, or with local a set_config for the current transaction
// only, which a batch's implicit transaction ends.
func (px *pgxSender) setSQL(t *placement) string {
	if px.local {
		return "SELECT pg_catalog.set_config('search_path', " + quoteLiteral(t.pathValue) + ", true)"
	}
	return t.setPath
}

// newName returns a statement name not used before on the connection.
func (px *pgxSender) newName() string {
	px.seq++
	return "hv_" + strconv.FormatUint(px.seq, 10)
}

// valueFuncs returns the conversions for a result of e described by fds:
// e's own, made once, when e's description has the result's columns (a
// statement whose columns were unknown at preparation, such as a FETCH, is
// described anew by each execution). A nil e (an unnamed statement of
// pool_mode=transaction) gets conversions made for this result alone.
func (px *pgxSender) valueFuncs(e *stmtEntry, fds []pgconn.FieldDescription) []valueFunc {
	if e != nil && e.valueFuncs != nil {
		return e.valueFuncs
	}
	m := px.conn.TypeMap()
	vfs := make([]valueFunc, len(fds))
	for i := range fds {
		vfs[i] = newValueFunc(m, &fds[i])
	}
	if e != nil && len(e.sd.Fields) == len(fds) && len(fds) > 0 {
		e.valueFuncs = vfs
	}
	return vfs
}

// failed drops e after an error that says the server's statement no longer
// matches hv's description of it.
func (px *pgxSender) failed(e *stmtEntry, err error) {
	var pe *pgconn.PgError
	switch {
	case !errors.As(err, &pe):
	case pe.Code == "26000":
		// A statement is gone (DEALLOCATE, DISCARD ALL): trust none.
		px.forget()
	case e != nil && isStalePlan(err) && px.stmts[e.key] == e:
		px.drop(e)
	}
}

// forget drops every statement hv prepared (for example after DISCARD ALL
// or DEALLOCATE ALL sent through stdlib); their names are closed later in
// case the server still has them.
func (px *pgxSender) forget() {
	for px.tail != nil {
		px.drop(px.tail)
	}
}

// drop removes e from the cache; its server statement is closed with the
// next preparation.
func (px *pgxSender) drop(e *stmtEntry) {
	delete(px.stmts, e.key)
	px.unlink(e)
	px.stale = append(px.stale, e.sd.Name)
	sch := px.schemas[e.key.schema]
	if sch.stmts--; sch.stmts == 0 {
		delete(px.schemas, e.key.schema)
		px.stale = append(px.stale, sch.setName)
	}
}

func (px *pgxSender) pushFront(e *stmtEntry) {
	e.prev, e.next = nil, px.head
	if px.head != nil {
		px.head.prev = e
	}
	px.head = e
	if px.tail == nil {
		px.tail = e
	}
}

func (px *pgxSender) unlink(e *stmtEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		px.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		px.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (px *pgxSender) touch(e *stmtEntry) {
	if px.head != e {
		px.unlink(e)
		px.pushFront(e)
	}
}

// isStaleStatement reports whether err says a prepared statement no longer
// fits: it is gone from the server (26000, after DEALLOCATE or DISCARD ALL)
// or its result type changed ("cached plan must not change result type").
func isStaleStatement(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	return pe.Code == "26000" || isStalePlan(err)
}

// uncancellable returns context.Background() for a ctx that can never be
// cancelled (a value context such as WithShard's over Background): pgconn
// watches every other context for cancellation, which costs a statement
// locking and bookkeeping for nothing.
func uncancellable(ctx context.Context) context.Context {
	if ctx.Done() == nil {
		return context.Background()
	}
	return ctx
}

// badConn returns driver.ErrBadConn, as stdlib does, for an error that
// happened before anything was sent, so database/sql retries on another
// connection.
func badConn(err error) error {
	if err != nil && pgconn.SafeToRetry(err) {
		return driver.ErrBadConn
	}
	return err
}

// isDataStatement reports whether query starts with a statement that may run
// inside a transaction block: a query or data change.
func isDataStatement(query string) bool {
	switch firstKeyword(query) {
	case "select", "insert", "update", "delete", "with", "values", "table", "merge":
		return true
	}
	return false
}
