// Package promhv exports what hv counts as Prometheus metrics: a
// prometheus.Collector that reads Connector.Stats at each scrape (per host:
// statements, errors, pool connections, waits, timeouts, schema switches),
// and, set as the Config's Tracer, histograms of statement and fan-out
// durations.
//
//	m := promhv.New()
//	cfg.Tracer = m // for the duration histograms; optional
//	c, err := hv.NewConnector(cfg)
//	m.Observe(c)
//	prometheus.MustRegister(m)
//
// The metrics (labels in braces; shard only with WithShardLabels):
//
//	hv_statements_total{host,shard}            statements run (each shard of a fan-out counts one)
//	hv_statement_errors_total{host,shard}      statements that failed
//	hv_statement_duration_seconds{host,operation,shard}  histogram, from the Tracer hooks
//	hv_fanout_duration_seconds{operation}      histogram of whole fan-outs, from the hooks
//	hv_pool_waits_total{host,shard}            statements that waited for a connection
//	hv_pool_wait_seconds_total{host,shard}     time they waited
//	hv_pool_timeouts_total{host,shard}         waits that ended in the block timeout
//	hv_schema_switches_total{host,shard}       search_path switches sent
//	hv_pool_max_connections{host}              pool_max
//	hv_pool_open_connections{host}             connections open
//	hv_pool_in_use_connections{host}           connections in use
//	hv_pool_idle_connections{host}             connections idle
//	hv_host_shards{host}                       logical shards the host owns
//	hv_replica_reads_total{host,replica}       reads a streaming replica served
//	hv_replica_fallbacks_total{host,replica}   reads in its turn that went to the primary
//	hv_replica_lag_seconds{host,replica}       its replay lag at the last poll
//	hv_replica_up{host,replica}                1 while it answers, 0 while down
//
// host is hv's name of the host ("host:port/dbname"), operation is query,
// exec, begin, commit or rollback. Per-shard labels multiply the series by
// up to 8192 shards, so they are off unless asked for; with them, shards
// that have counted nothing yet are left out.
package promhv

import (
	"context"
	"strconv"
	"sync"

	"github.com/hypervault/hv"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultBuckets are the duration histograms' buckets, in seconds: from
// half a millisecond, since a routed point query takes about that long.
var DefaultBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Metrics is a prometheus.Collector of hv's metrics and an hv.Tracer and
// hv.FanOutTracer that records durations. It is safe for concurrent use.
type Metrics struct {
	shardLabels bool
	buckets     []float64

	duration *prometheus.HistogramVec
	fanOut   *prometheus.HistogramVec
	stats    map[string]*prometheus.Desc

	mu sync.Mutex
	c  *hv.Connector

	observers sync.Map // obsKey -> prometheus.Observer
}

var (
	_ prometheus.Collector = (*Metrics)(nil)
	_ hv.Tracer            = (*Metrics)(nil)
	_ hv.FanOutTracer      = (*Metrics)(nil)
)

// Option configures Metrics.
type Option func(*Metrics)

// WithShardLabels adds a shard label to the per-shard counters and the
// statement duration histogram: up to one series per shard.
func WithShardLabels() Option { return func(m *Metrics) { m.shardLabels = true } }

// WithBuckets sets the duration histograms' buckets (seconds).
func WithBuckets(b []float64) Option { return func(m *Metrics) { m.buckets = b } }

// The counters read from Stats, by name; the per-shard ones may take a
// shard label.
var statNames = []struct {
	name, help string
	perShard   bool
	gauge      bool
}{
	{"hv_statements_total", "Statements run (each shard of a fan-out counts one).", true, false},
	{"hv_statement_errors_total", "Statements that failed.", true, false},
	{"hv_pool_waits_total", "Statements that found no free connection and waited.", true, false},
	{"hv_pool_wait_seconds_total", "Time statements waited for a connection.", true, false},
	{"hv_pool_timeouts_total", "Waits for a connection that ended in the pool block timeout.", true, false},
	{"hv_schema_switches_total", "search_path switches sent: statements that found no connection on their shard's schema.", true, false},
	{"hv_pool_max_connections", "The host's connection limit (pool_max).", false, true},
	{"hv_pool_open_connections", "Connections open to the host.", false, true},
	{"hv_pool_in_use_connections", "Connections of the host in use.", false, true},
	{"hv_pool_idle_connections", "Connections of the host idle.", false, true},
	{"hv_host_shards", "Logical shards the host owns.", false, true},
}

// The per-replica metrics, labelled by host (the primary's name) and
// replica.
var replicaNames = []struct{ name, help string }{
	{"hv_replica_reads_total", "Reads the replica was chosen for."},
	{"hv_replica_fallbacks_total", "Reads in the replica's turn that went to the primary: no replica was fit (down, lagging past max_replica_lag, or behind the unit's write)."},
	{"hv_replica_lag_seconds", "How long ago the primary had WAL the replica had not replayed, at the last poll."},
	{"hv_replica_up", "1 while the replica answers its monitor, 0 while it is down."},
}

// New returns Metrics with opts applied. Call Observe to read a
// Connector's Stats.
func New(opts ...Option) *Metrics {
	m := &Metrics{buckets: DefaultBuckets, stats: map[string]*prometheus.Desc{}}
	for _, o := range opts {
		o(m)
	}
	labels := []string{"host", "operation"}
	if m.shardLabels {
		labels = append(labels, "shard")
	}
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "hv_statement_duration_seconds", Help: "Duration of statements, including the wait for a connection.",
		Buckets: m.buckets}, labels)
	m.fanOut = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "hv_fanout_duration_seconds", Help: "Duration of fan-outs over shards.",
		Buckets: m.buckets}, []string{"operation"})
	for _, s := range statNames {
		labels := []string{"host"}
		if s.perShard && m.shardLabels {
			labels = append(labels, "shard")
		}
		m.stats[s.name] = prometheus.NewDesc(s.name, s.help, labels, nil)
	}
	for _, s := range replicaNames {
		m.stats[s.name] = prometheus.NewDesc(s.name, s.help, []string{"host", "replica"}, nil)
	}
	return m
}

