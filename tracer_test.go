package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// recorder is a Tracer, FanOutTracer and PoolTracer that records what it
// is told. Each start returns a context carrying a fresh span number, so
// that the ends can be checked against their starts.
type recorder struct {
	mu     sync.Mutex
	next   int
	events []event
}

type event struct {
	kind   string // start, end, fanstart, fanend, wait
	span   int    // the span the event's context carries (0: none)
	parent int    // for starts: the span of the context they were given
	st     Statement
	end    StatementEnd
	fo     FanOutEnd
	wait   PoolWait
	move   MoveEnd
	phase  string
}

type spanKey struct{}

func spanOf(ctx context.Context) int {
	n, _ := ctx.Value(spanKey{}).(int)
	return n
}

func (r *recorder) add(e event) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if strings.HasSuffix(e.kind, "start") {
		r.next++
		e.parent, e.span = e.span, r.next
	}
	r.events = append(r.events, e)
	return e.span
}

func (r *recorder) TraceStatementStart(ctx context.Context, st Statement) context.Context {
	return context.WithValue(ctx, spanKey{}, r.add(event{kind: "start", span: spanOf(ctx), st: st}))
}

func (r *recorder) TraceStatementEnd(ctx context.Context, end StatementEnd) {
	r.add(event{kind: "end", span: spanOf(ctx), end: end})
}

func (r *recorder) TraceFanOutStart(ctx context.Context, fo FanOut) context.Context {
	return context.WithValue(ctx, spanKey{}, r.add(event{kind: "fanstart", span: spanOf(ctx), fo: FanOutEnd{FanOut: fo}}))
}

func (r *recorder) TraceFanOutEnd(ctx context.Context, end FanOutEnd) {
	r.add(event{kind: "fanend", span: spanOf(ctx), fo: end})
}

func (r *recorder) TracePoolWait(ctx context.Context, w PoolWait) {
	r.add(event{kind: "wait", span: spanOf(ctx), wait: w})
}

// take returns the events recorded so far and forgets them.
func (r *recorder) take() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

// openTraced opens f with t as Config.Tracer.
func (f *testFleet) openTraced(tb testing.TB, t Tracer) (*Connector, *sql.DB) {
	tb.Helper()
	_, c, db := openDSN(tb, f.dsn, func(cfg *Config) { cfg.Tracer = t })
	return c, db
}

// checkPair checks that start and end are one statement's, of op on shard,
// with end's context the one start returned.
func (f *testFleet) checkPair(t *testing.T, start, end event, op Op, sql string, shard int) {
	t.Helper()
	if start.kind != "start" || end.kind != "end" || end.span != start.span {
		t.Fatalf("not a start and its end: %+v, %+v", start, end)
	}
	w := f.expect(t, shard)
	for _, st := range []Statement{start.st, end.end.Statement} {
		if st.Op != op || st.SQL != sql || st.Shard != shard || st.Schema != w.Schema || st.Host == nil ||
			st.Host.Database != w.Database || st.Host.Port != w.Port || st.Host.Address == "" ||
			!strings.Contains(st.Host.Name, w.Database) {
			t.Errorf("traced %+v (host %+v), want %v %q on shard %d, %+v", st, st.Host, op, sql, shard, w)
		}
	}
	if end.end.Duration <= 0 {
		t.Errorf("%v: duration %v", op, end.end.Duration)
	}
}

func TestTracerRoutedStatement(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	rec := &recorder{}
	_, db := f.openTraced(t, rec)
	ctx := WithShard(context.Background(), 12)
	if _, err := db.ExecContext(ctx, "UPDATE t SET note = $1 WHERE id = 0", "x"); err != nil {
		t.Fatal(err)
	}
	var shard int
	if err := db.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = $1", 0).Scan(&shard); err != nil || shard != 12 {
		t.Fatal(shard, err)
	}
	ev := rec.take()
	if len(ev) != 4 {
		t.Fatalf("events: %+v", ev)
	}
	f.checkPair(t, ev[0], ev[1], OpExec, "UPDATE t SET note = $1 WHERE id = 0", 12)
	f.checkPair(t, ev[2], ev[3], OpQuery, "SELECT shard FROM t WHERE id = $1", 12)
	for _, e := range ev {
		if e.end.Err != nil || e.st.FanOut || e.end.FanOut {
			t.Errorf("%+v", e)
		}
	}
}

