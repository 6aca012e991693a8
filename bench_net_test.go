package hv

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/netem"
	"github.com/hypervault/hv/internal/pgtest"
)

// The emulated network of the benchmarks: with HV_BENCH_NET set to a
// duration (make bench NET=0.25ms), every connection of the bench fleets,
// direct and hv alike, goes through a netem proxy on loopback that delays
// each direction by it. Unset, connections go straight to the servers.

var benchNetOnce = sync.OnceValues(func() (time.Duration, error) {
	v := os.Getenv("HV_BENCH_NET")
	if v == "" || v == "0" {
		return 0, nil
	}
	return time.ParseDuration(v)
})

// netKeywords returns kw, or with HV_BENCH_NET set, kw pointed at a proxy
// to the server on 127.0.0.1:port that delays each direction, closed when
// tb ends.
func netKeywords(tb testing.TB, kw string, port int) string {
	tb.Helper()
	delay, err := benchNetOnce()
	if err != nil {
		tb.Fatalf("HV_BENCH_NET: %v", err)
	}
	if delay == 0 {
		return kw
	}
	p, err := netem.Start(fmt.Sprintf("127.0.0.1:%d", port), delay)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = p.Close() })
	return proxiedKeywords(kw, p)
}

// benchFleet is hosts databases (alternating over two servers) holding
// shards 1..shards in equal ranges, each shard's schema with the table t of
// newTestFleet, and the hv DSN for them.
type benchFleet struct {
	dsn     string
	hosts   []string // libpq keywords of each host's database
	perHost int
}

func newBenchFleet(b *testing.B, hosts, shards int, global string) *benchFleet {
	b.Helper()
	servers := pgtest.Servers(b, 2)
	f := &benchFleet{perHost: shards / hosts}
	var segs []string
	for i := range hosts {
		r := ShardRange{1 + i*f.perHost, 1 + (i+1)*f.perHost}
		kw, port := shardDatabase(b, servers[i%2], r)
		kw = netKeywords(b, kw, port)
		f.hosts = append(f.hosts, kw)
		segs = append(segs, fmt.Sprintf("shards=%s %s", r, kw))
	}
	f.dsn = strings.Join(append(segs, global), "; ")
	return f
}

// pointLoad is what runPoint runs: goroutines goroutines on random shards
// 1..shards of hosts hosts, each host with poolMax connections.
type pointLoad struct{ goroutines, shards, hosts, poolMax int }

// warmUp returns how many statements bring l to its steady state, where
// every connection it keeps busy (on each host, at most one a goroutine
// and poolMax in all) has run the statement of every shard of its host
// often enough to be past its preparation (pgx's statement cache, hv's
// statements per schema) and past PostgreSQL's first five executions of a
// prepared statement, which it plans with their parameters before it may
// keep a generic plan. A connection meets its host's shards at random:
// perHost·(ln perHost + 8) statements give each one about eight times, all
// but a few at least five times (the coupon collector, repeated). With
// fewer, the timed part pays for planning, most on the side whose
// connections are new.
func (l pointLoad) warmUp() int {
	perHost := float64(l.shards / l.hosts)
	busy := l.hosts * min(l.goroutines, l.poolMax) // connections
	return int(float64(busy) * perHost * (math.Log(perHost) + 8))
}

