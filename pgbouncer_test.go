package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"github.com/hypervault/hv/internal/ci"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/pgbouncer"
	"github.com/hypervault/hv/internal/pgtest"
)

// startBouncer starts PgBouncer in front of s, skipping the test when
// pgbouncer is not installed, unless CI=true.
func startBouncer(t testing.TB, s *pgtest.Server, mode string, poolSize int) *pgbouncer.Bouncer {
	t.Helper()
	port, _ := strconv.Atoi(s.Port())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := pgbouncer.Start(ctx, pgbouncer.Options{TargetPort: port, PoolMode: mode, PoolSize: poolSize})
	if errors.Is(err, pgbouncer.ErrNotInstalled) && !ci.Required() {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pgbouncer log:\n%s", b.Log())
		}
		_ = b.Stop()
	})
	return b
}

// bouncedFleet is shards 1-8 in a fresh database of the default server,
// reached through a PgBouncer in bouncerMode, and the hv DSN for it.
type bouncedFleet struct {
	direct string // libpq keywords of the database, bypassing the bouncer
	dsn    string
}

func newBouncedFleet(t testing.TB, bouncerMode, global string) bouncedFleet {
	t.Helper()
	s := pgtest.Default(t)
	kw := s.CreateDatabase(t)
	createShards(t, kw, ShardRange{1, 9})
	// In transaction pooling, 6 clients share 2 server connections; in
	// session pooling each client holds one for as long as it is open.
	poolSize := 2
	if bouncerMode == "session" {
		poolSize = 6
	}
	b := startBouncer(t, s, bouncerMode, poolSize)
	dsn := fmt.Sprintf("shards=1-9 %s dbname=%s; pool_max=6; %s", b.Keywords(), dbName(kw), global)
	return bouncedFleet{direct: kw, dsn: dsn}
}