func TestTracerFailingStatement(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	rec := &recorder{}
	_, db := f.openTraced(t, rec)
	ctx := context.Background()
	_, err := db.ExecContext(WithShard(ctx, 3), "SELECT * FROM no_such_table")
	ev := rec.take()
	if len(ev) != 2 {
		t.Fatalf("events: %+v", ev)
	}
	f.checkPair(t, ev[0], ev[1], OpExec, "SELECT * FROM no_such_table", 3)
	var se *ShardError
	if got := ev[1].end.Err; got == nil || got.Error() != err.Error() || !errors.As(got, &se) || se.Shard != 3 ||
		se.Host != ev[1].end.Host.Name {
		t.Errorf("traced error %v, want %v as a *ShardError of shard 3", got, err)
	}

	// An error while reading a query's rows ends its trace: the rows
	// close with it.
	rows, err := db.QueryContext(WithShard(ctx, 14), "SELECT 1/(g - 3) FROM generate_series(1, 5) g")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
	}
	if rows.Err() == nil {
		t.Fatal("no division by zero")
	}
	ev = rec.take()
	if len(ev) != 2 {
		t.Fatalf("events: %+v", ev)
	}
	f.checkPair(t, ev[0], ev[1], OpQuery, "SELECT 1/(g - 3) FROM generate_series(1, 5) g", 14)
	if got := ev[1].end.Err; got == nil || !errors.As(got, &se) || se.Shard != 14 {
		t.Errorf("traced error %v, want shard 14's division by zero", got)
	}

	// A statement that cannot be routed is traced too, on no shard.
	if _, err := db.ExecContext(ctx, "SELECT 1"); !errors.Is(err, ErrNoShard) {
		t.Fatal(err)
	}
	ev = rec.take()
	if len(ev) != 2 || ev[0].st.Shard != -1 || ev[0].st.Host != nil || !errors.Is(ev[1].end.Err, ErrNoShard) ||
		ev[1].end.Shard != -1 {
		t.Errorf("events of an unrouted statement: %+v", ev)
	}
}

func TestTracerTransaction(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	rec := &recorder{}
	_, db := f.openTraced(t, rec)
	rec.next = 100
	ctx := context.WithValue(WithShard(context.Background(), 9), spanKey{}, 100) // the application's span
	for _, commit := range []bool{true, false} {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "UPDATE t SET note = 'tx' WHERE id = 0"); err != nil {
			t.Fatal(err)
		}
		end, op, sql := tx.Commit, OpCommit, "COMMIT"
		if !commit {
			end, op, sql = tx.Rollback, OpRollback, "ROLLBACK"
		}
		if err := end(); err != nil {
			t.Fatal(err)
		}
		ev := rec.take()
		if len(ev) != 6 {
			t.Fatalf("events: %+v", ev)
		}
		f.checkPair(t, ev[0], ev[1], OpBegin, "BEGIN", 9)
		f.checkPair(t, ev[2], ev[3], OpExec, "UPDATE t SET note = 'tx' WHERE id = 0", 9)
		f.checkPair(t, ev[4], ev[5], op, sql, 9)
		for _, i := range []int{0, 2, 4} {
			if ev[i].parent != 100 {
				t.Errorf("%v: parent span %d, want the application's", ev[i].st.Op, ev[i].parent)
			}
		}
	}
}

