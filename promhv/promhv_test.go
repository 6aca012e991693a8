package promhv_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/internal/pgtest"
	"github.com/hypervault/hv/promhv"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// fixture is a two-server fleet (shards 1-8 and 9-16, each schema with a
// table t(id, shard) holding the row (0, shard)) with Metrics as its
// Tracer, observing its Connector, registered on a pedantic registry.
type fixture struct {
	*pgtest.Fleet
	db    *sql.DB
	c     *hv.Connector
	m     *promhv.Metrics
	reg   *prometheus.Registry
	hosts [2]string // hv's names of the hosts
}

func newFixture(t *testing.T, global string, opts ...promhv.Option) *fixture {
	t.Helper()
	return newFixtureHosts(t, "", global, opts...)
}

// newFixtureHosts is newFixture with hostParams in every host's segment.
func newFixtureHosts(t *testing.T, hostParams, global string, opts ...promhv.Option) *fixture {
	t.Helper()
	f := &fixture{Fleet: pgtest.NewFleet(t, hostParams, global, true), m: promhv.New(opts...), reg: prometheus.NewPedanticRegistry()}
	for i, r := range pgtest.FleetRanges {
		var ddl strings.Builder
		for s := r[0]; s < r[1]; s++ {
			fmt.Fprintf(&ddl, "CREATE TABLE shard%04[1]d.t (id int PRIMARY KEY, shard int); INSERT INTO shard%04[1]d.t VALUES (0, %[1]d);", s)
		}
		f.Exec(t, i, ddl.String())
	}
	cfg, err := hv.ParseConfig(f.DSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Tracer = f.m
	if f.c, err = hv.NewConnector(cfg); err != nil {
		t.Fatal(err)
	}
	f.m.Observe(f.c)
	f.reg.MustRegister(f.m)
	f.db = sql.OpenDB(f.c)
	t.Cleanup(func() { f.db.Close() })
	for i, h := range f.c.Stats() {
		f.hosts[i] = h.Host
	}
	return f
}

// counters returns the expected text of a counter per host.
func (f *fixture) counters(name, help string, values [2]int) string {
	return fmt.Sprintf("# HELP %[1]s %[2]s\n# TYPE %[1]s counter\n%[1]s{host=%[3]q} %[4]d\n%[1]s{host=%[5]q} %[6]d\n",
		name, help, f.hosts[0], values[0], f.hosts[1], values[1])
}

const (
	statementsHelp = "Statements run (each shard of a fan-out counts one)."
	errorsHelp     = "Statements that failed."
)

// samples returns the sample count of each series of histogram name, by
// its labels ("host=... operation=...").
func (f *fixture) samples(t *testing.T, name string) map[string]uint64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[labelsOf(m)] = m.GetHistogram().GetSampleCount()
		}
	}
	return out
}

func labelsOf(m *dto.Metric) string {
	var l []string
	for _, lp := range m.GetLabel() {
		l = append(l, lp.GetName()+"="+lp.GetValue())
	}
	return strings.Join(l, " ")
}

func TestRoutedStatement(t *testing.T) {
	f := newFixture(t, "")
	ctx := hv.WithShard(context.Background(), 5)
	for range 3 {
		var shard int
		if err := f.db.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = $1", 0).Scan(&shard); err != nil || shard != 5 {
			t.Fatal(shard, err)
		}
	}
	if err := testutil.CollectAndCompare(f.m, strings.NewReader(
		f.counters("hv_statements_total", statementsHelp, [2]int{3, 0})+
			f.counters("hv_statement_errors_total", errorsHelp, [2]int{0, 0})),
		"hv_statements_total", "hv_statement_errors_total"); err != nil {
		t.Error(err)
	}
	want := map[string]uint64{"host=" + f.hosts[0] + " operation=query": 3}
	if got := f.samples(t, "hv_statement_duration_seconds"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("duration samples %v, want %v", got, want)
	}
	if got := gaugeOf(t, f, "hv_host_shards", f.hosts[1]); got != 8 {
		t.Errorf("hv_host_shards of the second host: %v", got)
	}
}

