package hv

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// Tracer is told about the statements hv runs, in the spirit of pgx's
// QueryTracer: TraceStatementStart before a statement (or BEGIN, COMMIT,
// ROLLBACK) is sent, including the wait for a connection, and
// TraceStatementEnd, with the context TraceStatementStart returned, when
// it has ended: for a query, when its rows are closed. Set it as
// Config.Tracer; hv/otelhv and hv/promhv implement it. A Tracer may also
// implement FanOutTracer, PoolTracer and MoveTracer.
//
// Its methods are called concurrently and must not block. With no Tracer
// hv calls nothing and allocates nothing for tracing.
type Tracer interface {
	TraceStatementStart(ctx context.Context, st Statement) context.Context
	TraceStatementEnd(ctx context.Context, end StatementEnd)
}

// FanOutTracer is a Tracer told about fan-outs as a whole: between
// TraceFanOutStart and TraceFanOutEnd each shard's statement is traced with
// the context TraceFanOutStart returned (Statement.FanOut set), so that a
// span per shard can be the child of the fan-out's.
type FanOutTracer interface {
	TraceFanOutStart(ctx context.Context, fo FanOut) context.Context
	TraceFanOutEnd(ctx context.Context, end FanOutEnd)
}

// PoolTracer is a Tracer told about every wait for a connection of a host
// (or of a shard under shard_max), with the context of the statement that
// waited, after TraceStatementStart. Statements that find a free
// connection do not wait and are not reported.
type PoolTracer interface {
	TracePoolWait(ctx context.Context, w PoolWait)
}

// Op is the kind of operation a Tracer is told about.
type Op uint8

// The operations of Statement.Op and FanOut.Op.
const (
	OpQuery Op = iota + 1
	OpExec
	OpBegin
	OpCommit
	OpRollback
)

var opNames = [...]string{OpQuery: "query", OpExec: "exec", OpBegin: "begin", OpCommit: "commit", OpRollback: "rollback"}

// String returns the operation's name: query, exec, begin, commit or
// rollback ("op(N)" for another value).
func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// Peer describes a physical host for telemetry.
type Peer struct {
	// Name is the host's name as errors and Stats give it
	// (HostConfig.Name: "host:port/dbname").
	Name string
	// Address is the host's host (or hostaddr) parameter, "localhost" when
	// neither is set.
	Address string
	// Port is the port parameter, 0 when it is not a single number (then
	// the inner driver's default, 5432, applies).
	Port int
	// Database is the dbname parameter.
	Database string
}

// newPeer returns the Peer of host hc.
func newPeer(hc *HostConfig) *Peer {
	p := &Peer{Name: hc.Name(), Address: hc.Params["host"], Database: hc.Params["dbname"]}
	if p.Address == "" {
		p.Address = hc.Params["hostaddr"]
	}
	if p.Address == "" {
		p.Address = "localhost"
	}
	if n, err := strconv.Atoi(hc.Params["port"]); err == nil {
		p.Port = n
	}
	return p
}

// Statement is what a Tracer is told when a statement starts, and again
// when it ends.
type Statement struct {
	// Op is what the statement does.
	Op Op
	// SQL is the statement's text as the application wrote it ("BEGIN",
	// "COMMIT" and "ROLLBACK" for transactions). It may hold literal
	// values: the Tracer decides whether to record it.
	SQL string
	// Shard is the logical shard the statement runs on, -1 when it could
	// not be routed. At the start it is where the statement is routed
	// before it has a connection; the end says where it ran.
	Shard int
	// Schema is the shard's schema, "" when not routed.
	Schema string
	// Host is the shard's host, nil when not routed.
	Host *Peer
	// FanOut is set for one shard's statement of a fan-out.
	FanOut bool
}

// StatementEnd is what a Tracer is told when a statement has ended.
type StatementEnd struct {
	Statement
	// Err is the statement's error, nil on success. Errors of a shard are
	// *ShardError, naming the shard and host.
	Err error
	// Duration is the time since the statement started, including any
	// wait for a connection.
	Duration time.Duration
}

// FanOut is what a FanOutTracer is told when a fan-out starts.
type FanOut struct {
	// Op is OpQuery or OpExec.
	Op Op
	// SQL is the statement run on each shard.
	SQL string
	// Shards is how many shards it runs on.
	Shards int
}

// FanOutEnd is what a FanOutTracer is told when a fan-out has ended (its
// rows closed, for a query).
type FanOutEnd struct {
	FanOut
	// Err is the fan-out's error: the failed shards' errors joined, or
	// the error that ended its rows; nil when it succeeded (with
	// WithPartialResults failed shards are in the report, and in their
	// shard's TraceStatementEnd, not here).
	Err error
	// Duration is the time since the fan-out started.
	Duration time.Duration
}

// PoolWait is one wait for a connection.
type PoolWait struct {
	// Shard is the statement's shard and Host its host.
	Shard int
	Host  *Peer
	// Duration is how long the statement waited.
	Duration time.Duration
	// Err is why the wait failed (a *ShardError wrapping ErrPoolTimeout or
	// the context's error); nil when a connection was had.
	Err error
}

// MultiTracer returns a Tracer that tells each of ts, in order (the context
// one returns is passed to the next), and implements FanOutTracer,
// PoolTracer and MoveTracer for those of ts that do. Nil tracers are skipped; with none
// left it returns nil.
func MultiTracer(ts ...Tracer) Tracer {
	var m multiTracer
	for _, t := range ts {
		if t != nil {
			m = append(m, t)
		}
	}
	switch len(m) {
	case 0:
		return nil
	case 1:
		return m[0]
	}
	return m
}

