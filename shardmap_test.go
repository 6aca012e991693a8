package hv

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// The golden values were computed independently (in Python) from the
// documented algorithm: they pin the string hash for every release.
func TestShardForKeyIsStableAndDocumented(t *testing.T) {
	for _, tc := range []struct {
		key  any
		n    int
		want int
	}{
		{"", 2000, 342},
		{"a", 2000, 315},
		{"user:42", 2000, 1112},
		{[]byte("user:42"), 2000, 1112},
		{"héllo", 2000, 781},
		{42, 16, 10},
		{int8(-1), 16, 15},
		{int64(-17), 16, 15},
		{uint64(math.MaxUint64), 2000, int(uint64(math.MaxUint64) % 2000)},
		{uint8(200), 7, 4},
		{int64(math.MinInt64), 3, 1},
	} {
		got, err := ShardForKey(tc.key, tc.n)
		if err != nil || got != tc.want {
			t.Errorf("ShardForKey(%#v, %d) = %d, %v; want %d", tc.key, tc.n, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		key any
		n   int
	}{{3.5, 16}, {nil, 16}, {struct{}{}, 16}, {"a", 0}, {"a", NumShards + 1}} {
		if _, err := ShardForKey(tc.key, tc.n); !errors.Is(err, ErrShardKey) {
			t.Errorf("ShardForKey(%#v, %d): got %v, want ErrShardKey", tc.key, tc.n, err)
		}
	}
}

// String keys spread evenly: a chi-squared test over 2000 shards.
func TestShardForKeyDistribution(t *testing.T) {
	const shards, keys = 2000, 400_000
	counts := make([]int, shards)
	for i := range keys {
		s, err := ShardForKey(fmt.Sprintf("user:%d", i), shards)
		if err != nil {
			t.Fatal(err)
		}
		counts[s]++
	}
	expected := float64(keys) / shards
	chi2 := 0.0
	for _, c := range counts {
		d := float64(c) - expected
		chi2 += d * d / expected
	}
	// 1999 degrees of freedom: mean 1999, sd ~63; 2300 is beyond 4.7 sd.
	if chi2 > 2300 {
		t.Errorf("chi-squared %.0f over %d shards: keys are not evenly spread", chi2, shards)
	}
}

func TestWithShardKeyRoutes(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "num_shards=17"})
	db := f.open(t)
	c := connectorOf(t, db)
	ctx := context.Background()
	keys := []any{1, 9, int64(16), uint16(12), Key(5 << 10)}
	for i := 0; len(keys) < 10; i++ { // string keys of owned shards (shard 0 has no host)
		if s, _ := ShardForKey(fmt.Sprint("user:", i), 17); s != 0 {
			keys = append(keys, fmt.Sprint("user:", i), []byte(fmt.Sprint("user:", i)))
		}
	}
	for _, key := range keys {
		shard, err := c.ShardFor(key)
		if err != nil {
			t.Fatalf("ShardFor(%v): %v", key, err)
		}
		want, _ := ShardForKey(key, 17)
		if k, ok := key.(Key); ok {
			want = k.ShardID()
		}
		if shard != want {
			t.Errorf("ShardFor(%v) = %d, want %d", key, shard, want)
		}
		got, err := whereAmI(WithShardKey(ctx, key), db)
		if err != nil {
			t.Fatalf("key %v (shard %d): %v", key, shard, err)
		}
		if got != f.expect(t, shard) {
			t.Errorf("key %v ran at %+v, want shard %d", key, got, shard)
		}
	}
	// 17 mod 17 is shard 0, which no host owns.
	if _, err := db.ExecContext(WithShardKey(ctx, 17), "SELECT 1"); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("key mapping to an unowned shard: got %v", err)
	}
	if _, err := c.ShardFor(17); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("ShardFor of a key mapping to an unowned shard: got %v", err)
	}
	if _, err := db.ExecContext(WithShardKey(ctx, 1.5), "SELECT 1"); !errors.Is(err, ErrShardKey) {
		t.Errorf("float key: got %v", err)
	}
	// A pinned Conn checked out by key stays on the key's shard.
	conn, err := db.Conn(WithShardKey(ctx, 3))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, err := whereAmI(ctx, conn); err != nil || got.Shard != 3 {
		t.Errorf("Conn by key 3: %+v, %v", got, err)
	}
}

