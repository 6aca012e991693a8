package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSoak runs HV_SOAK_N (default 1,000,000) routed statements over 16
// shards on two hosts from 32 goroutines, cancelling about 2% of them at a
// random moment, while sampling Stats(). Afterwards every pool must be idle
// and no host may ever have had more than pool_max connections open. It is
// skipped unless HV_SOAK=1 (make soak).
func TestSoak(t *testing.T) {
	if os.Getenv("HV_SOAK") != "1" {
		t.Skip("set HV_SOAK=1 to run the soak (make soak)")
	}
	n := 1_000_000
	if s := os.Getenv("HV_SOAK_N"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("HV_SOAK_N=%q", s)
		}
		n = v
	}
	const poolMax, workers = 8, 32
	mode := os.Getenv("HV_SOAK_POOL_MODE") // "" or transaction
	global := fmt.Sprintf("pool_max=%d; pool_block_timeout=10s", poolMax)
	if mode != "" {
		global += "; pool_mode=" + mode
	}
	f := newTestFleet(t, fleetOptions{global: global})
	db := f.open(t)
	db.SetMaxIdleConns(workers)
	c := connectorOf(t, db)

	// Sampler: the most connections each host ever had open and in use.
	var maxOpen, maxInUse [2]int
	var samples int
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			for i, h := range c.Stats() {
				maxOpen[i] = max(maxOpen[i], h.DB.OpenConnections)
				maxInUse[i] = max(maxInUse[i], h.DB.InUse)
			}
			samples++
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()

	kinds := []string{"ok", "cancelled", "pool timeout", "other"}
	var counts [4]atomic.Int64
	var next atomic.Int64
	var mu sync.Mutex
	var others []error
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for next.Add(1) <= int64(n) {
				shard := 1 + rng.IntN(16)
				ctx, cancel := context.WithCancel(WithShard(context.Background(), shard))
				if rng.IntN(50) == 0 { // ~2%: cancel at a random moment
					if rng.IntN(4) == 0 {
						cancel()
					} else {
						time.AfterFunc(time.Duration(rng.IntN(300))*time.Microsecond, cancel)
					}
				}
				err := soakStatement(ctx, rng, db, shard)
				k := 0
				switch {
				case err == nil:
				case ctx.Err() != nil:
					k = 1
				case errors.Is(err, ErrPoolTimeout):
					k = 2
				default:
					k = 3
					mu.Lock()
					if len(others) < 10 {
						others = append(others, err)
					}
					mu.Unlock()
				}
				counts[k].Add(1)
				cancel()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	checkIdle(t, db)
	close(stopSampling)
	<-sampled

	var report strings.Builder
	fmt.Fprintf(&report, "%d statements in %v: %.0f statements/s; pool_mode=%q, pool_max %d, %d workers, %d Stats samples\n",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), mode, poolMax, workers, samples)
	for i, k := range kinds {
		fmt.Fprintf(&report, "  %s: %d\n", k, counts[i].Load())
	}
	for i, h := range c.Stats() {
		fmt.Fprintf(&report, "  host %d %s: max open %d, max in use %d, now open %d in use %d idle %d; waits %d (%v), timeouts %d, switches %d\n",
			i, h.Host, maxOpen[i], maxInUse[i], h.DB.OpenConnections, h.DB.InUse, h.DB.Idle,
			h.WaitCount, h.WaitDuration.Round(time.Millisecond), h.Timeouts, h.SchemaSwitches)
		if maxOpen[i] > h.PoolMax {
			t.Errorf("host %s had %d connections open, pool_max %d", h.Host, maxOpen[i], h.PoolMax)
		}
	}
	t.Log(report.String())
	for _, err := range others {
		t.Errorf("unexpected error: %v", err)
	}
	if counts[3].Load() > 0 {
		t.Errorf("%d unexpected errors", counts[3].Load())
	}
}

// soakStatement runs one statement of the mix on shard: 60% point reads,
// 20% updates, 10% transactions and 10% reads of 50 rows.
func soakStatement(ctx context.Context, rng *rand.Rand, db *sql.DB, shard int) error {
	switch r := rng.IntN(10); {
	case r < 6:
		var got int
		if err := db.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = 0").Scan(&got); err != nil {
			return err
		}
		if got != shard {
			return fmt.Errorf("shard %d read shard %d's row", shard, got)
		}
	case r < 8:
		_, err := db.ExecContext(ctx, "UPDATE t SET note = $1 WHERE id = 0", strconv.Itoa(rng.IntN(1000)))
		return err
	case r < 9:
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		var got int
		if err := tx.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = 0").Scan(&got); err != nil {
			_ = tx.Rollback()
			return err
		}
		if got != shard {
			_ = tx.Rollback()
			return fmt.Errorf("shard %d read shard %d's row in a transaction", shard, got)
		}
		return tx.Commit()
	default:
		rows, err := db.QueryContext(ctx, "SELECT g FROM generate_series(1, 50) g")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
		}
		return rows.Err()
	}
	return nil
}
