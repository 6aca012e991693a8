package hv

import (
	"context"
	"database/sql/driver"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/lib/pq"
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
	aggs    []Aggregate // WithAggregate: merge the rows (aggregate.go)
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
	maps.Copy(out, r.failed)
	return out
}

// Err returns the failures joined in shard order, or nil when every shard
// succeeded.
func (r *FanOutReport) Err() error { return joinShardErrors(r.Failed()) }

// fanOut is one fan-out statement's plan: the shards' placements in shard
// order, and per host a limit on how many run at once.
type fanOut struct {
	connector     *Connector
	places        []*placement
	slots         map[*hostPool]chan struct{}
	perHostShards map[*hostPool]int
	opts          fanOutOptions
	keyArgs       []any // WithKeys: per place, its shard's keys, bound as $1 (argsFor)
	traced        fanTrace
	replica       bool // WithReplica: places are on replicas where one is fit
}

// planFanOut places the shards of route on the current fleet.
func (c *conn) planFanOut(ctx context.Context, route shardRoute) (*fanOut, error) {
	if c.tx != nil || c.phys != nil || c.intended >= 0 {
		return nil, ErrFanOutPinned
	}
	if c.connector.closed.Load() {
		return nil, ErrClosed
	}
	f := c.connector.fleet.Load()
	p := &fanOut{
		connector:     c.connector,
		slots:         map[*hostPool]chan struct{}{},
		perHostShards: map[*hostPool]int{},
		opts:          fanOutOptionsFrom(ctx),
		replica:       replicaFrom(ctx),
	}
	shards := f.owned()
	var keyArgs map[int]any
	switch {
	case route.byKeys:
		var err error
		if shards, keyArgs, err = c.connector.keysByShard(f, route.keys, p.opts.report); err != nil {
			return nil, err
		}
	case !route.all:
		shards = slices.Clone(route.shards)
		slices.Sort(shards)
		shards = slices.Compact(shards)
	}
	if len(shards) == 0 {
		return nil, errorf(ErrUnknownShard, "fan-out names no shards")
	}
	for _, s := range shards {
		pl, err := f.place(s)
		if err != nil {
			if p.opts.report == nil {
				return nil, err
			}
			p.opts.report.record(s, err) // partial results: skip it
			continue
		}
		if p.replica { // replica.go: a fit replica's placement, when there is one
			pl = f.forRead(ctx, pl)
		}
		p.places = append(p.places, pl)
		if keyArgs != nil {
			keys := keyArgs[s]
			if f.libpq { // pgx encodes Go slices as arrays; lib/pq needs its wrapper
				keys = pq.Array(keys)
			}
			p.keyArgs = append(p.keyArgs, keys)
		}
		p.perHostShards[pl.host]++
	}
	if len(p.places) == 0 {
		return nil, errEveryShardFailed(p.opts.report)
	}
	for h := range p.perHostShards {
		n := h.poolMax()
		if p.opts.perHost > 0 && p.opts.perHost < n {
			n = p.opts.perHost
		}
		p.slots[h] = make(chan struct{}, n)
	}
	return p, nil
}

// errEveryShardFailed is the error of a fan-out with partial results whose
// every shard failed.
func errEveryShardFailed(report *FanOutReport) error {
	return fmt.Errorf("hv: every shard of the fan-out failed: %w", report.Err())
}

// onShard runs fn on a session of pl's host, holding one of the fan-out's
// slots for that host. A pool that Reconfigure retired meanwhile is left
// for the shard's new owner, and a shard whose statement met its fenced
// copy (moved.go) runs once more on the host it moved to. Errors are
// *ShardError.
func (p *fanOut) onShard(ctx context.Context, pl *placement, fn func(s *session, pl *placement) error) (err error) {
	ctx, tr := p.traceShard(ctx, pl)
	defer func() { tr.endShard(pl, err) }()
	pl, err = p.runShard(ctx, pl, fn)
	if !mayBeMoved(err) {
		return err
	}
	// The shard may have moved (moved.go): its statement failed before it
	// ran, so it runs once more on the new owner.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
	moved, lerr := p.connector.movedAway(lctx, p.connector.fleet.Load(), pl, err)
	cancel()
	if lerr != nil || !moved {
		return err
	}
	moved2, perr := p.connector.fleet.Load().place(pl.shard)
	if perr != nil {
		return perr
	}
	pl, err = p.runShard(ctx, moved2, fn)
	return err
}

// runShard runs fn on a connection of pl's host, waiting for the host's
// fan-out slot, and returns the placement it ran on: another one when the
// fleet changed meanwhile.
func (p *fanOut) runShard(ctx context.Context, pl *placement, fn func(s *session, pl *placement) error) (*placement, error) {
	if slots := p.slots[pl.host]; slots != nil { // nil: a host this plan did not know (a moved shard's)
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return pl, shardErr(pl.shard, pl.host.name, context.Cause(ctx))
		}
		defer func() { <-slots }()
	}
	sc, slot, err := pl.host.acquire(ctx, pl)
	if err != nil && err != errPoolRetired && pl.onReplica() && ctx.Err() == nil {
		// The replica cannot be reached: read the shard from the primary.
		pl.host.replica.markDown()
		pl.host.replica.fallbacks.Add(1)
		err = errPoolRetired
	}
	for err == errPoolRetired {
		f := p.connector.fleet.Load()
		if pl, err = f.place(pl.shard); err == nil {
			pl, sc, slot, err = f.acquireFor(ctx, pl, p.replica)
		}
	}
	if err != nil {
		return pl, err
	}
	defer pl.host.release(sc, slot)
	err = withSession(sc, func(s *session) error { return fn(s, pl) })
	if !stopped(ctx, err) {
		pl.countStatement(err)
	}
	return pl, shardErr(pl.shard, pl.host.name, err)
}

// fanOutExec runs query on every shard of the plan and returns the sum of
// rows affected. Without WithPartialResults, any failure fails the call (the
// other shards' statements still ran); with it, failures go to the report.
func (c *conn) fanOutExec(ctx context.Context, route shardRoute, query string, args []driver.NamedValue) (driver.Result, error) {
	p, err := c.planFanOut(ctx, route)
	if err != nil {
		return nil, err
	}
	ctx = p.trace(ctx, OpExec, query)
	var (
		mu     sync.Mutex
		total  int64
		failed = map[int]error{}
		wg     sync.WaitGroup
	)
	for i, pl := range p.places {
		wg.Add(1)
		p.connector.workers.run(func() {
			defer wg.Done()
			var n int64
			err := p.onShard(ctx, pl, func(s *session, pl *placement) error {
				res, err := s.exec(ctx, pl, query, p.argsFor(i, args))
				if err == nil {
					n, err = res.RowsAffected()
				}
				return err
			})
			if err != nil && p.opts.report != nil {
				p.opts.report.record(pl.shard, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed[pl.shard] = err
			}
			total += n
		})
	}
	wg.Wait()
	err = joinShardErrors(failed)
	p.traceEnd(err)
	if err != nil {
		return nil, err
	}
	return driver.RowsAffected(total), nil
}
