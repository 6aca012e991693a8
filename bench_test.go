package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// BenchmarkPointSelect compares the same point SELECT on one fixed shard
// run directly through pgx stdlib on a schema-qualified table and through
// hv. Compare the medians side by side with `make bench` (benchstat -col
// /via).
func BenchmarkPointSelect(b *testing.B) {
	f := newTestFleet(b, fleetOptions{global: "pool_max=10"})
	ctx := context.Background()
	direct := f.directDBs(b, 10)[0]
	_, connector, hv := f.connect(b)
	hv.SetMaxIdleConns(20)
	run := func(b *testing.B, db *sql.DB, ctx context.Context, query string) {
		var shard int
		for range 100 { // warm up: connect, prepare
			if err := db.QueryRowContext(ctx, query, 0).Scan(&shard); err != nil {
				b.Fatal(err)
			}
		}
		before := switches(connector)
		defer reportCPU(b)()
		b.ResetTimer()
		b.ReportAllocs()
		for b.Loop() {
			if err := db.QueryRowContext(ctx, query, 0).Scan(&shard); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(switches(connector)-before)/float64(b.N), "switches/op")
	}
	b.Run("via=direct", func(b *testing.B) {
		run(b, direct, ctx, "SELECT shard FROM shard0005.t WHERE id = $1")
	})
	b.Run("via=hv", func(b *testing.B) {
		run(b, hv, WithShard(ctx, 5), "SELECT shard FROM t WHERE id = $1")
	})
}

// BenchmarkRandomShard is the performance issue's table: a point SELECT on a
// random shard of 16 (8 per host, 1 and 8 goroutines) and of 256 (128 per
// host, far more shards than connections), through hv and directly through
// pgx on the same servers (schema-qualified, one *sql.DB per server, the
// same pool_max). Compare with `benchstat -col /via`.
func BenchmarkRandomShard(b *testing.B) {
	for _, tc := range []struct{ shards, goroutines int }{{16, 1}, {16, 8}, {256, 1}} {
		b.Run(fmt.Sprintf("shards=%d/g=%d", tc.shards, tc.goroutines), func(b *testing.B) {
			f := newTestFleet(b, fleetOptions{global: "pool_max=10", perHost: tc.shards / 2})
			ctx := context.Background()
			direct := f.directDBs(b, 10)
			_, connector, hv := f.connect(b)
			hv.SetMaxIdleConns(20)
			qualified := qualifiedSelects(tc.shards)
			routed := make([]context.Context, tc.shards+1)
			for s := 1; s <= tc.shards; s++ {
				routed[s] = WithShard(ctx, s)
			}
			load := pointLoad{goroutines: tc.goroutines, shards: tc.shards, hosts: 2, poolMax: 10}
			b.Run("via=direct", func(b *testing.B) {
				runPoint(b, load, nil, func(s int) error {
					var got int
					return direct[(s-1)/(tc.shards/2)].QueryRowContext(ctx, qualified[s], 0).Scan(&got)
				})
			})
			b.Run("via=hv", func(b *testing.B) {
				var before int64
				runPoint(b, load, func() { before = switches(connector) }, func(s int) error {
					var got int
					return hv.QueryRowContext(routed[s], "SELECT shard FROM t WHERE id = $1", 0).Scan(&got)
				})
				b.ReportMetric(float64(switches(connector)-before)/float64(b.N), "switches/op")
			})
		})
	}
}

// directDBs opens the fleet's two databases directly through pgx, with
// poolMax connections each and the connection keywords extra (if any)
// added, closed when b ends.
func (f *testFleet) directDBs(b *testing.B, poolMax int, extra ...string) [2]*sql.DB {
	var direct [2]*sql.DB
	for i := range direct {
		d, err := sql.Open("pgx", strings.Join(append([]string{f.hosts[i]}, extra...), " "))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { d.Close() })
		d.SetMaxOpenConns(poolMax)
		d.SetMaxIdleConns(poolMax)
		direct[i] = d
	}
	return direct
}

// qualifiedSelects returns direct's point SELECT for shards 1..shards, on
// each shard's schema-qualified table, indexed by shard.
func qualifiedSelects(shards int) []string {
	q := make([]string, shards+1)
	for s := 1; s <= shards; s++ {
		q[s] = fmt.Sprintf("SELECT shard FROM shard%04d.t WHERE id = $1", s)
	}
	return q
}

// switches returns the search_path switches c sent so far (0 for nil).
func switches(c *Connector) int64 {
	var n int64
	if c != nil {
		for _, h := range c.Stats() {
			n += h.SchemaSwitches
		}
	}
	return n
}