// gaugeOf returns the value of the gauge name for host.
func gaugeOf(t *testing.T, f *fixture, name, host string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsOf(m) == "host="+host {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no %s for %s", name, host)
	return 0
}

// TestReplicaMetrics: each host names a replica that never answers, so the
// replica is down and reads on a replica context fall back to the primary;
// the replica's series say so.
func TestReplicaMetrics(t *testing.T) {
	f := newFixtureHosts(t, "replicas=127.0.0.1:1", "")
	ctx := hv.WithReplica(hv.WithShard(context.Background(), 5))
	for range 3 {
		var shard int
		if err := f.db.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = $1", 0).Scan(&shard); err != nil || shard != 5 {
			t.Fatal(shard, err)
		}
	}
	replica := f.c.Stats()[0].Replicas[0].Host
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if labelsOf(m) != "host="+f.hosts[0]+" replica="+replica {
				continue
			}
			v := m.GetGauge().GetValue()
			if m.GetCounter() != nil {
				v = m.GetCounter().GetValue()
			}
			got[mf.GetName()] = v
		}
	}
	want := map[string]float64{"hv_replica_reads_total": 0, "hv_replica_fallbacks_total": 3, "hv_replica_lag_seconds": 0, "hv_replica_up": 0}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("replica series %v, want %v", got, want)
	}
}

func TestFailingStatement(t *testing.T) {
	f := newFixture(t, "")
	if _, err := f.db.ExecContext(hv.WithShard(context.Background(), 12), "SELECT * FROM no_such_table"); err == nil {
		t.Fatal("no error")
	}
	if err := testutil.CollectAndCompare(f.m, strings.NewReader(
		f.counters("hv_statements_total", statementsHelp, [2]int{0, 1})+
			f.counters("hv_statement_errors_total", errorsHelp, [2]int{0, 1})),
		"hv_statements_total", "hv_statement_errors_total"); err != nil {
		t.Error(err)
	}
}

func TestTransaction(t *testing.T) {
	f := newFixture(t, "")
	ctx := hv.WithShard(context.Background(), 10)
	for _, commit := range []bool{true, false} {
		tx, err := f.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "UPDATE t SET shard = 10 WHERE id = 0"); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	h := "host=" + f.hosts[1] + " operation="
	want := map[string]uint64{h + "begin": 2, h + "exec": 2, h + "commit": 1, h + "rollback": 1}
	if got := f.samples(t, "hv_statement_duration_seconds"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("duration samples %v, want %v", got, want)
	}
}

func TestFanOut16(t *testing.T) {
	f := newFixture(t, "", promhv.WithShardLabels())
	rows, err := f.db.QueryContext(hv.WithAllShards(context.Background()), "SELECT shard FROM t")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Close(); err != nil || n != 16 {
		t.Fatal(n, err)
	}
	var want strings.Builder
	fmt.Fprintf(&want, "# HELP hv_statements_total %s\n# TYPE hv_statements_total counter\n", statementsHelp)
	for s := 1; s <= 16; s++ {
		fmt.Fprintf(&want, "hv_statements_total{host=%q,shard=\"%d\"} 1\n", f.hosts[pgtest.HostOf(s)], s)
	}
	if err := testutil.CollectAndCompare(f.m, strings.NewReader(want.String()), "hv_statements_total"); err != nil {
		t.Error(err)
	}
	got := f.samples(t, "hv_statement_duration_seconds")
	for s := 1; s <= 16; s++ {
		if k := fmt.Sprintf("host=%s operation=query shard=%d", f.hosts[pgtest.HostOf(s)], s); got[k] != 1 {
			t.Errorf("%s: %d samples", k, got[k])
		}
	}
	if got := f.samples(t, "hv_fanout_duration_seconds"); got["operation=query"] != 1 || len(got) != 1 {
		t.Errorf("fan-out samples %v", got)
	}
}

// TestLint checks the metric names and help against Prometheus'
// conventions, with and without shard labels.
func TestLint(t *testing.T) {
	for _, opts := range [][]promhv.Option{nil, {promhv.WithShardLabels()}} {
		f := newFixture(t, "", opts...)
		if _, err := f.db.ExecContext(hv.WithAllShards(context.Background()), "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		problems, err := testutil.CollectAndLint(f.m)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
		if n := testutil.CollectAndCount(f.m); n < 13 {
			t.Errorf("%d series", n)
		}
	}
}
