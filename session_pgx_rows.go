package hv

import (
	"database/sql/driver"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// pgxRows are the rows of a statement hv sent itself on a pgx connection
// (session_pgx.go). They convert values exactly as pgx's stdlib.Rows do: the
// same result formats are asked for (resultFormat) and the same Go types
// come back (newValueFunc), so a caller cannot tell which path ran.
type pgxRows struct {
	px *pgxSender
	s  *session
	e  *stmtEntry                // the statement
	rr *pgconn.ResultReader      // the statement's result
	mr *pgconn.MultiResultReader // non-nil when the schema switch rode along
	// schema is what the session's search_path is on once the rows end
	// without error: the switch that rode along has then taken effect.
	schema string

	valueFuncs []valueFunc
	columns    []string
	preloaded  bool // the first row has been read by query
	more       bool // what reading the first row returned
	done       bool // the result has been read to its end and closed
	err        error
}

var (
	_ driver.Rows                           = (*pgxRows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*pgxRows)(nil)
	_ driver.RowsColumnTypeLength           = (*pgxRows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*pgxRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*pgxRows)(nil)
)

// preload reads the first row, as stdlib does, so that a statement that
// fails at once fails in QueryContext. It returns the statement's error.
func (r *pgxRows) preload() error {
	r.preloaded = true
	r.more = r.rr.NextRow()
	if !r.more {
		return r.finish()
	}
	return nil
}

// finish reads the result to its end and closes it, once, and records what
// the session's search_path is on afterwards.
func (r *pgxRows) finish() error {
	if r.done {
		return r.err
	}
	r.done = true
	_, err := r.rr.Close()
	if r.mr != nil {
		if cerr := r.mr.Close(); err == nil {
			err = cerr
		}
	}
	r.err = err
	if err != nil {
		r.s.forgetSchema()
		r.px.failed(r.e, err)
		return err
	}
	if r.schema != "" {
		r.s.setSchema(r.schema)
	}
	return nil
}

func (r *pgxRows) Columns() []string {
	if r.columns == nil {
		fds := r.rr.FieldDescriptions()
		r.columns = make([]string, len(fds))
		for i := range fds {
			r.columns[i] = fds[i].Name
		}
	}
	return r.columns
}

func (r *pgxRows) Next(dest []driver.Value) error {
	var more bool
	if r.preloaded {
		r.preloaded, more = false, r.more
	} else if !r.done {
		more = r.rr.NextRow()
	}
	if !more {
		if err := r.finish(); err != nil {
			return err
		}
		return io.EOF
	}
	if r.valueFuncs == nil {
		r.valueFuncs = r.px.valueFuncs(r.e, r.rr.FieldDescriptions())
	}
	for i, raw := range r.rr.Values() {
		if raw == nil {
			dest[i] = nil
			continue
		}
		v, err := r.valueFuncs[i](raw)
		if err != nil {
			return fmt.Errorf("converting column %d (%s): %w", i, r.rr.FieldDescriptions()[i].Name, err)
		}
		dest[i] = v
	}
	return nil
}

func (r *pgxRows) Close() error { return r.finish() }

// The column type methods answer as stdlib.Rows do.

func (r *pgxRows) ColumnTypeDatabaseTypeName(i int) string {
	oid := r.rr.FieldDescriptions()[i].DataTypeOID
	if t, ok := r.px.conn.TypeMap().TypeForOID(oid); ok {
		return strings.ToUpper(t.Name)
	}
	return strconv.FormatInt(int64(oid), 10)
}

// varHeaderSize is the length word PostgreSQL counts in a type modifier.
const varHeaderSize = 4

func (r *pgxRows) ColumnTypeLength(i int) (int64, bool) {
	fd := r.rr.FieldDescriptions()[i]
	switch fd.DataTypeOID {
	case pgtype.TextOID, pgtype.ByteaOID:
		return math.MaxInt64, true
	case pgtype.VarcharOID, pgtype.BPCharOID:
		return int64(fd.TypeModifier - varHeaderSize), true
	case pgtype.VarbitOID:
		return int64(fd.TypeModifier), true
	}
	return 0, false
}

func (r *pgxRows) ColumnTypePrecisionScale(i int) (precision, scale int64, ok bool) {
	fd := r.rr.FieldDescriptions()[i]
	if fd.DataTypeOID != pgtype.NumericOID {
		return 0, 0, false
	}
	mod := fd.TypeModifier - varHeaderSize
	return int64((mod >> 16) & 0xffff), int64(mod & 0xffff), true
}

func (r *pgxRows) ColumnTypeScanType(i int) reflect.Type {
	switch r.rr.FieldDescriptions()[i].DataTypeOID {
	case pgtype.Float8OID:
		return reflect.TypeFor[float64]()
	case pgtype.Float4OID:
		return reflect.TypeFor[float32]()
	case pgtype.Int8OID:
		return reflect.TypeFor[int64]()
	case pgtype.Int4OID:
		return reflect.TypeFor[int32]()
	case pgtype.Int2OID:
		return reflect.TypeFor[int16]()
	case pgtype.BoolOID:
		return reflect.TypeFor[bool]()
	case pgtype.NumericOID:
		return reflect.TypeFor[float64]()
	case pgtype.DateOID, pgtype.TimestampOID, pgtype.TimestamptzOID:
		return reflect.TypeFor[time.Time]()
	case pgtype.ByteaOID:
		return reflect.TypeFor[[]byte]()
	}
	return reflect.TypeFor[string]()
}

// resultFormat is the format stdlib asks for a result column of type oid:
// binary for the types it converts from binary, text for every other.
func resultFormat(oid uint32) int16 {
	switch oid {
	case pgtype.BoolOID, pgtype.ByteaOID, pgtype.CIDOID, pgtype.DateOID,
		pgtype.Float4OID, pgtype.Float8OID, pgtype.Int2OID, pgtype.Int4OID,
		pgtype.Int8OID, pgtype.OIDOID, pgtype.TimestampOID, pgtype.TimestamptzOID,
		pgtype.XIDOID:
		return pgtype.BinaryFormatCode
	}
	return pgtype.TextFormatCode
}

// valueFunc converts one column's wire value to its database/sql value.
type valueFunc func(src []byte) (driver.Value, error)

// newValueFunc returns the conversion stdlib.Rows uses for a column
// described by fd. Each conversion keeps its own scan target, so one must
// not be used by two goroutines at once; a connection's are only used by the
// statement that holds it.
func newValueFunc(m *pgtype.Map, fd *pgconn.FieldDescription) valueFunc {
	oid, format := fd.DataTypeOID, fd.Format
	switch oid {
	case pgtype.BoolOID:
		return scanAs(m, oid, format, func(d bool) (driver.Value, error) { return d, nil })
	case pgtype.ByteaOID, pgtype.JSONOID, pgtype.JSONBOID, pgtype.XMLOID:
		return scanAs(m, oid, format, func(d []byte) (driver.Value, error) { return d, nil })
	case pgtype.CIDOID, pgtype.OIDOID, pgtype.XIDOID:
		return scanAs(m, oid, format, func(d pgtype.Uint32) (driver.Value, error) { return d.Value() })
	case pgtype.DateOID:
		return scanAs(m, oid, format, func(d pgtype.Date) (driver.Value, error) { return d.Value() })
	case pgtype.Float4OID:
		return scanAs(m, oid, format, func(d float32) (driver.Value, error) { return float64(d), nil })
	case pgtype.Float8OID:
		return scanAs(m, oid, format, func(d float64) (driver.Value, error) { return d, nil })
	case pgtype.Int2OID:
		return scanAs(m, oid, format, func(d int16) (driver.Value, error) { return int64(d), nil })
	case pgtype.Int4OID:
		return scanAs(m, oid, format, func(d int32) (driver.Value, error) { return int64(d), nil })
	case pgtype.Int8OID:
		return scanAs(m, oid, format, func(d int64) (driver.Value, error) { return d, nil })
	case pgtype.TimestampOID:
		return scanAs(m, oid, format, func(d pgtype.Timestamp) (driver.Value, error) { return d.Value() })
	case pgtype.TimestamptzOID:
		return scanAs(m, oid, format, func(d pgtype.Timestamptz) (driver.Value, error) { return d.Value() })
	}
	return scanAs(m, oid, format, func(d string) (driver.Value, error) { return d, nil })
}

// scanAs returns a conversion that scans into a T with the type map's plan
// and turns the T into a driver.Value with value.
func scanAs[T any](m *pgtype.Map, oid uint32, format int16, value func(T) (driver.Value, error)) valueFunc {
	var d T
	plan := m.PlanScan(oid, format, &d)
	return func(src []byte) (driver.Value, error) {
		if err := plan.Scan(src, &d); err != nil {
			return nil, err
		}
		return value(d)
	}
}
