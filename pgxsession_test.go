package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Tests of hv's own statement path on pgx (pgxsession.go, pgxrows.go)
// against PostgreSQL: values as stdlib gives them, the schema switch that
// rides along with a statement, per-schema statements and their cache.

// pinnedFleet opens a fleet whose hosts have one connection each, so that
// alternating shards 1 and 2 switches schema on every statement; extra
// holds libpq keywords added to every host (such as
// statement_cache_capacity).
func pinnedFleet(t *testing.T, extra string) (*testFleet, *Connector, *sql.DB) {
	t.Helper()
	f := newTestFleet(t, fleetOptions{global: "pool_max=1"})
	if extra != "" {
		f.dsn = strings.ReplaceAll(f.dsn, "shards=", extra+" shards=")
	}
	db := f.open(t)
	return f, connectorOf(t, db), db
}

// usesPgxSession fails t unless the statements of db's hosts go through
// hv's own path.
func usesPgxSession(t *testing.T, db *sql.DB, shard int) {
	t.Helper()
	err := Raw(context.Background(), db, shard, func(dc any) error {
		if _, ok := dc.(*stdlib.Conn); !ok {
			return fmt.Errorf("inner connection is %T", dc)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c := connectorOf(t, db)
	for _, fh := range c.fleet.Load().hosts {
		h := fh.pool
		h.mu.Lock()
		for _, ic := range h.idle {
			if _, ok := ic.sess.send.(*pgxSender); !ok {
				t.Errorf("host %s: a connection without hv's statement path", h.name)
			}
		}
		h.mu.Unlock()
	}
}

// valueExprs are expressions of many types, each with the NULL of its
// type, whose values through hv must equal stdlib's.
var valueExprs = []string{
	"1::int2", "-2::int4", "3000000000::int8", "1.5::float4", "'NaN'::float8", "-0.1::float8",
	"123.4500::numeric(10,4)", "true", "'héllo'::text", "'ab'::varchar(5)", "'x'::char(3)",
	`'\xdeadbeef'::bytea`, "'2024-02-29'::date", "'infinity'::date",
	"'2024-02-29 12:34:56.789'::timestamp", "'2024-02-29 12:34:56.789+05:30'::timestamptz",
	"'-infinity'::timestamptz", "'12:34:56'::time", "'12:34:56+02'::timetz", "'1 day 02:03:04'::interval",
	"'6ba7b810-9dad-11d1-80b4-00c04fd430c8'::uuid", `'{"a": [1, 2]}'::json`, `'{"b": null}'::jsonb`,
	"'<a>b</a>'::xml", "42::oid", "'7'::xid", "'3'::cid", "'10.1.2.3/24'::inet", "'10.1.0.0/16'::cidr",
	"'08:00:2b:01:02:03'::macaddr", "ARRAY[1, NULL, 3]::int4[]", "ARRAY['a', 'b c']::text[]",
	"12.5::money", "'(1,2)'::point", "B'101'::bit(3)", "B'1101'::varbit", "'a fat cat'::tsvector",
	"'ok'::mood", "int4range(1, 5)",
}

// querier is what *sql.DB, *sql.Conn and *sql.Tx have in common.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// scanAll runs query on ctx and returns its values as database/sql scans
// them into any, and a description of its column types.
func scanAll(ctx context.Context, q querier, query string, args ...any) ([]any, []string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	cts, err := rows.ColumnTypes()
	if err != nil {
		return nil, nil, err
	}
	var types []string
	for _, ct := range cts {
		length, okl := ct.Length()
		p, s, okd := ct.DecimalSize()
		types = append(types, fmt.Sprintf("%s %s %v/%d %v/%d,%d %s",
			ct.Name(), ct.DatabaseTypeName(), okl, length, okd, p, s, ct.ScanType()))
	}
	var out []any
	for rows.Next() {
		vals := make([]any, len(cts))
		ptrs := make([]any, len(cts))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, nil, err
		}
		out = append(out, vals...)
	}
	return out, types, rows.Err()
}

// Values, NULLs and column types through hv's path equal stdlib's, with the
// schema switch in the statement's round trip and without, and inside a
// transaction. The enum type is the shard's own: each schema has one.
func TestPgxPathValuesAsStdlib(t *testing.T) {
	f, c, db := pinnedFleet(t, "")
	ctx := context.Background()
	for _, s := range []int{1, 2} {
		if _, err := db.ExecContext(WithShard(ctx, s), "CREATE TYPE mood AS ENUM ('sad', 'ok')"); err != nil {
			t.Fatal(err)
		}
	}
	var cols []string
	for i, e := range valueExprs {
		cols = append(cols, fmt.Sprintf("%s AS c%d, NULL::%s AS n%d", e, i, typeOf(e), i))
	}
	q := "SELECT " + strings.Join(cols, ", ")
	want := map[int][]any{}
	wantTypes := map[int][]string{}
	for _, s := range []int{1, 2} {
		// stdlib itself fails on the second schema's enum with "cached
		// plan must not change result type": one pool per schema.
		direct, err := sql.Open("pgx", fmt.Sprintf("%s search_path=shard%04d", f.hosts[0], s))
		if err != nil {
			t.Fatal(err)
		}
		want[s], wantTypes[s], err = scanAll(ctx, direct, q)
		direct.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	usesPgxSession(t, db, 1)
	before := switches(c)
	for round := range 3 {
		for _, s := range []int{1, 2, 2} { // switch, switch, stay
			got, types, err := scanAll(WithShard(ctx, s), db, q)
			if err != nil {
				t.Fatalf("round %d shard %d: %v", round, s, err)
			}
			sameValues(t, fmt.Sprintf("round %d shard %d", round, s), got, want[s])
			if !reflect.DeepEqual(types, wantTypes[s]) {
				t.Errorf("column types differ:\n got %v\nwant %v", types, wantTypes[s])
			}
		}
	}
	if got := switches(c) - before; got < 5 {
		t.Errorf("%d schema switches, want at least 5: the path with the switch went untested", got)
	}
	tx, err := db.BeginTx(WithShard(ctx, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	got, _, err := scanAll(WithShard(ctx, 1), tx, q)
	if err != nil {
		t.Fatal(err)
	}
	sameValues(t, "in a transaction", got, want[1])
}

// typeOf returns the type an expression of valueExprs casts to, for its
// NULL ("true" is a bool, int4range(...) an int4range).
func typeOf(e string) string {
	switch {
	case e == "true":
		return "bool"
	case strings.HasPrefix(e, "int4range"):
		return "int4range"
	}
	return e[strings.LastIndex(e, "::")+2:]
}

func sameValues(t *testing.T, where string, got, want []any) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", where, len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if gt, ok := g.(time.Time); ok {
			if wt, ok := w.(time.Time); ok && gt.Equal(wt) && gt.Location().String() == wt.Location().String() {
				continue
			}
		}
		if gf, ok := g.(float64); ok && gf != gf {
			if wf, ok := w.(float64); ok && wf != wf {
				continue // NaN
			}
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s: column %d: got %#v (%T), want %#v (%T)", where, i, g, g, w, w)
		}
	}
}

// Arguments of many Go types arrive as stdlib sends them, with and without
// a switch, and pgx's own argument options (NamedArgs) still work: those
// statements go through stdlib.
func TestPgxPathArguments(t *testing.T) {
	f, _, db := pinnedFleet(t, "")
	ctx := context.Background()
	if err := execOn(ctx, f.hosts[0], "CREATE EXTENSION hstore SCHEMA public"); err != nil {
		t.Fatal(err)
	}
	when := time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC)
	v := "v"
	args := []any{int64(7), 2.5, true, "s", []byte{0, 1}, when, nil, []int32{1, 2}, Hstore{"k": &v}}
	q := "SELECT $1::int8, $2::float8, $3::bool, $4::text, $5::bytea, $6::timestamptz, $7::text, $8::int4[], $9::public.hstore::text"
	for _, s := range []int{1, 2, 1} {
		var (
			i   int64
			fl  float64
			b   bool
			str string
			bs  []byte
			tm  time.Time
			nul sql.NullString
			arr string
			hs  string
		)
		err := db.QueryRowContext(WithShard(ctx, s), q, args...).Scan(&i, &fl, &b, &str, &bs, &tm, &nul, &arr, &hs)
		if err != nil {
			t.Fatalf("shard %d: %v", s, err)
		}
		if i != 7 || fl != 2.5 || !b || str != "s" || !reflect.DeepEqual(bs, []byte{0, 1}) || !tm.Equal(when) ||
			nul.Valid || arr != "{1,2}" || hs != `"k"=>"v"` {
			t.Errorf("shard %d: got %v %v %v %q %v %v %v %q %q", s, i, fl, b, str, bs, tm, nul, arr, hs)
		}
	}
	var n int
	if err := db.QueryRowContext(WithShard(ctx, 2), "SELECT shard + @x FROM t WHERE id = 0", pgx.NamedArgs{"x": 40}).Scan(&n); err != nil || n != 42 {
		t.Errorf("NamedArgs: got %d, %v; want 42", n, err)
	}
}

// A statement that fails in the round trip that also switched schema takes
// the switch with it (both ran in one implicit transaction): hv must forget
// the schema and switch again, whether the failure comes before the first
// row or in the middle of the rows.
func TestFailedStatementUndoesTheSwitchThatRodeAlong(t *testing.T) {
	f, _, db := pinnedFleet(t, "")
	ctx := context.Background()
	for _, bad := range []string{
		"SELECT 1/0 FROM t",
		"SELECT 1/(g - 3) FROM generate_series(1, 5) g",
		"SELECT shard FROM t WHERE id = $1::int / 0",
	} {
		// The first round prepares the statement on each schema (and
		// switches in that round trip): the next ones switch with it.
		for _, s := range []int{1, 2, 1, 2, 1, 2} {
			if _, err := whereAmI(WithShard(ctx, s), db); err != nil {
				t.Fatal(err)
			}
			other := 3 - s
			var args []any
			if strings.Contains(bad, "$1") {
				args = append(args, 1)
			}
			rows, err := db.QueryContext(WithShard(ctx, other), bad, args...)
			if err == nil {
				for rows.Next() {
				}
				err = rows.Err()
				rows.Close()
			}
			if err == nil || !strings.Contains(err.Error(), "division by zero") {
				t.Fatalf("%s on shard %d: got %v, want division by zero", bad, other, err)
			}
			for _, shard := range []int{other, s} {
				got, err := whereAmI(WithShard(ctx, shard), db)
				if err != nil {
					t.Fatal(err)
				}
				if want := f.expect(t, shard); got != want {
					t.Fatalf("after %q: shard %d ran at %+v, want %+v", bad, shard, got, want)
				}
			}
		}
	}
}

// Exec switches in the statement's round trip with arguments, and without
// them when the text starts with a data statement; a statement that cannot
// run in a transaction block (VACUUM) switches on its own first.
func TestPgxPathExec(t *testing.T) {
	f, _, db := pinnedFleet(t, "")
	ctx := context.Background()
	for round := range 2 {
		for _, s := range []int{1, 2} {
			res, err := db.ExecContext(WithShard(ctx, s), "UPDATE t SET note = $1 WHERE id = 0", fmt.Sprint("n", s, round))
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := res.RowsAffected(); n != 1 {
				t.Errorf("shard %d: %d rows affected, want 1", s, n)
			}
			res, err = db.ExecContext(WithShard(ctx, 3-s), "INSERT INTO t VALUES (100 + "+fmt.Sprint(round)+", "+fmt.Sprint(3-s)+", current_schema())")
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := res.RowsAffected(); n != 1 {
				t.Errorf("shard %d: %d rows affected, want 1", 3-s, n)
			}
			if _, err := db.ExecContext(WithShard(ctx, s), "VACUUM t"); err != nil {
				t.Fatalf("VACUUM on shard %d: %v", s, err)
			}
		}
	}
	for _, s := range []int{1, 2} {
		var note string
		if err := db.QueryRowContext(WithShard(ctx, s), "SELECT note FROM t WHERE id = 0").Scan(&note); err != nil || note != fmt.Sprint("n", s, 1) {
			t.Errorf("shard %d: note %q, %v", s, note, err)
		}
		var n int
		if err := db.QueryRowContext(WithShard(ctx, s), "SELECT count(*) FROM t WHERE id >= 100 AND shard = $1 AND note = $2", s, f.expect(t, s).Schema).Scan(&n); err != nil || n != 2 {
			t.Errorf("shard %d: %d inserted rows on its own schema, %v; want 2", s, n, err)
		}
	}
}

// Each connection keeps at most statement_cache_capacity statements (plus
// a SET per schema with statements); the least recently used are closed on
// the server. Statements dropped behind hv's back (DEALLOCATE ALL, DISCARD
// ALL, the inner connection's own DeallocateAll) are prepared again, and a
// statement whose result type changed after DDL is sent again.
func TestPgxPathStatementCache(t *testing.T) {
	_, _, db := pinnedFleet(t, "statement_cache_capacity=3")
	ctx := context.Background()
	hvStatements := func(shard int) int {
		t.Helper()
		var n int
		q := "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'hv\\_%'"
		if err := db.QueryRowContext(WithShard(ctx, shard), q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for round := range 3 {
		for q := range 5 {
			for _, s := range []int{1, 2} {
				var got int
				err := db.QueryRowContext(WithShard(ctx, s), fmt.Sprintf("SELECT shard + %d FROM t WHERE id = $1", q), 0).Scan(&got)
				if err != nil || got != s+q {
					t.Fatalf("round %d query %d shard %d: got %d, %v", round, q, s, got, err)
				}
			}
		}
		// 3 statements and the SETs of at most 2 schemas.
		if n := hvStatements(1); n > 5 {
			t.Errorf("round %d: %d statements prepared by hv on the connection, want at most 5", round, n)
		}
	}
	// check runs a statement prepared before on each shard, switching
	// schema with the first (the connection is on shard 1).
	check := func(what string) {
		t.Helper()
		for _, s := range []int{2, 1, 2, 1} {
			got, err := whereAmI(WithShard(ctx, s), db)
			if err != nil || got.Shard != s {
				t.Fatalf("after %s: shard %d: %+v, %v", what, s, got, err)
			}
		}
	}
	check("warming up")
	if _, err := db.ExecContext(WithShard(ctx, 1), "DEALLOCATE ALL"); err != nil {
		t.Fatal(err)
	}
	check("DEALLOCATE ALL")
	if _, err := db.ExecContext(WithShard(ctx, 2), "DISCARD ALL"); err != nil {
		t.Fatal(err)
	}
	check("DISCARD ALL")
	err := Raw(ctx, db, 1, func(dc any) error { return dc.(*stdlib.Conn).Conn().DeallocateAll(ctx) })
	if err != nil {
		t.Fatal(err)
	}
	check("the inner connection's DeallocateAll")
	if _, err := db.ExecContext(WithShard(ctx, 1), "ALTER TABLE t ADD COLUMN extra int DEFAULT 5"); err != nil {
		t.Fatal(err)
	}
	rows, err := db.QueryContext(WithShard(ctx, 1), whereSQL)
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()
	var cols []string
	rows, err = db.QueryContext(WithShard(ctx, 1), "SELECT * FROM t WHERE id = $1", 0)
	if err == nil {
		cols, _ = rows.Columns()
		rows.Close()
	}
	if err != nil || len(cols) != 4 {
		t.Errorf("SELECT * after ADD COLUMN: columns %v, %v", cols, err)
	}
}

// A statement's error names the shard and host, and the connection serves
// the next statement.
func TestPgxPathErrors(t *testing.T) {
	_, _, db := pinnedFleet(t, "")
	ctx := context.Background()
	_, err := db.ExecContext(WithShard(ctx, 2), "INSERT INTO t VALUES ($1, 2, 'dup')", 0)
	if err == nil || !strings.Contains(err.Error(), "shard 2 on host") || !strings.Contains(err.Error(), "23505") {
		t.Errorf("duplicate key: got %v", err)
	}
	var pe interface{ SQLState() string }
	if !errors.As(err, &pe) || pe.SQLState() != "23505" {
		t.Errorf("duplicate key: error %v carries no SQLSTATE 23505", err)
	}
	if _, err := db.QueryContext(WithShard(ctx, 1), "SELECT $1::int", "x"); err == nil {
		t.Error("a bad argument: no error")
	}
	if got, err := whereAmI(WithShard(ctx, 2), db); err != nil || got.Shard != 2 {
		t.Errorf("after errors: %+v, %v", got, err)
	}
	// Statements that fail to prepare leave at most their own names to
	// close: the list of names to close does not grow with them.
	for i := range 20 {
		if _, err := db.QueryContext(WithShard(ctx, 1+i%2), fmt.Sprintf("SELECT * FROM missing%d", i)); err == nil {
			t.Fatal("a missing table: no error")
		}
	}
	for _, fh := range connectorOf(t, db).fleet.Load().hosts {
		h := fh.pool
		h.mu.Lock()
		for _, ic := range h.idle {
			if n := len(ic.sess.send.(*pgxSender).stale); n > 2 {
				t.Errorf("host %s: %d statement names waiting to be closed after failed preparations", h.name, n)
			}
		}
		h.mu.Unlock()
	}
}

// A second statement on a pinned connection whose rows are still open is
// refused with ErrConnBusy, and the open rows read on undisturbed.
func TestSecondStatementWhileRowsOpen(t *testing.T) {
	_, _, db := pinnedFleet(t, "")
	ctx := WithShard(context.Background(), 1)
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rows, err := c.QueryContext(ctx, "SELECT g FROM generate_series(1, 3) g")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.QueryContext(ctx, "SELECT 1"); !errors.Is(err, ErrConnBusy) {
		t.Errorf("query while rows are open: got %v, want ErrConnBusy", err)
	}
	if _, err := c.ExecContext(ctx, "SELECT 1"); !errors.Is(err, ErrConnBusy) {
		t.Errorf("exec while rows are open: got %v, want ErrConnBusy", err)
	}
	sum := 0
	for rows.Next() {
		var g int
		if err := rows.Scan(&g); err != nil {
			t.Fatal(err)
		}
		sum += g
	}
	if err := rows.Close(); err != nil || sum != 6 {
		t.Errorf("the open rows: sum %d, %v; want 6", sum, err)
	}
	if got, err := whereAmI(ctx, c); err != nil || got.Shard != 1 {
		t.Errorf("after the rows: %+v, %v", got, err)
	}
}

// A transaction that has to switch schema sends the SET with its BEGIN, so
// the SET belongs to the transaction: after a rollback (or a commit the
// server turned into one) hv must switch again, after a commit it need not.
// Isolation and read-only options hold.
func TestBeginSwitchesInItsOwnMessage(t *testing.T) {
	f, c, db := pinnedFleet(t, "")
	ctx := context.Background()
	onShard := func(shard int) {
		t.Helper()
		got, err := whereAmI(WithShard(ctx, shard), db)
		if err != nil {
			t.Fatal(err)
		}
		if want := f.expect(t, shard); got != want {
			t.Fatalf("shard %d ran at %+v, want %+v", shard, got, want)
		}
	}
	count := func(shard int) int {
		t.Helper()
		var n int
		if err := db.QueryRowContext(WithShard(ctx, shard), "SELECT count(*) FROM t WHERE id = 7").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, end := range []string{"rollback", "failed commit", "commit"} {
		onShard(1)
		before := switches(c)
		tx, err := db.BeginTx(WithShard(ctx, 2), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := switches(c) - before; got != 1 {
			t.Errorf("%s: %d switches for BEGIN, want 1", end, got)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (7, 2, current_schema())"); err != nil {
			t.Fatal(err)
		}
		switch end {
		case "rollback":
			err = tx.Rollback()
		case "failed commit":
			_, _ = tx.ExecContext(ctx, "SELECT 1/0")
			if err = tx.Commit(); err == nil {
				t.Errorf("commit after a failed statement: no error")
			}
			err = nil
		case "commit":
			err = tx.Commit()
		}
		if err != nil {
			t.Fatal(err)
		}
		onShard(2)
		if want := map[bool]int{true: 1, false: 0}[end == "commit"]; count(2) != want {
			t.Errorf("%s: %d rows with id 7 on shard 2, want %d", end, count(2), want)
		}
	}
	onShard(1)
	tx, err := db.BeginTx(WithShard(ctx, 2), &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var iso, ro string
	if err := tx.QueryRowContext(ctx, "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')").Scan(&iso, &ro); err != nil {
		t.Fatal(err)
	}
	if iso != "serializable" || ro != "on" {
		t.Errorf("isolation %q, read only %q; want serializable, on", iso, ro)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM t"); err == nil {
		t.Error("a write in a read-only transaction: no error")
	}
}

// A cursor's FETCH, whose columns are unknown when it is prepared before the
// cursor exists, is described by each execution.
func TestPgxPathCursor(t *testing.T) {
	_, _, db := pinnedFleet(t, "")
	ctx := WithShard(context.Background(), 2)
	for round := range 2 {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "DECLARE c CURSOR FOR SELECT g, g::text AS s FROM generate_series(1, 5) g"); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, n := range []int{2, 10} {
			rows, err := tx.QueryContext(ctx, fmt.Sprintf("FETCH %d FROM c", n))
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var g int64
				var s string
				if err := rows.Scan(&g, &s); err != nil {
					t.Fatal(err)
				}
				got = append(got, fmt.Sprintf("%d:%s", g, s))
			}
			if err := rows.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if want := "[1:1 2:2 3:3 4:4 5:5]"; fmt.Sprint(got) != want {
			t.Errorf("round %d: fetched %v, want %s", round, got, want)
		}
	}
}
