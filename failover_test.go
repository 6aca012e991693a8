package hv

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// failoverLog records the outcome of each statement of a load, with when
// it started and ended.
type failoverLog struct {
	mu  sync.Mutex
	ops []failoverOp
}

type failoverOp struct {
	start, end time.Time
	err        error
}

func (l *failoverLog) add(start time.Time, err error) {
	l.mu.Lock()
	l.ops = append(l.ops, failoverOp{start: start, end: time.Now(), err: err})
	l.mu.Unlock()
}

// count returns how many statements that started after from succeeded and
// failed.
func (l *failoverLog) count(from time.Time) (ok, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, op := range l.ops {
		if op.start.Before(from) {
			continue
		}
		if op.err == nil {
			ok++
		} else {
			failed++
		}
	}
	return ok, failed
}

// firstOK returns the end of the first statement started after from that
// succeeded.
func (l *failoverLog) firstOK(from time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, op := range l.ops {
		if op.err == nil && !op.start.Before(from) && (first.IsZero() || op.end.Before(first)) {
			first = op.end
		}
	}
	return first, !first.IsZero()
}

// TestFailover stops the primary of a multi-host segment (host=a,b
// target_session_attrs=read-write) under a write and replica-read load,
// checks that the replica keeps serving reads while no primary exists,
// promotes the standby, and checks that writes resume without a restart,
// with at most one failed statement per connection once the standby is
// promoted.
func TestFailover(t *testing.T) {
	rf := newReplicaFleet(t, 1, nil)
	p, s := rf.primary, rf.standbys[0]
	multi := fmt.Sprintf("host=127.0.0.1,127.0.0.1 port=%d,%d target_session_attrs=read-write", p.Port(), s.Port())
	const poolMax = 4
	c, db := rf.open(t, multi, fmt.Sprintf("pool_max=%d pool_block_timeout=2s", poolMax))
	if name, want := c.Stats()[0].Host, fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d/postgres", p.Port(), s.Port()); name != want {
		t.Errorf("host shown as %q, want %q", name, want)
	}
	ctx := context.Background()
	shard := WithShard(ctx, 1)
	if _, err := db.ExecContext(shard, "CREATE TABLE ev (id bigserial PRIMARY KEY, g int, i int)"); err != nil {
		t.Fatal(err)
	}
	waitReplicasFit(t, c, time.Second)

	var writes, reads failoverLog
	var stop atomic.Bool
	var wg sync.WaitGroup
	for g := range poolMax {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				start := time.Now()
				_, err := db.ExecContext(shard, "INSERT INTO ev (g, i) VALUES ($1, $2)", g, i)
				writes.add(start, err)
				if err != nil {
					time.Sleep(5 * time.Millisecond) // back off while there is no primary
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				start := time.Now()
				var n int
				err := db.QueryRowContext(WithReplica(shard), "SELECT count(*) FROM ev").Scan(&n)
				reads.add(start, err)
				if err != nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
	t.Cleanup(func() { stop.Store(true); wg.Wait() })
	waitUntil(t, "writes under way", func() bool { ok, _ := writes.count(time.Time{}); return ok > 200 })

	stopped := time.Now()
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	// No primary: the replica keeps serving reads, writes fail.
	waitUntil(t, "replica reads without a primary", func() bool { ok, _ := reads.count(down); return ok >= 50 })
	if ok, _ := writes.count(down.Add(100 * time.Millisecond)); ok != 0 {
		t.Fatalf("%d writes succeeded with no primary", ok)
	}
	_, readFailures := reads.count(down)
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	waitUntil(t, "writes to resume", func() bool { ok, _ := writes.count(promoted); return ok >= 200 })
	stop.Store(true)
	wg.Wait()

	_, failedTotal := writes.count(stopped)
	_, failedAfter := writes.count(promoted)
	if failedAfter > poolMax {
		t.Errorf("%d writes failed after the promotion, want at most %d (one per connection)", failedAfter, poolMax)
	}
	if readFailures > 0 {
		t.Errorf("%d replica reads failed while the primary was down", readFailures)
	}
	first, _ := writes.firstOK(promoted)
	t.Logf("failover: %d writes failed in all (%d after the promotion, at most %d allowed); first write %v after the promotion, %v after the stop began (promotion at %v); %d replica read failures while down",
		failedTotal, failedAfter, poolMax, first.Sub(promoted).Round(time.Millisecond), first.Sub(stopped).Round(time.Millisecond),
		promoted.Sub(stopped).Round(time.Millisecond), readFailures)
	var n int
	if err := db.QueryRowContext(shard, "SELECT count(*) FROM ev").Scan(&n); err != nil || n == 0 {
		t.Fatalf("reading back after failover: %d rows, %v", n, err)
	}
}

// TestFailoverIdle stops the primary while its connections sit idle in
// the pools and promotes the standby before they are used again: each
// connection fails at most one statement (it is discarded, with the host's
// other idle ones), and writes go on on the new primary.
func TestFailoverIdle(t *testing.T) {
	rf := newReplicaFleet(t, 1, nil)
	p, s := rf.primary, rf.standbys[0]
	multi := fmt.Sprintf("host=127.0.0.1,127.0.0.1 port=%d,%d target_session_attrs=read-write", p.Port(), s.Port())
	const poolMax = 4
	_, db := rf.open(t, multi, fmt.Sprintf("pool_max=%d", poolMax))
	ctx := context.Background()
	shard := WithShard(ctx, 1)
	if _, err := db.ExecContext(shard, "CREATE TABLE ev (id bigserial PRIMARY KEY, g int)"); err != nil {
		t.Fatal(err)
	}
	load := func(n int) (failed int) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for g := range poolMax {
			wg.Go(func() {
				for range n {
					if _, err := db.ExecContext(shard, "INSERT INTO ev (g) VALUES ($1)", g); err != nil {
						mu.Lock()
						failed++
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		return failed
	}
	if f := load(50); f != 0 {
		t.Fatalf("%d writes failed before the failover", f)
	}
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	failed := load(50)
	if failed > poolMax {
		t.Errorf("%d writes failed after the failover, want at most %d (one per connection)", failed, poolMax)
	}
	if f := load(20); f != 0 {
		t.Errorf("%d writes failed once the broken connections were gone", f)
	}
	t.Logf("idle failover: %d of %d writes failed", failed, 50*poolMax)
}
