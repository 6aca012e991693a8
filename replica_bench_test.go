package hv

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// The replica benchmarks alternate the two sides statement by statement and
// report each side's median (and their ratio): on a shared, loaded machine
// only figures measured side by side compare.

// sideBySide runs a and bf alternately b.N times each and reports the median
// nanoseconds of each as metrics named an and bn, and b's median over a's.
func sideBySide(b *testing.B, an string, a func(i int), bn string, bf func(i int)) {
	b.Helper()
	ta := make([]time.Duration, 0, b.N)
	tb := make([]time.Duration, 0, b.N)
	for i := 0; i < b.N; i++ {
		first, second := a, bf // alternate which goes first: no side gains from its place
		if i%2 == 1 {
			first, second = bf, a
		}
		start := time.Now()
		first(i)
		mid := time.Now()
		second(i)
		d1, d2 := mid.Sub(start), time.Since(mid)
		if i%2 == 1 {
			d1, d2 = d2, d1
		}
		ta, tb = append(ta, d1), append(tb, d2)
	}
	slices.Sort(ta)
	slices.Sort(tb)
	ma, mb := ta[len(ta)/2], tb[len(tb)/2]
	b.ReportMetric(float64(ma.Nanoseconds()), an+"-median-ns")
	b.ReportMetric(float64(mb.Nanoseconds()), bn+"-median-ns")
	b.ReportMetric(float64(mb)/float64(ma), bn+"/"+an)
}

// BenchmarkReplicaRead compares a point read on the primary with the same
// read on a WithReplica context served by the host's replica (same
// machine, same data), and with one on a read-your-writes unit whose
// write the replica has replayed (the per-read cost of the position
// check).
func BenchmarkReplicaRead(b *testing.B) {
	rf := newReplicaFleet(b, 1, nil)
	c, db := rf.open(b, "", "pool_max=2")
	waitReplicasFit(b, c, time.Second)
	base := WithShard(context.Background(), 1)
	unit := WithReadYourWrites(base)
	if _, err := db.ExecContext(unit, "UPDATE t SET note = 'bench' WHERE id = 0"); err != nil {
		b.Fatal(err)
	}
	waitUntil(b, "the replica to replay the unit's write", func() bool {
		return servedBy(b, WithReplica(unit), db) == rf.standbys[0].Port()
	})
	read := func(ctx context.Context) func(int) {
		return func(int) {
			var note string
			if err := db.QueryRowContext(ctx, "SELECT note FROM t WHERE id = 0").Scan(&note); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("replica-vs-primary", func(b *testing.B) {
		sideBySide(b, "primary", read(base), "replica", read(WithReplica(base)))
	})
	b.Run("ryw-vs-replica", func(b *testing.B) {
		sideBySide(b, "replica", read(WithReplica(base)), "ryw", read(WithReplica(unit)))
	})
	if fb := replicaStats(c)[0].Fallbacks; fb != 0 {
		b.Logf("%d fallbacks during the benchmark", fb)
	}
}

// BenchmarkReadYourWritesWrite compares a write with and without a
// read-your-writes unit, which notes when the write completed (no round
// trip: the replicas' monitors sample the primary's position anyway).
func BenchmarkReadYourWritesWrite(b *testing.B) {
	rf := newReplicaFleet(b, 1, nil)
	_, db := rf.open(b, "", "pool_max=2")
	base := WithShard(context.Background(), 1)
	write := func(unit bool) func(int) {
		return func(i int) {
			ctx := base
			if unit {
				ctx = WithReadYourWrites(base)
			}
			if _, err := db.ExecContext(ctx, "UPDATE t SET note = $1 WHERE id = 0", fmt.Sprint(i)); err != nil {
				b.Fatal(err)
			}
		}
	}
	sideBySide(b, "plain", write(false), "ryw", write(true))
}
