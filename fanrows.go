package hv

// The rows of a fan-out query: one worker goroutine per shard runs the
// statement and streams its result to the fanRows that database/sql reads,
// in arrival order or, with WithMergeOrder, k-way merged by the sort keys.
//
// The protocol: a worker sends its shard's header (columns and their
// types) with its first batch of rows, then further batches, and last a
// message with done set and the shard's error, if any. Header and batches are dropped once the fan-out's
// context ends (the worker must not block then); the done message never is:
// the worker waits until it is taken. Every reader of the rows also watches
// the context, and Close, which cancels it, takes every done message still
// to come before it returns, so no worker outlives the rows and no reader
// waits for a message that was dropped.

import (
	"bytes"
	"cmp"
	"container/heap"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"sync"
	"time"
)

// batchRows is how many rows a shard sends to the merging reader at a time.
const batchRows = 64

// errRowsClosed is the cause with which fanRows cancel the shards' queries
// when they end normally (closed, or the limit reached).
var errRowsClosed = errors.New("fan-out rows closed")

// stopped reports whether err ended a shard's query because the fan-out's
// rows were done with it (the driver may report that as context.Canceled or
// a bad connection): the shard did not fail.
func stopped(ctx context.Context, err error) bool {
	return err != nil && (errors.Is(err, errRowsClosed) || errors.Is(context.Cause(ctx), errRowsClosed))
}

// shardMsg is what a shard's worker sends (see the protocol above).
type shardMsg struct {
	shard  int // index in the plan's places
	header *shardHeader
	rows   [][]driver.Value
	done   bool
	err    error
}

// shardHeader is a shard's result header: its columns and their types, as
// the shard's own rows describe them.
type shardHeader struct {
	cols  []string
	types []columnType
}

// columnType is one column's answers to the optional driver.Rows column
// interfaces.
type columnType struct {
	dbType                string
	scan                  reflect.Type
	length                int64
	hasLength             bool
	nullable, hasNullable bool
	precision, scale      int64
	hasPrecisionScale     bool
}

func headerOf(r driver.Rows) *shardHeader {
	h := &shardHeader{cols: r.Columns()}
	h.types = make([]columnType, len(h.cols))
	for i := range h.types {
		t := &h.types[i]
		t.dbType = columnDatabaseTypeName(r, i)
		t.scan = columnScanType(r, i)
		t.length, t.hasLength = columnLength(r, i)
		t.nullable, t.hasNullable = columnNullable(r, i)
		t.precision, t.scale, t.hasPrecisionScale = columnPrecisionScale(r, i)
	}
	return h
}

// fanRows is the driver.Rows of a fan-out query.
type fanRows struct {
	plan      *fanOut
	ctx       context.Context // the workers': cancelled when the rows end
	cancel    context.CancelCauseFunc
	stopShard []context.CancelCauseFunc // one worker's, for a shard that failed
	wg        sync.WaitGroup

	header      *shardHeader
	headerShard int // index of the shard whose header is the result's

	// Unordered: one channel for every shard; live counts the shards whose
	// done message has not been taken, failed those to ignore.
	merged chan shardMsg
	live   int
	failed []bool
	cur    [][]driver.Value

	// Ordered: one stream per shard, and the merge heap.
	streams []*shardStream
	merge   mergeHeap

	emitted int
	err     error
	closed  bool
}

var (
	_ driver.Rows                           = (*fanRows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*fanRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*fanRows)(nil)
	_ driver.RowsColumnTypeLength           = (*fanRows)(nil)
	_ driver.RowsColumnTypeNullable         = (*fanRows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*fanRows)(nil)
)

// shardStream is one shard's rows in an ordered merge.
type shardStream struct {
	index int // in the plan's places
	ch    chan shardMsg
	batch [][]driver.Value
	row   []driver.Value // current row, nil when none
	done  bool           // its done message was taken
}

