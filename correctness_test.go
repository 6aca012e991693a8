package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A fan-out whose context ends while its shards are still working returns
// an error, promptly, in every mode: the reader never waits for a shard's
// last message that was dropped.
func TestFanOutCancelledNeverHangs(t *testing.T) {
	_, db := fanOutFleet(t, 0, "")
	modes := map[string]func(context.Context) context.Context{
		"unordered": func(ctx context.Context) context.Context { return ctx },
		"merged":    func(ctx context.Context) context.Context { return WithMergeOrder(ctx, Asc("x")) },
		"partial": func(ctx context.Context) context.Context {
			return WithPartialResults(ctx, &FanOutReport{})
		},
	}
	for name, mode := range modes {
		t.Run(name, func(t *testing.T) {
			hangs := 0
			for range 10 {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				done := make(chan error, 1)
				go func() {
					rows, err := db.QueryContext(mode(WithShards(ctx, 1, 2, 9)), "SELECT pg_sleep(2)::text AS x")
					if err == nil {
						for rows.Next() {
						}
						err = rows.Err()
						rows.Close()
					}
					done <- err
				}()
				select {
				case err := <-done:
					if err == nil {
						t.Error("a cancelled fan-out returned no error")
					}
				case <-time.After(30 * time.Second): // far past the 2 s the shards sleep
					hangs++
				}
				cancel()
			}
			if hangs > 0 {
				t.Fatalf("%d of 10 cancelled fan-outs never returned", hangs)
			}
			assertIdle(t, db)
		})
	}
}

