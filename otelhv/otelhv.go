// Package otelhv reports what hv does as OpenTelemetry traces and metrics,
// following the database semantic conventions (db.system.name postgresql,
// db.namespace, server.address and server.port, db.operation.name, and
// db.query.text only when asked for), with hv.shard, hv.schema and hv.host
// added.
//
// A Tracer is an hv.Tracer: set it as the Config's Tracer for spans and
// the duration histograms, and call Observe with the Connector for the
// pool and per-shard counters read from Connector.Stats:
//
//	t, err := otelhv.New(otelhv.WithTracerProvider(tp), otelhv.WithMeterProvider(mp))
//	cfg.Tracer = t
//	c, err := hv.NewConnector(cfg)
//	reg, err := t.Observe(c) // reg.Unregister() when done
//	db := sql.OpenDB(c)
//
// Spans: one per routed statement, named "{db.operation.name} {database}"
// (the database part of db.namespace, so that names stay few however many
// shards there are), of kind client; BEGIN, COMMIT and ROLLBACK each get
// their own. A fan-out is a span "hv.fanout {db.operation.name}" with one
// child per shard. A wait for a connection is an event hv.pool.wait on the
// waiting statement's span. A failed statement's span has status Error,
// the error recorded (its text names the shard and host, and the event
// carries hv.shard and hv.host), error.type and, for a server error,
// db.response.status_code (the SQLSTATE).
//
// Metrics: db.client.operation.duration and db.client.connection.wait_time
// (histograms, from the hooks); db.client.connection.count (state used or
// idle), db.client.connection.max and db.client.connection.timeouts per host
// (db.client.connection.pool.name is hv's host name); and hv.statements,
// hv.statement.errors, hv.schema.switches, hv.pool.waits, hv.pool.wait_time
// and hv.host.shards (from Observe), and per replica (hv.replica)
// hv.replica.reads, hv.replica.fallbacks, hv.replica.lag and
// hv.replica.down. Per-shard attributes on metrics
// (hv.shard, and db.namespace with the schema) multiply the series by up to
// 8192 shards: they are off unless WithShardMetrics is given.
package otelhv

import (
	"context"
	"errors"
	"sync"

	"github.com/hypervault/hv"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of otelhv's tracer and meter.
const ScopeName = "github.com/hypervault/hv/otelhv"

// Tracer is an hv.Tracer, hv.FanOutTracer and hv.PoolTracer that makes
// OpenTelemetry spans and records duration histograms. It is safe for
// concurrent use.
type Tracer struct {
	tp           trace.TracerProvider
	mp           metric.MeterProvider
	queryText    bool
	shardMetrics bool

	tracer   trace.Tracer
	meter    metric.Meter
	duration metric.Float64Histogram // db.client.operation.duration
	fanOut   metric.Float64Histogram // hv.fanout.duration
	waitTime metric.Float64Histogram // db.client.connection.wait_time

	sets sync.Map // setKey -> metric.MeasurementOption, so that recording does not allocate
}

var (
	_ hv.Tracer       = (*Tracer)(nil)
	_ hv.FanOutTracer = (*Tracer)(nil)
	_ hv.PoolTracer   = (*Tracer)(nil)
)

// Option configures a Tracer.
type Option func(*Tracer)

// WithTracerProvider makes spans with tp instead of the global provider.
func WithTracerProvider(tp trace.TracerProvider) Option { return func(t *Tracer) { t.tp = tp } }

// WithMeterProvider records metrics with mp instead of the global provider.
func WithMeterProvider(mp metric.MeterProvider) Option { return func(t *Tracer) { t.mp = mp } }

// WithQueryText records each statement's SQL as db.query.text. The text
// is the application's, with placeholders for the arguments given
// separately, but any literal it holds ends up in the traces.
func WithQueryText() Option { return func(t *Tracer) { t.queryText = true } }

// WithShardMetrics gives metrics per shard (hv.shard, and db.namespace
// qualified by the shard's schema) rather than per host: up to one series
// per shard, 8192 of them.
func WithShardMetrics() Option { return func(t *Tracer) { t.shardMetrics = true } }

// durationBuckets are the semantic conventions' advice for
// db.client.operation.duration, in seconds.
var durationBuckets = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}

