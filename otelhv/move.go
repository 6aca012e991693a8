package otelhv

import (
	"context"
	"strconv"

	"github.com/hypervault/hv"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// The attributes of a shard move's span.
const (
	// MoveFromKey and MoveToKey are the move's source and target hosts,
	// as hv names them ("host:port/dbname").
	MoveFromKey = attribute.Key("hv.move.from")
	MoveToKey   = attribute.Key("hv.move.to")
	// MovePhaseKey is the phase an hv.move.phase event begins.
	MovePhaseKey = attribute.Key("hv.move.phase")
	// MovePauseKey is how long writes to the shard waited at the
	// cut-over, in seconds; MoveBytesKey the shard's size on the target.
	MovePauseKey = attribute.Key("hv.move.pause")
	MoveBytesKey = attribute.Key("hv.move.bytes")
)

var _ hv.MoveTracer = (*Tracer)(nil)

// TraceMoveStart starts the span "hv.move shard N" of a shard move.
func (t *Tracer) TraceMoveStart(ctx context.Context, mv hv.Move) context.Context {
	ctx, _ = t.tracer.Start(ctx, "hv.move shard "+strconv.Itoa(mv.Shard), trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(semconv.DBSystemNamePostgreSQL, ShardKey.Int(mv.Shard),
			MoveFromKey.String(mv.From.Name), MoveToKey.String(mv.To.Name)))
	return ctx
}

// TraceMovePhase adds an hv.move.phase event to the move's span.
func (t *Tracer) TraceMovePhase(ctx context.Context, _ hv.Move, phase string) {
	trace.SpanFromContext(ctx).AddEvent("hv.move.phase", trace.WithAttributes(MovePhaseKey.String(phase)))
}

// TraceMoveEnd ends the move's span: with the pause and size of a move
// that finished, with the error (and its shard and host) of one that did
// not.
func (t *Tracer) TraceMoveEnd(ctx context.Context, end hv.MoveEnd) {
	span := trace.SpanFromContext(ctx)
	if end.Err != nil {
		typ, _ := errorType(end.Err)
		span.RecordError(end.Err)
		span.SetStatus(codes.Error, end.Err.Error())
		span.SetAttributes(semconv.ErrorTypeKey.String(typ))
	}
	if r := end.Report; r != nil {
		span.SetAttributes(MovePauseKey.Float64(r.Pause.Seconds()), MoveBytesKey.Int64(r.Bytes))
	}
	span.End()
}
