package hv

import (
	"context"
	"testing"
)

// BenchmarkAggregate compares a per-shard count over 16 shards merged by
// WithAggregate with the same fan-out read unmerged, and WithKeys with 100
// keys with 100 single-key statements.
func BenchmarkAggregate(b *testing.B) {
	_, db := fanOutFleet(b, 200, "pool_max=10 num_shards=16")
	db.SetMaxIdleConns(20)
	ctx := context.Background()
	const q = "SELECT count(*) AS n, sum(id) AS s FROM t"
	b.Run("via=fanout16-unmerged", func(b *testing.B) { benchRows(b, db, WithAllShards(ctx), 16, q) })
	b.Run("via=aggregate16", func(b *testing.B) {
		benchRows(b, db, WithAggregate(WithAllShards(ctx), Count("n"), Sum("s")), 1, q)
	})
	keys := make([]any, 100)
	for i := range keys {
		keys[i] = i + 1 // ids 1..100 spread over shards 1..15 and 0 (16, 32, … are shard 0: unowned)
	}
	var owned []any
	for _, k := range keys {
		if k.(int)%16 != 0 {
			owned = append(owned, k)
		}
	}
	b.Run("via=withkeys", func(b *testing.B) {
		benchRows(b, db, WithKeys(ctx, owned...), len(owned), "SELECT id, shard, note FROM t WHERE id = ANY($1)")
	})
	b.Run("via=single-key-statements", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, k := range owned {
				var id, shard int
				var note string
				if err := db.QueryRowContext(WithShardKey(ctx, k), "SELECT id, shard, note FROM t WHERE id = $1", k).Scan(&id, &shard, &note); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
