package otelhv_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/internal/pgtest"
	"github.com/hypervault/hv/otelhv"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// fixture is a two-server fleet (shards 1-8 and 9-16, each schema with a
// table t(id, shard) holding the row (0, shard)) opened with an otelhv
// Tracer recording into spans and reader.
type fixture struct {
	*pgtest.Fleet
	db     *sql.DB
	c      *hv.Connector
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	tp     *sdktrace.TracerProvider
}

func newFixture(t *testing.T, global string, opts ...otelhv.Option) *fixture {
	t.Helper()
	return newFixtureHosts(t, "", global, opts...)
}

// newFixtureHosts is newFixture with hostParams in every host's segment.
func newFixtureHosts(t *testing.T, hostParams, global string, opts ...otelhv.Option) *fixture {
	t.Helper()
	f := &fixture{Fleet: pgtest.NewFleet(t, hostParams, global, true), spans: tracetest.NewSpanRecorder(),
		reader: sdkmetric.NewManualReader()}
	for i, r := range pgtest.FleetRanges {
		var ddl strings.Builder
		for s := r[0]; s < r[1]; s++ {
			fmt.Fprintf(&ddl, "CREATE TABLE shard%04[1]d.t (id int PRIMARY KEY, shard int); INSERT INTO shard%04[1]d.t VALUES (0, %[1]d);", s)
		}
		f.Exec(t, i, ddl.String())
	}
	f.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(f.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(f.reader))
	tr, err := otelhv.New(append([]otelhv.Option{otelhv.WithTracerProvider(f.tp), otelhv.WithMeterProvider(mp)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := hv.ParseConfig(f.DSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Tracer = tr
	if f.c, err = hv.NewConnector(cfg); err != nil {
		t.Fatal(err)
	}
	reg, err := tr.Observe(f.c)
	if err != nil {
		t.Fatal(err)
	}
	f.db = sql.OpenDB(f.c)
	t.Cleanup(func() {
		_ = reg.Unregister()
		f.db.Close()
	})
	return f
}

// ended returns the spans ended since the last call.
func (f *fixture) ended() []sdktrace.ReadOnlySpan {
	s := f.spans.Ended()
	f.spans.Reset()
	return s
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// checkStatement checks a statement span's name, kind and attributes
// against what shard's statement of operation op must have.
func (f *fixture) checkStatement(t *testing.T, s sdktrace.ReadOnlySpan, op, hvOp string, shard int) {
	t.Helper()
	host := f.Hosts[pgtest.HostOf(shard)]
	db := field(host, "dbname")
	a := attrs(s)
	want := map[attribute.Key]string{
		"db.system.name":    "postgresql",
		"db.namespace":      fmt.Sprintf("%s|shard%04d", db, shard),
		"db.operation.name": op,
		"hv.operation":      hvOp,
		"hv.schema":         fmt.Sprintf("shard%04d", shard),
		"server.address":    field(host, "host"),
		"server.port":       field(host, "port"),
		"hv.shard":          fmt.Sprint(shard),
	}
	for k, v := range want {
		if got := a[k].Emit(); got != v {
			t.Errorf("span %q: %s = %q, want %q", s.Name(), k, got, v)
		}
	}
	if !strings.Contains(a["hv.host"].AsString(), db) {
		t.Errorf("hv.host %q does not name the database %s", a["hv.host"].AsString(), db)
	}
	if name := op + " " + db; s.Name() != name || s.SpanKind() != trace.SpanKindClient {
		t.Errorf("span %q of kind %v, want %q, client", s.Name(), s.SpanKind(), name)
	}
}

// field returns keyword k of libpq keywords kw.
func field(kw, k string) string {
	for _, f := range strings.Fields(kw) {
		if v, ok := strings.CutPrefix(f, k+"="); ok {
			return strings.Trim(v, "'")
		}
	}
	return ""
}

func TestRoutedStatement(t *testing.T) {
	f := newFixture(t, "")
	ctx, app := f.tp.Tracer("app").Start(context.Background(), "request")
	var shard int
	if err := f.db.QueryRowContext(hv.WithShard(ctx, 11), "SELECT shard FROM t WHERE id = $1", 0).Scan(&shard); err != nil || shard != 11 {
		t.Fatal(shard, err)
	}
	app.End()
	spans := f.ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[0]
	f.checkStatement(t, s, "SELECT", "query", 11)
	if s.Parent().SpanID() != app.SpanContext().SpanID() || s.Status().Code != codes.Unset {
		t.Errorf("parent %v status %v", s.Parent().SpanID(), s.Status())
	}
	if _, ok := attrs(s)["db.query.text"]; ok {
		t.Error("db.query.text recorded without WithQueryText")
	}

	f = newFixture(t, "", otelhv.WithQueryText())
	if _, err := f.db.ExecContext(hv.WithShard(context.Background(), 2), "UPDATE t SET shard = shard WHERE id = $1", 0); err != nil {
		t.Fatal(err)
	}
	spans = f.ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	f.checkStatement(t, spans[0], "UPDATE", "exec", 2)
	if got := attrs(spans[0])["db.query.text"].AsString(); got != "UPDATE t SET shard = shard WHERE id = $1" {
		t.Errorf("db.query.text %q", got)
	}
}

// TestReplicaMetrics: each host names a replica that never answers, so it
// is down and reads on a replica context fall back to the primary.
func TestReplicaMetrics(t *testing.T) {
	f := newFixtureHosts(t, "replicas=127.0.0.1:1", "")
	ctx := hv.WithReplica(hv.WithShard(context.Background(), 5))
	for range 3 {
		var shard int
		if err := f.db.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = $1", 0).Scan(&shard); err != nil || shard != 5 {
			t.Fatal(shard, err)
		}
	}
	rm := f.collect(t)
	replicaOf := func(p metricdata.DataPoint[int64]) string {
		r, _ := p.Attributes.Value(otelhv.ReplicaKey)
		h, _ := p.Attributes.Value(otelhv.HostKey)
		return dbOf(h.AsString()) + " " + r.AsString()
	}
	got := map[string]int64{}
	for _, name := range []string{"hv.replica.reads", "hv.replica.fallbacks", "hv.replica.down"} {
		for _, p := range ints(t, rm, name) {
			got[name+" "+replicaOf(p)] = p.Value
		}
	}
	st := f.c.Stats()
	want := map[string]int64{}
	for i, name := range []string{"hv.replica.reads", "hv.replica.fallbacks", "hv.replica.down"} {
		for j, h := range st {
			v := []int64{0, 0, 1}[i]
			if i == 1 && j == 0 {
				v = 3 // shard 5's host
			}
			want[name+" "+dbOf(h.Host)+" "+h.Replicas[0].Host] = v
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("replica points\n%v\nwant\n%v", got, want)
	}
	if find(rm, "hv.replica.lag") == nil {
		t.Error("no hv.replica.lag")
	}
}

func TestFailingStatement(t *testing.T) {
	f := newFixture(t, "")
	_, err := f.db.ExecContext(hv.WithShard(context.Background(), 13), "SELECT * FROM no_such_table")
	if err == nil {
		t.Fatal("no error")
	}
	spans := f.ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[0]
	f.checkStatement(t, s, "SELECT", "exec", 13)
	a := attrs(s)
	if s.Status().Code != codes.Error || s.Status().Description != err.Error() ||
		a["error.type"].AsString() != "42P01" || a["db.response.status_code"].AsString() != "42P01" {
		t.Errorf("status %v, attributes %v", s.Status(), a)
	}
	ev := s.Events()
	if len(ev) != 1 || ev[0].Name != "exception" {
		t.Fatalf("events %v", ev)
	}
	ea := map[attribute.Key]string{}
	for _, kv := range ev[0].Attributes {
		ea[kv.Key] = kv.Value.Emit()
	}
	if ea["hv.shard"] != "13" || ea["hv.host"] != a["hv.host"].AsString() || ea["exception.message"] != err.Error() ||
		!strings.Contains(err.Error(), "shard 13 on host "+ea["hv.host"]) {
		t.Errorf("exception event %v for %v", ea, err)
	}

	// Metrics: the failed statement counts as one with error.type.
	rm := f.collect(t)
	dp := histogram(t, rm, "db.client.operation.duration")
	var failed uint64
	for _, p := range dp {
		if v, ok := p.Attributes.Value("error.type"); ok && v.AsString() == "42P01" {
			failed += p.Count
		}
	}
	if failed != 1 {
		t.Errorf("%d failed operations in db.client.operation.duration: %+v", failed, dp)
	}
	if got := sumByHost(t, rm, "hv.statement.errors"); got[field(f.Hosts[1], "dbname")] != 1 {
		t.Errorf("hv.statement.errors by host: %v", got)
	}
}

func TestTransaction(t *testing.T) {
	f := newFixture(t, "")
	ctx, app := f.tp.Tracer("app").Start(hv.WithShard(context.Background(), 6), "request")
	tx, err := f.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE t SET shard = 6 WHERE id = 0"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	app.End()
	spans := f.ended()
	if len(spans) != 4 {
		t.Fatalf("%d spans", len(spans))
	}
	for i, want := range [][2]string{{"BEGIN", "begin"}, {"UPDATE", "exec"}, {"COMMIT", "commit"}} {
		f.checkStatement(t, spans[i], want[0], want[1], 6)
		if spans[i].Parent().SpanID() != app.SpanContext().SpanID() {
			t.Errorf("%s: not a child of the application's span", spans[i].Name())
		}
	}
}

func TestFanOut16(t *testing.T) {
	f := newFixture(t, "", otelhv.WithShardMetrics())
	ctx := context.Background()
	rows, err := f.db.QueryContext(hv.WithAllShards(ctx), "SELECT shard FROM t")
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
	spans := f.ended()
	if len(spans) != 17 {
		t.Fatalf("%d spans", len(spans))
	}
	parent := spans[16]
	if parent.Name() != "hv.fanout SELECT" || attrs(parent)["hv.fanout.shards"].AsInt64() != 16 || parent.Status().Code != codes.Unset {
		t.Errorf("fan-out span %q %v %v", parent.Name(), parent.Attributes(), parent.Status())
	}
	var shards []int
	for _, s := range spans[:16] {
		if s.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("span %q is not the fan-out's child", s.Name())
		}
		shard := int(attrs(s)["hv.shard"].AsInt64())
		f.checkStatement(t, s, "SELECT", "query", shard)
		shards = append(shards, shard)
	}
	slices.Sort(shards)
	if want := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}; !slices.Equal(shards, want) {
		t.Errorf("shards %v", shards)
	}

	// A failing shard fails its span and the fan-out's.
	if _, err := f.db.ExecContext(hv.WithAllShards(ctx), "SELECT 1/(shard - 10) FROM t"); err == nil {
		t.Fatal("no division by zero")
	}
	spans = f.ended()
	if len(spans) != 17 || spans[16].Status().Code != codes.Error {
		t.Fatalf("%d spans, the last %q with %v", len(spans), spans[len(spans)-1].Name(), spans[len(spans)-1].Status())
	}
	for _, s := range spans[:16] {
		failed := s.Status().Code == codes.Error
		if shard := attrs(s)["hv.shard"].AsInt64(); failed != (shard == 10) {
			t.Errorf("shard %d: status %v", shard, s.Status())
		}
	}

	// Per-shard metrics: every shard ran two statements, one failed on 10.
	rm := f.collect(t)
	stmts, errs := byShard(t, rm, "hv.statements"), byShard(t, rm, "hv.statement.errors")
	for s := 1; s <= 16; s++ {
		wantErr := int64(0)
		if s == 10 {
			wantErr = 1
		}
		if stmts[s] != 2 || errs[s] != wantErr {
			t.Errorf("shard %d: %d statements, %d errors", s, stmts[s], errs[s])
		}
	}
	var perShard int
	for _, p := range histogram(t, rm, "db.client.operation.duration") {
		if _, ok := p.Attributes.Value("hv.shard"); ok {
			perShard++
		}
	}
	if perShard < 16 {
		t.Errorf("%d per-shard series of db.client.operation.duration", perShard)
	}
	if fo := histogram(t, rm, "hv.fanout.duration"); len(fo) != 2 {
		t.Errorf("hv.fanout.duration: %+v", fo)
	}
}

func TestPoolWait(t *testing.T) {
	f := newFixture(t, "pool_max=1 pool_block_timeout=200ms")
	ctx := context.Background()
	tx, err := f.db.BeginTx(hv.WithShard(ctx, 1), nil) // the first host's only connection
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	f.ended()
	if _, err := f.db.ExecContext(hv.WithShard(ctx, 2), "SELECT 1"); !errors.Is(err, hv.ErrPoolTimeout) {
		t.Fatalf("got %v, want ErrPoolTimeout", err)
	}
	spans := f.ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[0]
	ev := s.Events()
	if len(ev) != 2 || ev[0].Name != "hv.pool.wait" || ev[1].Name != "exception" ||
		attrs(s)["error.type"].AsString() != "hv.pool_timeout" {
		t.Fatalf("events %+v, attributes %v", ev, s.Attributes())
	}
	wa := map[attribute.Key]attribute.Value{}
	for _, kv := range ev[0].Attributes {
		wa[kv.Key] = kv.Value
	}
	if wa["hv.pool.wait.duration"].AsFloat64() <= 0 || wa["hv.shard"].AsInt64() != 2 || wa["error.type"].AsString() != "hv.pool_timeout" {
		t.Errorf("wait event %v", ev[0].Attributes)
	}
	rm := f.collect(t)
	if w := histogram(t, rm, "db.client.connection.wait_time"); len(w) != 1 || w[0].Count != 1 {
		t.Errorf("db.client.connection.wait_time %+v", w)
	}
	db0 := field(f.Hosts[0], "dbname")
	if got := sumByHost(t, rm, "db.client.connection.timeouts"); got[db0] != 1 {
		t.Errorf("timeouts by host %v", got)
	}
	if got := sumByHost(t, rm, "hv.pool.waits"); got[db0] != 1 {
		t.Errorf("waits by host %v", got)
	}
	used := map[string]int64{}
	for _, p := range ints(t, rm, "db.client.connection.count") {
		if st, _ := p.Attributes.Value("db.client.connection.state"); st.AsString() == "used" {
			pool, _ := p.Attributes.Value("db.client.connection.pool.name")
			used[dbOf(pool.AsString())] = p.Value
		}
	}
	if used[db0] != 1 {
		t.Errorf("connections in use by host %v", used)
	}
	if got := sumByHost(t, rm, "db.client.connection.max"); got[db0] != 1 {
		t.Errorf("db.client.connection.max %v", got)
	}
}

func (f *fixture) collect(t *testing.T) *metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := f.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return &rm
}

func find(rm *metricdata.ResourceMetrics, name string) *metricdata.Metrics {
	for _, sm := range rm.ScopeMetrics {
		for i := range sm.Metrics {
			if sm.Metrics[i].Name == name {
				return &sm.Metrics[i]
			}
		}
	}
	return nil
}

func histogram(t *testing.T, rm *metricdata.ResourceMetrics, name string) []metricdata.HistogramDataPoint[float64] {
	t.Helper()
	m := find(rm, name)
	if m == nil {
		t.Fatalf("no metric %s", name)
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is a %T", name, m.Data)
	}
	return h.DataPoints
}

func ints(t *testing.T, rm *metricdata.ResourceMetrics, name string) []metricdata.DataPoint[int64] {
	t.Helper()
	m := find(rm, name)
	if m == nil {
		t.Fatalf("no metric %s", name)
	}
	s, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s is a %T", name, m.Data)
	}
	return s.DataPoints
}

// dbOf returns the database of an hv host name "host:port/dbname".
func dbOf(host string) string { return host[strings.LastIndexByte(host, '/')+1:] }

// sumByHost sums an int metric by the database of its hv.host.
func sumByHost(t *testing.T, rm *metricdata.ResourceMetrics, name string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, p := range ints(t, rm, name) {
		h, _ := p.Attributes.Value("hv.host")
		out[dbOf(h.AsString())] += p.Value
	}
	return out
}

func byShard(t *testing.T, rm *metricdata.ResourceMetrics, name string) map[int]int64 {
	t.Helper()
	out := map[int]int64{}
	for _, p := range ints(t, rm, name) {
		s, ok := p.Attributes.Value("hv.shard")
		if !ok {
			t.Fatalf("%s without hv.shard under WithShardMetrics", name)
		}
		out[int(s.AsInt64())] += p.Value
	}
	return out
}

// TestMoveSpan: a move the source refuses (its server lacks
// wal_level=logical) is one span with its phase event and the refusal.
func TestMoveSpan(t *testing.T) {
	f := newFixture(t, "")
	f.ended()
	from, to := f.c.Config().Hosts[0].Name(), f.c.Config().Hosts[1].Name()
	if _, err := hv.MoveShard(context.Background(), f.c, 3, to, nil); !errors.Is(err, hv.ErrBadMove) {
		t.Fatalf("MoveShard: %v, want ErrBadMove", err)
	}
	var moves []sdktrace.ReadOnlySpan
	for _, s := range f.ended() {
		if s.Name() == "hv.move shard 3" {
			moves = append(moves, s)
		}
	}
	if len(moves) != 1 {
		t.Fatalf("%d move spans", len(moves))
	}
	s := moves[0]
	a := attrs(s)
	if a[otelhv.ShardKey].AsInt64() != 3 || a[otelhv.MoveFromKey].AsString() != from || a[otelhv.MoveToKey].AsString() != to {
		t.Errorf("attributes %v", a)
	}
	if s.Status().Code != codes.Error {
		t.Errorf("status %v", s.Status())
	}
	var phases []string
	for _, e := range s.Events() {
		if e.Name == "hv.move.phase" {
			for _, kv := range e.Attributes {
				if kv.Key == otelhv.MovePhaseKey {
					phases = append(phases, kv.Value.AsString())
				}
			}
		}
	}
	if fmt.Sprint(phases) != "[check]" {
		t.Errorf("phases %v", phases)
	}
}