// fanOutQuery starts the plan's shard queries and returns once the result's
// columns are known.
func (c *conn) fanOutQuery(ctx context.Context, route shardRoute, query string, args []driver.NamedValue) (driver.Rows, error) {
	if len(fanOutOptionsFrom(ctx).aggs) > 0 {
		return c.aggregateQuery(ctx, route, query, args)
	}
	p, err := c.planFanOut(ctx, route)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancelCause(p.trace(ctx, OpQuery, query))
	r := &fanRows{plan: p, ctx: wctx, cancel: cancel, headerShard: -1,
		stopShard: make([]context.CancelCauseFunc, len(p.places))}
	if len(p.opts.order) > 0 {
		r.streams = make([]*shardStream, len(p.places))
		for i, pl := range p.places {
			st := &shardStream{index: i, ch: make(chan shardMsg, 2)}
			r.streams[i] = st
			// Streams wait for each other in a merge, so a host with more
			// shards than slots would stall: those shards read their whole
			// result into memory and give their connection back.
			buffer := p.perHostShards[pl.host] > cap(p.slots[pl.host])
			r.start(i, query, args, st.ch, buffer)
		}
	} else {
		r.merged = make(chan shardMsg, min(2*len(p.places), 64))
		r.live = len(p.places)
		r.failed = make([]bool, len(p.places))
		for i := range p.places {
			r.start(i, query, args, r.merged, false)
		}
	}
	if err := r.init(); err != nil {
		r.err = err // for the trace
		r.Close()
		return nil, err
	}
	return r, nil
}

