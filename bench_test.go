//go:build hvcore

package hv

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"testing"
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
