package hv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/pgtest"
)

// TestMoveFigures measures, when HV_MOVE_FIGURES=1, the figures of a shard
// move (not part of make test: it loads HV_MOVE_MB, default 200, MB):
// the copy of a large shard against pg_dump | psql of the same schema in
// the same run, the write pause seen by writers at about 500 writes/s
// during a move, the time per phase, and a rebalance from 2 hosts to 3.
//
//	HV_MOVE_FIGURES=1 go test -run TestMoveFigures -v -timeout 30m .
func TestMoveFigures(t *testing.T) {
	if os.Getenv("HV_MOVE_FIGURES") == "" {
		t.Skip("set HV_MOVE_FIGURES=1 to measure shard moves (minutes)")
	}
	mb := 200
	if v := os.Getenv("HV_MOVE_MB"); v != "" {
		fmt.Sscan(v, &mb)
	}
	ctx := context.Background()
	servers := pgtest.LogicalServers(t, 3)
	var segs, kws []string
	for i, r := range []string{"1-9", "9-17", "''"} {
		kw := servers[i].CreateDatabase(t)
		kws = append(kws, kw)
		segs = append(segs, "shards="+r+" "+kw)
	}
	f := &moveFleet{dsn: strings.Join(segs, "; ") + "; pool_block_timeout=30s", kws: kws}
	cfg, _ := ParseConfig(f.dsn)
	for _, h := range cfg.Hosts {
		f.names = append(f.names, h.Name())
	}
	d := f.open(t)
	if err := d.CreateShards(ctx); err != nil {
		t.Fatal(err)
	}
	src := f.direct(t, 0)
	// About 1 kB a row.
	rows := mb * 1000
	start := time.Now()
	if _, err := src.Exec(ctx, fmt.Sprintf(`INSERT INTO shard0001.entities (kind, body)
		SELECT 1, hv_ext.hstore(ARRAY['n', 'pad'], ARRAY[g::text, repeat(md5(g::text), 28)]) FROM generate_series(1, %d) g`, rows)); err != nil {
		t.Fatal(err)
	}
	src.Exec(ctx, "VACUUM ANALYZE shard0001.entities")
	size := queryInt(t, src, "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'shard0001' AND c.relkind = 'r'")
	t.Logf("loaded shard 1: %d rows, %.0f MB with indexes, in %v", rows, float64(size)/(1<<20), time.Since(start).Round(time.Millisecond))

	// pg_dump | psql of the same schema into another database of the
	// target's cluster.
	other := servers[1].CreateDatabase(t)
	oc := pgConnect(t, other)
	for _, q := range []string{"CREATE SCHEMA hv_ext", "CREATE EXTENSION hstore SCHEMA hv_ext"} {
		if _, err := oc.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	dump, _ := findPgDump("")
	psql := strings.TrimSuffix(dump, "pg_dump") + "psql"
	start = time.Now()
	cmd := exec.CommandContext(ctx, "bash", "-c", fmt.Sprintf("set -o pipefail; %s -n shard0001 -d %q | %s -q -v ON_ERROR_STOP=1 -d %q >/dev/null",
		dump, kws[0], psql, other))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_dump | psql: %v: %s", err, out)
	}
	dumpTime := time.Since(start)

	// Writers on the moving shard at ~500/s and readers elsewhere, during
	// the move.
	p1, p2 := f.open(t), f.open(t)
	var ws []*writer
	for _, p := range []*Datastore{p1, p2, p1, p2} {
		ws = append(ws, startWriter(p, 1, 8*time.Millisecond))
	}
	waitUntil(t, "writers", func() bool { return ws[3].acked.Load() > 20 })
	mover := f.open(t)
	var lags []int64
	rep, err := MoveShard(ctx, mover.Connector(), 1, f.names[1], &MoveOptions{MaxPause: 5 * time.Second, Progress: func(p MoveProgress) {
		lags = append(lags, p.LagBytes)
	}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // figures only: some writes after the move
	var lat []time.Duration
	var errs, acked int
	for _, w := range ws {
		w.halt()
		lat = append(lat, w.lat...)
		errs += len(w.errs)
		acked += len(w.keys)
	}
	slices.Sort(lat)
	var copyTime time.Duration
	var phases []string
	for _, p := range rep.Phases {
		phases = append(phases, fmt.Sprintf("%s %v", p.Phase, p.Duration.Round(time.Millisecond)))
		if p.Phase == PhaseSchema || p.Phase == PhaseCopy || p.Phase == PhaseCatchUp {
			copyTime += p.Duration
		}
	}
	mbs := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	t.Logf("FIGURE copy of %.0f MB: move (schema+copy+catchup) %v = %.1f MB/s; pg_dump | psql %v = %.1f MB/s; ratio %.2f",
		float64(size)/(1<<20), copyTime.Round(time.Millisecond), mbs(copyTime), dumpTime.Round(time.Millisecond), mbs(dumpTime), dumpTime.Seconds()/copyTime.Seconds())
	t.Logf("FIGURE phases: %s; pause %v", strings.Join(phases, ", "), rep.Pause.Round(time.Millisecond))
	t.Logf("FIGURE writers: %d writes (%.0f/s), %d errors, latency p50 %v p99 %v max %v",
		len(lat), float64(len(lat))/(copyTime+rep.Phases[4].Duration+500*time.Millisecond).Seconds(), errs,
		lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond), lat[len(lat)-1].Round(time.Millisecond))

	// Rebalance 2 -> 3 hosts (shard 1 is on host 1 now: 7, 9, 0).
	// Some rows on every other shard, so that each move copies something.
	for s := 2; s <= 16; s++ {
		if _, err := mover.Put(ctx, s, 1, map[string]string{"pad": strings.Repeat("y", 500)}); err != nil {
			t.Fatal(err)
		}
	}
	start = time.Now()
	var each []string
	reps, err := Rebalance(ctx, mover.Connector(), nil, &MoveOptions{MaxPause: 5 * time.Second}, func(m PlannedMove, r *MoveReport) {
		each = append(each, fmt.Sprintf("%d %v (pause %v)", m.Shard, sumPhases(r).Round(time.Millisecond), r.Pause.Round(time.Millisecond)))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE rebalance 2->3 hosts: %d moves in %v: %s", len(reps), time.Since(start).Round(time.Millisecond), strings.Join(each, "; "))
	for _, h := range mover.Connector().Stats() {
		t.Logf("  %s owns %s", h.Host, h.Shards)
	}
}

func sumPhases(r *MoveReport) time.Duration {
	var d time.Duration
	for _, p := range r.Phases {
		d += p.Duration
	}
	return d
}
