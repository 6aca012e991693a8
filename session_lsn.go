package hv

// Reading the primary's WAL position after a write, for read-your-writes
// (readyourwrites.go): in the write's own round trip where hv's pgx path
// sends it, else with a statement of its own.

import (
	"context"
	"database/sql/driver"
	"io"

	"github.com/jackc/pgx/v5/pgconn"
)

// writeLSNSQL reads the WAL insert position after a write: at or past the
// end of the write's WAL, commit record included, once the write's
// transaction has ended.
const writeLSNSQL = `SELECT pg_current_wal_insert_lsn()::text`

// execLSN runs a statement that returns no rows on t's schema and, when it
// succeeds outside a transaction, the WAL position after it; ok is false
// when the position could not be read.
func (s *session) execLSN(ctx context.Context, t *placement, query string, args []driver.NamedValue) (res driver.Result, lsn uint64, ok bool, err error) {
	if px, isPx := s.send.(*pgxSender); isPx {
		var handled bool
		if res, lsn, ok, handled, err = px.execLSN(ctx, s, t, query, args); handled {
			return res, lsn, ok, err
		}
	}
	if res, err = s.exec(ctx, t, query, args); err != nil {
		return nil, 0, false, err
	}
	lsn, ok = s.readLSN(ctx, t)
	return res, lsn, ok, nil
}

// readLSN reads the WAL insert position with a statement of its own.
func (s *session) readLSN(ctx context.Context, t *placement) (uint64, bool) {
	rows, err := s.query(ctx, t, writeLSNSQL, nil)
	if err != nil {
		return 0, false
	}
	defer rows.Close()
	dest := make([]driver.Value, 1)
	if err := rows.Next(dest); err != nil && err != io.EOF {
		return 0, false
	}
	var text string
	switch v := dest[0].(type) {
	case string:
		text = v
	case []byte:
		text = string(v)
	}
	n, err := parseLSN(text)
	return n, err == nil
}

// execLSN runs an already prepared statement with arguments, on a session
// on t's schema outside a transaction, and reads the WAL position after it
// in the same round trip: a pipeline of two segments, the statement and
// the position's query each followed by a Sync, so that the statement's
// implicit transaction has committed when the position is read. handled
// is false when the statement does not qualify: the caller sends it the
// usual way (which prepares it, switches schema or retries a stale one).
func (px *pgxSender) execLSN(ctx context.Context, s *session, t *placement, query string, args []driver.NamedValue) (res driver.Result, lsn uint64, ok, handled bool, err error) {
	if len(args) == 0 || s.inTx || !s.on(t.schema) || !px.serves(s, t, query, args) || px.ready() != nil {
		return nil, 0, false, false, nil
	}
	e := px.stmts[stmtKey{schema: t.schema, sql: query}]
	if e == nil {
		return nil, 0, false, false, nil
	}
	if err := px.encode(e, args); err != nil {
		return nil, 0, false, true, err
	}
	px.touch(e)
	pipe := px.conn.PgConn().StartPipeline(uncancellable(ctx))
	pipe.SendQueryStatement(e.sd, px.eqb.ParamValues, px.eqb.ParamFormats, e.resultFormats)
	pipe.SendPipelineSync()
	pipe.SendQueryParams(writeLSNSQL, nil, nil, nil, nil)
	pipe.SendPipelineSync()
	if err := pipe.Flush(); err != nil {
		_ = pipe.Close()
		s.forgetSchema()
		return nil, 0, false, true, badConn(err)
	}
	var tag pgconn.CommandTag
	r, stmtErr := pipe.GetResults()
	if rr, isRR := r.(*pgconn.ResultReader); isRR {
		tag, stmtErr = rr.Close()
	}
	if _, err := pipe.GetResults(); err == nil { // the first Sync
		if r, err := pipe.GetResults(); err == nil {
			if rr, isRR := r.(*pgconn.ResultReader); isRR {
				if got := rr.Read(); got.Err == nil && len(got.Rows) == 1 && len(got.Rows[0]) == 1 {
					lsn, err = parseLSN(string(got.Rows[0][0]))
					ok = err == nil
				}
			}
		}
	}
	closeErr := pipe.Close()
	if stmtErr != nil {
		s.forgetSchema()
		px.failed(e, stmtErr)
		if isStaleStatement(stmtErr) {
			// Refused before it ran: the usual path prepares it again.
			return nil, 0, false, false, nil
		}
		return nil, 0, false, true, stmtErr
	}
	if closeErr != nil {
		ok = false // the write happened; its position is unknown
	}
	return driver.RowsAffected(tag.RowsAffected()), lsn, ok, true, nil
}
