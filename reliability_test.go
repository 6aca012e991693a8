package hv

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/pgtest"
)

// failoverFleet is shards 1-8 on the default server and 9-16 on a private
// cluster the test may stop and start.
type failoverFleet struct {
	dsn          string
	kwA, kwB     string // libpq keywords of each host's database
	hostB        string // host B's name in errors: "127.0.0.1:port/db"
	stoppable    *pgtest.Server
	blockTimeout time.Duration
}

func newFailoverFleet(t *testing.T, global string) *failoverFleet {
	t.Helper()
	a := pgtest.Default(t)
	b := pgtest.NewCluster(t)
	f := &failoverFleet{stoppable: b, blockTimeout: time.Second}
	f.kwA = a.CreateDatabase(t)
	f.kwB = b.CreateDatabase(t)
	createShards(t, f.kwA, ShardRange{1, 9})
	createShards(t, f.kwB, ShardRange{9, 17})
	f.hostB = "127.0.0.1:" + b.Port() + "/" + dbName(f.kwB)
	f.dsn = fmt.Sprintf("shards=1-9 %s; shards=9-17 %s; pool_max=4; pool_block_timeout=%v; %s", f.kwA, f.kwB, f.blockTimeout, global)
	return f
}

// idsIn returns the ids > 0 stored in shards r of the database kw.
func idsIn(t *testing.T, kw string, r ShardRange) map[int64]bool {
	t.Helper()
	db, err := sql.Open("pgx", kw)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[int64]bool{}
	for sh := r.Start; sh < r.End; sh++ {
		rows, err := db.Query(fmt.Sprintf("SELECT id FROM shard%04d.t WHERE id > 0", sh))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			out[id] = true
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
	}
	return out
}

// TestHostFailure stops one of two servers in the middle of a concurrent
// load of inserts and reads, and starts it again on the same port: the
// other host's statements never fail; the stopped host's fail, naming it,
// without hanging; hv serves its shards again without a restart; and every
// acknowledged insert is found afterwards.
func TestHostFailure(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run("pool_mode="+mode, func(t *testing.T) {
			testHostFailure(t, mode)
		})
	}
}

func testHostFailure(t *testing.T, mode string) {
	f := newFailoverFleet(t, "pool_mode="+mode)
	db, err := sql.Open("hv", f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	var (
		nextID   atomic.Int64
		mu       sync.Mutex
		acked    = map[int64]int{} // id → shard, for inserts that returned no error
		errsA    []error
		errsB    int
		maxFailB time.Duration
		okB      atomic.Int64 // successes on host B since the restart
	)
	restarted := atomic.Bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				shard := 1 + rng.IntN(16)
				ctx := WithShard(context.Background(), shard)
				start := time.Now()
				var err error
				id := nextID.Add(1)
				if rng.IntN(2) == 0 {
					_, err = db.ExecContext(ctx, "INSERT INTO t (id, shard, note) VALUES ($1, $2, 'load')", id, shard)
				} else {
					var n int
					err = db.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = 0").Scan(&n)
					if err == nil && n != shard {
						err = fmt.Errorf("read shard %d's row on shard %d", n, shard)
					}
					id = 0
				}
				took := time.Since(start)
				mu.Lock()
				switch {
				case err == nil && id != 0:
					acked[id] = shard
				case err != nil && shard < 9:
					errsA = append(errsA, err)
				case err != nil:
					errsB++
					maxFailB = max(maxFailB, took)
					if !strings.Contains(err.Error(), "host "+f.hostB) || !strings.Contains(err.Error(), fmt.Sprintf("shard %d", shard)) {
						errsA = append(errsA, fmt.Errorf("host B's error names neither host nor shard: %w", err))
					}
				}
				mu.Unlock()
				if err == nil && shard >= 9 && restarted.Load() {
					okB.Add(1)
				}
			}
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	waitUntil(t, "100 inserts acknowledged before the failure", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 100
	})
	if err := f.stoppable.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "20 failed statements on the stopped host", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return errsB >= 20
	})
	if err := f.stoppable.Start(ctx); err != nil {
		t.Fatal(err)
	}
	restarted.Store(true)
	// Wait (bounded) until host B serves statements again.
	for okB.Load() < 50 && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()

	for _, err := range errsA[:min(len(errsA), 10)] {
		t.Errorf("host A: %v", err)
	}
	if len(errsA) > 0 {
		t.Fatalf("%d errors on the host that stayed up", len(errsA))
	}
	if errsB == 0 {
		t.Error("no statement failed on the stopped host")
	}
	// A failing statement must not hang: it fails within about the block
	// timeout plus the connect timeout (a liveness bound, not a speed one).
	if bound := 3 * (f.blockTimeout + 2*time.Second); maxFailB > bound {
		t.Errorf("a statement on the stopped host took %v to fail (bound %v)", maxFailB, bound)
	}
	if okB.Load() < 50 {
		t.Fatalf("host B served %d statements after its restart", okB.Load())
	}
	// After recovery every shard of host B works at once, no stale
	// connection is handed out.
	for sh := 9; sh < 17; sh++ {
		if n, err := whereAmIShard(WithShard(context.Background(), sh), db); err != nil || n != sh {
			t.Errorf("shard %d after the restart: %d, %v", sh, n, err)
		}
	}
	// Nothing acknowledged is lost, and every row is on its own shard.
	found := idsIn(t, f.kwA, ShardRange{1, 9})
	for id := range idsIn(t, f.kwB, ShardRange{9, 17}) {
		found[id] = true
	}
	lost := 0
	for id := range acked {
		if !found[id] {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged inserts lost", lost, len(acked))
	}
	checkIdle(t, db)
	t.Logf("%d inserts acknowledged, %d found; host B: %d failed statements, slowest failure %v",
		len(acked), len(found), errsB, maxFailB.Round(time.Millisecond))
}

