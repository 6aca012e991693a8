package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
)

// fanOutFleet is a two-server fleet whose shards 1-16 each hold rows
// (id, shard, note) for id 1..perShard, plus the seed row id 0.
func fanOutFleet(t testing.TB, perShard int, global string) (*testFleet, *sql.DB) {
	t.Helper()
	f := newTestFleet(t, fleetOptions{global: global})
	db := f.open(t)
	ctx := WithAllShards(context.Background())
	_, err := db.ExecContext(ctx, `INSERT INTO t SELECT g, (SELECT shard FROM t WHERE id = 0),
		md5(g::text || current_schema()) FROM generate_series(1, $1) g`, perShard)
	if err != nil {
		t.Fatal(err)
	}
	return f, db
}

type fanRow struct {
	ID    int    `db:"id"`
	Shard int    `db:"shard"`
	Note  string `db:"note"`
}

func scanFanRows(t testing.TB, rows *sql.Rows) []fanRow {
	t.Helper()
	defer rows.Close()
	var out []fanRow
	for rows.Next() {
		var r fanRow
		if err := rows.Scan(&r.ID, &r.Shard, &r.Note); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func sortFanRows(rs []fanRow) {
	slices.SortFunc(rs, func(a, b fanRow) int {
		if a.Shard != b.Shard {
			return a.Shard - b.Shard
		}
		return a.ID - b.ID
	})
}

func TestFanOutUnionEqualsPerShardResults(t *testing.T) {
	_, db := fanOutFleet(t, 300, "pool_max=3")
	ctx := context.Background()
	const q = "SELECT id, shard, note FROM t WHERE id % 7 = 0"
	var want []fanRow
	for s := 1; s <= 16; s++ {
		rows, err := db.QueryContext(WithShard(ctx, s), q)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, scanFanRows(t, rows)...)
	}
	rows, err := db.QueryContext(WithAllShards(ctx), q)
	if err != nil {
		t.Fatal(err)
	}
	got := scanFanRows(t, rows)
	sortFanRows(got)
	sortFanRows(want)
	if len(want) != 16*43 || !slices.Equal(got, want) {
		t.Fatalf("fan-out returned %d rows, per-shard queries %d (equal: %v)", len(got), len(want), slices.Equal(got, want))
	}
	// A subset of shards, with duplicates ignored.
	rows, err = db.QueryContext(WithShards(ctx, 2, 11, 2), "SELECT shard FROM t WHERE id = 0")
	if err != nil {
		t.Fatal(err)
	}
	var shards []int
	for rows.Next() {
		var s int
		rows.Scan(&s)
		shards = append(shards, s)
	}
	slices.Sort(shards)
	if !slices.Equal(shards, []int{2, 11}) {
		t.Errorf("WithShards(2, 11, 2) read shards %v", shards)
	}
	assertIdle(t, db)
}

func TestFanOutExecSumsRowsAffected(t *testing.T) {
	_, db := fanOutFleet(t, 10, "")
	res, err := db.ExecContext(WithAllShards(context.Background()), "UPDATE t SET note = 'x' WHERE id BETWEEN 1 AND 3")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 16*3 {
		t.Errorf("rows affected %d, want %d", n, 16*3)
	}
	res, err = db.ExecContext(WithShards(context.Background(), 1, 9), "DELETE FROM t WHERE note = 'x'")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 6 {
		t.Errorf("rows affected %d, want 6", n)
	}
}

func TestFanOutOrderedMergeWithLimit(t *testing.T) {
	f, db := fanOutFleet(t, 200, "pool_max=4")
	ctx := context.Background()
	// The reference: every shard's rows in one table of one server.
	ref, err := sql.Open("pgx", f.hosts[0])
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	var union []string
	for s := 1; s <= 16; s++ {
		union = append(union, fmt.Sprintf("SELECT id, shard, note FROM shard%04d.t", s))
	}
	{
		// Shards 9-16 live on the other server: copy their rows over.
		rows, err := db.QueryContext(WithShards(ctx, 9, 10, 11, 12, 13, 14, 15, 16), "SELECT id, shard, note FROM t")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ref.Exec("CREATE TABLE allrows (id int, shard int, note text)"); err != nil {
			t.Fatal(err)
		}
		for _, r := range scanFanRows(t, rows) {
			if _, err := ref.Exec("INSERT INTO allrows VALUES ($1, $2, $3)", r.ID, r.Shard, r.Note); err != nil {
				t.Fatal(err)
			}
		}
	}
	refSQL := "SELECT id, shard, note FROM (" + strings.Join(union[:8], " UNION ALL ") + " UNION ALL SELECT * FROM allrows) u"

	for _, tc := range []struct {
		order string
		keys  []SortKey
		limit int
	}{
		{`note COLLATE "C", shard`, []SortKey{Asc("note"), Asc("shard")}, 25},
		{`id DESC, shard`, []SortKey{Desc("id"), Asc("shard")}, 40},
		{`shard DESC, id DESC`, []SortKey{Desc("shard"), Desc("id")}, 0},
	} {
		lim := ""
		if tc.limit > 0 {
			lim = fmt.Sprintf(" LIMIT %d", tc.limit)
		}
		want := scanFanRows(t, must(ref.Query(refSQL+" ORDER BY "+tc.order+lim)))
		fctx := WithMergeOrder(WithAllShards(ctx), tc.keys...)
		if tc.limit > 0 {
			fctx = WithLimit(fctx, tc.limit)
		}
		got := scanFanRows(t, must(db.QueryContext(fctx, "SELECT id, shard, note FROM t ORDER BY "+tc.order+lim)))
		if !slices.Equal(got, want) {
			t.Errorf("ORDER BY %s%s: merged %d rows differ from the single table's %d", tc.order, lim, len(got), len(want))
		}
	}
	// Ordered merge over more shards per host than connections: no stall.
	fctx := WithLimit(WithMergeOrder(WithFanOutConcurrency(WithAllShards(ctx), 2), Asc("id"), Asc("shard")), 50)
	got := scanFanRows(t, must(db.QueryContext(fctx, "SELECT id, shard, note FROM t ORDER BY id, shard LIMIT 50")))
	if len(got) != 50 || got[0].ID != 0 || got[16].ID != 1 || got[16].Shard != 1 {
		t.Errorf("narrow ordered merge: %d rows, first %+v", len(got), got[:min(len(got), 17)])
	}
	if _, err := db.QueryContext(WithMergeOrder(WithAllShards(ctx), Asc("nope")), "SELECT id FROM t"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("merge on a missing column: %v", err)
	}
	assertIdle(t, db)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// drain reads rows to the end and returns the query's or the rows' error:
// a shard's failure may surface from QueryContext or while iterating.
func drain(rows *sql.Rows, err error) error {
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
	}
	return rows.Err()
}

func TestFanOutColumnMismatchAndFailingShard(t *testing.T) {
	f, db := fanOutFleet(t, 5, "")
	ctx := context.Background()
	// Give shard 12 a different layout.
	other, err := sql.Open("pgx", f.hosts[1])
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Exec("ALTER TABLE shard0012.t RENAME COLUMN note TO remark"); err != nil {
		t.Fatal(err)
	}

	// SELECT * sees different columns on shard 12.
	err = drain(db.QueryContext(WithAllShards(ctx), "SELECT * FROM t"))
	if !errors.Is(err, ErrColumnMismatch) || !strings.Contains(err.Error(), "shard 12") {
		t.Errorf("column mismatch: got %v", err)
	}

	// Naming the missing column fails shard 12, by default the whole query.
	err = drain(db.QueryContext(WithAllShards(ctx), "SELECT id, note FROM t"))
	if err == nil {
		t.Fatal("a failing shard did not fail the query")
	}
	if !strings.Contains(err.Error(), "shard 12") || !strings.Contains(err.Error(), dbName(f.hosts[1])) {
		t.Errorf("error %q does not name shard 12 and its host", err)
	}

	// With partial results, the good shards' rows and a report.
	var report FanOutReport
	rows, err := db.QueryContext(WithPartialResults(WithAllShards(ctx), &report), "SELECT id, shard FROM t WHERE id = 0 AND note IS NOT NULL")
	if err != nil {
		t.Fatal(err)
	}
	var shards []int
	for rows.Next() {
		var id, s int
		rows.Scan(&id, &s)
		shards = append(shards, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	failed := report.Failed()
	if len(shards) != 15 || slices.Contains(shards, 12) || len(failed) != 1 || failed[12] == nil {
		t.Errorf("partial: rows from shards %v, failed %v", shards, failed)
	}
	if !strings.Contains(report.Err().Error(), "shard 12") {
		t.Errorf("report: %v", report.Err())
	}
	// Exec with partial results: the sum of the good shards.
	var report2 FanOutReport
	res, err := db.ExecContext(WithPartialResults(WithAllShards(ctx), &report2), "UPDATE t SET note = 'y' WHERE id = 1")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 15 || len(report2.Failed()) != 1 {
		t.Errorf("partial exec: %d rows, failed %v", n, report2.Failed())
	}
	assertIdle(t, db)
}

func TestFanOutCancellationReturnsEveryConnection(t *testing.T) {
	_, db := fanOutFleet(t, 0, "pool_max=4")
	before := busyGoroutines(t, db)
	for _, cancelHow := range []string{"close", "cancel"} {
		ctx, cancel := context.WithCancel(context.Background())
		rows, err := db.QueryContext(WithAllShards(ctx), "SELECT g FROM generate_series(1, 10000000) g")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 1000 && rows.Next(); i++ {
		}
		if cancelHow == "cancel" {
			cancel()
			for rows.Next() {
			}
			if rows.Err() == nil {
				t.Error("cancelled fan-out ended without an error")
			}
		}
		rows.Close()
		cancel()
		assertIdle(t, db)
		// The next statement on every host works.
		if n := count(t, WithShard(context.Background(), 3), db, "SELECT 1"); n != 1 {
			t.Fatal(n)
		}
		if n := count(t, WithShard(context.Background(), 14), db, "SELECT 1"); n != 1 {
			t.Fatal(n)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for busyGoroutines(t, db) > before+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := busyGoroutines(t, db); n > before+2 {
		t.Errorf("goroutines: %d before, %d after", before, n)
	}
}

func TestFanOutRefusedInTransactionAndPinnedConn(t *testing.T) {
	_, db := fanOutFleet(t, 0, "")
	ctx := context.Background()
	tx, err := db.BeginTx(WithShard(ctx, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.QueryContext(WithAllShards(ctx), "SELECT 1"); !errors.Is(err, ErrFanOutPinned) {
		t.Errorf("fan-out in a transaction: %v", err)
	}
	c, err := db.Conn(WithShard(ctx, 2))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ExecContext(WithShards(ctx, 1, 2), "SELECT 1"); !errors.Is(err, ErrFanOutPinned) {
		t.Errorf("fan-out on a pinned Conn: %v", err)
	}
	if _, err := db.ExecContext(WithShards(ctx, 1, 99), "SELECT 1"); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("fan-out to an unknown shard: %v", err)
	}
}

func TestFanOutWithSqlx(t *testing.T) {
	_, db := fanOutFleet(t, 4, "")
	x := sqlx.NewDb(db, "pgx")
	var got []fanRow
	ctx := WithMergeOrder(WithAllShards(context.Background()), Asc("shard"), Asc("id"))
	if err := x.SelectContext(ctx, &got, "SELECT id, shard, note FROM t ORDER BY shard, id"); err != nil {
		t.Fatal(err)
	}
	if len(got) != 16*5 || got[0] != (fanRow{0, 1, "seed"}) || got[79].Shard != 16 || got[79].ID != 4 {
		t.Errorf("sqlx Select over a fan-out: %d rows", len(got))
	}
}

// assertIdle checks that no host has a connection in use.
func assertIdle(t testing.TB, db *sql.DB) {
	t.Helper()
	for _, h := range connectorOf(t, db).Stats() {
		if h.DB.InUse != 0 {
			t.Errorf("host %s has %d connections in use", h.Host, h.DB.InUse)
		}
		if h.DB.OpenConnections > h.PoolMax {
			t.Errorf("host %s has %d connections open, pool_max %d", h.Host, h.DB.OpenConnections, h.PoolMax)
		}
	}
}
