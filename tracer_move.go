package hv

import (
	"context"
	"time"
)

// MoveTracer is a Tracer told about shard moves (MoveShard, and each move
// of Rebalance): TraceMoveStart when a move begins, TraceMovePhase as each
// of its phases begins, with the context TraceMoveStart returned, and
// TraceMoveEnd when it has ended. The move's own administration
// connections are not traced statement by statement.
type MoveTracer interface {
	TraceMoveStart(ctx context.Context, mv Move) context.Context
	TraceMovePhase(ctx context.Context, mv Move, phase string)
	TraceMoveEnd(ctx context.Context, end MoveEnd)
}

// Move is a shard move, as a MoveTracer is told of it.
type Move struct {
	Shard    int
	From, To *Peer
}

// MoveEnd is a move that has ended.
type MoveEnd struct {
	Move
	// Report is what the move did; nil when it failed.
	Report *MoveReport
	// Err is why it failed (a *ShardError; ErrBadMove when it was
	// refused, ErrMoveAborted when it gave up), nil when it succeeded.
	Err error
	// Duration is the time since the move started.
	Duration time.Duration
}

// moveTrace is one move's tracing; the zero value traces nothing.
type moveTrace struct {
	t     MoveTracer
	ctx   context.Context
	mv    Move
	start time.Time
}

// traceMove starts tracing the move of shard from one host to another, when
// the fleet's Tracer is a MoveTracer.
func traceMove(ctx context.Context, t Tracer, shard int, from, to *HostConfig) moveTrace {
	mt, ok := t.(MoveTracer)
	if !ok {
		return moveTrace{}
	}
	mv := Move{Shard: shard, From: newPeer(from), To: newPeer(to)}
	return moveTrace{t: mt, ctx: mt.TraceMoveStart(ctx, mv), mv: mv, start: time.Now()}
}

func (m *moveTrace) phase(phase string) {
	if m.t != nil {
		m.t.TraceMovePhase(m.ctx, m.mv, phase)
	}
}

func (m *moveTrace) end(report *MoveReport, err error) {
	if m.t != nil {
		m.t.TraceMoveEnd(m.ctx, MoveEnd{Move: m.mv, Report: report, Err: err, Duration: time.Since(m.start)})
	}
}

func (m multiTracer) TraceMoveStart(ctx context.Context, mv Move) context.Context {
	for _, t := range m {
		if mt, ok := t.(MoveTracer); ok {
			ctx = mt.TraceMoveStart(ctx, mv)
		}
	}
	return ctx
}

func (m multiTracer) TraceMovePhase(ctx context.Context, mv Move, phase string) {
	for _, t := range m {
		if mt, ok := t.(MoveTracer); ok {
			mt.TraceMovePhase(ctx, mv, phase)
		}
	}
}

func (m multiTracer) TraceMoveEnd(ctx context.Context, end MoveEnd) {
	for _, t := range m {
		if mt, ok := t.(MoveTracer); ok {
			mt.TraceMoveEnd(ctx, end)
		}
	}
}
