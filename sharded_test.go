package hv

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
)

// Integration tests of routing against real PostgreSQL: two separate
// servers (the main case), two databases of one server, and both inner
// drivers.

var topologies = []struct {
	name string
	opts fleetOptions
}{
	{"two-servers/pgx", fleetOptions{driver: "pgx"}},
	{"two-servers/libpq", fleetOptions{driver: "postgres"}},
	{"one-server/pgx", fleetOptions{sameServer: true, driver: "pgx"}},
}

func forEachTopology(t *testing.T, global string, test func(t *testing.T, f *testFleet, db *sql.DB)) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			o := tp.opts
			o.global = global
			f := newTestFleet(t, o)
			test(t, f, f.open(t))
		})
	}
}

func TestEveryShardRoutesToItsHostAndSchema(t *testing.T) {
	forEachTopology(t, "pool_max=3", func(t *testing.T, f *testFleet, db *sql.DB) {
		ctx := context.Background()
		for round := 0; round < 2; round++ { // the second round reuses connections
			for shard := 1; shard <= 16; shard++ {
				got, err := whereAmI(WithShard(ctx, shard), db)
				if err != nil {
					t.Fatalf("shard %d: %v", shard, err)
				}
				if want := f.expect(t, shard); got != want {
					t.Fatalf("shard %d ran at %+v, want %+v", shard, got, want)
				}
			}
		}
		if f.ports[0] == f.ports[1] && !strings.Contains(t.Name(), "one-server") {
			t.Fatalf("the two hosts are the same server (port %d)", f.ports[0])
		}
	})
}

func TestConcurrentRandomShards(t *testing.T) {
	forEachTopology(t, "pool_max=4", func(t *testing.T, f *testFleet, db *sql.DB) {
		ctx := context.Background()
		const goroutines, iterations = 16, 60
		var wg sync.WaitGroup
		errs := make(chan error, goroutines)
		for g := range goroutines {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), 7))
				for i := range iterations {
					shard := 1 + r.IntN(16)
					sctx := WithShard(ctx, shard)
					want := f.expect(t, shard)
					var got where
					var err error
					if i%4 == 0 { // some inside transactions
						var tx *sql.Tx
						if tx, err = db.BeginTx(sctx, nil); err == nil {
							got, err = whereAmI(sctx, tx)
							if err == nil {
								_, err = tx.ExecContext(sctx, "UPDATE t SET note = $1 WHERE id = 0", "g")
							}
							if err == nil {
								err = tx.Commit()
							} else {
								tx.Rollback()
							}
						}
					} else {
						got, err = whereAmI(sctx, db)
					}
					if err != nil {
						errs <- err
						return
					}
					if got != want {
						errs <- errors.New("shard routed wrong: got " + got.Schema + " on " + got.Database + ", want " + want.Schema + " on " + want.Database)
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
		c := connectorOf(t, db)
		for _, h := range c.Stats() {
			if h.DB.InUse != 0 || h.DB.OpenConnections > 4 {
				t.Errorf("host %s after the run: %+v", h.Host, h.DB)
			}
		}
	})
}

// connectorOf digs the Connector out of an hv *sql.DB.
func connectorOf(t testing.TB, db *sql.DB) *Connector {
	t.Helper()
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var cn *Connector
	c.Raw(func(dc any) error { cn = dc.(*conn).connector; return nil })
	return cn
}

func TestPoolTimeoutWhileOtherHostServes(t *testing.T) {
	forEachTopology(t, "pool_max=1; pool_block_timeout=150ms", func(t *testing.T, f *testFleet, db *sql.DB) {
		ctx := context.Background()
		held, err := db.Conn(WithShard(ctx, 1))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := whereAmI(ctx, held); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = whereAmI(WithShard(ctx, 2), db)
		if !errors.Is(err, ErrPoolTimeout) || errors.Is(err, driver.ErrBadConn) {
			t.Fatalf("got %v, want ErrPoolTimeout", err)
		}
		if waited := time.Since(start); waited < 150*time.Millisecond {
			t.Errorf("gave up after %v, before the block timeout", waited)
		}
		if !strings.Contains(err.Error(), "shard 2") || !strings.Contains(err.Error(), dbName(f.hosts[0])) {
			t.Errorf("error %q does not name the shard and host", err)
		}
		if got, err := whereAmI(WithShard(ctx, 12), db); err != nil || got != f.expect(t, 12) {
			t.Errorf("other host while the first is exhausted: %+v, %v", got, err)
		}
		held.Close()
		if _, err := whereAmI(WithShard(ctx, 2), db); err != nil {
			t.Errorf("after the connection came back: %v", err)
		}
		// A statement that runs longer than the block timeout is not a pool timeout.
		_, err = db.ExecContext(WithShard(ctx, 3), "SELECT pg_sleep(0.3)")
		if err != nil {
			t.Errorf("slow statement: %v", err)
		}
		// And its own deadline is reported as such.
		dctx, cancel := context.WithTimeout(WithShard(ctx, 3), 100*time.Millisecond)
		defer cancel()
		_, err = db.ExecContext(dctx, "SELECT pg_sleep(2)")
		if err == nil || errors.Is(err, ErrPoolTimeout) {
			t.Errorf("statement deadline: got %v, want a statement error that is not ErrPoolTimeout", err)
		}
	})
}