// start runs the query of the plan's shard i in a worker that sends to out.
func (r *fanRows) start(i int, query string, args []driver.NamedValue, out chan<- shardMsg, buffer bool) {
	ctx, cancel := context.WithCancelCause(r.ctx)
	r.stopShard[i] = cancel
	r.wg.Add(1)
	r.plan.connector.workers.run(func() {
		defer r.wg.Done()
		defer cancel(nil)
		var held []shardMsg
		send := func(m shardMsg) bool {
			if buffer {
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
		err := r.plan.onShard(ctx, r.plan.places[i], func(s *session, pl *placement) error {
			return readShard(ctx, s, pl, i, query, r.plan.argsFor(i, args), send)
		})
		buffer = false
		for _, m := range held {
			if !send(m) {
				break
			}
		}
		out <- shardMsg{shard: i, done: true, err: err} // never dropped: see the protocol
	})
}

// readShard runs query on s and sends its header and rows in batches.
func readShard(ctx context.Context, s *session, pl *placement, index int, query string, args []driver.NamedValue, send func(shardMsg) bool) error {
	rows, err := s.query(ctx, pl, query, args)
	if err != nil {
		return err
	}
	defer rows.Close()
	// The header rides with the first batch (the driver has read the first
	// row already, so it is no later for it), or alone when there are no
	// rows: one message fewer per shard.
	h := headerOf(rows)
	header := h
	n := len(h.cols)
	var batch [][]driver.Value
	var backing []driver.Value
	// Batches start at one row and grow to batchRows: most fan-outs read a
	// row or a few from each shard, and a full batch for those would be
	// mostly empty allocation.
	size := 1
	for {
		if backing == nil {
			backing = make([]driver.Value, size*n)
			batch = make([][]driver.Value, 0, size)
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
		if len(batch) == size {
			if !send(shardMsg{shard: index, header: header, rows: batch}) {
				return context.Cause(ctx)
			}
			header = nil
			batch, backing = nil, nil
			size = min(4*size, batchRows)
		}
	}
	if (len(batch) > 0 || header != nil) && !send(shardMsg{shard: index, header: header, rows: batch}) {
		return context.Cause(ctx)
	}
	return rows.Close()
}

// recv takes the next message from ch, or fails when the fan-out's context
// ends first.
func (r *fanRows) recv(ch <-chan shardMsg) (shardMsg, error) {
	select {
	case m := <-ch:
		return m, nil
	case <-r.ctx.Done():
		return shardMsg{}, context.Cause(r.ctx)
	}
}

// init waits for the header: the first shard's (unordered) or every
// shard's (ordered), failing on a shard's error unless partial results were
// asked for.
func (r *fanRows) init() error {
	if r.streams == nil {
		for r.header == nil {
			m, ok, err := r.recvMerged()
			if err != nil {
				return err
			}
			if !ok {
				return r.allFailed()
			}
			r.cur = m.rows
		}
		return nil
	}
	for _, st := range r.streams {
		m, err := r.recv(st.ch)
		if err != nil {
			return err
		}
		if m.done {
			st.done = true
		}
		if err := r.accept(m); err != nil {
			if err := r.shardFailed(st, err); err != nil {
				return err
			}
			continue
		}
		st.batch = m.rows
	}
	if r.header == nil {
		return r.allFailed()
	}
	keys, err := sortColumns(r.header.cols, r.plan.opts.order)
	if err != nil {
		return err
	}
	r.merge.keys = keys
	for _, st := range r.streams {
		if st.done {
			continue
		}
		if err := r.advance(st); err != nil {
			return err
		}
		if st.row != nil {
			r.merge.streams = append(r.merge.streams, st)
		}
	}
	heap.Init(&r.merge)
	return nil
}

// accept checks a message's header against the result's (the first header
// taken is the result's) and returns the shard's error, if any.
func (r *fanRows) accept(m shardMsg) error {
	if m.err != nil {
		return m.err
	}
	if m.header == nil {
		return nil
	}
	if r.header == nil {
		r.header, r.headerShard = m.header, m.shard
		return nil
	}
	if !slices.Equal(r.header.cols, m.header.cols) {
		pl, ref := r.plan.places[m.shard], r.plan.places[r.headerShard]
		return &ShardError{Shard: pl.shard, Host: pl.host.name, Err: errorf(ErrColumnMismatch,
			"%v, but shard %d on host %s returned %v", m.header.cols, ref.shard, ref.host.name, r.header.cols)}
	}
	return nil
}

func (r *fanRows) allFailed() error {
	if rep := r.plan.opts.report; rep != nil && rep.Err() != nil {
		return errEveryShardFailed(rep)
	}
	return io.ErrUnexpectedEOF
}

// recvMerged receives the next unordered message that carries a header or
// rows, handling shard ends and (with partial results) shard failures. ok
// is false when every shard is done.
func (r *fanRows) recvMerged() (m shardMsg, ok bool, err error) {
	for r.live > 0 {
		if m, err = r.recv(r.merged); err != nil {
			return m, false, err
		}
		if m.done {
			r.live--
		}
		if r.failed[m.shard] {
			continue
		}
		if err := r.accept(m); err != nil {
			rep := r.plan.opts.report
			if rep == nil {
				return m, false, err
			}
			rep.record(r.plan.places[m.shard].shard, err)
			r.failed[m.shard] = true
			r.stopShard[m.shard](errRowsClosed) // its rows are not wanted
			continue
		}
		if !m.done {
			return m, true, nil
		}
	}
	return shardMsg{}, false, nil
}

// shardFailed ends an ordered stream: with partial results the failure is
// recorded and the merge goes on without it; otherwise it fails the rows.
func (r *fanRows) shardFailed(st *shardStream, err error) error {
	st.row, st.batch = nil, nil
	if rep := r.plan.opts.report; rep != nil {
		rep.record(r.plan.places[st.index].shard, err)
		r.stopShard[st.index](errRowsClosed) // its rows are not wanted
		r.drain(st)
		return nil
	}
	return err
}

// drain takes what a stream still sends, up to its done message.
func (r *fanRows) drain(st *shardStream) {
	for !st.done {
		st.done = (<-st.ch).done
	}
}

// advance moves a stream to its next row, receiving batches as needed; at
// its end st.row is nil.
func (r *fanRows) advance(st *shardStream) error {
	for len(st.batch) == 0 {
		if st.done {
			st.row = nil
			return nil
		}
		m, err := r.recv(st.ch)
		if err != nil {
			return err
		}
		st.done = m.done
		if m.err != nil {
			return r.shardFailed(st, m.err)
		}
		st.batch = m.rows
	}
	st.row, st.batch = st.batch[0], st.batch[1:]
	return nil
}

func (r *fanRows) Columns() []string { return r.header.cols }

func (r *fanRows) Next(dest []driver.Value) error {
	if r.err != nil {
		return r.err
	}
	if r.closed {
		return io.EOF
	}
	if lim := r.plan.opts.limit; lim > 0 && r.emitted >= lim {
		r.cancel(errRowsClosed)
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
			r.cancel(err)
		}
		return err
	}
	copy(dest, row)
	r.emitted++
	return nil
}

func (r *fanRows) nextUnordered() ([]driver.Value, error) {
	for len(r.cur) == 0 {
		m, ok, err := r.recvMerged()
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, io.EOF
		}
		r.cur = m.rows
	}
	row := r.cur[0]
	r.cur = r.cur[1:]
	return row, nil
}

func (r *fanRows) nextOrdered() ([]driver.Value, error) {
	if r.merge.Len() == 0 {
		return nil, io.EOF
	}
	st := r.merge.streams[0]
	row := st.row
	if err := r.advance(st); err != nil {
		return nil, err
	}
	if st.row == nil {
		heap.Pop(&r.merge)
	} else {
		heap.Fix(&r.merge, 0)
	}
	return row, nil
}

// Close cancels the shard queries still running and takes every worker's
// done message, so that each has given its connection back when it
// returns.
func (r *fanRows) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.cancel(errRowsClosed)
	if r.streams == nil {
		for ; r.live > 0; r.live-- {
			for !(<-r.merged).done {
			}
		}
	} else {
		for _, st := range r.streams {
			r.drain(st)
		}
	}
	r.wg.Wait()
	r.plan.traceEnd(r.err)
	return nil
}