// checkIdle waits (bounded) until no connection of any host is in use.
func checkIdle(t *testing.T, db *sql.DB) {
	t.Helper()
	c := connectorOf(t, db)
	var st []HostStats
	for range 500 {
		st = c.Stats()
		busy := 0
		for _, h := range st {
			busy += h.DB.InUse
		}
		if busy == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, h := range st {
		if h.DB.InUse != 0 {
			t.Errorf("host %s: %d connections still in use", h.Host, h.DB.InUse)
		}
	}
}

// TestKilledConnectionsNotReused kills every server session of hv's (as a
// server restart or an administrator would) while hv holds them idle, then
// runs statements one after another: at most the first fails; the others
// get fresh connections instead of the other dead ones.
func TestKilledConnectionsNotReused(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run("pool_mode="+mode, func(t *testing.T) {
			kw := pgtest.Default(t).CreateDatabase(t)
			createShards(t, kw, ShardRange{1, 9})
			db, err := sql.Open("hv", "shards=1-9 "+kw+" application_name=hv_killed; pool_max=4; pool_mode="+mode)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			// Four connections, held at once, then all kept idle.
			var txs []*sql.Tx
			for sh := 1; sh <= 4; sh++ {
				tx, err := db.BeginTx(WithShard(context.Background(), sh), nil)
				if err != nil {
					t.Fatal(err)
				}
				txs = append(txs, tx)
			}
			for _, tx := range txs {
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
			}
			admin, err := sql.Open("pgx", kw)
			if err != nil {
				t.Fatal(err)
			}
			defer admin.Close()
			var killed int
			if err := admin.QueryRow("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'hv_killed'").Scan(&killed); err != nil {
				t.Fatal(err)
			}
			if killed != 4 {
				t.Fatalf("killed %d sessions, want 4", killed)
			}
			failed := 0
			for i := range 8 {
				sh := 1 + i%4
				if n, err := whereAmIShard(WithShard(context.Background(), sh), db); err != nil {
					failed++
					if !strings.Contains(err.Error(), fmt.Sprintf("shard %d on host", sh)) {
						t.Errorf("error does not name shard and host: %v", err)
					}
				} else if n != sh {
					t.Errorf("shard %d read %d", sh, n)
				}
			}
			if failed > 1 {
				t.Errorf("%d of 8 statements failed on killed connections, want at most 1", failed)
			}
			t.Logf("%d statement(s) failed after the kill", failed)
		})
	}
}