// A statement that races Reconfigure goes to the old or the new owner and
// never fails, even when the pool it chose is retired and closed under it.
func TestStatementsRacingReconfigure(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	cfg, c, db := f.connect(t)
	// Two configurations whose second host's pools differ (another
	// application_name), so that every Reconfigure retires one.
	other := *cfg
	other.Hosts = append([]HostConfig(nil), cfg.Hosts...)
	other.Hosts[1].Params = maps.Clone(cfg.Hosts[1].Params)
	other.Hosts[1].Params["application_name"] = "hv_other"
	configs := []*Config{cfg, &other}

	stop := make(chan struct{})
	var reconfigs atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.Reconfigure(configs[i%2]); err != nil {
				t.Error(err)
				return
			}
			reconfigs.Add(1)
		}
	})
	const statements = 400
	var failed atomic.Int64
	var firstErr atomic.Value
	var next atomic.Int64
	var workers sync.WaitGroup
	for range 4 {
		workers.Go(func() {
			for next.Add(1) <= statements {
				shard := 1 + rand.IntN(16)
				got, err := whereAmIShard(WithShard(context.Background(), shard), db)
				if err == nil && got != shard {
					err = fmt.Errorf("shard %d read shard %d's row", shard, got)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	workers.Wait()
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d statements failed during %d Reconfigures; first: %v", n, statements, reconfigs.Load(), firstErr.Load())
	}
	t.Logf("%d statements, 0 failed, during %d Reconfigures", statements, reconfigs.Load())
}

// The race of TestStatementsRacingReconfigure, step by step: a statement
// placed its shard on a fleet whose pool Reconfigure then retired and
// closed; it takes a connection of the new owner instead.
func TestLeaseOnRetiredPool(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	cfg, c, _ := f.connect(t)
	ctx := context.Background()
	stale := c.fleet.Load()
	p, err := stale.place(9)
	if err != nil {
		t.Fatal(err)
	}
	other := *cfg
	other.Hosts = append([]HostConfig(nil), cfg.Hosts...)
	other.Hosts[1].Params = maps.Clone(cfg.Hosts[1].Params)
	other.Hosts[1].Params["application_name"] = "hv_other"
	if err := c.Reconfigure(&other); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.host.acquire(ctx, p); err != errPoolRetired {
		t.Fatalf("acquire on the retired pool: %v, want errPoolRetired", err)
	}
	cn := &conn{connector: c, intended: -1}
	if err := cn.leaseOn(WithShard(ctx, 9), stale, false); err != nil {
		t.Fatalf("a statement placed on the old fleet: %v", err)
	}
	defer cn.release()
	if cn.place.host == p.host || cn.place.host != c.fleet.Load().shards[9].host {
		t.Error("the statement did not go to the new owner's pool")
	}
}

// Reconfigure that changes only pool sizes keeps the pool and its
// connections, and the new limit applies at once.
func TestReconfigureResizesPoolInPlace(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "pool_max=1; pool_block_timeout=0"})
	cfg, c, db := f.connect(t)
	ctx := context.Background()
	before := c.fleet.Load().hosts[0].pool
	held, err := db.Conn(WithShard(ctx, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := whereAmI(ctx, held); err != nil {
		t.Fatal(err)
	}
	if _, err := whereAmI(WithShard(ctx, 2), db); !errors.Is(err, ErrPoolTimeout) {
		t.Fatalf("a second connection with pool_max=1: %v, want ErrPoolTimeout", err)
	}
	bigger := *cfg
	bigger.PoolMax = 2
	if err := c.Reconfigure(&bigger); err != nil {
		t.Fatal(err)
	}
	if got := c.fleet.Load().hosts[0].pool; got != before {
		t.Error("the pool was replaced, want it resized in place")
	}
	if _, err := whereAmI(WithShard(ctx, 2), db); err != nil {
		t.Fatalf("a second connection with pool_max=2: %v", err)
	}
	if st := c.Stats()[0]; st.PoolMax != 2 || st.DB.MaxOpenConnections != 2 {
		t.Errorf("after the resize: PoolMax %d, MaxOpenConnections %d", st.PoolMax, st.DB.MaxOpenConnections)
	}
	// The held connection still works: nothing was closed.
	if w, err := whereAmI(ctx, held); err != nil || w.Shard != 1 {
		t.Errorf("the held connection after the resize: %+v, %v", w, err)
	}
}

// CreateShards' lock on a shard is not next_id()'s: while a CreateShards
// holds it, next_id() on the shard still jumps its sequence to the clock.
func TestCreateShardsLockLeavesNextIDAlone(t *testing.T) {
	const shard = 3
	db, _ := keyDB(t, shard, DefaultLayout())
	ctx := context.Background()
	holder, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback() //nolint:errcheck
	if _, err := holder.Exec(advisoryXactLock(lockCreateShards, shard)); err != nil {
		t.Fatal(err)
	}
	// Put the sequence far behind the clock: next_id() must jump.
	if _, err := db.Exec("SELECT setval('shard0003.hv_id_seq', 0)"); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback() //nolint:errcheck
	// A next_id() that waits for the lock spins until this ends it.
	if _, err := tx.Exec("SET LOCAL statement_timeout = '20s'"); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := tx.QueryRow("SELECT shard0003.next_id()").Scan(&id); err != nil {
		t.Fatalf("next_id() while CreateShards holds its lock: %v", err)
	}
	if k := Key(id); k.ShardID() != shard || time.Since(k.Created()) > time.Minute {
		t.Errorf("next_id() = %d: shard %d, created %v", id, k.ShardID(), k.Created())
	}
}

// The column-mismatch error names the shard whose columns differ and the
// shard the result's columns came from, each with its own columns, however
// the shards' answers arrive.
func TestFanOutColumnMismatchNamesTheOddShard(t *testing.T) {
	f := newTestFleet(t, fleetOptions{perHost: 2}) // shards 1-2 and 3-4
	ctx := context.Background()
	// Shard 3, the odd one, answers at once; the others after 300 ms.
	createViews(t, f, func(s int) string {
		if s == 3 {
			return "SELECT id, note, 1 AS extra FROM t"
		}
		return "SELECT id, note FROM t, pg_sleep(0.3)"
	})
	db := f.open(t)
	rows, err := db.QueryContext(WithAllShards(ctx), "SELECT * FROM v")
	if err == nil {
		for rows.Next() {
		}
		err = rows.Err()
		rows.Close()
	}
	if !errors.Is(err, ErrColumnMismatch) {
		t.Fatalf("err = %v, want ErrColumnMismatch", err)
	}
	var se *ShardError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want a *ShardError", err)
	}
	msg := err.Error()
	odd := se.Shard == 3 && strings.Contains(msg, "[id note extra], but shard")
	reference := strings.Contains(msg, "but shard 3 on host ") && strings.HasSuffix(msg, "returned [id note extra]")
	if !odd && !reference {
		t.Errorf("the error does not name shard 3 with its columns: %v", err)
	}
	if strings.Count(msg, "hv: ") != 1 {
		t.Errorf("more than one hv: prefix: %v", err)
	}
}

// A fan-out's rows describe their column types as one shard's rows do.
func TestFanOutColumnTypes(t *testing.T) {
	_, db := fanOutFleet(t, 0, "")
	ctx := context.Background()
	const q = "SELECT id, note, 1.5::numeric(4,2) AS n FROM t"
	one, err := db.QueryContext(WithShard(ctx, 1), q)
	if err != nil {
		t.Fatal(err)
	}
	want, err := one.ColumnTypes()
	one.Close()
	if err != nil {
		t.Fatal(err)
	}
	fan, err := db.QueryContext(WithAllShards(ctx), q)
	if err != nil {
		t.Fatal(err)
	}
	defer fan.Close()
	got, err := fan.ColumnTypes()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d column types, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].DatabaseTypeName() != want[i].DatabaseTypeName() || got[i].ScanType() != want[i].ScanType() {
			t.Errorf("column %s: %s %v, want %s %v", want[i].Name(), got[i].DatabaseTypeName(), got[i].ScanType(),
				want[i].DatabaseTypeName(), want[i].ScanType())
		}
		gp, gs, gok := got[i].DecimalSize()
		wp, ws, wok := want[i].DecimalSize()
		if gp != wp || gs != ws || gok != wok {
			t.Errorf("column %s: decimal size %d,%d,%v, want %d,%d,%v", want[i].Name(), gp, gs, gok, wp, ws, wok)
		}
	}
	if got[0].DatabaseTypeName() != "INT4" || got[0].ScanType() != reflect.TypeFor[int32]() {
		t.Errorf("id: %s %v, want INT4 int32", got[0].DatabaseTypeName(), got[0].ScanType())
	}
}

