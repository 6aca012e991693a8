package hv

import (
	"database/sql"
	"database/sql/driver"
	"fmt"
	"io"
	"reflect"
)

// rows streams a statement's result from the inner driver. The physical
// connection stays leased until the rows are closed.
type rows struct {
	c      *conn
	phys   *sql.Conn
	inner  driver.Rows
	closed bool
}

var (
	_ driver.Rows                           = (*rows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*rows)(nil)
	_ driver.RowsColumnTypeScanType         = (*rows)(nil)
	_ driver.RowsColumnTypeLength           = (*rows)(nil)
	_ driver.RowsColumnTypeNullable         = (*rows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*rows)(nil)
	_ driver.RowsNextResultSet              = (*rows)(nil)
)

func (r *rows) Columns() []string { return r.inner.Columns() }

func (r *rows) Next(dest []driver.Value) error {
	err := r.phys.Raw(func(any) error { return r.inner.Next(dest) })
	if err == nil || err == io.EOF {
		return err
	}
	return r.wrap(err)
}

// wrap names the shard and host in an error of the rows.
func (r *rows) wrap(err error) error {
	if err == nil || r.c.host == nil {
		return err
	}
	return fmt.Errorf("hv: shard %d on host %s: %w", r.c.shard, r.c.host.name, err)
}

func (r *rows) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.c.rows == r {
		r.c.rows = nil
	}
	return r.wrap(r.phys.Raw(func(dc any) error {
		err := r.inner.Close()
		if err != nil {
			dc.(*physConn).schema = ""
		}
		return err
	}))
}

func (r *rows) ColumnTypeDatabaseTypeName(i int) string {
	if t, ok := r.inner.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return t.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *rows) ColumnTypeScanType(i int) reflect.Type {
	if t, ok := r.inner.(driver.RowsColumnTypeScanType); ok {
		return t.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}

func (r *rows) ColumnTypeLength(i int) (int64, bool) {
	if t, ok := r.inner.(driver.RowsColumnTypeLength); ok {
		return t.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *rows) ColumnTypeNullable(i int) (nullable, ok bool) {
	if t, ok := r.inner.(driver.RowsColumnTypeNullable); ok {
		return t.ColumnTypeNullable(i)
	}
	return false, false
}

func (r *rows) ColumnTypePrecisionScale(i int) (precision, scale int64, ok bool) {
	if t, ok := r.inner.(driver.RowsColumnTypePrecisionScale); ok {
		return t.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func (r *rows) HasNextResultSet() bool {
	if t, ok := r.inner.(driver.RowsNextResultSet); ok {
		return t.HasNextResultSet()
	}
	return false
}

func (r *rows) NextResultSet() error {
	if t, ok := r.inner.(driver.RowsNextResultSet); ok {
		return r.phys.Raw(func(any) error { return t.NextResultSet() })
	}
	return io.EOF
}