// runPoint runs stmt on random shards as l says, after an untimed warm-up
// the same way (connections open, statements prepared: l.warmUp), and
// reports statements per second; started (if not nil) is called when the
// timing starts.
func runPoint(b *testing.B, l pointLoad, started func(), stmt func(s int) error) {
	goroutines, shards := l.goroutines, l.shards
	var wg sync.WaitGroup
	each := max(l.warmUp()/goroutines, 8)
	for g := range goroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 3))
			for range each {
				if err := stmt(1 + r.IntN(shards)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if started != nil {
		started()
	}
	defer reportCPU(b)()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	if goroutines == 1 {
		r := rand.New(rand.NewPCG(1, 2))
		for b.Loop() {
			if err := stmt(1 + r.IntN(shards)); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.SetParallelism(max(1, goroutines/runtime.GOMAXPROCS(0)))
		var seed atomic.Uint64
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(seed.Add(1), 2))
			for pb.Next() {
				if err := stmt(1 + r.IntN(shards)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "stmts/s")
}

// BenchmarkPolicy chooses hv's connection rule by the numbers: a point
// SELECT on a random shard, for 1, 8 and 64 goroutines, 16 and 256 shards,
// 2 and 4 hosts (4 are 4 databases on two servers), directly through pgx
// (schema-qualified, one *sql.DB per host, the same pool max) and through
// hv with its rule, the most recently released connection with the switch
// riding along (via=hv), and with the former rule for a statement alone on
// its host, a connection per shard (via=hv-alone, perShardWhenAlone), each
// rule on a Connector of its own. The row hosts=4/shards=256/g=64 is
// the throughput at scale. Compare with `benchstat -col /via`.
func BenchmarkPolicy(b *testing.B) {
	const poolMax = 10
	for _, hosts := range []int{2, 4} {
		for _, shards := range []int{16, 256} {
			f := newBenchFleet(b, hosts, shards, fmt.Sprintf("pool_max=%d", poolMax))
			direct := make([]*sql.DB, hosts)
			for i, kw := range f.hosts {
				d, err := sql.Open("pgx", kw)
				if err != nil {
					b.Fatal(err)
				}
				d.SetMaxOpenConns(poolMax)
				d.SetMaxIdleConns(poolMax)
				direct[i] = d
			}
			cfg, err := ParseConfig(f.dsn)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			qualified := qualifiedSelects(shards)
			routed := make([]context.Context, shards+1)
			for s := 1; s <= shards; s++ {
				routed[s] = WithShard(ctx, s)
			}
			for _, g := range []int{1, 8, 64} {
				name := fmt.Sprintf("hosts=%d/shards=%d/g=%d", hosts, shards, g)
				load := pointLoad{goroutines: g, shards: shards, hosts: hosts, poolMax: poolMax}
				b.Run(name+"/via=direct", func(b *testing.B) {
					runPoint(b, load, nil, func(s int) error {
						var got int
						return direct[(s-1)/f.perHost].QueryRowContext(ctx, qualified[s], 0).Scan(&got)
					})
				})
				for _, alone := range []bool{false, true} {
					via := "hv"
					if alone {
						via = "hv-alone"
					}
					b.Run(name+"/via="+via, func(b *testing.B) {
						perShardWhenAlone.Store(alone)
						defer perShardWhenAlone.Store(false)
						// A Connector of its own: no rule inherits another's
						// connections.
						c, err := NewConnector(cfg)
						if err != nil {
							b.Fatal(err)
						}
						hv := sql.OpenDB(c)
						defer hv.Close()
						hv.SetMaxIdleConns(hosts * poolMax)
						var before int64
						runPoint(b, load, func() { before = switches(c) }, func(s int) error {
							var got int
							return hv.QueryRowContext(routed[s], "SELECT shard FROM t WHERE id = $1", 0).Scan(&got)
						})
						b.ReportMetric(float64(switches(c)-before)/float64(b.N), "switches/op")
					})
				}
			}
			for _, d := range direct {
				d.Close()
			}
		}
	}
}

// BenchmarkTxMode compares a point SELECT on a random shard of 16 over two
// hosts through hv in pool_mode=session and pool_mode=transaction (no
// pooler in between: the cost of the mode itself), with unnamed statements
// (the default) and with named ones (transaction-named: hosts with
// default_query_exec_mode=cache_statement, for a pooler that keeps them),
// 1 goroutine. Compare with `benchstat -col /via`: transaction / session.
//
// The rows direct/… are the protocol's own share of that ratio: the same
// SELECT sent directly through pgx on schema-qualified SQL, via=session in
// the exec mode hv uses in session mode (cache_statement: named statements,
// cached plans) and via=transaction in the one it uses in transaction mode
// (exec: an unnamed statement, parsed and planned on every call).
func BenchmarkTxMode(b *testing.B) {
	f := newTestFleet(b, fleetOptions{global: "pool_max=10"})
	ctx := context.Background()
	routed := make([]context.Context, 17)
	for s := 1; s <= 16; s++ {
		routed[s] = WithShard(ctx, s)
	}
	// transaction-named: pool_mode=transaction behind a pooler that keeps
	// named statements (default_query_exec_mode=cache_statement).
	named := regexp.MustCompile(`shards=\S+ `).ReplaceAllString(f.dsn, "${0}default_query_exec_mode=cache_statement ")
	for _, mode := range []string{"session", "transaction", "transaction-named"} {
		dsn := f.dsn + "; pool_mode=" + mode
		if mode == "transaction-named" {
			dsn = named + "; pool_mode=transaction"
		}
		db, err := sql.Open("hv", dsn)
		if err != nil {
			b.Fatal(err)
		}
		db.SetMaxIdleConns(20)
		b.Run("shards=16/g=1/via="+mode, func(b *testing.B) {
			runPoint(b, pointLoad{goroutines: 1, shards: 16, hosts: 2, poolMax: 10}, nil, func(s int) error {
				var got int
				return db.QueryRowContext(routed[s], "SELECT shard FROM t WHERE id = $1", 0).Scan(&got)
			})
		})
		db.Close()
	}
	qualified := qualifiedSelects(16)
	for _, mode := range []struct{ via, execMode string }{{"session", "cache_statement"}, {"transaction", "exec"}} {
		direct := f.directDBs(b, 10, "default_query_exec_mode="+mode.execMode)
		b.Run("direct/shards=16/g=1/via="+mode.via, func(b *testing.B) {
			runPoint(b, pointLoad{goroutines: 1, shards: 16, hosts: 2, poolMax: 10}, nil, func(s int) error {
				var got int
				return direct[(s-1)/8].QueryRowContext(ctx, qualified[s], 0).Scan(&got)
			})
		})
	}
}
