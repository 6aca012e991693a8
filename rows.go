package hv

import (
	"database/sql"
	"database/sql/driver"
	"io"
	"reflect"
)

// rows streams a routed statement's result from its session. The physical
// connection stays leased until the rows are closed.
type rows struct {
	c      *conn
	phys   *sql.Conn
	inner  driver.Rows
	closed bool
	err    error  // Next's first error, for the trace
	traced traced // the statement's, ended by Close
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
	err = r.wrap(err)
	if r.err == nil {
		r.err = err
	}
	return err
}

// wrap names the shard and host in an error of the rows.
func (r *rows) wrap(err error) error {
	if err == nil || r.c.place == nil {
		return err
	}
	return shardErr(r.c.place.shard, r.c.place.host.name, err)
}

func (r *rows) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.c.rows == r {
		r.c.rows = nil
	}
	err := r.wrap(r.phys.Raw(func(any) error { return r.inner.Close() }))
	if r.err != nil {
		r.traced.end(r.c.place, r.err)
	} else {
		r.traced.end(r.c.place, err)
	}
	return err
}

func (r *rows) ColumnTypeDatabaseTypeName(i int) string { return columnDatabaseTypeName(r.inner, i) }
func (r *rows) ColumnTypeScanType(i int) reflect.Type   { return columnScanType(r.inner, i) }
func (r *rows) ColumnTypeLength(i int) (int64, bool)    { return columnLength(r.inner, i) }
func (r *rows) ColumnTypeNullable(i int) (bool, bool)   { return columnNullable(r.inner, i) }
func (r *rows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	return columnPrecisionScale(r.inner, i)
}
func (r *rows) HasNextResultSet() bool { return hasNextResultSet(r.inner) }

func (r *rows) NextResultSet() error {
	return r.phys.Raw(func(any) error { return nextResultSet(r.inner) })
}

// The optional driver.Rows interfaces, answered for rows that wrap r as r
// would answer them: r's own answer when it has the method, database/sql's
// default otherwise.

func columnDatabaseTypeName(r driver.Rows, i int) string {
	if t, ok := r.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return t.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func columnScanType(r driver.Rows, i int) reflect.Type {
	if t, ok := r.(driver.RowsColumnTypeScanType); ok {
		return t.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}

func columnLength(r driver.Rows, i int) (int64, bool) {
	if t, ok := r.(driver.RowsColumnTypeLength); ok {
		return t.ColumnTypeLength(i)
	}
	return 0, false
}

func columnNullable(r driver.Rows, i int) (nullable, ok bool) {
	if t, ok := r.(driver.RowsColumnTypeNullable); ok {
		return t.ColumnTypeNullable(i)
	}
	return false, false
}

func columnPrecisionScale(r driver.Rows, i int) (precision, scale int64, ok bool) {
	if t, ok := r.(driver.RowsColumnTypePrecisionScale); ok {
		return t.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func hasNextResultSet(r driver.Rows) bool {
	if t, ok := r.(driver.RowsNextResultSet); ok {
		return t.HasNextResultSet()
	}
	return false
}

func nextResultSet(r driver.Rows) error {
	if t, ok := r.(driver.RowsNextResultSet); ok {
		return t.NextResultSet()
	}
	return io.EOF
}
