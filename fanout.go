package hv

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
)

var (
	// ErrFanOutPinned is returned when a fan-out statement runs inside a
	// transaction or on a *sql.Conn pinned to one shard, and by BeginTx on
	// a fan-out context (a transaction lives on one shard).
	ErrFanOutPinned = errors.New("hv: fan-out is refused inside a transaction or on a pinned Conn; run it on the *sql.DB")

	// ErrColumnMismatch is returned when the shards of a fan-out return
	// different columns.
	ErrColumnMismatch = errors.New("hv: fan-out shards returned different columns")
)

// SortKey names a result column that every shard's rows are sorted by, for
// WithMergeOrder.
type SortKey struct {
	Column string
	Desc   bool
}

// Asc is an ascending SortKey on column.
func Asc(column string) SortKey { return SortKey{Column: column} }

// Desc is a descending SortKey on column.
func Desc(column string) SortKey { return SortKey{Column: column, Desc: true} }

type fanOutOptionsKey struct{}

// fanOutOptions are the options a context carries for a fan-out.
type fanOutOptions struct {
	order   []SortKey
	limit   int
	report  *FanOutReport
	perHost int
}

func fanOutOptionsFrom(ctx context.Context) fanOutOptions {
	o, _ := ctx.Value(fanOutOptionsKey{}).(fanOutOptions)
	return o
}

func withFanOutOption(ctx context.Context, set func(*fanOutOptions)) context.Context {
	o := fanOutOptionsFrom(ctx)
	set(&o)
	return context.WithValue(ctx, fanOutOptionsKey{}, o)
}

// WithMergeOrder returns a copy of ctx saying that each shard's result of a
// fan-out query is sorted by keys (write the same ORDER BY in the SQL): hv
// then merges the shards' rows into one stream sorted the same way. NULLs
// sort after every value ascending and before every value descending, as in
// PostgreSQL; text compares byte-wise, so sort text keys with COLLATE "C" in
// the SQL for an exact merge. A key column missing from the result fails the
// query.
func WithMergeOrder(ctx context.Context, keys ...SortKey) context.Context {
	return withFanOutOption(ctx, func(o *fanOutOptions) { o.order = append([]SortKey(nil), keys...) })
}

// WithLimit returns a copy of ctx that stops a fan-out query after n rows in
// total: once they are read, the shard queries still running are cancelled.
// With WithMergeOrder it is a global ORDER BY … LIMIT n (give each shard's
// SQL the same LIMIT so that none sends more). n <= 0 means no limit.
func WithLimit(ctx context.Context, n int) context.Context {
	return withFanOutOption(ctx, func(o *fanOutOptions) { o.limit = n })
}

// WithPartialResults returns a copy of ctx under which a failing shard does
// not fail a fan-out: its error is recorded in report and the other shards'
// rows (or rows affected) are returned. Read report after the rows are
// closed (or ExecContext returned).
func WithPartialResults(ctx context.Context, report *FanOutReport) context.Context {
	return withFanOutOption(ctx, func(o *fanOutOptions) { o.report = report })
}

// WithFanOutConcurrency returns a copy of ctx that limits a fan-out to n
// shards at a time per host. The default, and the most, is the host's
// pool_max.
func WithFanOutConcurrency(ctx context.Context, n int) context.Context {
	return withFanOutOption(ctx, func(o *fanOutOptions) { o.perHost = n })
}

// FanOutReport records, for a fan-out run with WithPartialResults, which
// shards failed and why. It is safe for concurrent use.
type FanOutReport struct {
	mu     sync.Mutex
	failed map[int]error
}

func (r *FanOutReport) record(shard int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failed == nil {
		r.failed = make(map[int]error)
	}
	if _, ok := r.failed[shard]; !ok {
		r.failed[shard] = err
	}
}

// Failed returns the shards that failed, each with its error (which names
// the shard and host).
func (r *FanOutReport) Failed() map[int]error {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[int]error, len(r.failed))
	for s, err := range r.failed {
		out[s] = err
	}
	return out
}

// Err returns the failures joined in shard order, or nil when every shard
// succeeded.
func (r *FanOutReport) Err() error {
	failed := r.Failed()
	shards := make([]int, 0, len(failed))
	for s := range failed {
		shards = append(shards, s)
	}
	sort.Ints(shards)
	errs := make([]error, len(shards))
	for i, s := range shards {
		errs[i] = failed[s]
	}
	return errors.Join(errs...)
}

