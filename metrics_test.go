package hv

import (
	"context"
	"testing"
)

func TestPerShardStats(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "pool_max=1"})
	db := f.open(t)
	c := connectorOf(t, db)
	ctx := context.Background()
	before := shardStatsOf(c)
	for range 5 {
		if _, err := db.ExecContext(WithShard(ctx, 3), "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(WithShard(ctx, 3), "SELECT * FROM no_such_table"); err == nil {
		t.Fatal("a failing statement succeeded")
	}
	for range 2 {
		if _, err := whereAmI(WithShard(ctx, 12), db); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(WithShards(ctx, 3, 4), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	after := shardStatsOf(c)
	delta := func(shard int) ShardStats {
		a, b := after[shard], before[shard]
		return ShardStats{Shard: shard, Statements: a.Statements - b.Statements, Errors: a.Errors - b.Errors,
			SchemaSwitches: a.SchemaSwitches - b.SchemaSwitches}
	}
	for _, want := range []ShardStats{
		{Shard: 3, Statements: 7, Errors: 1},
		{Shard: 4, Statements: 1},
		{Shard: 12, Statements: 2},
		{Shard: 5},
	} {
		got := delta(want.Shard)
		got.SchemaSwitches = 0
		if got != want {
			t.Errorf("shard %d: %+v, want %+v", want.Shard, got, want)
		}
	}
	// One connection per host: shard 3's failed statement made hv forget the
	// schema, so the fan-out switches to 3 and then 4 (or 4 then 3).
	if d := delta(3).SchemaSwitches + delta(4).SchemaSwitches; d < 2 {
		t.Errorf("schema switches on shards 3 and 4: %d, want at least 2", d)
	}
	st := c.Stats()
	if len(st[0].ShardStats) != 8 || st[0].ShardStats[0].Shard != 1 || st[1].ShardStats[7].Shard != 16 {
		t.Errorf("ShardStats do not list each host's shards in order: %+v", st[0].ShardStats)
	}
}

func shardStatsOf(c *Connector) map[int]ShardStats {
	m := map[int]ShardStats{}
	for _, h := range c.Stats() {
		for _, s := range h.ShardStats {
			m[s.Shard] = s
		}
	}
	return m
}

// BenchmarkShardCounters measures what per-shard counting adds to each
// statement, from many goroutines at once.
func BenchmarkShardCounters(b *testing.B) {
	p := &placement{shard: 5, counters: new(shardCounters)}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p.countStatement(nil)
		}
	})
}
