package hv

import (
	"bytes"
	"cmp"
	"database/sql/driver"
	"fmt"
	"io"
	"time"
)

// shardStream is one shard's rows in an ordered fan-out merge.
type shardStream struct {
	shard int
	ch    chan shardMsg
	batch [][]driver.Value
	row   []driver.Value // current row, nil when none
	done  bool
}

// sortCol is a merge key resolved to its column index.
type sortCol struct {
	index int
	desc  bool
}

// sortColumns resolves the merge keys against the result's columns.
func sortColumns(cols []string, keys []SortKey) ([]sortCol, error) {
	out := make([]sortCol, len(keys))
	for i, k := range keys {
		out[i].index = -1
		for j, c := range cols {
			if c == k.Column {
				out[i] = sortCol{index: j, desc: k.Desc}
				break
			}
		}
		if out[i].index < 0 {
			return nil, fmt.Errorf("hv: merge column %q is not in the fan-out result %v", k.Column, cols)
		}
	}
	return out, nil
}

// header receives a stream's first message: its columns, or its end.
func (r *fanRows) header(st *shardStream) error {
	m := <-st.ch
	if m.cols != nil {
		if err := r.checkCols(m.shard, m.cols); err != nil {
			return r.shardFailed(st, err)
		}
		return nil
	}
	st.done = true
	if m.err != nil {
		return r.shardFailed(st, m.err)
	}
	return nil
}

// shardFailed ends a stream: with partial results it is recorded and the
// merge goes on without it; otherwise it fails the rows.
func (r *fanRows) shardFailed(st *shardStream, err error) error {
	st.done, st.row, st.batch = true, nil, nil
	if rep := r.plan.opts.report; rep != nil {
		rep.record(st.shard, err)
		return nil
	}
	return err
}

// advance moves a stream to its next row, receiving batches as needed; at
// its end st.row is nil.
func (r *fanRows) advance(st *shardStream) error {
	for len(st.batch) == 0 {
		if st.done {
			st.row = nil
			return nil
		}
		m := <-st.ch
		if m.done {
			st.done = true
			if m.err != nil {
				return r.shardFailed(st, m.err)
			}
			continue
		}
		st.batch = m.rows
	}
	st.row, st.batch = st.batch[0], st.batch[1:]
	return nil
}

func (r *fanRows) nextOrdered() ([]driver.Value, error) {
	if len(r.heap) == 0 {
		return nil, io.EOF
	}
	st := r.heap[0]
	row := st.row
	if err := r.advance(st); err != nil {
		return nil, err
	}
	if st.row == nil {
		last := len(r.heap) - 1
		r.heap[0] = r.heap[last]
		r.heap = r.heap[:last]
	}
	if len(r.heap) > 0 {
		r.down(0)
	}
	return row, nil
}

// The heap of streams with a current row, smallest first by the merge keys;
// ties go to the lower shard so the merge is deterministic.

func (r *fanRows) less(a, b *shardStream) bool {
	for _, k := range r.keys {
		c := compareValues(a.row[k.index], b.row[k.index])
		if k.desc {
			c = -c
		}
		if c != 0 {
			return c < 0
		}
	}
	return a.shard < b.shard
}

func (r *fanRows) heapInit() {
	for i := len(r.heap)/2 - 1; i >= 0; i-- {
		r.down(i)
	}
}

func (r *fanRows) down(i int) {
	h := r.heap
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if rr := l + 1; rr < len(h) && r.less(h[rr], h[l]) {
			m = rr
		}
		if !r.less(h[m], h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
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