func TestTracerFanOut(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	rec := &recorder{}
	_, db := f.openTraced(t, rec)
	ctx := context.Background()
	check := func(op Op, sql string, wantErr int) {
		t.Helper()
		ev := rec.take()
		if len(ev) != 2+2*16 || ev[0].kind != "fanstart" || ev[len(ev)-1].kind != "fanend" {
			t.Fatalf("%v: %d events: %+v", op, len(ev), ev)
		}
		fan := ev[0].span
		if fo := ev[0].fo.FanOut; fo != (FanOut{Op: op, SQL: sql, Shards: 16}) {
			t.Errorf("fan-out start %+v", fo)
		}
		if end := ev[len(ev)-1]; end.span != fan || end.fo.FanOut != ev[0].fo.FanOut || end.fo.Duration <= 0 ||
			(end.fo.Err != nil) != (wantErr > 0) {
			t.Errorf("fan-out end %+v", end)
		}
		starts := map[int]event{}
		var shards []int
		failed := 0
		for _, e := range ev[1 : len(ev)-1] {
			switch e.kind {
			case "start":
				if e.parent != fan || !e.st.FanOut {
					t.Errorf("shard start not in the fan-out: %+v", e)
				}
				starts[e.span] = e
			case "end":
				s, ok := starts[e.span]
				if !ok {
					t.Fatalf("end before its start: %+v", e)
				}
				f.checkPair(t, s, e, op, sql, e.end.Shard)
				shards = append(shards, e.end.Shard)
				if e.end.Err != nil {
					failed++
				}
			default:
				t.Errorf("unexpected %+v", e)
			}
		}
		slices.Sort(shards)
		if shards = slices.Compact(shards); len(shards) != 16 || shards[0] != 1 || shards[15] != 16 {
			t.Errorf("shards traced: %v", shards)
		}
		if failed != wantErr {
			t.Errorf("%d shards failed, want %d", failed, wantErr)
		}
	}
	var n int
	rows, err := db.QueryContext(WithAllShards(ctx), "SELECT shard FROM t")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		n++
	}
	if err := rows.Close(); err != nil || n != 16 {
		t.Fatal(n, err)
	}
	check(OpQuery, "SELECT shard FROM t", 0)
	if _, err := db.ExecContext(WithAllShards(ctx), "UPDATE t SET note = 'all' WHERE id = 0"); err != nil {
		t.Fatal(err)
	}
	check(OpExec, "UPDATE t SET note = 'all' WHERE id = 0", 0)

	// A failing shard is an error on its span and on the fan-out's.
	if _, err := db.ExecContext(WithAllShards(ctx), "SELECT 1/(shard - 7) FROM t"); err == nil {
		t.Fatal("no division by zero on shard 7")
	}
	check(OpExec, "SELECT 1/(shard - 7) FROM t", 1)

	// A fan-out query that stops at its limit cancels the shards still
	// running: they did not fail.
	rows, err = db.QueryContext(WithLimit(WithAllShards(ctx), 1), "SELECT shard FROM t")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	check(OpQuery, "SELECT shard FROM t", 0)
}

func TestTracerPoolWait(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "pool_max=1 pool_block_timeout=200ms"})
	rec := &recorder{}
	_, db := f.openTraced(t, rec)
	ctx := context.Background()
	tx, err := db.BeginTx(WithShard(ctx, 2), nil) // holds host 1's only connection
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	rec.take()
	_, err = db.ExecContext(WithShard(ctx, 3), "SELECT 1")
	if !errors.Is(err, ErrPoolTimeout) {
		t.Fatalf("got %v, want ErrPoolTimeout", err)
	}
	ev := rec.take()
	if len(ev) != 3 || ev[1].kind != "wait" {
		t.Fatalf("events: %+v", ev)
	}
	f.checkPair(t, ev[0], ev[2], OpExec, "SELECT 1", 3)
	w := ev[1].wait
	if ev[1].span != ev[0].span || w.Shard != 3 || w.Host != ev[0].st.Host || w.Duration <= 0 ||
		!errors.Is(w.Err, ErrPoolTimeout) || !errors.Is(ev[2].end.Err, ErrPoolTimeout) {
		t.Errorf("wait %+v in span %d, end %+v", w, ev[1].span, ev[2].end)
	}
}

// nopTracer is a Tracer that does nothing.
type nopTracer struct{}

func (nopTracer) TraceStatementStart(ctx context.Context, _ Statement) context.Context { return ctx }
func (nopTracer) TraceStatementEnd(context.Context, StatementEnd)                      {}

// TestTracerAllocs checks that tracing costs no allocation of its own: a
// routed statement allocates as much with a Tracer that does nothing as
// with none.
func TestTracerAllocs(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	ctx := WithShard(context.Background(), 4)
	allocs := func(tr Tracer) float64 {
		_, db := f.openTraced(t, tr)
		var shard int
		return testing.AllocsPerRun(200, func() {
			if err := db.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = $1", 0).Scan(&shard); err != nil {
				t.Fatal(err)
			}
		})
	}
	none, nop := allocs(nil), allocs(nopTracer{})
	if nop != none {
		t.Errorf("allocations per statement: %v with a Tracer that does nothing, %v with none", nop, none)
	}
}

