package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
)

// tx is a transaction pinned to one physical connection on one shard.
type tx struct {
	c     *conn
	inner driver.Tx
	ctx   context.Context // BeginTx's: the parent of COMMIT's or ROLLBACK's trace
	ryw   *readYourWrites // the unit of work whose write this is, if any (readyourwrites.go)
}

// Commit commits the transaction. The physical connection goes back to its
// host when database/sql returns the connection.
func (t *tx) Commit() error {
	err := t.end(OpCommit, "COMMIT", t.inner.Commit)
	if err == nil && t.ryw != nil {
		t.c.noteWrite(t.ryw) // readyourwrites.go
	}
	return err
}

// Rollback aborts the transaction.
func (t *tx) Rollback() error { return t.end(OpRollback, "ROLLBACK", t.inner.Rollback) }

func (t *tx) end(op Op, sql string, f func() error) error {
	c := t.c
	if c.tx != t || c.phys == nil {
		return driver.ErrBadConn
	}
	c.tx = nil
	_, tr := c.trace(t.ctx, op, sql)
	p := c.place
	return tr.end(p, c.fail(c.phys.Raw(func(any) error { return f() })))
}

// beginStatement returns the BEGIN statement for opts, as pgx writes it, or
// an error for an isolation level PostgreSQL does not have.
func beginStatement(opts driver.TxOptions) (string, error) {
	begin := "BEGIN"
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		begin += " ISOLATION LEVEL READ UNCOMMITTED"
	case sql.LevelReadCommitted:
		begin += " ISOLATION LEVEL READ COMMITTED"
	case sql.LevelRepeatableRead, sql.LevelSnapshot:
		begin += " ISOLATION LEVEL REPEATABLE READ"
	case sql.LevelSerializable:
		begin += " ISOLATION LEVEL SERIALIZABLE"
	default:
		return "", fmt.Errorf("unsupported isolation: %v", sql.IsolationLevel(opts.Isolation))
	}
	if opts.ReadOnly {
		begin += " READ ONLY"
	}
	return begin, nil
}