// fanOut is one fan-out statement's plan: the shards, grouped by host, and
// a per-host limit on how many run at once.
type fanOut struct {
	fleet         *fleet
	shards        []int
	hostOf        map[int]*hostPool
	slots         map[*hostPool]chan struct{}
	perHostShards map[*hostPool]int
	opts          fanOutOptions
}

// planFanOut resolves the shards of route on the current fleet.
func (c *conn) planFanOut(ctx context.Context, route shardRoute) (*fanOut, error) {
	if c.tx != nil || c.phys != nil || c.intended >= 0 {
		return nil, ErrFanOutPinned
	}
	if c.connector.closed.Load() {
		return nil, ErrClosed
	}
	f := c.connector.fleet.Load()
	p := &fanOut{
		fleet:         f,
		hostOf:        map[int]*hostPool{},
		slots:         map[*hostPool]chan struct{}{},
		perHostShards: map[*hostPool]int{},
		opts:          fanOutOptionsFrom(ctx),
	}
	if route.all {
		for _, r := range f.ranges {
			for s := r.Start; s < r.End; s++ {
				p.shards = append(p.shards, s)
			}
		}
	} else {
		p.shards = slices.Clone(route.shards)
		slices.Sort(p.shards)
		p.shards = slices.Compact(p.shards)
	}
	if len(p.shards) == 0 {
		return nil, fmt.Errorf("%w: fan-out names no shards", ErrUnknownShard)
	}
	owned := p.shards[:0]
	for _, s := range p.shards {
		h, err := f.host(s)
		if err != nil {
			if p.opts.report == nil {
				return nil, err
			}
			p.opts.report.record(s, err) // partial results: skip it
			continue
		}
		owned = append(owned, s)
		p.hostOf[s] = h
		p.perHostShards[h]++
	}
	if p.shards = owned; len(p.shards) == 0 {
		return nil, fmt.Errorf("hv: every shard of the fan-out failed: %w", p.opts.report.Err())
	}
	for h := range p.perHostShards {
		n := h.poolMax
		if p.opts.perHost > 0 && p.opts.perHost < n {
			n = p.opts.perHost
		}
		p.slots[h] = make(chan struct{}, n)
	}
	return p, nil
}

// onShard runs fn on a physical connection of shard's host, with the target
// of the shard's schema for fn's statement, holding one of the fan-out's
// slots for that host. Errors name the shard and host.
func (p *fanOut) onShard(ctx context.Context, shard int, fn func(pc *physConn, t target) error) error {
	h := p.hostOf[shard]
	slots := p.slots[h]
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("hv: shard %d on host %s: %w", shard, h.name, context.Cause(ctx))
	}
	defer func() { <-slots }()
	sc, err := h.acquire(ctx, shard, p.fleet.schemas[shard])
	if err != nil {
		return err
	}
	defer h.release(sc, shard)
	err = sc.Raw(func(dc any) error {
		pc := dc.(*physConn)
		err := fn(pc, target{schema: p.fleet.schemas[shard], setPath: p.fleet.setPath[shard], counters: h.counters(shard)})
		if err != nil {
			pc.schema = ""
		}
		return err
	})
	if !errors.Is(err, errRowsClosed) {
		h.countStatement(shard, err)
	}
	if err != nil {
		return fmt.Errorf("hv: shard %d on host %s: %w", shard, h.name, err)
	}
	return nil
}