// busyGoroutines returns the number of goroutines, less the fan-out
// workers db's Connector keeps idle between fan-outs.
func busyGoroutines(t testing.TB, db *sql.DB) int {
	t.Helper()
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	idle := 0
	if err := c.Raw(func(dc any) error {
		idle = dc.(*conn).connector.workers.idleCount()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return runtime.NumGoroutine() - idle
}

// settleGoroutines waits (bounded) until the number of goroutines other
// than idle fan-out workers is back to at most base, and fails t if it is
// not.
func settleGoroutines(t *testing.T, db *sql.DB, base int) {
	t.Helper()
	n := 0
	for range 500 {
		if n = busyGoroutines(t, db); n <= base {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	t.Errorf("%d goroutines, %d before:\n%s", n, base, buf[:runtime.Stack(buf, true)])
}

// TestCancellation cancels a context in the middle of a query, of a
// transaction and of a Rows iteration: each returns its physical
// connection, the next statement on the host works, and no goroutine is
// left behind.
func TestCancellation(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run("pool_mode="+mode, func(t *testing.T) {
			f := newTestFleet(t, fleetOptions{global: "pool_max=2; pool_mode=" + mode})
			db := f.open(t)
			// Warm up both hosts so that the baseline includes the pools'
			// own goroutines.
			for _, sh := range []int{1, 9} {
				if _, err := whereAmIShard(WithShard(context.Background(), sh), db); err != nil {
					t.Fatal(err)
				}
			}
			base := busyGoroutines(t, db)
			after := func(t *testing.T, shard int) {
				t.Helper()
				checkIdle(t, db)
				for range 3 { // more than once: the pool may hand out either connection
					if n, err := whereAmIShard(WithShard(context.Background(), shard), db); err != nil || n != shard {
						t.Fatalf("next statement on shard %d: %d, %v", shard, n, err)
					}
				}
			}

			t.Run("query", func(t *testing.T) {
				ctx, cancel := context.WithCancel(WithShard(context.Background(), 2))
				time.AfterFunc(200*time.Millisecond, cancel)
				_, err := db.ExecContext(ctx, "SELECT pg_sleep(30)")
				if err == nil || !strings.Contains(err.Error(), "shard 2") {
					t.Fatalf("cancelled query: %v", err)
				}
				after(t, 2)
			})

			t.Run("transaction", func(t *testing.T) {
				ctx, cancel := context.WithCancel(WithShard(context.Background(), 10))
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.ExecContext(ctx, "INSERT INTO t (id, shard) VALUES (4242, 10)"); err != nil {
					t.Fatal(err)
				}
				time.AfterFunc(200*time.Millisecond, cancel)
				if _, err := tx.ExecContext(ctx, "SELECT pg_sleep(30)"); err == nil {
					t.Fatal("cancelled statement succeeded")
				}
				// database/sql rolls back in the background: Commit sees
				// either the rollback done or the cancelled context.
				if err := tx.Commit(); !errors.Is(err, sql.ErrTxDone) && !errors.Is(err, context.Canceled) {
					t.Errorf("Commit after cancel: %v", err)
				}
				after(t, 10)
				var n int
				if err := db.QueryRowContext(WithShard(context.Background(), 10), "SELECT count(*) FROM t WHERE id = 4242").Scan(&n); err != nil || n != 0 {
					t.Errorf("rolled back row: %d, %v", n, err)
				}
			})

			t.Run("rows", func(t *testing.T) {
				ctx, cancel := context.WithCancel(WithShard(context.Background(), 3))
				defer cancel()
				rows, err := db.QueryContext(ctx, "SELECT g FROM generate_series(1, 10000000) g")
				if err != nil {
					t.Fatal(err)
				}
				read := 0
				for rows.Next() {
					if read++; read == 100 {
						cancel()
					}
				}
				if err := rows.Err(); !errors.Is(err, context.Canceled) {
					t.Errorf("rows.Err after cancel = %v", err)
				}
				_ = rows.Close()
				after(t, 3)
			})

			t.Run("fanout", func(t *testing.T) {
				ctx, cancel := context.WithCancel(WithAllShards(context.Background()))
				defer cancel()
				rows, err := db.QueryContext(ctx, "SELECT g FROM generate_series(1, 1000000) g")
				if err != nil {
					t.Fatal(err)
				}
				read := 0
				for rows.Next() {
					if read++; read == 1000 {
						cancel()
					}
				}
				_ = rows.Close()
				after(t, 5)
				after(t, 12)
			})
			db.SetMaxIdleConns(0) // the outer pool's idle virtual connections hold nothing, but let them go
			settleGoroutines(t, db, base)
		})
	}
}

// TestPasswordNeverShown forces connection errors (nothing listens on the
// port) with a password set and scans every error, log line, Stats value and
// String output for it.
func TestPasswordNeverShown(t *testing.T) {
	const pw = "Pw-9f3kQz7"
	var logs bytes.Buffer
	var lmu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logs, &lmu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	for _, driver := range []string{"pgx", "postgres"} {
		dsn := fmt.Sprintf("shards=1-9 host=127.0.0.1 port=1 user=u password=%s dbname=d; shards=9-17 host=127.0.0.1 port=2 user=u password='%s' dbname=d sslmode=disable; pool_max=2; pool_block_timeout=100ms; driver=%s", pw, pw, driver)
		cfg, err := ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Logger = logger
		c, err := NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(c)
		var seen []string
		note := func(what string, err error) {
			if err == nil {
				t.Errorf("%s %s: no error", driver, what)
				return
			}
			seen = append(seen, fmt.Sprintf("%s: %v | %+v | %#v", what, err, err, err.Error()))
			for e := err; e != nil; e = errors.Unwrap(e) {
				seen = append(seen, e.Error())
			}
		}
		ctx := WithShard(context.Background(), 3)
		_, err = db.ExecContext(ctx, "SELECT 1")
		note("exec", err)
		_, err = db.QueryContext(WithShard(context.Background(), 12), "SELECT 1")
		note("query", err)
		_, err = db.BeginTx(ctx, nil)
		note("begin", err)
		note("ping", db.PingContext(context.Background()))
		_, err = db.QueryContext(WithAllShards(context.Background()), "SELECT 1")
		note("fan-out", err)
		conn, err := db.Conn(ctx)
		if err == nil {
			note("conn ping", conn.PingContext(ctx))
			conn.Close()
		}
		seen = append(seen, fmt.Sprintf("%+v", c.Stats()), fmt.Sprint(c.Stats()), c.Config().String(), fmt.Sprint(c.Config()),
			fmt.Sprintf("%v", cfg), cfg.Hosts[0].String(), cfg.Hosts[1].Name(), fmt.Sprint(db.Stats()))
		_ = db.Close()
		// Configuration errors too.
		_, err = ParseConfig(strings.Replace(dsn, "pool_max=2", "pool_max=-2", 1))
		note("config", err)
		bad := *cfg
		bad.Hosts = append([]HostConfig(nil), cfg.Hosts...)
		bad.Hosts[1].Shards = ShardSet{{5, 12}}
		_, err = NewConnector(&bad)
		note("overlap", err)
		for _, s := range seen {
			if strings.Contains(s, pw) {
				t.Errorf("%s: password shown in %q", driver, s)
			}
		}
	}
	lmu.Lock()
	defer lmu.Unlock()
	if strings.Contains(logs.String(), pw) {
		t.Errorf("password in the log:\n%s", logs.String())
	}
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// TestSchemaNamesSafe checks that schema names come only from integers and
// a pattern that cannot inject SQL, and are always quoted.
func TestSchemaNamesSafe(t *testing.T) {
	for _, p := range []string{
		`s%d"; DROP TABLE t; --`, `s%d;drop`, `s%d'`, `s%d "x"`, `s%d\`, `s%d-x`, `s%d/*`, `S%d`, `s%s`, `s%v`, `s%x`, `s%q`,
		"s%d\x00", "s%d\n", `s%[1]d`, `s%+d`, `s%-4d`, `%d`, "ſ%d",
	} {
		if _, err := ParseConfig("shards=0-1; schema=" + dsnQuote(p, true)); !errors.Is(err, ErrBadConfig) {
			t.Errorf("pattern %q accepted by ParseConfig: %v", p, err)
		}
		cfg := &Config{Hosts: []HostConfig{{Shards: ShardSet{{0, 1}}}}, SchemaPattern: p}
		if _, err := NewConnector(cfg); !errors.Is(err, ErrBadConfig) {
			t.Errorf("pattern %q accepted by NewConnector: %v", p, err)
		}
	}
	if got := quoteIdent(`a"b`); got != `"a""b"` {
		t.Errorf("quoteIdent = %s", got)
	}
	cfg, err := ParseConfig("shards=0-8192; schema=x_%05d")
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f := c.fleet.Load()
	for s := range NumShards {
		want := fmt.Sprintf(`SET search_path TO "x_%05d", "hv_ext"`, s)
		if f.shards[s].setPath != want {
			t.Fatalf("shard %d: %q", s, f.shards[s].setPath)
		}
		if f.shards[s].localPath != fmt.Sprintf(`SET LOCAL search_path TO "x_%05d", "hv_ext"`, s) {
			t.Fatalf("shard %d: %q", s, f.shards[s].localPath)
		}
	}
}