// shardLoad runs concurrent statements on random shards 1-8 through db and
// counts those that ran on another shard's schema: reads (the shard stored
// in the schema's table), transactions (read then insert), and inserts
// outside transactions, whose rows are checked afterwards on the direct
// connection. It returns the number of wrong-shard observations.
func shardLoad(t *testing.T, db *sql.DB, direct string, workers, perWorker int) (wrong int64) {
	t.Helper()
	var bad atomic.Int64
	var nextID atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range perWorker {
				shard := 1 + rng.IntN(8)
				ctx := WithShard(context.Background(), shard)
				var err error
				switch i % 3 {
				case 0:
					var schema string
					var got int
					err = db.QueryRowContext(ctx, "SELECT current_schema(), (SELECT shard FROM t WHERE id = 0)").Scan(&schema, &got)
					if err == nil && (got != shard || schema != fmt.Sprintf("shard%04d", shard)) {
						bad.Add(1)
					}
				case 1:
					id := nextID.Add(1)
					_, err = db.ExecContext(ctx, "INSERT INTO t (id, shard, note) VALUES ($1, $2, 'plain')", id, shard)
				case 2:
					var tx *sql.Tx
					tx, err = db.BeginTx(ctx, nil)
					if err != nil {
						break
					}
					var got int
					if err = tx.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = 0").Scan(&got); err == nil && got != shard {
						bad.Add(1)
					}
					if err == nil {
						_, err = tx.ExecContext(ctx, "INSERT INTO t (id, shard, note) VALUES ($1, $2, 'tx')", nextID.Add(1), shard)
					}
					if err == nil {
						err = tx.Commit()
					} else {
						_ = tx.Rollback()
					}
				}
				if err != nil {
					errs <- fmt.Errorf("worker %d statement %d shard %d: %w", w, i, shard, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every inserted row must be in its own shard's schema.
	ddb, err := sql.Open("pgx", direct)
	if err != nil {
		t.Fatal(err)
	}
	defer ddb.Close()
	total := 0
	for sh := 1; sh < 9; sh++ {
		var n, misplaced int
		q := fmt.Sprintf("SELECT count(*), count(*) FILTER (WHERE shard <> %d) FROM shard%04d.t WHERE id > 0", sh, sh)
		if err := ddb.QueryRow(q).Scan(&n, &misplaced); err != nil {
			t.Fatal(err)
		}
		total += n
		bad.Add(int64(misplaced))
	}
	if int64(total) != nextID.Load() {
		t.Errorf("%d rows inserted, %d found", nextID.Load(), total)
	}
	return bad.Load()
}

// TestPgBouncerTransactionMode runs hv with pool_mode=transaction through a
// PgBouncer in transaction pooling mode with fewer server connections than
// clients: no statement may see another shard's schema, and hv sends no
// session-level search_path switch.
func TestPgBouncerTransactionMode(t *testing.T) {
	f := newBouncedFleet(t, "transaction", "pool_mode=transaction")
	db, err := sql.Open("hv", f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if wrong := shardLoad(t, db, f.direct, 6, 300); wrong != 0 {
		t.Fatalf("%d statements ran on another shard's schema", wrong)
	}
	for _, st := range connectorOf(t, db).Stats() {
		if st.SchemaSwitches != 0 {
			t.Errorf("host %s: %d session search_path switches in transaction mode", st.Host, st.SchemaSwitches)
		}
	}

	// Isolation and read-only options reach BEGIN.
	ctx := WithShard(context.Background(), 3)
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var iso, ro, schema string
	if err := tx.QueryRowContext(ctx, "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), current_schema()").Scan(&iso, &ro, &schema); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if iso != "serializable" || ro != "on" || schema != "shard0003" {
		t.Errorf("got isolation %q, read only %q, schema %q", iso, ro, schema)
	}

	// A failed transaction's COMMIT reports the rollback.
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("division by zero succeeded")
	}
	if err := tx.Commit(); err == nil {
		t.Error("COMMIT of a failed transaction succeeded")
	}
	// Exec returns the affected rows of the statement, not of SET LOCAL.
	res, err := db.ExecContext(ctx, "UPDATE t SET note = $1 WHERE id >= 0", "x")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n < 1 {
		t.Errorf("RowsAffected = %d", n)
	}
	// A query error rolls its transaction back and the connection serves on.
	if _, err := db.QueryContext(ctx, "SELECT * FROM missing_table"); err == nil || !strings.Contains(err.Error(), "shard 3") {
		t.Errorf("query of a missing table: %v", err)
	}
	if _, err := whereAmIShard(ctx, db); err != nil {
		t.Fatal(err)
	}
	// Fan-out works in transaction mode too.
	var n int
	if err := db.QueryRowContext(WithAllShards(context.Background()), "SELECT count(*) FROM t WHERE id = 0").Scan(&n); err != nil {
		t.Fatal(err)
	}
	rows, err := db.QueryContext(WithAllShards(context.Background()), "SELECT shard, current_schema() FROM t WHERE id = 0")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for rows.Next() {
		var sh int
		var sc string
		if err := rows.Scan(&sh, &sc); err != nil {
			t.Fatal(err)
		}
		if sc != fmt.Sprintf("shard%04d", sh) {
			t.Errorf("fan-out: shard %d read on %s", sh, sc)
		}
		seen++
	}
	if err := rows.Err(); err != nil || seen != 8 {
		t.Errorf("fan-out saw %d shards: %v", seen, err)
	}
	rows.Close()
}

func whereAmIShard(ctx context.Context, db *sql.DB) (int, error) {
	var n int
	err := db.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = 0").Scan(&n)
	return n, err
}

// TestPgBouncerSessionMode runs hv's default mode through a PgBouncer in
// session pooling mode: session state lasts as long as the client
// connection, so remembering the schema is right.
func TestPgBouncerSessionMode(t *testing.T) {
	f := newBouncedFleet(t, "session", "")
	db, err := sql.Open("hv", f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if wrong := shardLoad(t, db, f.direct, 6, 300); wrong != 0 {
		t.Fatalf("%d statements ran on another shard's schema", wrong)
	}
}

// TestPgBouncerSessionStateLeaks shows why transaction mode exists: hv's
// session mode behind a transaction-pooling PgBouncer loses its
// search_path between transactions. It only logs what it sees, since
// whether a leak shows up depends on scheduling.
func TestPgBouncerSessionStateLeaks(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	f := newBouncedFleet(t, "transaction", "driver=pgx")
	// pgx's named statements cannot work through PgBouncer 1.18 in
	// transaction mode; use unnamed ones so only search_path is at stake.
	f.dsn = strings.Replace(f.dsn, "shards=1-9 ", "shards=1-9 default_query_exec_mode=exec ", 1)
	db, err := sql.Open("hv", f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var wrong, failed atomic.Int64
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := range 200 {
				shard := 1 + (w+i)%8
				n, err := whereAmIShard(WithShard(context.Background(), shard), db)
				switch {
				case err != nil:
					failed.Add(1)
				case n != shard:
					wrong.Add(1)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("session mode behind a transaction pooler: %d of 1200 reads on another shard's schema, %d failed", wrong.Load(), failed.Load())
}

// BenchmarkPoolModes measures what pool_mode=transaction costs against
// session mode, directly and through PgBouncer in the matching pooling
// mode, one client, for an INSERT-free Exec, a point query and a
// transaction of one query. shard=same runs every statement on shard 3 (session
// mode's best case: no switch), shard=rr goes round the 8 shards.
func BenchmarkPoolModes(b *testing.B) {
	s := pgtest.Default(b)
	kw := s.CreateDatabase(b)
	createShards(b, kw, ShardRange{1, 9})
	bouncers := map[string]*pgbouncer.Bouncer{
		"session":     startBouncer(b, s, "session", 4),
		"transaction": startBouncer(b, s, "transaction", 4),
	}
	for _, via := range []string{"direct", "bouncer"} {
		for _, mode := range []string{"session", "transaction"} {
			host := kw
			if via == "bouncer" {
				host = bouncers[mode].Keywords() + " dbname=" + dbName(kw)
			}
			db, err := sql.Open("hv", fmt.Sprintf("shards=1-9 %s; pool_max=4; pool_mode=%s", host, mode))
			if err != nil {
				b.Fatal(err)
			}
			for _, spread := range []string{"same", "rr"} {
				shardOf := func(i int) int {
					if spread == "same" {
						return 3
					}
					return 1 + i%8
				}
				name := fmt.Sprintf("via=%s/mode=%s/shard=%s", via, mode, spread)
				b.Run(name+"/op=exec", func(b *testing.B) {
					for i := 0; b.Loop(); i++ {
						if _, err := db.ExecContext(WithShard(context.Background(), shardOf(i)), "UPDATE t SET note = note WHERE id = -1"); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.Run(name+"/op=query", func(b *testing.B) {
					for i := 0; b.Loop(); i++ {
						if _, err := whereAmIShard(WithShard(context.Background(), shardOf(i)), db); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.Run(name+"/op=tx", func(b *testing.B) {
					for i := 0; b.Loop(); i++ {
						ctx := WithShard(context.Background(), shardOf(i))
						tx, err := db.BeginTx(ctx, nil)
						if err != nil {
							b.Fatal(err)
						}
						var n int
						if err := tx.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = 0").Scan(&n); err != nil {
							b.Fatal(err)
						}
						if err := tx.Commit(); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
			db.Close()
		}
	}
}