// Observe makes Collect read c's Stats; nil stops it.
func (m *Metrics) Observe(c *hv.Connector) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.c = c
}

// Describe sends the descriptors of every metric m collects.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.duration.Describe(ch)
	m.fanOut.Describe(ch)
	for _, d := range m.stats {
		ch <- d
	}
}

// Collect sends the duration histograms and the observed Connector's
// Stats.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.duration.Collect(ch)
	m.fanOut.Collect(ch)
	m.mu.Lock()
	c := m.c
	m.mu.Unlock()
	if c == nil {
		return
	}
	for _, h := range c.Stats() {
		gauge := func(name string, v float64) {
			ch <- prometheus.MustNewConstMetric(m.stats[name], prometheus.GaugeValue, v, h.Host)
		}
		gauge("hv_pool_max_connections", float64(h.PoolMax))
		gauge("hv_pool_open_connections", float64(h.DB.OpenConnections))
		gauge("hv_pool_in_use_connections", float64(h.DB.InUse))
		gauge("hv_pool_idle_connections", float64(h.DB.Idle))
		gauge("hv_host_shards", float64(h.Shards.Len()))
		for _, r := range h.Replicas {
			up := 1.0
			if r.Down {
				up = 0
			}
			for _, v := range []struct {
				name string
				kind prometheus.ValueType
				v    float64
			}{
				{"hv_replica_reads_total", prometheus.CounterValue, float64(r.Reads)},
				{"hv_replica_fallbacks_total", prometheus.CounterValue, float64(r.Fallbacks)},
				{"hv_replica_lag_seconds", prometheus.GaugeValue, r.Lag.Seconds()},
				{"hv_replica_up", prometheus.GaugeValue, up},
			} {
				ch <- prometheus.MustNewConstMetric(m.stats[v.name], v.kind, v.v, h.Host, r.Host)
			}
		}
		counters := func(st hv.ShardStats, labels ...string) {
			for _, v := range []struct {
				name string
				v    float64
			}{
				{"hv_statements_total", float64(st.Statements)},
				{"hv_statement_errors_total", float64(st.Errors)},
				{"hv_pool_waits_total", float64(st.WaitCount)},
				{"hv_pool_wait_seconds_total", st.WaitDuration.Seconds()},
				{"hv_pool_timeouts_total", float64(st.Timeouts)},
				{"hv_schema_switches_total", float64(st.SchemaSwitches)},
			} {
				ch <- prometheus.MustNewConstMetric(m.stats[v.name], prometheus.CounterValue, v.v, labels...)
			}
		}
		if m.shardLabels {
			for _, s := range h.ShardStats {
				if s != (hv.ShardStats{Shard: s.Shard}) {
					counters(s, h.Host, strconv.Itoa(s.Shard))
				}
			}
			continue
		}
		total := hv.ShardStats{WaitCount: h.WaitCount, WaitDuration: h.WaitDuration, Timeouts: h.Timeouts,
			SchemaSwitches: h.SchemaSwitches}
		for _, s := range h.ShardStats {
			total.Statements += s.Statements
			total.Errors += s.Errors
		}
		counters(total, h.Host)
	}
}

// TraceStatementStart returns ctx: durations come with the end.
func (m *Metrics) TraceStatementStart(ctx context.Context, _ hv.Statement) context.Context {
	return ctx
}

// obsKey identifies one series of the statement duration histogram.
type obsKey struct {
	host  *hv.Peer
	op    hv.Op
	shard int
}

// TraceStatementEnd records the statement's duration.
func (m *Metrics) TraceStatementEnd(_ context.Context, end hv.StatementEnd) {
	k := obsKey{host: end.Host, op: end.Op, shard: -1}
	if m.shardLabels {
		k.shard = end.Shard
	}
	o, ok := m.observers.Load(k)
	if !ok {
		host := ""
		if k.host != nil {
			host = k.host.Name
		}
		labels := []string{host, k.op.String()}
		if m.shardLabels {
			shard := ""
			if k.shard >= 0 {
				shard = strconv.Itoa(k.shard)
			}
			labels = append(labels, shard)
		}
		o, _ = m.observers.LoadOrStore(k, m.duration.WithLabelValues(labels...))
	}
	o.(prometheus.Observer).Observe(end.Duration.Seconds())
}

// TraceFanOutStart returns ctx.
func (m *Metrics) TraceFanOutStart(ctx context.Context, _ hv.FanOut) context.Context { return ctx }

// TraceFanOutEnd records the fan-out's duration.
func (m *Metrics) TraceFanOutEnd(_ context.Context, end hv.FanOutEnd) {
	m.fanOut.WithLabelValues(end.Op.String()).Observe(end.Duration.Seconds())
}