// New returns a Tracer with opts applied, or an error when an instrument
// cannot be created.
func New(opts ...Option) (*Tracer, error) {
	t := &Tracer{}
	for _, o := range opts {
		o(t)
	}
	if t.tp == nil {
		t.tp = otel.GetTracerProvider()
	}
	if t.mp == nil {
		t.mp = otel.GetMeterProvider()
	}
	t.tracer = t.tp.Tracer(ScopeName)
	t.meter = t.mp.Meter(ScopeName)
	var err, e error
	t.duration, e = t.meter.Float64Histogram("db.client.operation.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of database client operations."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	err = errors.Join(err, e)
	t.fanOut, e = t.meter.Float64Histogram("hv.fanout.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of fan-outs, from the start of the first shard's statement to the end of the last."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	err = errors.Join(err, e)
	t.waitTime, e = t.meter.Float64Histogram("db.client.connection.wait_time", metric.WithUnit("s"),
		metric.WithDescription("The time it took to obtain an open connection from the pool, for the statements that had to wait."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	err = errors.Join(err, e)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// spanName returns the name of a statement's span.
func spanName(op string, st *hv.Statement) string {
	if op == "" {
		op = "postgresql"
	}
	if st.Host != nil && st.Host.Database != "" {
		return op + " " + st.Host.Database
	}
	return op
}

// TraceStatementStart starts a client span for the statement, a child of
// the one on ctx, and returns ctx with it.
func (t *Tracer) TraceStatementStart(ctx context.Context, st hv.Statement) context.Context {
	op := operationName(st.SQL)
	attrs := make([]attribute.KeyValue, 0, 12)
	attrs = append(attrs, semconv.DBSystemNamePostgreSQL, OperationKey.String(st.Op.String()))
	if op != "" {
		attrs = append(attrs, semconv.DBOperationName(op))
	}
	attrs = appendTarget(attrs, &st)
	if t.queryText {
		attrs = append(attrs, semconv.DBQueryText(st.SQL))
	}
	ctx, _ = t.tracer.Start(ctx, spanName(op, &st), trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx
}

// TraceStatementEnd ends the statement's span, recording its error, and
// records its duration.
func (t *Tracer) TraceStatementEnd(ctx context.Context, end hv.StatementEnd) {
	span := trace.SpanFromContext(ctx)
	var typ string
	if span.IsRecording() {
		span.SetAttributes(appendTarget(nil, &end.Statement)...) // where it ran, which the start may not have known
		if end.Err != nil {
			typ = t.recordError(span, end.Err, &end.Statement)
		}
	} else if end.Err != nil {
		typ, _ = errorType(end.Err)
	}
	span.End()
	t.duration.Record(ctx, end.Duration.Seconds(), t.measurement(setKey{
		peer: end.Host, op: operationName(end.SQL), hvOp: end.Op, shard: t.shardOf(&end.Statement), schema: t.schemaOf(&end.Statement),
		errType: typ,
	}))
}

// recordError records err on span with the shard and host of st, sets the
// span's status and error attributes, and returns error.type.
func (t *Tracer) recordError(span trace.Span, err error, st *hv.Statement) string {
	typ, state := errorType(err)
	attrs := []attribute.KeyValue{ShardKey.Int(st.Shard)}
	if st.Host != nil {
		attrs = append(attrs, HostKey.String(st.Host.Name))
	}
	span.RecordError(err, trace.WithAttributes(attrs...))
	span.SetStatus(codes.Error, err.Error())
	span.SetAttributes(semconv.ErrorTypeKey.String(typ))
	if state != "" {
		span.SetAttributes(semconv.DBResponseStatusCode(state))
	}
	return typ
}

func (t *Tracer) shardOf(st *hv.Statement) int {
	if t.shardMetrics {
		return st.Shard
	}
	return -1
}

func (t *Tracer) schemaOf(st *hv.Statement) string {
	if t.shardMetrics {
		return st.Schema
	}
	return ""
}

// TraceFanOutStart starts the fan-out's span, the parent of its shards'.
func (t *Tracer) TraceFanOutStart(ctx context.Context, fo hv.FanOut) context.Context {
	op := operationName(fo.SQL)
	name := "hv.fanout"
	attrs := make([]attribute.KeyValue, 0, 5)
	attrs = append(attrs, semconv.DBSystemNamePostgreSQL, OperationKey.String(fo.Op.String()), FanOutShardsKey.Int(fo.Shards))
	if op != "" {
		name += " " + op
		attrs = append(attrs, semconv.DBOperationName(op))
	}
	if t.queryText {
		attrs = append(attrs, semconv.DBQueryText(fo.SQL))
	}
	ctx, _ = t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx
}

// TraceFanOutEnd ends the fan-out's span and records its duration.
func (t *Tracer) TraceFanOutEnd(ctx context.Context, end hv.FanOutEnd) {
	span := trace.SpanFromContext(ctx)
	var typ string
	if end.Err != nil {
		typ, _ = errorType(end.Err)
		span.RecordError(end.Err)
		span.SetStatus(codes.Error, end.Err.Error())
		span.SetAttributes(semconv.ErrorTypeKey.String(typ))
	}
	span.End()
	t.fanOut.Record(ctx, end.Duration.Seconds(), t.measurement(setKey{
		op: operationName(end.SQL), hvOp: end.Op, shard: -1, errType: typ, fanOut: true}))
}

// TracePoolWait adds an hv.pool.wait event to the waiting statement's span
// and records the wait.
func (t *Tracer) TracePoolWait(ctx context.Context, w hv.PoolWait) {
	secs := w.Duration.Seconds()
	attrs := []attribute.KeyValue{PoolWaitKey.Float64(secs), ShardKey.Int(w.Shard)}
	var typ string
	if w.Err != nil {
		typ, _ = errorType(w.Err)
		attrs = append(attrs, semconv.ErrorTypeKey.String(typ))
	}
	trace.SpanFromContext(ctx).AddEvent("hv.pool.wait", trace.WithAttributes(attrs...))
	shard := -1
	if t.shardMetrics {
		shard = w.Shard
	}
	t.waitTime.Record(ctx, secs, t.measurement(setKey{peer: w.Host, shard: shard, errType: typ, pool: true}))
}

// setKey identifies the attributes of one series of the histograms.
type setKey struct {
	peer    *hv.Peer
	op      string // db.operation.name
	hvOp    hv.Op
	shard   int // -1 without WithShardMetrics
	schema  string
	errType string
	fanOut  bool // hv.fanout.duration
	pool    bool // db.client.connection.wait_time
}

// measurement returns the attribute set of k, made once.
func (t *Tracer) measurement(k setKey) metric.MeasurementOption {
	if m, ok := t.sets.Load(k); ok {
		return m.(metric.MeasurementOption)
	}
	var attrs []attribute.KeyValue
	if k.pool {
		if k.peer != nil {
			attrs = append(attrs, semconv.DBClientConnectionPoolName(k.peer.Name))
		}
	} else {
		attrs = append(attrs, semconv.DBSystemNamePostgreSQL, OperationKey.String(k.hvOp.String()))
		if k.op != "" {
			attrs = append(attrs, semconv.DBOperationName(k.op))
		}
		if k.peer != nil {
			attrs = append(attrs, semconv.DBNamespace(namespace(k.peer.Database, k.schema)),
				semconv.ServerAddress(k.peer.Address), HostKey.String(k.peer.Name))
			if k.peer.Port != 0 {
				attrs = append(attrs, semconv.ServerPort(k.peer.Port))
			}
		}
	}
	if k.shard >= 0 {
		attrs = append(attrs, ShardKey.Int(k.shard))
	}
	if k.errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(k.errType))
	}
	m, _ := t.sets.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(attrs...)))
	return m.(metric.MeasurementOption)
}
