package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// columnsOf returns, per shard 1..16, whether table t has column col, read
// through hv.
func columnsOf(t *testing.T, db *sql.DB, col string) map[int]bool {
	t.Helper()
	out := map[int]bool{}
	for s := 1; s <= 16; s++ {
		var n int
		err := db.QueryRowContext(WithShard(context.Background(), s),
			"SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 't' AND column_name = $1", col).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		out[s] = n == 1
	}
	return out
}

func TestEachShardMigration(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	d := openDatastore(t, f.dsn)
	ctx := context.Background()

	var progress []int // done counts, in call order
	var shardsSeen []int
	res := d.EachShard(ctx, func(ctx context.Context, tx *sql.Tx, shard int) error {
		if _, err := tx.ExecContext(ctx, "ALTER TABLE t ADD COLUMN migrated int"); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "UPDATE t SET migrated = shard * 10")
		return err
	}, &EachShardOptions{Progress: func(done, total, shard int, err error) {
		if total != 16 || err != nil {
			t.Errorf("Progress(%d, %d, %d, %v)", done, total, shard, err)
		}
		progress = append(progress, done)
		shardsSeen = append(shardsSeen, shard)
	}})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if res.Total != 16 || len(res.Committed) != 16 || len(res.Failed) != 0 {
		t.Fatalf("result: total %d, committed %v, failed %v", res.Total, res.Committed, res.Failed)
	}
	for i, n := range progress {
		if n != i+1 {
			t.Fatalf("progress counts %v, want 1..16", progress)
		}
	}
	slices.Sort(shardsSeen)
	if !slices.Equal(shardsSeen, res.Committed) || res.Committed[0] != 1 || res.Committed[15] != 16 {
		t.Errorf("progress saw shards %v, committed %v", shardsSeen, res.Committed)
	}

	// Every shard has the column, filled in its own schema.
	rows, err := d.DB().QueryContext(WithAllShards(ctx), "SELECT shard, migrated FROM t WHERE id = 0")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for rows.Next() {
		var shard, m int
		if err := rows.Scan(&shard, &m); err != nil {
			t.Fatal(err)
		}
		if m != shard*10 {
			t.Errorf("shard %d: migrated = %d", shard, m)
		}
		seen++
	}
	if err := rows.Close(); err != nil || seen != 16 {
		t.Fatalf("%d shards answered (%v), want 16", seen, err)
	}

	// Running it again fails everywhere (the column exists) and changes
	// nothing.
	res = d.EachShard(ctx, func(ctx context.Context, tx *sql.Tx, shard int) error {
		_, err := tx.ExecContext(ctx, "ALTER TABLE t ADD COLUMN migrated int")
		return err
	}, nil)
	if len(res.Failed) != 16 || len(res.Committed) != 0 {
		t.Errorf("second run: committed %v, %d failed", res.Committed, len(res.Failed))
	}
}