// fanOutExec runs query on every shard of the plan and returns the sum of
// rows affected. Without WithPartialResults, any failure fails the call (the
// other shards' statements still ran); with it, failures go to the report.
func (c *conn) fanOutExec(ctx context.Context, route shardRoute, query string, args []driver.NamedValue) (driver.Result, error) {
	p, err := c.planFanOut(ctx, route)
	if err != nil {
		return nil, err
	}
	var (
		mu    sync.Mutex
		total int64
		errs  []error
		wg    sync.WaitGroup
	)
	for _, shard := range p.shards {
		wg.Go(func() {
			err := p.onShard(ctx, shard, func(pc *physConn, t target) error {
				res, err := pc.exec(ctx, t, query, args)
				if err != nil {
					return err
				}
				n, err := res.RowsAffected()
				if err != nil {
					return err
				}
				mu.Lock()
				total += n
				mu.Unlock()
				return nil
			})
			if err != nil {
				if p.opts.report != nil {
					p.opts.report.record(shard, err)
					return
				}
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return driver.RowsAffected(total), nil
}

// batchRows is how many rows a shard sends to the merging reader at a time.
const batchRows = 64

// shardMsg is what a shard's worker sends: first its columns, then batches
// of rows, and last a message with done set and the shard's error, if any.
type shardMsg struct {
	shard int
	cols  []string
	rows  [][]driver.Value
	done  bool
	err   error
}

// fanRows is the driver.Rows of a fan-out query. Workers, one per shard,
// stream batches of rows to it; it hands them out in arrival order or, with
// WithMergeOrder, merged by the sort keys.
type fanRows struct {
	plan   *fanOut
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup
	cols   []string

	// unordered: one channel for every shard
	merged chan shardMsg
	live   int // shards that have not sent done

	// ordered: one stream per shard and a heap of those with a current row
	streams []*shardStream
	keys    []sortCol
	heap    []*shardStream

	cur     [][]driver.Value
	emitted int
	err     error
	closed  bool
}

var errRowsClosed = errors.New("hv: fan-out rows closed")

// fanOutQuery starts the plan's shard queries and returns once the result's
// columns are known.
func (c *conn) fanOutQuery(ctx context.Context, route shardRoute, query string, args []driver.NamedValue) (driver.Rows, error) {
	p, err := c.planFanOut(ctx, route)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancelCause(ctx)
	r := &fanRows{plan: p, cancel: cancel}
	ordered := len(p.opts.order) > 0
	if ordered {
		r.streams = make([]*shardStream, len(p.shards))
		for i, shard := range p.shards {
			st := &shardStream{shard: shard, ch: make(chan shardMsg, 2)}
			r.streams[i] = st
			// Streams wait for each other in a merge, so a host with more
			// shards than slots would stall: those shards read their whole
			// result into memory and give their connection back.
			h := p.hostOf[shard]
			buffer := p.perHostShards[h] > cap(p.slots[h])
			r.start(wctx, shard, query, args, st.ch, buffer)
		}
	} else {
		r.merged = make(chan shardMsg, min(2*len(p.shards), 64))
		r.live = len(p.shards)
		for _, shard := range p.shards {
			r.start(wctx, shard, query, args, r.merged, false)
		}
	}
	if err := r.init(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// start runs shard's query in a worker goroutine that sends to out.
func (r *fanRows) start(ctx context.Context, shard int, query string, args []driver.NamedValue, out chan<- shardMsg, buffer bool) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		var held []shardMsg
		send := func(m shardMsg) bool {
			if buffer && !m.done {
				held = append(held, m)
				return true
			}
			select {
			case out <- m:
				return true
			case <-ctx.Done():
				return false
			}
		}
		err := r.plan.onShard(ctx, shard, func(pc *physConn, t target) error {
			return readShard(ctx, pc, t, shard, query, args, send)
		})
		buffer = false // from here on, send for real
		for _, m := range held {
			if !send(m) {
				return
			}
		}
		send(shardMsg{shard: shard, done: true, err: err})
	}()
}

// readShard runs query on pc and sends its columns and rows in batches.
func readShard(ctx context.Context, pc *physConn, t target, shard int, query string, args []driver.NamedValue, send func(shardMsg) bool) error {
	rows, err := pc.query(ctx, t, query, args)
	if err != nil {
		return err
	}
	defer rows.Close()
	cols := rows.Columns()
	if !send(shardMsg{shard: shard, cols: cols}) {
		return context.Cause(ctx)
	}
	n := len(cols)
	var batch [][]driver.Value
	var backing []driver.Value
	for {
		if backing == nil {
			backing = make([]driver.Value, batchRows*n)
			batch = make([][]driver.Value, 0, batchRows)
		}
		dest := backing[len(batch)*n : (len(batch)+1)*n : (len(batch)+1)*n]
		err := rows.Next(dest)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		for i, v := range dest {
			if b, ok := v.([]byte); ok { // the driver may reuse it on the next row
				dest[i] = slices.Clone(b)
			}
		}
		batch = append(batch, dest)
		if len(batch) == batchRows {
			if !send(shardMsg{shard: shard, rows: batch}) {
				return context.Cause(ctx)
			}
			batch, backing = nil, nil
		}
	}
	if len(batch) > 0 && !send(shardMsg{shard: shard, rows: batch}) {
		return context.Cause(ctx)
	}
	return nil
}

// init waits for the columns: the first shard's (unordered) or every
// shard's (ordered), failing on a shard's error unless partial results were
// asked for.
func (r *fanRows) init() error {
	if r.streams == nil {
		for r.cols == nil {
			m, ok := r.recvMerged()
			if !ok {
				return r.allFailed()
			}
			if m.err != nil {
				return m.err
			}
			if m.cols != nil {
				r.cols = m.cols
			}
		}
		return nil
	}
	for _, st := range r.streams {
		if err := r.header(st); err != nil {
			return err
		}
	}
	if r.cols == nil {
		return r.allFailed()
	}
	keys, err := sortColumns(r.cols, r.plan.opts.order)
	if err != nil {
		return err
	}
	r.keys = keys
	for _, st := range r.streams {
		if st.done {
			continue
		}
		if err := r.advance(st); err != nil {
			return err
		}
		if st.row != nil {
			r.heap = append(r.heap, st)
		}
	}
	r.heapInit()
	return nil
}

func (r *fanRows) allFailed() error {
	if rep := r.plan.opts.report; rep != nil {
		if err := rep.Err(); err != nil {
			return fmt.Errorf("hv: every shard of the fan-out failed: %w", err)
		}
	}
	return io.ErrUnexpectedEOF
}

// checkCols compares a shard's columns with the result's.
func (r *fanRows) checkCols(shard int, cols []string) error {
	if r.cols == nil {
		r.cols = cols
		return nil
	}
	if !slices.Equal(r.cols, cols) {
		h := r.plan.hostOf[shard]
		return fmt.Errorf("%w: shard %d on host %s returned %v, shard %d returned %v",
			ErrColumnMismatch, shard, h.name, cols, r.plan.shards[0], r.cols)
	}
	return nil
}

// recvMerged receives the next unordered message, handling columns, shard
// ends and (with partial results) shard failures. ok is false when every
// shard is done. A returned message with err set fails the rows.
func (r *fanRows) recvMerged() (shardMsg, bool) {
	for r.live > 0 {
		m := <-r.merged
		if m.done {
			r.live--
		}
		if m.cols != nil {
			if err := r.checkCols(m.shard, m.cols); err != nil {
				m.err = err
			}
		}
		if m.err != nil {
			if rep := r.plan.opts.report; rep != nil {
				rep.record(m.shard, m.err)
				continue
			}
			return m, true
		}
		if m.done {
			continue
		}
		return m, true
	}
	return shardMsg{}, false
}

func (r *fanRows) Columns() []string { return r.cols }

func (r *fanRows) Next(dest []driver.Value) error {
	if r.err != nil {
		return r.err
	}
	if r.closed {
		return io.EOF
	}
	if lim := r.plan.opts.limit; lim > 0 && r.emitted >= lim {
		r.stop(nil)
		return io.EOF
	}
	var row []driver.Value
	var err error
	if r.streams == nil {
		row, err = r.nextUnordered()
	} else {
		row, err = r.nextOrdered()
	}
	if err != nil {
		if err != io.EOF {
			r.err = err
			r.stop(err)
		}
		return err
	}
	copy(dest, row)
	r.emitted++
	return nil
}

func (r *fanRows) nextUnordered() ([]driver.Value, error) {
	for len(r.cur) == 0 {
		m, ok := r.recvMerged()
		if !ok {
			return nil, io.EOF
		}
		if m.err != nil {
			return nil, m.err
		}
		r.cur = m.rows
	}
	row := r.cur[0]
	r.cur = r.cur[1:]
	return row, nil
}

// stop cancels the shard queries still running; cause nil means the rows
// ended normally (limit reached or closed).
func (r *fanRows) stop(cause error) {
	if cause == nil {
		cause = errRowsClosed
	}
	r.cancel(cause)
}

// Close cancels the shard queries still running and waits until every
// worker has given its connection back. Workers never block on a send once
// the context is cancelled, so nothing needs draining.
func (r *fanRows) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.stop(nil)
	r.wg.Wait()
	return nil
}