func TestShardFuncAndMissingNumShards(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	cfg, c, db := f.connect(t)
	if _, err := db.ExecContext(WithShardKey(context.Background(), 3), "SELECT 1"); !errors.Is(err, ErrShardKey) || !strings.Contains(err.Error(), "num_shards") {
		t.Errorf("WithShardKey without num_shards: got %v", err)
	}
	cfg.ShardFunc = func(key any) (int, error) {
		s, ok := key.(string)
		if !ok {
			return 0, errors.New("want a region name")
		}
		return map[string]int{"eu": 2, "us": 14}[s], nil
	}
	if err := c.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	got, err := whereAmI(WithShardKey(context.Background(), "us"), db)
	if err != nil || got != f.expect(t, 14) {
		t.Errorf("ShardFunc: key us ran at %+v, %v", got, err)
	}
	if _, err := c.ShardFor(7); !errors.Is(err, ErrShardKey) || !strings.Contains(err.Error(), "region") {
		t.Errorf("ShardFunc error: got %v", err)
	}
}

// A hot shard capped by shard_max leaves its host's other connections to
// its neighbours; waiting for the cap ends in ErrPoolTimeout naming it.
func TestShardMaxLeavesRoomForNeighbours(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "pool_max=4; shard_max=2; pool_block_timeout=300ms"})
	db := f.open(t)
	ctx := context.Background()
	release := make(chan struct{})
	var held sync.WaitGroup
	var started sync.WaitGroup
	// Two transactions hold shard 1's two slots.
	for range 2 {
		started.Add(1)
		held.Go(func() {
			tx, err := db.BeginTx(WithShard(ctx, 1), nil)
			started.Done()
			if err != nil {
				t.Error(err)
				return
			}
			<-release
			tx.Rollback()
		})
	}
	started.Wait()
	// A third statement on shard 1 waits for the cap and times out.
	_, err := db.ExecContext(WithShard(ctx, 1), "SELECT 1")
	if !errors.Is(err, ErrPoolTimeout) || !strings.Contains(err.Error(), "shard 1 ") || !strings.Contains(err.Error(), "shard_max") {
		t.Errorf("third statement on a capped shard: got %v", err)
	}
	// Its neighbours on the same host keep serving, two at a time.
	var ok atomic.Int64
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			shard := 2 + i%7
			if got, err := whereAmI(WithShard(ctx, shard), db); err != nil || got != f.expect(t, shard) {
				t.Errorf("neighbour shard %d: %+v, %v", shard, got, err)
				return
			}
			ok.Add(1)
		})
	}
	wg.Wait()
	close(release)
	held.Wait()
	if ok.Load() != 20 {
		t.Errorf("%d of 20 neighbour statements succeeded", ok.Load())
	}
	// Once the slots are free, shard 1 serves again.
	if got, err := whereAmI(WithShard(ctx, 1), db); err != nil || got.Shard != 1 {
		t.Errorf("shard 1 after release: %+v, %v", got, err)
	}
	assertIdle(t, db)
}