// A failing shard is rolled back and reported; the others commit.
func TestEachShardFailureRollsBackOneShard(t *testing.T) {
	for _, drv := range []string{"pgx", "postgres"} {
		t.Run(drv, func(t *testing.T) {
			f := newTestFleet(t, fleetOptions{driver: drv})
			db := f.open(t)
			c := connectorOf(t, db)
			ctx := context.Background()
			var mu sync.Mutex
			var failedProgress []int
			res := EachShard(ctx, db, c, func(ctx context.Context, tx *sql.Tx, shard int) error {
				if _, err := tx.ExecContext(ctx, "ALTER TABLE t ADD COLUMN tag text"); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, "INSERT INTO t (id, shard) VALUES (1, $1)", shard); err != nil {
					return err
				}
				if shard == 12 {
					_, err := tx.ExecContext(ctx, "SELECT 1/0")
					return err
				}
				return nil
			}, &EachShardOptions{Progress: func(done, total, shard int, err error) {
				if err != nil {
					mu.Lock()
					failedProgress = append(failedProgress, shard)
					mu.Unlock()
				}
			}})
			if len(res.Failed) != 1 || res.Failed[12] == nil || len(res.Committed) != 15 || slices.Contains(res.Committed, 12) {
				t.Fatalf("committed %v, failed %v; want all but 12 committed", res.Committed, res.Failed)
			}
			if !slices.Equal(failedProgress, []int{12}) {
				t.Errorf("Progress saw failures on %v, want [12]", failedProgress)
			}
			msg := res.Err().Error()
			host := fmt.Sprintf("127.0.0.1:%d/%s", f.ports[1], dbName(f.hosts[1]))
			if !strings.Contains(msg, "shard 12 on host "+host) || strings.Count(msg, "shard 12") != 1 || !strings.Contains(msg, "division by zero") {
				t.Errorf("error %q should name shard 12 and host %s once, and the cause", msg, host)
			}
			var se *ShardError
			if !errors.As(res.Err(), &se) || se.Shard != 12 || se.Host != host {
				t.Errorf("errors.As ShardError = %+v", se)
			}

			has := columnsOf(t, db, "tag")
			for s := 1; s <= 16; s++ {
				if has[s] != (s != 12) {
					t.Errorf("shard %d: column tag present = %v", s, has[s])
				}
				var n int
				if err := db.QueryRowContext(WithShard(ctx, s), "SELECT count(*) FROM t").Scan(&n); err != nil {
					t.Fatal(err)
				}
				if want := map[bool]int{true: 1, false: 2}[s == 12]; n != want {
					t.Errorf("shard %d: %d rows in t, want %d", s, n, want)
				}
			}
		})
	}
}

// EachShard runs at most pool_max (or Concurrency) shards of a host at once,
// and hosts side by side.
func TestEachShardConcurrencyBound(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "pool_max=3"})
	d := openDatastore(t, f.dsn)
	ctx := context.Background()
	for _, tc := range []struct {
		concurrency, want int
	}{{0, 3}, {1, 1}, {2, 2}, {10, 3}} {
		var inFlight, peak [2]atomic.Int32
		res := d.EachShard(ctx, func(ctx context.Context, tx *sql.Tx, shard int) error {
			h := 0
			if shard >= 9 {
				h = 1
			}
			n := inFlight[h].Add(1)
			defer inFlight[h].Add(-1)
			for {
				p := peak[h].Load()
				if n <= p || peak[h].CompareAndSwap(p, n) {
					break
				}
			}
			_, err := tx.ExecContext(ctx, "SELECT pg_sleep(0.02)")
			return err
		}, &EachShardOptions{Concurrency: tc.concurrency})
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		for h := range 2 {
			if p := int(peak[h].Load()); p > tc.want || p < 1 {
				t.Errorf("Concurrency %d: host %d ran %d shards at once, want at most %d", tc.concurrency, h, p, tc.want)
			}
		}
	}
}

func TestEachShardSubsetUnknownAndCancel(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	d := openDatastore(t, f.dsn)
	ctx := context.Background()

	var ran sync.Map
	res := d.EachShard(ctx, func(ctx context.Context, tx *sql.Tx, shard int) error {
		ran.Store(shard, true)
		var schema string
		if err := tx.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
			return err
		}
		if want := fmt.Sprintf("shard%04d", shard); schema != want {
			return fmt.Errorf("on schema %s, want %s", schema, want)
		}
		return nil
	}, &EachShardOptions{Shards: []int{3, 3, 10, 99}})
	if res.Total != 3 || !slices.Equal(res.Committed, []int{3, 10}) || !errors.Is(res.Failed[99], ErrUnknownShard) {
		t.Fatalf("total %d, committed %v, failed %v", res.Total, res.Committed, res.Failed)
	}
	if _, ok := ran.Load(99); ok {
		t.Error("fn ran for shard 99")
	}

	// A cancelled context runs nothing and fails every shard with its error.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	calls := atomic.Int32{}
	res = d.EachShard(cctx, func(context.Context, *sql.Tx, int) error { calls.Add(1); return nil }, nil)
	if calls.Load() != 0 || len(res.Failed) != 16 || !errors.Is(res.Err(), context.Canceled) {
		t.Errorf("cancelled: %d calls, %d failed, %v", calls.Load(), len(res.Failed), res.Err())
	}

	if err := EachShard(ctx, nil, nil, nil, nil).Err(); err == nil {
		t.Error("EachShard with nil arguments succeeded")
	}
}
