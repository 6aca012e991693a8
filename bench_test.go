package hv

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// BenchmarkPointSelect compares the same point SELECT run directly through
// pgx stdlib on a schema-qualified table, through hv on one fixed shard, and
// through hv on a random shard of 16 over two hosts. Compare the medians
// side by side with `make bench` (benchstat -col /via).
func BenchmarkPointSelect(b *testing.B) {
	f := newTestFleet(b, fleetOptions{global: "pool_max=10"})
	ctx := context.Background()

	direct, err := sql.Open("pgx", f.hosts[0])
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	direct.SetMaxOpenConns(10)
	direct.SetMaxIdleConns(10)
	hv := f.open(b)
	hv.SetMaxIdleConns(20)

	var shard int
	run := func(b *testing.B, db *sql.DB, query string, pick func(*rand.Rand) context.Context) {
		r := rand.New(rand.NewPCG(1, 2))
		b.ReportAllocs()
		for b.Loop() {
			if err := db.QueryRowContext(pick(r), query, 0).Scan(&shard); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("via=direct", func(b *testing.B) {
		run(b, direct, "SELECT shard FROM shard0005.t WHERE id = $1", func(*rand.Rand) context.Context { return ctx })
	})
	fixed := WithShard(ctx, 5)
	b.Run("via=hv-fixed", func(b *testing.B) {
		run(b, hv, "SELECT shard FROM t WHERE id = $1", func(*rand.Rand) context.Context { return fixed })
	})
	shards := make([]context.Context, 16)
	for i := range shards {
		shards[i] = WithShard(ctx, i+1)
	}
	b.Run("via=hv-random16", func(b *testing.B) {
		run(b, hv, "SELECT shard FROM t WHERE id = $1", func(r *rand.Rand) context.Context { return shards[r.IntN(16)] })
	})
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
	run := func(b *testing.B, ctx context.Context, want int) {
		b.ReportAllocs()
		for b.Loop() {
			rows, err := db.QueryContext(ctx, q)
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
	b.Run("via=single", func(b *testing.B) { run(b, WithShard(ctx, 5), 1) })
	b.Run("via=fanout16", func(b *testing.B) { run(b, WithAllShards(ctx), 16) })
}

// BenchmarkFanOutMemory streams a fan-out of 100k and 1M rows in total over
// 16 shards and reports the peak live heap while reading: streaming keeps it
// flat as the row count grows.
func BenchmarkFanOutMemory(b *testing.B) {
	f := newTestFleet(b, fleetOptions{global: "pool_max=10"})
	db := f.open(b)
	ctx := WithAllShards(context.Background())
	for _, total := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("rows=%d", total), func(b *testing.B) {
			var peak uint64
			for b.Loop() {
				runtime.GC()
				stop := make(chan struct{})
				done := make(chan uint64)
				go func() {
					var m runtime.MemStats
					var p uint64
					for {
						runtime.ReadMemStats(&m)
						p = max(p, m.HeapAlloc)
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
				peak = max(peak, <-done)
				if n != total {
					b.Fatalf("%d rows", n)
				}
			}
			b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MB")
		})
	}
}