// The column types of the result are the first shard's: the shards agree
// on the columns, and their types come from the same statement.

func (r *fanRows) ColumnTypeDatabaseTypeName(i int) string { return r.header.types[i].dbType }
func (r *fanRows) ColumnTypeScanType(i int) reflect.Type   { return r.header.types[i].scan }
func (r *fanRows) ColumnTypeLength(i int) (int64, bool) {
	t := &r.header.types[i]
	return t.length, t.hasLength
}
func (r *fanRows) ColumnTypeNullable(i int) (nullable, ok bool) {
	t := &r.header.types[i]
	return t.nullable, t.hasNullable
}
func (r *fanRows) ColumnTypePrecisionScale(i int) (precision, scale int64, ok bool) {
	t := &r.header.types[i]
	return t.precision, t.scale, t.hasPrecisionScale
}

// sortCol is a merge key resolved to its column index.
type sortCol struct {
	index int
	desc  bool
}

// compareByCols compares rows a and b column by column in the order cols
// gives: negative when a sorts first, positive when b does, 0 when they tie.
func compareByCols(cols []sortCol, a, b []driver.Value) int {
	for _, k := range cols {
		c := compareValues(a[k.index], b[k.index])
		if k.desc {
			c = -c
		}
		if c != 0 {
			return c
		}
	}
	return 0
}

// sortColumns resolves the merge keys against the result's columns.
func sortColumns(cols []string, keys []SortKey) ([]sortCol, error) {
	out := make([]sortCol, len(keys))
	for i, k := range keys {
		j := slices.Index(cols, k.Column)
		if j < 0 {
			return nil, fmt.Errorf("hv: merge column %q is not in the fan-out result %v", k.Column, cols)
		}
		out[i] = sortCol{index: j, desc: k.Desc}
	}
	return out, nil
}

// mergeHeap is the heap (container/heap) of the streams with a current
// row, smallest first by the merge keys; ties go to the lower shard, so the
// merge is deterministic.
type mergeHeap struct {
	streams []*shardStream
	keys    []sortCol
}

func (h *mergeHeap) Len() int      { return len(h.streams) }
func (h *mergeHeap) Swap(i, j int) { h.streams[i], h.streams[j] = h.streams[j], h.streams[i] }
func (h *mergeHeap) Push(x any)    { h.streams = append(h.streams, x.(*shardStream)) }

func (h *mergeHeap) Pop() any {
	n := len(h.streams) - 1
	st := h.streams[n]
	h.streams[n] = nil
	h.streams = h.streams[:n]
	return st
}

func (h *mergeHeap) Less(i, j int) bool {
	a, b := h.streams[i], h.streams[j]
	if c := compareByCols(h.keys, a.row, b.row); c != 0 {
		return c < 0
	}
	return a.index < b.index
}

// compareValues orders two driver values the way PostgreSQL orders them
// ascending: NULL after everything; numbers by value; text and bytes
// byte-wise; times by instant; false before true.
func compareValues(a, b driver.Value) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	switch x := a.(type) {
	case int64:
		switch y := b.(type) {
		case int64:
			return cmp.Compare(x, y)
		case float64:
			return cmp.Compare(float64(x), y)
		}
	case float64:
		switch y := b.(type) {
		case float64:
			return cmp.Compare(x, y)
		case int64:
			return cmp.Compare(x, float64(y))
		}
	case string:
		switch y := b.(type) {
		case string:
			return cmp.Compare(x, y)
		case []byte:
			return cmp.Compare(x, string(y))
		}
	case []byte:
		switch y := b.(type) {
		case []byte:
			return bytes.Compare(x, y)
		case string:
			return cmp.Compare(string(x), y)
		}
	case time.Time:
		if y, ok := b.(time.Time); ok {
			return x.Compare(y)
		}
	case bool:
		if y, ok := b.(bool); ok {
			switch {
			case x == y:
				return 0
			case !x:
				return -1
			}
			return 1
		}
	}
	return cmp.Compare(fmt.Sprint(a), fmt.Sprint(b))
}