type multiTracer []Tracer

func (m multiTracer) TraceStatementStart(ctx context.Context, st Statement) context.Context {
	for _, t := range m {
		ctx = t.TraceStatementStart(ctx, st)
	}
	return ctx
}

func (m multiTracer) TraceStatementEnd(ctx context.Context, end StatementEnd) {
	for _, t := range m {
		t.TraceStatementEnd(ctx, end)
	}
}

func (m multiTracer) TraceFanOutStart(ctx context.Context, fo FanOut) context.Context {
	for _, t := range m {
		if ft, ok := t.(FanOutTracer); ok {
			ctx = ft.TraceFanOutStart(ctx, fo)
		}
	}
	return ctx
}

func (m multiTracer) TraceFanOutEnd(ctx context.Context, end FanOutEnd) {
	for _, t := range m {
		if ft, ok := t.(FanOutTracer); ok {
			ft.TraceFanOutEnd(ctx, end)
		}
	}
}

func (m multiTracer) TracePoolWait(ctx context.Context, w PoolWait) {
	for _, t := range m {
		if pt, ok := t.(PoolTracer); ok {
			pt.TracePoolWait(ctx, w)
		}
	}
}

// traced is one statement being traced; its zero value (no tracer) does
// nothing.
type traced struct {
	tracer Tracer
	ctx    context.Context // what TraceStatementStart returned
	st     Statement
	start  time.Time
}

// startStatement tells t that a statement of op with sql starts on p
// (nil when it could not be placed yet), and returns the context to run
// it with.
func startStatement(ctx context.Context, t Tracer, op Op, sql string, p *placement, fanOut bool) (context.Context, traced) {
	tr := traced{tracer: t, st: Statement{Op: op, SQL: sql, FanOut: fanOut}, start: time.Now()}
	tr.st.target(p)
	tr.ctx = t.TraceStatementStart(ctx, tr.st)
	return tr.ctx, tr
}

// target sets where the statement runs.
func (st *Statement) target(p *placement) {
	st.Shard, st.Schema, st.Host = -1, "", nil
	if p != nil {
		st.Shard, st.Schema, st.Host = p.shard, p.schema, p.host.peer
	}
}

// end tells the tracer that the statement ended on p (nil: where it was
// routed at the start) with err, once, and returns err.
func (t *traced) end(p *placement, err error) error {
	if t.tracer == nil {
		return err
	}
	if p != nil {
		t.st.target(p)
	}
	tracer := t.tracer
	t.tracer = nil
	tracer.TraceStatementEnd(t.ctx, StatementEnd{Statement: t.st, Err: err, Duration: time.Since(t.start)})
	return err
}

// trace starts tracing a statement of the connection, when the fleet has
// a tracer: it is placed where it is leased already, or where the context
// routes it.
func (c *conn) trace(ctx context.Context, op Op, sql string) (context.Context, traced) {
	f := c.connector.fleet.Load()
	if f.tracer == nil {
		return ctx, traced{}
	}
	p := c.place
	if p == nil {
		if s, err := c.route(ctx, f); err == nil {
			p, _ = f.place(s)
		}
	}
	return startStatement(ctx, f.tracer, op, sql, p, false)
}

// fanTrace is one fan-out being traced; its zero value does nothing.
type fanTrace struct {
	tracer Tracer // told about each shard's statement
	fanOut FanOutTracer
	ctx    context.Context
	fo     FanOut
	start  time.Time
}

// trace starts tracing the plan's fan-out of op with sql and returns the
// context to run it with.
func (p *fanOut) trace(ctx context.Context, op Op, sql string) context.Context {
	t := p.connector.fleet.Load().tracer
	if t == nil {
		return ctx
	}
	p.traced = fanTrace{tracer: t, ctx: ctx, fo: FanOut{Op: op, SQL: sql, Shards: len(p.places)}, start: time.Now()}
	if ft, ok := t.(FanOutTracer); ok {
		p.traced.fanOut = ft
		p.traced.ctx = ft.TraceFanOutStart(ctx, p.traced.fo)
	}
	return p.traced.ctx
}

// traceShard starts tracing the statement of the fan-out on pl.
func (p *fanOut) traceShard(ctx context.Context, pl *placement) (context.Context, traced) {
	if p.traced.tracer == nil {
		return ctx, traced{}
	}
	return startStatement(ctx, p.traced.tracer, p.traced.fo.Op, p.traced.fo.SQL, pl, true)
}

// traceEnd ends the fan-out's trace, once.
func (p *fanOut) traceEnd(err error) {
	ft := p.traced.fanOut
	p.traced.fanOut = nil
	if ft == nil {
		return
	}
	if errors.Is(err, errRowsClosed) {
		err = nil
	}
	ft.TraceFanOutEnd(p.traced.ctx, FanOutEnd{FanOut: p.traced.fo, Err: err, Duration: time.Since(p.traced.start)})
}

// traceWait tells the pool's tracer, if it is a PoolTracer, about a wait of
// a statement on t that began at begin and ended with err.
func (h *hostPool) traceWait(ctx context.Context, set *poolSettings, t *placement, begin time.Time, err error) {
	if pt, ok := set.tracer.(PoolTracer); ok {
		pt.TracePoolWait(ctx, PoolWait{Shard: t.shard, Host: h.peer, Duration: time.Since(begin), Err: err})
	}
}

// endShard ends the trace of a fan-out's statement on pl; a shard stopped
// because the fan-out's rows were done with it did not fail.
func (t *traced) endShard(pl *placement, err error) {
	if t.tracer != nil && stopped(t.ctx, err) {
		err = nil
	}
	t.end(pl, err)
}
