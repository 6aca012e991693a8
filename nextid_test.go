package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/pgtest"
	"github.com/jackc/pgx/v5/pgconn"
)

// keyDB returns a fresh database holding shard's key generator (shardDDL)
// in schema shardNNNN, and libpq keywords for it.
func keyDB(t testing.TB, shard int, layout Layout) (*sql.DB, string) {
	t.Helper()
	kw := pgtest.Default(t).CreateDatabase(t)
	db, err := sql.Open("pgx", kw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	schema := fmt.Sprintf("shard%04d", shard)
	if _, err := db.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the statements are idempotent
		for _, s := range shardDDL(schema, shard, layout) {
			if _, err := db.Exec(s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	return db, kw
}

// instagramDDL is the function Instagram published, for comparison.
func instagramDDL(schema string, shard int) string {
	return fmt.Sprintf(`CREATE SEQUENCE %[1]s.insta_seq;
CREATE FUNCTION %[1]s.insta_next_id(OUT result bigint) AS $$
DECLARE
	our_epoch bigint := %[3]d;
	seq_id bigint;
	now_millis bigint;
	shard_id int := %[2]d;
BEGIN
	SELECT nextval('%[1]s.insta_seq') %% 1024 INTO seq_id;
	SELECT FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) INTO now_millis;
	result := (now_millis - our_epoch) << 23;
	result := result | (shard_id << 10);
	result := result | (seq_id);
END;
$$ LANGUAGE PLPGSQL`, schema, shard, DefaultEpochMillis)
}

// insertConcurrently has sessions sessions each insert rows rows whose id
// is made by fn, and returns the number of duplicate ids.
func insertConcurrently(t testing.TB, db *sql.DB, fn string, sessions, rows int) (dups int) {
	t.Helper()
	if _, err := db.Exec(`DROP TABLE IF EXISTS ids; CREATE UNLOGGED TABLE ids (id bigint DEFAULT ` + fn + `,
		at timestamptz DEFAULT clock_timestamp(), session int, n int)`); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for s := range sessions {
		wg.Go(func() {
			_, err := db.Exec("INSERT INTO ids (session, n) SELECT $1, g FROM generate_series(1, $2) g", s, rows)
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := db.QueryRow("SELECT count(*) - count(DISTINCT id) FROM ids").Scan(&dups); err != nil {
		t.Fatal(err)
	}
	return dups
}

func TestNextIDNoDuplicates(t *testing.T) {
	const shard = 3
	db, _ := keyDB(t, shard, DefaultLayout())
	db.SetMaxOpenConns(8)
	if _, err := db.Exec(instagramDDL("shard0003", shard)); err != nil {
		t.Fatal(err)
	}
	sessions, rows := 4, 50_000
	if testing.Short() {
		rows = 10_000
	}
	if dups := insertConcurrently(t, db, "shard0003.next_id()", sessions, rows); dups != 0 {
		t.Errorf("next_id(): %d duplicate ids in %d", dups, sessions*rows)
	}
	// Every id carries the shard, increases within its session, and its
	// time is the clock's at the insert.
	var wrongShard, notIncreasing int
	var p50, p99, worst float64
	err := db.QueryRow(fmt.Sprintf(`SELECT
		count(*) FILTER (WHERE (id >> 10) & 8191 <> %d),
		count(*) FILTER (WHERE id <= prev),
		percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(lag_ms)),
		percentile_cont(0.99) WITHIN GROUP (ORDER BY abs(lag_ms)),
		max(abs(lag_ms))
		FROM (SELECT id, lag(id) OVER (PARTITION BY session ORDER BY n) AS prev,
			floor(extract(epoch FROM at) * 1000) - %d - (id >> 23) AS lag_ms FROM ids) x`, shard, DefaultEpochMillis)).
		Scan(&wrongShard, &notIncreasing, &p50, &p99, &worst)
	if err != nil {
		t.Fatal(err)
	}
	if wrongShard != 0 || notIncreasing != 0 {
		t.Errorf("%d ids with another shard, %d not increasing within their session", wrongShard, notIncreasing)
	}
	t.Logf("key time vs insert time: median %.0f ms, p99 %.0f ms, worst %.0f ms", p50, p99, worst)
	// The median shows drift of next_id's clock; the tail shows only how
	// long the backend was descheduled between the two column defaults
	// (up to 7 ms under -race on 2 busy cores), so it is bounded loosely.
	if p50 > 3 || worst > 1000 {
		t.Errorf("key times drift from the insert times: median %.0f ms, worst %.0f ms", p50, worst)
	}
	// The original, in the same harness, for the record (not asserted: its
	// duplicates depend on scheduling).
	t.Logf("Instagram's next_id(): %d duplicate ids in %d", insertConcurrently(t, db, "shard0003.insta_next_id()", sessions, rows), sessions*rows)
}

func TestNextIDEndOfRangeIsAnError(t *testing.T) {
	// An epoch so old that the 41-bit range (2^40 ms usable) ended 10 s ago.
	epoch := time.Now().Add(-time.Duration(keyMaxMillis)*time.Millisecond - 10*time.Second)
	layout, err := NewLayout(epoch)
	if err != nil {
		t.Fatal(err)
	}
	db, _ := keyDB(t, 7, layout)
	for _, q := range []string{"SELECT shard0007.next_id()", "SELECT first_seq FROM shard0007.lease_ids(10)"} {
		var id int64
		err := db.QueryRow(q).Scan(&id)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "22003" || !strings.Contains(pgErr.Message, "shard 7") {
			t.Errorf("%s past the end of the key range: got %d, %v", q, id, err)
		}
	}
}

// A jumper that died half-way leaves the generation odd; the next call
// finishes the jump and carries on.
func TestNextIDRecoversFromAnAbandonedJump(t *testing.T) {
	db, _ := keyDB(t, 4, DefaultLayout())
	var before, after int64
	if err := db.QueryRow("SELECT shard0004.next_id()").Scan(&before); err != nil {
		t.Fatal(err)
	}
	var g int64
	if err := db.QueryRow("SELECT nextval('shard0004.hv_id_gen')").Scan(&g); err != nil || g%2 != 1 {
		t.Fatalf("generation %d, %v; want it odd", g, err)
	}
	if err := db.QueryRow("SELECT shard0004.next_id()").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("SELECT pg_sequence_last_value('shard0004.hv_id_gen')").Scan(&g); err != nil || g%2 != 0 {
		t.Errorf("generation %d after the repair, %v; want it even", g, err)
	}
	if after <= before || Key(after).ShardID() != 4 {
		t.Errorf("next_id after the repair: %d (before: %d)", after, before)
	}
}

func TestCheckShardLayout(t *testing.T) {
	db, _ := keyDB(t, 3, DefaultLayout())
	ctx := context.Background()
	if err := checkShardLayout(ctx, db, "shard0003", 3, DefaultLayout()); err != nil {
		t.Errorf("matching layout: %v", err)
	}
	other, err := NewLayout(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		shard  int
		layout Layout
	}{{3, other}, {4, DefaultLayout()}} {
		err := checkShardLayout(ctx, db, "shard0003", tc.shard, tc.layout)
		if !errors.Is(err, ErrLayoutMismatch) || !strings.Contains(err.Error(), fmt.Sprintf("shard %d", tc.shard)) {
			t.Errorf("shard %d, epoch %v: got %v", tc.shard, tc.layout.Epoch(), err)
		}
	}
	if err := checkShardLayout(ctx, db, "shard0009", 9, DefaultLayout()); err == nil || !strings.Contains(err.Error(), "shard 9") {
		t.Errorf("missing hv_layout(): got %v", err)
	}
}

// BenchmarkNextID reports the server-side cost of one call (ns/call) of
// hv's next_id(), Instagram's and a bare nextval, 10,000 calls a statement.
func BenchmarkNextID(b *testing.B) {
	db, _ := keyDB(b, 3, DefaultLayout())
	if _, err := db.Exec(instagramDDL("shard0003", 3)); err != nil {
		b.Fatal(err)
	}
	const calls = 10_000
	for _, tc := range []struct{ name, expr string }{
		{"hv", "shard0003.next_id()"},
		{"instagram", "shard0003.insta_next_id()"},
		{"nextval", "nextval('shard0003.insta_seq')"},
	} {
		b.Run("fn="+tc.name, func(b *testing.B) {
			q := fmt.Sprintf("SELECT count(%s) FROM generate_series(1, %d)", tc.expr, calls)
			for b.Loop() {
				var n int
				if err := db.QueryRow(q).Scan(&n); err != nil || n != calls {
					b.Fatal(n, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*calls), "ns/call")
		})
	}
}
