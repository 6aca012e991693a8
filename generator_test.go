package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// keyFleet returns an hv database over one host owning shards 3-4 whose
// schemas hold the key generator, and the plain database behind it.
func keyFleet(t testing.TB) (hvdb, plain *sql.DB) {
	t.Helper()
	plain, kw := keyDB(t, 3, DefaultLayout())
	if _, err := plain.Exec("CREATE SCHEMA shard0004"); err != nil {
		t.Fatal(err)
	}
	for _, s := range shardDDL("shard0004", 4, DefaultLayout()) {
		if _, err := plain.Exec(s); err != nil {
			t.Fatal(err)
		}
	}
	hvdb, err := sql.Open("hv", "shards=3-5 "+kw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hvdb.Close() })
	return hvdb, plain
}

// Two generators and next_id() on one shard, all at once: no id twice.
func TestGeneratorUniqueAgainstNextIDAndAnotherGenerator(t *testing.T) {
	db, plain := keyFleet(t)
	ctx := context.Background()
	const each = 6000
	gens := make([]*Generator, 2)
	for i := range gens {
		g, err := NewGenerator(DBLeaser{DB: db}, 3, &GeneratorOptions{Block: 1000})
		if err != nil {
			t.Fatal(err)
		}
		gens[i] = g
	}
	var mu sync.Mutex
	seen := map[Key]string{}
	add := func(k Key, who string) {
		mu.Lock()
		defer mu.Unlock()
		if prev, dup := seen[k]; dup {
			t.Errorf("key %d from %s was already made by %s", k, who, prev)
		}
		seen[k] = who
	}
	var wg sync.WaitGroup
	for i, g := range gens {
		for w := range 2 { // two goroutines share each generator
			wg.Go(func() {
				for range each / 2 {
					k, err := g.Next(ctx)
					if err != nil {
						t.Error(err)
						return
					}
					add(k, fmt.Sprintf("generator %d (goroutine %d)", i, w))
				}
			})
		}
	}
	wg.Go(func() {
		rows, err := plain.Query("SELECT shard0003.next_id() FROM generate_series(1, $1)", each)
		if err != nil {
			t.Error(err)
			return
		}
		defer rows.Close()
		for rows.Next() {
			var k Key
			if err := rows.Scan(&k); err != nil {
				t.Error(err)
				return
			}
			add(k, "next_id()")
		}
	})
	wg.Wait()
	if len(seen) != 3*each {
		t.Errorf("%d distinct keys, want %d", len(seen), 3*each)
	}
	now := time.Now()
	for k := range seen {
		if k.ShardID() != 3 || k.Created().Before(now.Add(-time.Minute)) || k.Created().After(now.Add(time.Minute)) {
			t.Fatalf("key %d: shard %d, created %v", k, k.ShardID(), k.Created())
		}
	}
}

// steppingClock is a clock that can be set back.
type steppingClock struct {
	mu   sync.Mutex
	skew time.Duration
}

func (c *steppingClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.skew)
}

func (c *steppingClock) step(d time.Duration) {
	c.mu.Lock()
	c.skew += d
	c.mu.Unlock()
}

// The clock stepping back an hour repeats nothing and stalls nothing.
func TestGeneratorClockStepsBack(t *testing.T) {
	db, _ := keyFleet(t)
	clock := &steppingClock{}
	g, err := NewGenerator(DBLeaser{DB: db}, 4, &GeneratorOptions{Block: 512, Clock: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a stall fails the test, not a wait
	defer cancel()
	seen := map[Key]bool{}
	var last Key
	for i := range 5000 {
		if i == 1000 || i == 3000 {
			clock.step(-time.Hour)
		}
		k, err := g.Next(ctx)
		if err != nil {
			t.Fatalf("after %d keys: %v", i, err)
		}
		if seen[k] || k <= last {
			t.Fatalf("key %d after %d: repeated or not increasing (last %d)", i, k, last)
		}
		seen[k], last = true, k
	}
}

func TestGeneratorErrors(t *testing.T) {
	if _, err := NewGenerator(DBLeaser{}, NumShards, nil); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("shard out of range: got %v", err)
	}
	db, _ := keyFleet(t)
	g, err := NewGenerator(DBLeaser{DB: db}, 7, nil) // no host owns shard 7
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Next(context.Background()); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("lease on an unowned shard: got %v", err)
	}
}

// fakeLeaser hands out blocks of a counter kept in step with the local
// clock, or, uncapped, blocks whose time is long past, so nothing waits.
type fakeLeaser struct {
	next     atomic.Int64
	uncapped bool
	start    time.Time
}

func (l *fakeLeaser) LeaseIDs(_ context.Context, _, n int) (int64, int, int64, error) {
	now := time.Since(l.start).Milliseconds()
	for {
		cur := l.next.Load()
		first := max(cur, now<<10)
		if l.uncapped {
			first, now = cur, 1<<40
		}
		if l.next.CompareAndSwap(cur, first+int64(n)) {
			return first, n, now, nil
		}
	}
}

// BenchmarkGenerator: uncapped, the cost of Next when no rate limit
// applies (the leased ids are long past); capped, the rate one generator
// sustains against the real clock, in ids per millisecond (the ceiling is
// 1024).
func BenchmarkGenerator(b *testing.B) {
	ctx := context.Background()
	b.Run("mode=uncapped", func(b *testing.B) {
		g, _ := NewGenerator(&fakeLeaser{uncapped: true, start: time.Now()}, 5, &GeneratorOptions{Block: 1 << 20})
		b.ReportAllocs()
		for b.Loop() {
			if _, err := g.Next(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("mode=capped", func(b *testing.B) {
		// Each iteration makes 20 ms' worth of ids at the ceiling, so the
		// rate is measured over whole milliseconds whatever -benchtime says.
		const batch = 20 * 1024
		l := &fakeLeaser{start: time.Now()}
		g, _ := NewGenerator(l, 5, nil)
		for b.Loop() {
			for range batch {
				if _, err := g.Next(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.N*batch)/(float64(b.Elapsed())/float64(time.Millisecond)), "ids/ms")
	})
}
