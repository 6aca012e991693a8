package hv

// Merged aggregates (WithAggregate): a layer over the fan-out rows, in one
// of two ways.
//
// Streaming, when the merge order is exactly the GroupBy columns: the inner
// fan-out is merged in that order, so each group's rows from all shards
// arrive one after another and are folded as they come; memory holds one
// group and the limit stops the shards early.
//
// Buffered, otherwise (an order on an aggregate, or none): the inner
// fan-out runs unordered and unlimited, every row is folded into a map
// keyed by the group's values, and the groups are sorted, then cut by the
// limit, when the query starts: memory grows with the number of groups.

import (
	"bytes"
	"context"
	"database/sql/driver"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrAggregate is wrapped by the error of a WithAggregate query whose
// result cannot be merged: a column no Aggregate names, an Aggregate naming
// a column the result does not have, or a value the merge cannot combine
// (a sum of text, say).
var ErrAggregate error = &sentinel{"cannot merge the fan-out's aggregates"}

type aggKind int

const (
	aggGroup aggKind = iota
	aggSum
	aggCount
	aggMin
	aggMax
)

func (k aggKind) String() string {
	return [...]string{"GroupBy", "Sum", "Count", "Min", "Max"}[k]
}

// Aggregate says how WithAggregate combines one result column across
// shards. Make one with Sum, Count, Min, Max or GroupBy.
type Aggregate struct {
	kind   aggKind
	column string
}

// Sum adds column's values across shards: integers exactly (an int64 sum
// that overflows comes back as a decimal string, as PostgreSQL's numeric
// does), numeric (a decimal string) exactly, floats as float64. NULLs are
// skipped; a sum of only NULLs is NULL.
func Sum(column string) Aggregate { return Aggregate{aggSum, column} }

// Count adds the shards' counts in column (an integer; NULL counts as 0).
// With no rows at all the count is 0.
func Count(column string) Aggregate { return Aggregate{aggCount, column} }

// Min keeps the least non-NULL value of column across shards, ordered as
// WithMergeOrder orders (text byte-wise: write min(x COLLATE "C") in the
// SQL for the same answer as one server).
func Min(column string) Aggregate { return Aggregate{aggMin, column} }

// Max keeps the greatest non-NULL value of column across shards, ordered
// as Min.
func Max(column string) Aggregate { return Aggregate{aggMax, column} }

// GroupBy names a column of the SQL's GROUP BY: the shards' rows with equal
// values in every GroupBy column merge into one row.
func GroupBy(column string) Aggregate { return Aggregate{aggGroup, column} }

// WithAggregate returns a copy of a fan-out context (WithShards,
// WithAllShards, WithKeys) under which a query's per-shard aggregate rows
// are merged into one row per group (one row when no column is a
// GroupBy): write the aggregate in the SQL as for one server, and name
// every result column here with how to combine it.
//
//	ctx = hv.WithAggregate(hv.WithAllShards(ctx), hv.GroupBy("kind"), hv.Count("n"), hv.Sum("total"))
//	rows, err := db.QueryContext(ctx, "SELECT kind, count(*) AS n, sum(amount) AS total FROM t GROUP BY kind")
//
// An average is not mergeable from per-shard averages: select sum(x) and
// count(x) and divide. WithMergeOrder and WithLimit apply to the merged
// rows (without WithMergeOrder they come sorted by the GroupBy columns).
// When the merge order is exactly the GroupBy columns, and the SQL orders
// by them too, the merge streams: it holds one group at a time and a limit
// stops the shards early; otherwise every group is held until the last
// shard answers.
// The query fails with an error wrapping ErrAggregate when a result column
// is not named, a named column is missing, or a value cannot be combined.
// Calling it with no aggregates turns merging off.
func WithAggregate(ctx context.Context, cols ...Aggregate) context.Context {
	return withFanOutOption(ctx, func(o *fanOutOptions) { o.aggs = slices.Clone(cols) })
}

// aggregateQuery runs the fan-out and merges its rows as opts.aggs says:
// streaming when the merge order is the GroupBy columns, buffered otherwise.
func (c *conn) aggregateQuery(ctx context.Context, route shardRoute, query string, args []driver.NamedValue) (driver.Rows, error) {
	opts := fanOutOptionsFrom(ctx)
	stream := false
	inner := withFanOutOption(ctx, func(o *fanOutOptions) {
		o.aggs, o.limit = nil, 0
		if !groupOrdered(o.order, opts.aggs) {
			o.order = nil
		} else {
			stream = true
		}
	})
	rows, err := c.fanOutQuery(inner, route, query, args)
	if err != nil {
		return nil, err
	}
	fr := rows.(*fanRows)
	m, err := newAggMerge(fr.header.cols, opts.aggs)
	if err != nil {
		rows.Close()
		return nil, err
	}
	if stream {
		return &aggStream{aggHeader: aggHeader{fr.header}, in: fr, m: m, order: m.groupOrder(fr.merge.keys),
			limit: opts.limit, row: make([]driver.Value, len(fr.header.cols))}, nil
	}
	defer rows.Close()
	dest := make([]driver.Value, len(fr.header.cols))
	for {
		err := rows.Next(dest)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if err := m.add(dest); err != nil {
			return nil, err
		}
	}
	out, err := m.result(opts.order)
	if err != nil {
		return nil, err
	}
	if opts.limit > 0 && len(out) > opts.limit {
		out = out[:opts.limit]
	}
	return &aggRows{aggHeader: aggHeader{fr.header}, rows: out}, nil
}

// groupOrdered reports whether order sorts by exactly the GroupBy columns:
// then the merged fan-out brings each group's rows together, one after
// another, and the merge can stream.
func groupOrdered(order []SortKey, aggs []Aggregate) bool {
	var groups []string
	for _, a := range aggs {
		if a.kind == aggGroup && !slices.Contains(groups, a.column) {
			groups = append(groups, a.column)
		}
	}
	if len(groups) == 0 || len(order) != len(groups) {
		return false
	}
	for i, k := range order {
		if !slices.Contains(groups, k.Column) || slices.ContainsFunc(order[:i], func(p SortKey) bool { return p.Column == k.Column }) {
			return false
		}
	}
	return true
}

// aggMerge folds shard rows into groups.
type aggMerge struct {
	cols   []string
	kinds  []aggKind
	groups map[string]*aggGroupState
	order  []*aggGroupState // in arrival order; sorted at the end
	keyBuf []byte
}

type aggGroupState struct {
	key  []driver.Value // the GroupBy columns' values, in column order
	accs []aggAcc
}

func newAggMerge(cols []string, aggs []Aggregate) (*aggMerge, error) {
	m := &aggMerge{cols: cols, kinds: make([]aggKind, len(cols)), groups: map[string]*aggGroupState{}}
	named := make([]bool, len(cols))
	for _, a := range aggs {
		j := slices.Index(cols, a.column)
		if j < 0 {
			return nil, errorf(ErrAggregate, "%s(%q) names a column that is not in the result %v", a.kind, a.column, cols)
		}
		if named[j] && m.kinds[j] != a.kind {
			return nil, errorf(ErrAggregate, "column %q is named both %s and %s", a.column, m.kinds[j], a.kind)
		}
		named[j], m.kinds[j] = true, a.kind
	}
	for j, ok := range named {
		if !ok {
			return nil, errorf(ErrAggregate, "result column %q is not named by any Aggregate (use GroupBy, Sum, Count, Min or Max)", cols[j])
		}
	}
	return m, nil
}

// groupKey encodes row's GroupBy values into m.keyBuf and returns it.
func (m *aggMerge) groupKey(row []driver.Value) []byte {
	b := m.keyBuf[:0]
	for j, k := range m.kinds {
		if k == aggGroup {
			b = appendGroupKey(b, row[j])
		}
	}
	m.keyBuf = b
	return b
}

// newGroup starts the group of row, holding its GroupBy values.
func (m *aggMerge) newGroup(row []driver.Value) *aggGroupState {
	g := &aggGroupState{accs: make([]aggAcc, len(m.kinds))}
	for j, k := range m.kinds {
		if k == aggGroup {
			g.key = append(g.key, row[j])
		}
	}
	return g
}

// fold adds row's aggregate columns to g.
func (m *aggMerge) fold(g *aggGroupState, row []driver.Value) error {
	for j, k := range m.kinds {
		if k == aggGroup {
			continue
		}
		if err := g.accs[j].add(k, row[j]); err != nil {
			return errorf(ErrAggregate, "%s(%q): %v", k, m.cols[j], err)
		}
	}
	return nil
}

// emit writes g's merged row into row.
func (m *aggMerge) emit(g *aggGroupState, row []driver.Value) {
	gi := 0
	for j, k := range m.kinds {
		if k == aggGroup {
			row[j] = g.key[gi]
			gi++
			continue
		}
		row[j] = g.accs[j].value(k)
	}
}

// add folds row into its group, buffered.
func (m *aggMerge) add(row []driver.Value) error {
	b := m.groupKey(row)
	g := m.groups[string(b)]
	if g == nil {
		g = m.newGroup(row)
		m.groups[string(b)] = g
		m.order = append(m.order, g)
	}
	return m.fold(g, row)
}

// result returns the merged rows sorted by order, or by the group columns.
func (m *aggMerge) result(order []SortKey) ([][]driver.Value, error) {
	hasGroup := slices.Contains(m.kinds, aggGroup)
	if len(m.order) == 0 && !hasGroup {
		// An aggregate without GROUP BY has one row even over no rows.
		m.order = append(m.order, &aggGroupState{accs: make([]aggAcc, len(m.kinds))})
	}
	out := make([][]driver.Value, len(m.order))
	for i, g := range m.order {
		out[i] = make([]driver.Value, len(m.kinds))
		m.emit(g, out[i])
	}
	var keys []sortCol
	if len(order) > 0 {
		var err error
		if keys, err = sortColumns(m.cols, order); err != nil {
			return nil, err
		}
	}
	// The group columns break ties, so the order never depends on which
	// shard answered first.
	for j, k := range m.kinds {
		if k == aggGroup {
			keys = append(keys, sortCol{index: j})
		}
	}
	slices.SortFunc(out, func(a, b []driver.Value) int { return compareByCols(keys, a, b) })
	return out, nil
}

// appendGroupKey appends an unambiguous encoding of v: a type tag, then a
// length-prefixed text, so that distinct values never share a key.
func appendGroupKey(b []byte, v driver.Value) []byte {
	var tag byte
	var s string
	switch x := v.(type) {
	case nil:
		tag = 'N'
	case int64:
		tag, s = 'i', strconv.FormatInt(x, 10)
	case float64:
		tag, s = 'f', strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		tag, s = 'b', strconv.FormatBool(x)
	case string:
		tag, s = 's', x
	case []byte:
		tag, s = 's', string(x) // text may come as bytes from some drivers
	case time.Time:
		tag, s = 't', x.UTC().Format(time.RFC3339Nano)
	default:
		tag, s = '?', fmt.Sprintf("%T:%v", v, v)
	}
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// aggAcc accumulates one column of one group.
type aggAcc struct {
	seen bool // a non-NULL value was added

	// Sum and Count: the kind of number so far.
	isInt, isBig, isDec, isFloat bool
	i                            int64
	big                          *big.Int
	dec                          *big.Rat
	scale                        int    // the most decimal places of a numeric input
	special                      string // "NaN", "Infinity" or "-Infinity" once one was added
	f                            float64

	// Min and Max.
	best driver.Value
}

func (a *aggAcc) add(k aggKind, v driver.Value) error {
	if v == nil {
		return nil // SQL: aggregates skip NULLs; a NULL count is no count
	}
	switch k {
	case aggMin, aggMax:
		switch v.(type) {
		case int64, float64, string, []byte, time.Time, bool:
		default:
			return fmt.Errorf("cannot compare a %T", v)
		}
		if !a.seen {
			a.best, a.seen = v, true
			return nil
		}
		if reflect.TypeOf(v) != reflect.TypeOf(a.best) && !numeric(v, a.best) {
			return fmt.Errorf("shards returned a %T and a %T", a.best, v)
		}
		c := compareValues(v, a.best)
		if (k == aggMin && c < 0) || (k == aggMax && c > 0) {
			a.best = v
		}
		return nil
	case aggCount:
		if _, ok := v.(int64); !ok {
			if _, ok := v.(string); !ok {
				return fmt.Errorf("a count must be an integer, got a %T", v)
			}
		}
	}
	a.seen = true
	switch x := v.(type) {
	case int64:
		return a.addInt(x)
	case float64:
		if a.isInt || a.isBig || a.isDec {
			return fmt.Errorf("shards returned a float64 and an exact number")
		}
		a.isFloat = true
		a.f += x
		return nil
	case []byte:
		return a.addDecimal(string(x))
	case string:
		return a.addDecimal(x)
	}
	return fmt.Errorf("cannot add a %T", v)
}

func numeric(a, b driver.Value) bool {
	switch a.(type) {
	case int64, float64:
		switch b.(type) {
		case int64, float64:
			return true
		}
	}
	return false
}

func (a *aggAcc) addInt(x int64) error {
	switch {
	case a.isFloat:
		return fmt.Errorf("shards returned a float64 and an integer")
	case a.isDec:
		a.dec.Add(a.dec, new(big.Rat).SetInt64(x))
	case a.isBig:
		a.big.Add(a.big, big.NewInt(x))
	case !a.isInt:
		a.isInt, a.i = true, x
	default:
		s := a.i + x
		if (x > 0 && s < a.i) || (x < 0 && s > a.i) { // overflow: go exact
			a.isBig = true
			a.big = new(big.Int).SetInt64(a.i)
			a.big.Add(a.big, big.NewInt(x))
			return nil
		}
		a.i = s
	}
	return nil
}

// addDecimal adds a numeric's text exactly.
func (a *aggAcc) addDecimal(s string) error {
	if a.isFloat {
		return fmt.Errorf("shards returned a float64 and a numeric")
	}
	switch s {
	case "NaN", "Infinity", "-Infinity":
		// PostgreSQL: NaN wins; Infinity plus -Infinity is NaN.
		switch {
		case a.special == "" || a.special == s:
			a.special = s
		default:
			a.special = "NaN"
		}
		return nil
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok || strings.ContainsAny(s, "/eE") {
		return fmt.Errorf("%q is not a decimal number", s)
	}
	if i := strings.IndexByte(s, '.'); i >= 0 {
		a.scale = max(a.scale, len(s)-i-1)
	}
	if !a.isDec {
		a.isDec = true
		a.dec = new(big.Rat)
		switch {
		case a.isBig:
			a.dec.SetInt(a.big)
		case a.isInt:
			a.dec.SetInt64(a.i)
		}
		a.isInt, a.isBig = false, false
	}
	a.dec.Add(a.dec, r)
	return nil
}

func (a *aggAcc) value(k aggKind) driver.Value {
	switch k {
	case aggMin, aggMax:
		return a.best
	case aggCount:
		switch {
		case a.isBig:
			return a.big.String()
		case a.isDec:
			return a.dec.FloatString(0)
		}
		return a.i // 0 when nothing was counted
	}
	switch {
	case !a.seen:
		return nil
	case a.special != "":
		return a.special
	case a.isFloat:
		return a.f
	case a.isBig:
		return a.big.String()
	case a.isDec:
		return a.dec.FloatString(a.scale)
	}
	return a.i
}

// aggHeader describes merged rows as the first shard's rows are described.
type aggHeader struct{ header *shardHeader }

func (h aggHeader) Columns() []string                       { return h.header.cols }
func (h aggHeader) ColumnTypeDatabaseTypeName(i int) string { return h.header.types[i].dbType }
func (h aggHeader) ColumnTypeNullable(i int) (nullable, ok bool) {
	t := &h.header.types[i]
	return t.nullable, t.hasNullable
}

// aggRows are buffered merged rows.
type aggRows struct {
	aggHeader
	rows [][]driver.Value
}

func (r *aggRows) Close() error { r.rows = nil; return nil }

func (r *aggRows) Next(dest []driver.Value) error {
	if len(r.rows) == 0 {
		return io.EOF
	}
	copy(dest, r.rows[0])
	r.rows = r.rows[1:]
	return nil
}

// aggStream merges the groups of a fan-out merged by the GroupBy columns as
// they arrive: it holds one group, and with a limit it stops the shards once
// enough groups are out.
type aggStream struct {
	aggHeader
	in      *fanRows
	m       *aggMerge
	order   []sortCol // indexes into a group's key, not the row
	limit   int
	row     []driver.Value // the inner row being read
	cur     *aggGroupState // the group being folded
	curKey  []byte
	emitted int
	err     error // sticky: io.EOF once the groups are out
}

func (r *aggStream) Close() error { return r.in.Close() }

func (r *aggStream) Next(dest []driver.Value) error {
	if r.err != nil {
		return r.err
	}
	if r.limit > 0 && r.emitted >= r.limit {
		r.err = io.EOF
		return r.err
	}
	for {
		err := r.in.Next(r.row)
		if err == io.EOF {
			if r.cur == nil {
				r.err = io.EOF
				return r.err
			}
			r.m.emit(r.cur, dest)
			r.cur = nil
			r.emitted++
			return nil
		}
		if err != nil {
			r.err = err
			return err
		}
		key := r.m.groupKey(r.row)
		if r.cur != nil && bytes.Equal(key, r.curKey) {
			if err := r.m.fold(r.cur, r.row); err != nil {
				r.err = err
				return err
			}
			continue
		}
		next := r.m.newGroup(r.row)
		if err := r.m.fold(next, r.row); err != nil {
			r.err = err
			return err
		}
		prev := r.cur
		r.cur, r.curKey = next, append(r.curKey[:0], key...)
		if prev == nil {
			continue
		}
		if r.before(next, prev) {
			// A group seen again would come out twice: a shard's SQL lacks
			// the ORDER BY that WithMergeOrder promises.
			r.err = errorf(ErrAggregate, "the shards' rows are not sorted by the merge order %v: give the SQL the same ORDER BY", r.in.plan.opts.order)
			return r.err
		}
		r.m.emit(prev, dest)
		r.emitted++
		return nil
	}
}

// before reports whether group a sorts before b in the merge order.
func (r *aggStream) before(a, b *aggGroupState) bool {
	return compareByCols(r.order, a.key, b.key) < 0
}

// groupOrder maps sort keys on GroupBy columns of the result to their
// places in a group's key.
func (m *aggMerge) groupOrder(keys []sortCol) []sortCol {
	out := make([]sortCol, len(keys))
	for i, k := range keys {
		gi := 0
		for j := 0; j < k.index; j++ {
			if m.kinds[j] == aggGroup {
				gi++
			}
		}
		out[i] = sortCol{index: gi, desc: k.desc}
	}
	return out
}
