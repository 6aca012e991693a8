package hv

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"sync"
)

// EachShardFunc is the work EachShard does on one logical shard: it runs inside
// tx, a transaction on one connection of the shard's host whose search_path
// is the shard's schema. Returning an error rolls the shard's transaction
// back; returning nil commits it. fn must use tx, not the *sql.DB, for its
// statements (a second connection of the same host could wait for one that
// EachShard holds), and it must be safe to call from several goroutines at
// once, for different shards.
type EachShardFunc func(ctx context.Context, tx *sql.Tx, shard int) error

// EachShardOptions tune EachShard. The zero value (or nil) runs on every
// shard of the fleet, as many at a time per host as its pool allows.
type EachShardOptions struct {
	// Shards lists the shards to run on; nil means every shard the fleet
	// owns. Duplicates are ignored. A shard no host owns is reported as
	// failed with an error wrapping ErrUnknownShard.
	Shards []int
	// Concurrency limits how many shards of one host run at once. Zero, or
	// more than the host's pool size, means the host's pool size.
	Concurrency int
	// TxOptions are passed to BeginTx for every shard's transaction.
	TxOptions *sql.TxOptions
	// Progress, when set, is called after each shard finishes, with the
	// number of shards finished so far, the total, the shard and its error
	// (nil when it committed). Calls are serialised, so Progress needs no
	// locking of its own; it should return quickly.
	Progress func(done, total int, shard int, err error)
}

// EachShardResult is what EachShard did: the shards that committed and the
// ones that failed, each with why.
type EachShardResult struct {
	// Total is the number of shards EachShard was asked to run on.
	Total int
	// Committed lists, in order, the shards whose transaction committed.
	Committed []int
	// Failed maps each shard that did not commit to its error, a
	// *ShardError naming the shard and its host. Shards not started because
	// ctx ended are failed with the context's error.
	Failed map[int]error

	err error // a misuse that stopped EachShard before any shard ran
}

// Err returns the failures joined in shard order, or nil when every shard
// committed. A misuse of EachShard (a nil argument) is reported here too.
func (r *EachShardResult) Err() error {
	if r == nil {
		return nil
	}
	if r.err != nil {
		return r.err
	}
	return joinShardErrors(r.Failed)
}

// EachShard runs fn on every shard of the fleet behind db and c (db must be
// sql.OpenDB(c)), each shard in its own transaction on its own schema: a
// shard whose fn fails (or whose commit fails) is rolled back, the others
// commit. Hosts run concurrently, and within a host up to its pool size
// shards at a time (see EachShardOptions.Concurrency). opts may be nil.
//
// fn's panics are not recovered. It never returns nil: the result lists the shards that committed and
// those that failed, with errors naming shard and host; result.Err() joins
// the failures. When ctx ends, shards not yet started are failed with its
// error and running ones fail as their statements do.
func EachShard(ctx context.Context, db *sql.DB, c *Connector, fn EachShardFunc, opts *EachShardOptions) *EachShardResult {
	if opts == nil {
		opts = &EachShardOptions{}
	}
	res := &EachShardResult{Failed: map[int]error{}}
	if db == nil || c == nil || fn == nil {
		res.err = errors.New("hv: EachShard needs a *sql.DB, its *Connector and an EachShardFunc")
		return res
	}
	res.Total = c.RunShards(ctx, opts.Shards, opts.Concurrency,
		func(ctx context.Context, shard int, _ string) error {
			return runShardTx(ctx, db, shard, fn, opts.TxOptions)
		},
		func(done, total, shard int, _ string, err error) {
			if err != nil {
				res.Failed[shard] = err
			} else {
				res.Committed = append(res.Committed, shard)
			}
			if opts.Progress != nil {
				opts.Progress(done, total, shard, err)
			}
		})
	slices.Sort(res.Committed)
	return res
}

// runShardTx runs fn in a transaction on shard and commits it, or rolls it
// back when fn fails.
func runShardTx(ctx context.Context, db *sql.DB, shard int, fn EachShardFunc, txo *sql.TxOptions) error {
	err := runShardTxOnce(ctx, db, shard, fn, txo)
	if errors.Is(err, ErrShardMoved) { // the Connector routes it to the new owner now
		err = runShardTxOnce(ctx, db, shard, fn, txo)
	}
	return err
}

// runShardTxOnce is one attempt of runShardTx.
func runShardTxOnce(ctx context.Context, db *sql.DB, shard int, fn EachShardFunc, txo *sql.TxOptions) error {
	if err := ctx.Err(); err != nil {
		return note(context.Cause(ctx), "not run")
	}
	sctx := WithShard(ctx, shard)
	tx, err := db.BeginTx(sctx, txo)
	if err != nil {
		return err
	}
	if err := fn(sctx, tx, shard); err != nil {
		if rerr := tx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) {
			return errors.Join(err, note(rerr, "rollback"))
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return note(err, "commit")
	}
	return nil
}

// RunShards runs run for each of shards (nil: every shard the fleet owns;
// duplicates are ignored), hosts concurrently and within a host at most its
// pool_max shards at a time (fewer with concurrency > 0), and returns how
// many shards there were. run gets the shard and the name of its host. A
// shard no host owns is not run, and one not started when ctx ends is not
// run either; both are finished with their error. finish is called once per
// shard, never twice at once, with how many are done, the total, the shard,
// its host ("" for none) and run's error as a *ShardError (nil on
// success). It is the scheduler under EachShard and hv's migrations.
func (c *Connector) RunShards(ctx context.Context, shards []int, concurrency int,
	run func(ctx context.Context, shard int, host string) error,
	finish func(done, total, shard int, host string, err error)) int {
	hosts := c.fleet.Load().hosts
	work := make([][]int, len(hosts)) // by host, in configuration order
	var unowned []int
	seen := map[int]bool{}
	add := func(s int) {
		if seen[s] {
			return
		}
		seen[s] = true
		for i, h := range hosts {
			if h.shards.Contains(s) {
				work[i] = append(work[i], s)
				return
			}
		}
		unowned = append(unowned, s)
	}
	if shards == nil {
		for _, h := range hosts {
			for s := range h.shards.All() {
				add(s)
			}
		}
	} else {
		for _, s := range shards {
			add(s)
		}
	}
	total := len(seen)

	var mu sync.Mutex
	done := 0
	end := func(shard int, host string, err error) {
		mu.Lock()
		defer mu.Unlock()
		done++
		finish(done, total, shard, host, shardErr(shard, host, err))
	}
	for _, s := range unowned {
		end(s, "", ErrUnknownShard)
	}
	var wg sync.WaitGroup
	for i, shards := range work {
		if len(shards) == 0 {
			continue
		}
		h := hosts[i].pool
		n := h.poolMax()
		if concurrency > 0 && concurrency < n {
			n = concurrency
		}
		next := make(chan int)
		for range min(n, len(shards)) {
			wg.Go(func() {
				for s := range next {
					end(s, h.name, run(ctx, s, h.name))
				}
			})
		}
		wg.Go(func() {
			defer close(next)
			for k, s := range shards {
				select {
				case next <- s:
				case <-ctx.Done():
					for _, s := range shards[k:] {
						end(s, h.name, note(context.Cause(ctx), "not run"))
					}
					return
				}
			}
		})
	}
	wg.Wait()
	return total
}