// BenchmarkFanOut compares a small query on one shard with the same query
// fanned out to 16 shards on two hosts (8 each, pool_max 10): parallel, the
// fan-out should cost well under 16 single queries.
func BenchmarkFanOut(b *testing.B) {
	f := newTestFleet(b, fleetOptions{global: "pool_max=10"})
	db := f.open(b)
	db.SetMaxIdleConns(20)
	ctx := context.Background()
	const q = "SELECT id, shard, note FROM t WHERE id = 0"
	b.Run("via=single", func(b *testing.B) { benchRows(b, db, WithShard(ctx, 5), 1, q) })
	b.Run("via=fanout16", func(b *testing.B) {
		defer reportCPU(b)()
		benchRows(b, db, WithAllShards(ctx), 16, q)
	})

	// The floor on this machine: the same 16 queries sent directly through
	// pgx from 16 goroutines (schema-qualified, no routing, no merging).
	direct := f.directDBs(b, 10)
	b.Run("via=direct-parallel16", func(b *testing.B) {
		defer reportCPU(b)()
		b.ReportAllocs()
		for b.Loop() {
			var wg sync.WaitGroup
			errs := make([]error, 16)
			for s := 1; s <= 16; s++ {
				wg.Go(func() {
					var id, shard int
					var note string
					q := fmt.Sprintf("SELECT id, shard, note FROM shard%04d.t WHERE id = 0", s)
					errs[s-1] = direct[(s-1)/8].QueryRowContext(ctx, q).Scan(&id, &shard, &note)
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFanOutMemory streams a fan-out of 100k and 1M rows in total over
// 16 shards and reports the peak heap while reading: peak-live-MB is the
// most the garbage collector found live after any cycle (what the fan-out
// retains), peak-heap-MB the most allocated at any sample (live plus
// garbage not yet collected). Streaming keeps both flat as rows grow.
func BenchmarkFanOutMemory(b *testing.B) {
	f := newTestFleet(b, fleetOptions{global: "pool_max=10"})
	db := f.open(b)
	ctx := WithAllShards(context.Background())
	for _, total := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("rows=%d", total), func(b *testing.B) {
			var peakLive, peakHeap uint64
			for b.Loop() {
				runtime.GC()
				stop := make(chan struct{})
				done := make(chan [2]uint64)
				go func() {
					samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
					var m runtime.MemStats
					var p [2]uint64
					for {
						metrics.Read(samples)
						runtime.ReadMemStats(&m)
						p[0] = max(p[0], samples[0].Value.Uint64())
						p[1] = max(p[1], m.HeapAlloc)
						select {
						case <-stop:
							done <- p
							return
						case <-time.After(5 * time.Millisecond):
						}
					}
				}()
				rows, err := db.QueryContext(ctx, "SELECT g, md5(g::text) FROM generate_series(1, $1) g", total/16)
				if err != nil {
					b.Fatal(err)
				}
				n := 0
				var g int
				var s string
				for rows.Next() {
					if err := rows.Scan(&g, &s); err != nil {
						b.Fatal(err)
					}
					n++
				}
				rows.Close()
				close(stop)
				p := <-done
				peakLive, peakHeap = max(peakLive, p[0]), max(peakHeap, p[1])
				if n != total {
					b.Fatalf("%d rows", n)
				}
			}
			b.ReportMetric(float64(peakLive)/(1<<20), "peak-live-MB")
			b.ReportMetric(float64(peakHeap)/(1<<20), "peak-heap-MB")
		})
	}
}

// reportCPU starts counting CPU time and returns the function that reports
// it per operation: the whole machine's (cpu-µs/op) and this process's, the
// client's (client-cpu-µs/op).
func reportCPU(b *testing.B) func() {
	machine, client := machineCPU(), processCPU()
	return func() {
		if used := machineCPU() - machine; machine > 0 && used > 0 {
			b.ReportMetric(used.Seconds()*1e6/float64(b.N), "cpu-µs/op")
		}
		b.ReportMetric((processCPU()-client).Seconds()*1e6/float64(b.N), "client-cpu-µs/op")
	}
}

// processCPU returns the user and system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineCPU returns the CPU time the whole machine has spent so far (the
// client and the servers alike: user, system and interrupt time of
// /proc/stat), or 0 where it cannot be read. Per statement it is steadier
// than the elapsed time on a shared machine, and it is what bounds
// throughput when the CPUs are saturated.
func machineCPU() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system irq softirq
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// BenchmarkSchemaSwitch measures the ways of running a point SELECT on a
// random one of 128 schemas over one pgx connection, which the design of
// hv's pgx path chose between (pgxsession.go):
//
//   - direct: schema-qualified SQL, one prepared statement per schema (the
//     baseline; no switch);
//   - set-round-trip: SET search_path in a round trip of its own, then the
//     statement (one prepared statement for every schema, as pgx caches it);
//   - batch-shared: the SET and the statement in one round trip, one
//     prepared statement for every schema (the server re-analyses it after
//     each switch);
//   - batch-per-schema: the SET (prepared) and the statement in one round
//     trip, the statement prepared once per schema (hv's way).
func BenchmarkSchemaSwitch(b *testing.B) {
	const schemas = 128
	f := newTestFleet(b, fleetOptions{perHost: schemas})
	ctx := context.Background()
	db := f.directDBs(b, 1)[0]
	conn, err := db.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	const unqualified = "SELECT shard FROM t WHERE id = $1"
	type schemaStmts struct {
		set, perSchema, qualified *pgconn.StatementDescription
	}
	stmts := make([]schemaStmts, schemas+1)
	var shared *pgconn.StatementDescription
	err = conn.Raw(func(dc any) error {
		pg := dc.(*stdlib.Conn).Conn().PgConn()
		var err error
		for s := 1; s <= schemas; s++ {
			st := &stmts[s]
			set := fmt.Sprintf("SET search_path TO shard%04d", s)
			if st.set, err = pg.Prepare(ctx, fmt.Sprintf("set%d", s), set, nil); err != nil {
				return err
			}
			if err = pg.Exec(ctx, set).Close(); err != nil {
				return err
			}
			if st.perSchema, err = pg.Prepare(ctx, fmt.Sprintf("own%d", s), unqualified, nil); err != nil {
				return err
			}
			q := fmt.Sprintf("SELECT shard FROM shard%04d.t WHERE id = $1", s)
			if st.qualified, err = pg.Prepare(ctx, fmt.Sprintf("q%d", s), q, nil); err != nil {
				return err
			}
		}
		shared, err = pg.Prepare(ctx, "shared", unqualified, nil)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	zero := [][]byte{{0, 0, 0, 0}}
	binary := []int16{1}
	// read checks that the statement's one row is shard s's.
	read := func(rr *pgconn.ResultReader, s int) error {
		got := -1
		for rr.NextRow() {
			v := rr.Values()[0]
			got = int(int32(uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3])))
		}
		if _, err := rr.Close(); err != nil {
			return err
		}
		if got != s {
			return fmt.Errorf("schema %d answered %d", s, got)
		}
		return nil
	}
	batch := func(pg *pgconn.PgConn, set, stmt *pgconn.StatementDescription, s int) error {
		var bt pgconn.Batch
		bt.ExecPrepared(set.Name, nil, nil, nil)
		bt.ExecStatement(stmt, zero, binary, binary)
		mr := pg.ExecBatch(ctx, &bt)
		if !mr.NextResult() {
			return mr.Close()
		}
		if _, err := mr.ResultReader().Close(); err != nil {
			return err
		}
		if !mr.NextResult() {
			return mr.Close()
		}
		if err := read(mr.ResultReader(), s); err != nil {
			return err
		}
		return mr.Close()
	}
	ways := []struct {
		name string
		run  func(pg *pgconn.PgConn, s int) error
	}{
		{"direct", func(pg *pgconn.PgConn, s int) error {
			return read(pg.ExecStatement(ctx, stmts[s].qualified, zero, binary, binary), s)
		}},
		{"set-round-trip", func(pg *pgconn.PgConn, s int) error {
			if _, err := pg.ExecStatement(ctx, stmts[s].set, nil, nil, nil).Close(); err != nil {
				return err
			}
			return read(pg.ExecStatement(ctx, shared, zero, binary, binary), s)
		}},
		{"batch-shared", func(pg *pgconn.PgConn, s int) error { return batch(pg, stmts[s].set, shared, s) }},
		{"batch-per-schema", func(pg *pgconn.PgConn, s int) error { return batch(pg, stmts[s].set, stmts[s].perSchema, s) }},
	}
	for _, w := range ways {
		b.Run("via="+w.name, func(b *testing.B) {
			r := rand.New(rand.NewPCG(1, 2))
			err := conn.Raw(func(dc any) error {
				pg := dc.(*stdlib.Conn).Conn().PgConn()
				defer reportCPU(b)()
				for b.Loop() {
					if err := w.run(pg, 1+r.IntN(schemas)); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

// benchRows runs query with ctx and args in a loop, reading every row, and
// fails b unless each run returns want rows.
func benchRows(b *testing.B, db *sql.DB, ctx context.Context, want int, query string, args ...any) {
	b.ReportAllocs()
	for b.Loop() {
		rows, err := db.QueryContext(ctx, query, args...)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Close(); err != nil || n != want {
			b.Fatalf("%d rows, %v", n, err)
		}
	}
}