// Moving a shard to the other server under load: after Reconfigure every
// statement that starts goes to the new owner, none fails, and the pools of
// hosts that stay are kept.
func TestReconfigureMovesAShardUnderLoad(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "pool_max=4"})
	cfg, c, db := f.connect(t)
	ctx := context.Background()

	// Copy shard 8 (on the first server) to the second, marking the copy.
	rows := make([]string, 0)
	r, err := db.QueryContext(WithShard(ctx, 8), "SELECT id, shard, coalesce(note, '') FROM t")
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var id, shard int
		var note string
		if err := r.Scan(&id, &shard, &note); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, fmt.Sprintf("(%d, %d, 'moved')", id, shard))
	}
	r.Close()
	if err := execOn(ctx, f.hosts[1], `CREATE SCHEMA shard0008; CREATE TABLE shard0008.t (id int PRIMARY KEY, shard int NOT NULL, note text);
		INSERT INTO shard0008.t VALUES `+strings.Join(rows, ", ")); err != nil {
		t.Fatal(err)
	}

	// Concurrent load on every shard while the map changes.
	stop := make(chan struct{})
	var errs atomic.Int64
	var statements atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				shard := 1 + (g+i)%16
				if _, err := whereAmI(WithShard(ctx, shard), db); err != nil {
					t.Errorf("shard %d during the move: %v", shard, err)
					errs.Add(1)
				}
				statements.Add(1)
			}
		})
	}
	// A pinned Conn on shard 8 taken before the move stays on the old owner.
	pinned, err := db.Conn(WithShard(ctx, 8))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := whereAmI(ctx, pinned); err != nil {
		t.Fatal(err)
	}
	onOld := statements.Load()
	waitUntil(t, "100 statements on the old map", func() bool { return statements.Load() >= onOld+100 })
	first := c.fleet.Load().hosts[0].pool

	moved := *cfg
	moved.Hosts = append([]HostConfig(nil), cfg.Hosts...)
	moved.Hosts[0].Shards = ShardSet{{Start: 1, End: 8}}
	moved.Hosts[1].Shards = ShardSet{{Start: 8, End: 17}}
	if err := c.Reconfigure(&moved); err != nil {
		t.Fatal(err)
	}
	// Every read that starts after the swap is served by the new owner.
	for range 20 {
		got, err := whereAmI(WithShard(ctx, 8), db)
		if err != nil {
			t.Fatal(err)
		}
		if got.Port != f.ports[1] || got.Database != dbName(f.hosts[1]) {
			t.Fatalf("shard 8 after the move ran at %+v, want the second server", got)
		}
		var note string
		if err := db.QueryRowContext(WithShard(ctx, 8), "SELECT note FROM t WHERE id = 0").Scan(&note); err != nil || note != "moved" {
			t.Fatalf("shard 8 after the move read %q, %v", note, err)
		}
	}
	got, err := whereAmI(ctx, pinned)
	if err != nil || got.Port != f.ports[0] || got.Database != dbName(f.hosts[0]) {
		t.Errorf("pinned Conn after the move ran at %+v, %v; want the old owner", got, err)
	}
	pinned.Close()
	onNew := statements.Load()
	waitUntil(t, "100 statements on the new map", func() bool { return statements.Load() >= onNew+100 })
	close(stop)
	wg.Wait()
	if errs.Load() != 0 || statements.Load() == 0 {
		t.Errorf("%d errors in %d statements during the move", errs.Load(), statements.Load())
	}
	if h := c.fleet.Load().hosts[0].pool; h != first {
		t.Errorf("the first host's pool was replaced, want it kept")
	}
	st := c.Stats()
	if st[0].Shards.String() != (ShardRange{1, 8}).String() || st[1].Shards.String() != (ShardRange{8, 17}).String() {
		t.Errorf("Stats after the move: %+v, %+v", st[0].Shards, st[1].Shards)
	}
	// A bad configuration changes nothing.
	bad := moved
	bad.Hosts = append([]HostConfig(nil), moved.Hosts...)
	bad.Hosts[1].Shards = ShardSet{{Start: 5, End: 17}}
	if err := c.Reconfigure(&bad); !errors.Is(err, ErrBadConfig) {
		t.Errorf("overlapping Reconfigure: got %v", err)
	}
	if got, err := whereAmI(WithShard(ctx, 8), db); err != nil || got.Port != f.ports[1] {
		t.Errorf("after a refused Reconfigure shard 8 ran at %+v, %v", got, err)
	}
}

// Hosts that leave the map are closed once their statements end.
func TestReconfigureClosesHostsThatLeave(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	cfg, c, db := f.connect(t)
	ctx := context.Background()
	tx, err := db.BeginTx(WithShard(ctx, 12), nil)
	if err != nil {
		t.Fatal(err)
	}
	leaving := c.fleet.Load().hosts[1].pool
	only := *cfg
	only.Hosts = cfg.Hosts[:1]
	if err := c.Reconfigure(&only); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(WithShard(ctx, 12), "SELECT 1"); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("shard 12 after its host left: got %v", err)
	}
	// The transaction started before finishes on the host that left.
	if got, err := whereAmI(WithShard(ctx, 12), tx); err != nil || got != f.expect(t, 12) {
		t.Errorf("transaction across the change: %+v, %v", got, err)
	}
	leaving.mu.Lock()
	closedEarly := leaving.closed
	leaving.mu.Unlock()
	if closedEarly {
		t.Error("the pool of a host that left was closed while a transaction used it")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	leaving.mu.Lock()
	closed := leaving.closed
	leaving.mu.Unlock()
	if !closed {
		t.Error("the pool of a host that left is still open after its last statement")
	}
}