// After Connector.Close, statements fail with ErrClosed; after the
// *sql.DB's own Close, database/sql answers them itself.
func TestErrClosed(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	_, c, db := f.connect(t)
	ctx := WithShard(context.Background(), 1)
	if _, err := whereAmI(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for name, run := range map[string]func() error{
		"query":   func() error { _, err := whereAmI(ctx, db); return err },
		"exec":    func() error { _, err := db.ExecContext(ctx, "SELECT 1"); return err },
		"begin":   func() error { _, err := db.BeginTx(ctx, nil); return err },
		"fan-out": func() error { _, err := db.ExecContext(WithAllShards(ctx), "SELECT 1"); return err },
	} {
		if err := run(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Connector.Close: %v, want ErrClosed", name, err)
		}
	}
	db2 := f.open(t)
	db2.Close()
	if _, err := whereAmI(ctx, db2); err == nil || err.Error() != "sql: database is closed" {
		t.Errorf("after sql.DB.Close: %v, want database/sql's own error", err)
	}
}

// hv's errors carry one "hv: " prefix and name shard and host, however
// deep they come from.
func TestErrorsHaveOnePrefix(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "pool_max=1; pool_block_timeout=0"})
	_, c, db := f.connect(t)
	ctx := context.Background()
	held, err := db.Conn(WithShard(ctx, 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := whereAmI(ctx, held); err != nil {
		t.Fatal(err)
	}
	_, timeout := whereAmI(WithShard(ctx, 2), db)
	held.Close()
	_, missing := db.ExecContext(WithShard(ctx, 3), "SELECT * FROM missing")
	_, unknown := db.ExecContext(WithShard(ctx, 99), "SELECT 1")
	res := EachShard(ctx, db, c, func(ctx context.Context, tx *sql.Tx, shard int) error {
		_, err := tx.ExecContext(ctx, "SELECT * FROM missing")
		return err
	}, &EachShardOptions{Shards: []int{4}})
	ds := NewDatastore(c)
	key, err := NewKey(time.Now(), 5, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, dsErr := ds.Get(ctx, key) // no entities table: the shards are not made for it
	for name, tc := range map[string]struct {
		err      error
		sentinel error
		shard    int
		host     bool
	}{
		"pool timeout":  {timeout, ErrPoolTimeout, 2, true},
		"statement":     {missing, nil, 3, true},
		"unknown shard": {unknown, ErrUnknownShard, 99, false},
		"EachShard":     {res.Err(), nil, 4, true},
		"Datastore":     {dsErr, nil, 5, true},
	} {
		if tc.err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		msg := tc.err.Error()
		if strings.Count(msg, "hv: ") != 1 || !strings.HasPrefix(msg, "hv: ") {
			t.Errorf("%s: %q, want one hv: prefix", name, msg)
		}
		var se *ShardError
		if !errors.As(tc.err, &se) || se.Shard != tc.shard || (se.Host != "") != tc.host {
			t.Errorf("%s: %v is not shard %d's *ShardError (host named: %v)", name, tc.err, tc.shard, tc.host)
		}
		if tc.sentinel != nil && !errors.Is(tc.err, tc.sentinel) {
			t.Errorf("%s: %v does not match %v", name, tc.err, tc.sentinel)
		}
	}
}

// With partial results, a shard whose columns do not match is recorded and
// its query cancelled: the fan-out does not wait for the rest of its rows.
func TestFanOutPartialStopsTheOddShard(t *testing.T) {
	f := newTestFleet(t, fleetOptions{perHost: 2}) // shards 1-2 and 3-4
	ctx := context.Background()
	createViews(t, f, func(s int) string {
		if s == 3 {
			// After 2 s (the others have answered), more rows than the
			// server buffers before it sends, then a 60 s sleep.
			return `SELECT g AS id, 'x' AS note, 1 AS extra FROM (SELECT pg_sleep(2)) s, generate_series(1, 20000) g
				UNION ALL SELECT NULL::int, NULL::text, 2 FROM pg_sleep(60)`
		}
		return "SELECT id, note FROM t"
	})
	db := f.open(t)
	var report FanOutReport
	start := time.Now()
	rows, err := db.QueryContext(WithPartialResults(WithAllShards(ctx), &report), "SELECT * FROM v")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	took := time.Since(start)
	if took > 30*time.Second { // shard 3 sleeps 60 s: a liveness bound, not a speed one
		t.Fatalf("the fan-out waited %v for the shard whose columns differ", took)
	}
	if failed := report.Failed(); len(failed) != 1 || !errors.Is(failed[3], ErrColumnMismatch) {
		t.Fatalf("report: %v, want shard 3's column mismatch", report.Err())
	}
	if n != 3 {
		t.Errorf("%d rows, want the seed rows of shards 1, 2 and 4", n)
	}
	assertIdle(t, db)
	t.Logf("%d rows, %d shards failed, %v", n, len(report.Failed()), took.Round(time.Millisecond))
}

// createViews creates on every shard of f (shards 1..2*perHost) a view v
// defined by the query body(shard) returns, run on the shard's schema.
func createViews(t *testing.T, f *testFleet, body func(shard int) string) {
	t.Helper()
	for i, kw := range f.hosts {
		var ddl strings.Builder
		for s := 1 + i*f.perHost; s <= (i+1)*f.perHost; s++ {
			fmt.Fprintf(&ddl, "SET search_path TO shard%04d; CREATE VIEW v AS %s;", s, body(s))
		}
		if err := execOn(context.Background(), kw, ddl.String()); err != nil {
			t.Fatal(err)
		}
	}
}