func TestTransactions(t *testing.T) {
	forEachTopology(t, "pool_max=2", func(t *testing.T, f *testFleet, db *sql.DB) {
		ctx := context.Background()
		s5 := WithShard(ctx, 5)
		s13 := WithShard(ctx, 13)

		// Commit is visible, on the right shard only.
		tx, err := db.BeginTx(s13, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(s13, "INSERT INTO t VALUES (1, 13, 'committed')"); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(s5, "SELECT 1"); !errors.Is(err, ErrShardMismatch) {
			t.Errorf("other shard in a transaction: got %v, want ErrShardMismatch", err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if n := count(t, s13, db, "SELECT count(*) FROM t WHERE id = 1"); n != 1 {
			t.Errorf("committed row: count %d", n)
		}
		if n := count(t, s5, db, "SELECT count(*) FROM t WHERE id = 1"); n != 0 {
			t.Errorf("row leaked to shard 5: count %d", n)
		}

		// Rollback is not.
		tx, err = db.BeginTx(s5, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO t VALUES (2, 5, 'rolled back')"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		if n := count(t, s5, db, "SELECT count(*) FROM t WHERE id = 2"); n != 0 {
			t.Errorf("rolled back row is there: count %d", n)
		}

		// Isolation and read-only are honoured.
		tx, err = db.BeginTx(s5, &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		var iso, ro string
		if err := tx.QueryRow("SHOW transaction_isolation").Scan(&iso); err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow("SHOW transaction_read_only").Scan(&ro); err != nil {
			t.Fatal(err)
		}
		if iso != "serializable" || ro != "on" {
			t.Errorf("isolation %q read_only %q", iso, ro)
		}
		if got, err := whereAmI(ctx, tx); err != nil || got != f.expect(t, 5) {
			t.Errorf("transaction ran at %+v, %v", got, err)
		}
		if _, err := tx.Exec("INSERT INTO t VALUES (3, 5, 'x')"); err == nil {
			t.Error("write in a read-only transaction succeeded")
		}
		tx.Rollback()

		// A rollback undoes a SET inside the transaction; hv must not be fooled.
		tx, err = db.BeginTx(s5, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("SET search_path TO shard0006"); err != nil {
			t.Fatal(err)
		}
		tx.Rollback()
		for _, s := range []int{5, 6, 5} {
			if got, err := whereAmI(WithShard(ctx, s), db); err != nil || got != f.expect(t, s) {
				t.Errorf("after rolled-back SET, shard %d ran at %+v, %v", s, got, err)
			}
		}
	})
}

func TestCancelledBeginContextReturnsTheConnection(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "pool_max=1; pool_block_timeout=2s"})
	db := f.open(t)
	ctx, cancel := context.WithCancel(WithShard(context.Background(), 4))
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("INSERT INTO t VALUES (9, 4, 'never')"); err != nil {
		t.Fatal(err)
	}
	cancel() // database/sql rolls back in the background
	if err := tx.Commit(); err == nil {
		t.Fatal("commit after cancel succeeded")
	}
	// pool_max=1: the next statement needs the same connection back.
	if n := count(t, WithShard(context.Background(), 4), db, "SELECT count(*) FROM t WHERE id = 9"); n != 0 {
		t.Errorf("cancelled transaction's row is there: %d", n)
	}
}

func TestPinnedConn(t *testing.T) {
	forEachTopology(t, "pool_max=2", func(t *testing.T, f *testFleet, db *sql.DB) {
		ctx := context.Background()
		c, err := db.Conn(WithShard(ctx, 10))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var pid1, pid2 int
		c.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid1)
		if got, err := whereAmI(ctx, c); err != nil || got != f.expect(t, 10) {
			t.Errorf("pinned conn ran at %+v, %v", got, err)
		}
		// A session SET on the pinned connection does not fool hv.
		if _, err := c.ExecContext(ctx, "SET search_path TO public"); err != nil {
			t.Fatal(err)
		}
		if got, err := whereAmI(ctx, c); err != nil || got != f.expect(t, 10) {
			t.Errorf("after SET, pinned conn ran at %+v, %v", got, err)
		}
		c.QueryRowContext(WithShard(ctx, 10), "SELECT pg_backend_pid()").Scan(&pid2)
		if pid1 == 0 || pid1 != pid2 {
			t.Errorf("pinned conn changed backend: %d then %d", pid1, pid2)
		}
		if _, err := c.ExecContext(WithShard(ctx, 11), "SELECT 1"); !errors.Is(err, ErrShardMismatch) {
			t.Errorf("got %v, want ErrShardMismatch", err)
		}
	})
}

func TestPreparedStatementRunsOnEachExecutionsShard(t *testing.T) {
	forEachTopology(t, "pool_max=2", func(t *testing.T, f *testFleet, db *sql.DB) {
		ctx := context.Background()
		st, err := db.PrepareContext(ctx, "SELECT shard, current_schema() FROM t WHERE id = $1")
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		for _, shard := range []int{1, 9, 16, 2, 1} {
			var got int
			var schema string
			if err := st.QueryRowContext(WithShard(ctx, shard), 0).Scan(&got, &schema); err != nil {
				t.Fatalf("shard %d: %v", shard, err)
			}
			if got != shard || schema != f.expect(t, shard).Schema {
				t.Errorf("shard %d: got shard %d schema %s", shard, got, schema)
			}
		}
		if _, err := st.ExecContext(ctx, 0); !errors.Is(err, ErrNoShard) {
			t.Errorf("prepared statement without a shard: got %v", err)
		}
	})
}

// Shards whose tables differ share one connection: the inner driver's
// cached plan from one shard must not break the same SQL on another.
func TestSameSQLOnShardsWithDifferentTables(t *testing.T) {
	forEachTopology(t, "pool_max=1", func(t *testing.T, f *testFleet, db *sql.DB) {
		ctx := context.Background()
		if _, err := db.ExecContext(WithShard(ctx, 2), "ALTER TABLE t ADD COLUMN extra int DEFAULT 7"); err != nil {
			t.Fatal(err)
		}
		for _, shard := range []int{1, 2, 1, 2} {
			rows, err := db.QueryContext(WithShard(ctx, shard), "SELECT * FROM t WHERE id = $1", 0)
			if err != nil {
				t.Fatalf("shard %d: %v", shard, err)
			}
			cols, _ := rows.Columns()
			rows.Close()
			if want := 3 + shard - 1; len(cols) != want {
				t.Errorf("shard %d: columns %v, want %d of them", shard, cols, want)
			}
		}
	})
}

func TestSqlx(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	type row struct {
		ID    int    `db:"id"`
		Shard int    `db:"shard"`
		Note  string `db:"note"`
	}
	ctx := context.Background()
	check := func(t *testing.T, db *sqlx.DB) {
		for _, shard := range []int{3, 14} {
			sctx := WithShard(ctx, shard)
			if _, err := db.ExecContext(sctx, db.Rebind("INSERT INTO t VALUES (?, ?, ?)"), 7, shard, "sqlx"); err != nil {
				t.Fatal(err)
			}
			var rows []row
			if err := db.SelectContext(sctx, &rows, "SELECT id, shard, note FROM t WHERE shard = $1 ORDER BY id", shard); err != nil {
				t.Fatal(err)
			}
			if len(rows) != 2 || rows[1] != (row{7, shard, "sqlx"}) {
				t.Errorf("shard %d: %+v", shard, rows)
			}
			if _, err := db.NamedExecContext(sctx, "DELETE FROM t WHERE id = :id", row{ID: 7}); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("NewDb", func(t *testing.T) { check(t, sqlx.NewDb(f.open(t), "pgx")) })
	t.Run("Open", func(t *testing.T) {
		db, err := sqlx.Open("hv", f.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if got := db.Rebind("?"); got != "$1" {
			t.Errorf("sqlx.Open(\"hv\") binds %q, want $1", got)
		}
		check(t, db)
	})
}

func TestPingStatsResetClose(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "pool_max=3"})
	db := f.open(t)
	ctx := context.Background()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("ping every host: %v", err)
	}
	if err := db.PingContext(WithShard(ctx, 12)); err != nil {
		t.Fatalf("ping shard 12: %v", err)
	}
	c := connectorOf(t, db)
	st := c.Stats()
	if len(st) != 2 || st[0].Shards.String() != (ShardRange{1, 9}).String() || st[1].Shards.String() != (ShardRange{9, 17}).String() || st[0].PoolMax != 3 {
		t.Fatalf("stats: %+v", st)
	}
	if st[0].DB.OpenConnections < 1 || st[1].DB.OpenConnections < 1 {
		t.Errorf("ping opened no connection: %+v", st)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st[0].DB.OpenConnections != 0 {
		t.Errorf("after Reset: %+v", st[0].DB)
	}
	if got, err := whereAmI(WithShard(ctx, 2), db); err != nil || got != f.expect(t, 2) {
		t.Errorf("after Reset: %+v, %v", got, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Reset(); !errors.Is(err, ErrClosed) {
		t.Errorf("Reset after Close: %v", err)
	}
}

func TestPingNamesTheHostThatIsDown(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	// A second fleet whose shards 9-16 live on a port nobody listens on.
	dead := "shards=9-17 host=127.0.0.1 port=1 user=postgres password=hunter2 dbname=nowhere connect_timeout=2"
	dsn := strings.SplitN(f.dsn, ";", 2)[0] + "; " + dead
	var logs bytes.Buffer
	cfg, err := ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	ctx := context.Background()
	err = db.PingContext(ctx)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1/nowhere") {
		t.Errorf("ping: got %v, want an error naming the host that is down", err)
	}
	_, qerr := db.ExecContext(WithShard(ctx, 10), "SELECT 1")
	if qerr == nil || !strings.Contains(qerr.Error(), "shard 10") {
		t.Errorf("statement on the dead host: %v", qerr)
	}
	if _, err := db.ExecContext(WithShard(ctx, 3), "SELECT 1"); err != nil {
		t.Errorf("statement on the live host: %v", err)
	}
	for _, text := range []string{err.Error(), qerr.Error(), logs.String()} {
		if strings.Contains(text, "hunter2") {
			t.Errorf("password shown in %q", text)
		}
	}
	if !strings.Contains(logs.String(), "shard=3") {
		t.Errorf("debug log has no statement line for shard 3: %s", logs.String())
	}
}

func count(t testing.TB, ctx context.Context, db interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, query string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(ctx, query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func totalSwitches(c *Connector) int64 {
	var n int64
	for _, h := range c.Stats() {
		n += h.SchemaSwitches
	}
	return n
}

// A sequential client keeps one connection per host busy, whatever
// pool_max allows: a statement switches exactly when its shard is not the
// one its host's previous statement ran on, and each runs where it must.
func TestShardAffinity(t *testing.T) {
	for _, global := range []string{"pool_max=8", "pool_max=1"} {
		t.Run(global, func(t *testing.T) {
			f := newTestFleet(t, fleetOptions{global: global})
			db := f.open(t)
			c := connectorOf(t, db)
			ctx := context.Background()
			r := rand.New(rand.NewPCG(7, 7))
			last := map[int]int{} // host index -> its previous statement's shard
			var wantSwitches int64
			visit := func() { // every shard once, in a different order each time
				for _, shard := range r.Perm(16) {
					shard++
					got, err := whereAmI(WithShard(ctx, shard), db)
					if err != nil {
						t.Fatal(err)
					}
					if want := f.expect(t, shard); got != want {
						t.Fatalf("shard %d ran at %+v, want %+v", shard, got, want)
					}
					host := (shard - 1) / f.perHost
					if last[host] != shard {
						wantSwitches++
					}
					last[host] = shard
				}
			}
			visit() // every shard's first statement prepares on the connection
			before := totalSwitches(c)
			wantSwitches = 0
			for range 3 {
				visit()
			}
			if got := totalSwitches(c) - before; got != wantSwitches {
				t.Errorf("%d schema switches in 3 rounds over 16 shards, want %d", got, wantSwitches)
			}
			for _, h := range c.Stats() {
				if h.DB.OpenConnections != 1 {
					t.Errorf("host %s has %d connections open, want 1", h.Host, h.DB.OpenConnections)
				}
			}
			// Kept connections count as idle, and go back to the inner
			// pool after a second.
			assertIdle(t, db)
			deadline := time.Now().Add(10 * time.Second)
			for _, fh := range c.fleet.Load().hosts {
				h := fh.pool
				for {
					h.mu.Lock()
					kept := len(h.idle)
					h.mu.Unlock()
					if kept == 0 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("host %s still keeps %d connections", h.name, kept)
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			visit() // served again from the inner pool, on the right schemas
		})
	}
}
