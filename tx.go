package hv

import (
	"database/sql/driver"
)

// tx is a transaction pinned to one physical connection on one shard.
type tx struct {
	c     *conn
	inner driver.Tx
}

// Commit commits the transaction. The physical connection goes back to its
// host when database/sql returns the connection.
func (t *tx) Commit() error { return t.end(t.inner.Commit) }

// Rollback aborts the transaction.
func (t *tx) Rollback() error { return t.end(t.inner.Rollback) }

func (t *tx) end(f func() error) error {
	c := t.c
	if c.tx != t || c.phys == nil {
		return driver.ErrBadConn
	}
	c.tx = nil
	err := c.phys.Raw(func(dc any) error {
		err := f()
		if err != nil {
			dc.(*physConn).schema = ""
		}
		return err
	})
	return c.fail(err)
}