func TestMultiTracer(t *testing.T) {
	if MultiTracer() != nil || MultiTracer(nil, nil) != nil {
		t.Error("MultiTracer of no tracers is not nil")
	}
	a := &recorder{}
	if MultiTracer(nil, a) != Tracer(a) {
		t.Error("MultiTracer of one tracer is not that tracer")
	}
	b := &recorder{next: 10}
	m := MultiTracer(a, nopTracer{}, b)
	ctx := m.TraceStatementStart(context.Background(), Statement{Op: OpExec})
	m.TraceStatementEnd(ctx, StatementEnd{})
	fctx := m.(FanOutTracer).TraceFanOutStart(ctx, FanOut{Shards: 2})
	m.(FanOutTracer).TraceFanOutEnd(fctx, FanOutEnd{})
	m.(PoolTracer).TracePoolWait(ctx, PoolWait{Shard: 1})
	// b is told after a, with the context a returned: b's span replaces
	// a's in it, so every b event carries b's span number.
	got := fmt.Sprint(kinds(a.take()), kinds(b.take()))
	want := "[start:1 end:11 fanstart:2 fanend:12 wait:11] [start:11 end:11 fanstart:12 fanend:12 wait:11]"
	if got != want {
		t.Errorf("events %s, want %s", got, want)
	}
}

func kinds(ev []event) []string {
	var out []string
	for _, e := range ev {
		out = append(out, fmt.Sprintf("%s:%d", e.kind, e.span))
	}
	return out
}

func TestOpString(t *testing.T) {
	var got []string
	for _, o := range []Op{OpQuery, OpExec, OpBegin, OpCommit, OpRollback, 0, 9} {
		got = append(got, o.String())
	}
	if s := strings.Join(got, " "); s != "query exec begin commit rollback op(0) op(9)" {
		t.Error(s)
	}
}

// BenchmarkTracer is a routed point SELECT with no Tracer and with one that
// does nothing: what the hooks cost when unused, and what calling them
// costs. Compare with benchstat -col /tracer.
func BenchmarkTracer(b *testing.B) {
	f := newTestFleet(b, fleetOptions{})
	ctx := WithShard(context.Background(), 5)
	for _, tc := range []struct {
		name string
		t    Tracer
	}{{"none", nil}, {"nop", nopTracer{}}} {
		b.Run("tracer="+tc.name, func(b *testing.B) {
			_, db := f.openTraced(b, tc.t)
			var shard int
			for range 100 {
				if err := db.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = $1", 0).Scan(&shard); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := db.QueryRowContext(ctx, "SELECT shard FROM t WHERE id = $1", 0).Scan(&shard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func (r *recorder) TraceMoveStart(ctx context.Context, mv Move) context.Context {
	return context.WithValue(ctx, spanKey{}, r.add(event{kind: "movestart", span: spanOf(ctx), move: MoveEnd{Move: mv}}))
}

func (r *recorder) TraceMovePhase(ctx context.Context, mv Move, phase string) {
	r.add(event{kind: "movephase", span: spanOf(ctx), move: MoveEnd{Move: mv}, phase: phase})
}

func (r *recorder) TraceMoveEnd(ctx context.Context, end MoveEnd) {
	r.add(event{kind: "moveend", span: spanOf(ctx), move: end})
}

// TestTracerMove: a move the source refuses (the fleet's servers lack
// wal_level=logical) is one traced move, its check phase and its end with
// the refusal, under the span its start returned.
func TestTracerMove(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	var r recorder
	c, _ := f.openTraced(t, &r)
	to := c.Config().Hosts[1].Name()
	_, err := MoveShard(context.Background(), c, 3, to, nil)
	if !errors.Is(err, ErrBadMove) {
		t.Fatalf("MoveShard: %v, want ErrBadMove (wal_level)", err)
	}
	var got []string
	var span int
	for _, e := range r.take() {
		if !strings.HasPrefix(e.kind, "move") {
			continue
		}
		got = append(got, e.kind+" "+e.phase)
		if e.kind == "movestart" {
			span = e.span
			if e.move.Shard != 3 || e.move.From.Name != c.Config().Hosts[0].Name() || e.move.To.Name != to {
				t.Errorf("start %+v", e.move.Move)
			}
		} else if e.span != span {
			t.Errorf("%s under span %d, want %d", e.kind, e.span, span)
		}
		if e.kind == "moveend" && (!errors.Is(e.move.Err, ErrBadMove) || e.move.Report != nil || e.move.Duration <= 0) {
			t.Errorf("end %+v", e.move)
		}
	}
	if want := []string{"movestart ", "movephase check", "moveend "}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("move events %q, want %q", got, want)
	}
}
