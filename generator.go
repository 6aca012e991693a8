package hv

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// Leaser reserves blocks of a shard's key sequence for a Generator.
// LeaseIDs returns the first of count consecutive sequence values that no
// one else will ever be given (not next_id(), not another Generator, in
// this process or another), and the server's clock in milliseconds since
// the epoch when it reserved them. A sequence value v is the Key with time
// v>>10 and added id v&1023.
type Leaser interface {
	LeaseIDs(ctx context.Context, shard, n int) (first int64, count int, serverMillis int64, err error)
}

// DBLeaser leases blocks with the shard's lease_ids() function (created by
// Datastore.CreateShards) through an hv *sql.DB.
type DBLeaser struct {
	DB *sql.DB
}

// LeaseIDs runs lease_ids(n) on shard. Errors name the shard.
func (l DBLeaser) LeaseIDs(ctx context.Context, shard, n int) (first int64, count int, serverMillis int64, err error) {
	err = l.DB.QueryRowContext(WithShard(ctx, shard), "SELECT first_seq, count, server_ms FROM lease_ids($1)", n).
		Scan(&first, &count, &serverMillis)
	if err != nil {
		return 0, 0, 0, note(shardErr(shard, "", err), fmt.Sprintf("leasing %d ids", n))
	}
	return first, count, serverMillis, nil
}

// GeneratorOptions tune a Generator; the zero value is ready to use.
type GeneratorOptions struct {
	// Block is how many ids one lease reserves (default 4096, four
	// milliseconds' worth). Ids of a block that the process never hands
	// out are lost, which is harmless.
	Block int
	// Clock returns the current time (default time.Now). Only its
	// monotonic progress matters: a Generator never repeats an id whatever
	// the clock does, and measures the time it waits with it.
	Clock func() time.Time
}

// A Generator makes Keys for one shard in the process, without a round trip
// for each: it leases blocks of the shard's sequence (the one next_id()
// uses), so its Keys never collide with next_id()'s nor with another
// Generator's for the same shard, here or in another process. Like
// next_id(), it hands out at most 1024 Keys per millisecond, waiting for
// the next millisecond rather than wrapping, and a Key's time is the
// server's clock when it is handed out (to the millisecond, give or take
// the lease's round trip). It is safe for concurrent use.
type Generator struct {
	leaser Leaser
	shard  int
	block  int
	clock  func() time.Time

	mu     sync.Mutex
	next   int64 // next sequence value to hand out
	end    int64 // end of the leased block (exclusive)
	offset int64 // server milliseconds minus local milliseconds at the last lease
	now    int64 // the server's millisecond at the last clock reading
	start  time.Time
}

// NewGenerator returns a Generator of Keys for shard that leases its blocks
// from leaser (for example DBLeaser{DB: db} for an hv *sql.DB). opts may be
// nil. It returns an error wrapping ErrUnknownShard when shard is outside
// 0..MaxShard.
func NewGenerator(leaser Leaser, shard int, opts *GeneratorOptions) (*Generator, error) {
	if shard < 0 || shard > MaxShard {
		return nil, &ShardError{Shard: shard, Err: errorf(ErrUnknownShard, "shards are 0..%d", MaxShard)}
	}
	g := &Generator{leaser: leaser, shard: shard, block: 4096, clock: time.Now}
	if opts != nil {
		if opts.Block > 0 {
			g.block = min(opts.Block, 1<<20)
		}
		if opts.Clock != nil {
			g.clock = opts.Clock
		}
	}
	g.start = g.clock()
	return g, nil
}

// localMillis returns milliseconds since the Generator was made, by the
// monotonic reading of its clock (a wall clock step does not move it).
func (g *Generator) localMillis() int64 {
	return g.clock().Sub(g.start).Milliseconds()
}

// Next returns a new Key for the generator's shard. It waits, when more than
// 1024 Keys a millisecond are asked for, until the next millisecond, and
// leases a new block when the current one is used up. It returns an error
// (naming the shard) when a lease fails, or ctx's error when ctx ends while
// it waits.
func (g *Generator) Next(ctx context.Context) (Key, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for {
		if g.next < g.end {
			v := g.next
			// Not before its millisecond, by the server's clock. The clock
			// is read only when the id is past the last reading.
			if v>>10 > g.now {
				g.now = g.localMillis() + g.offset
			}
			if wait := v>>10 - g.now; wait > 0 {
				if wait > int64(g.block>>10)+10 {
					// Far more than the block spans: the clock moved
					// back. Give the block up; the next lease resyncs.
					g.end = g.next
					continue
				}
				if err := g.sleep(ctx, wait); err != nil {
					return 0, err
				}
				continue
			}
			g.next++
			return Key(v>>10<<keyTimeShift | int64(g.shard)<<keyAddedBits | v&MaxAddedID), nil
		}
		first, n, serverMS, err := g.leaser.LeaseIDs(ctx, g.shard, g.block)
		if err != nil {
			return 0, err
		}
		g.next, g.end = first, first+int64(n)
		g.offset = serverMS - g.localMillis()
		g.now = serverMS
	}
}

// sleep waits about ms milliseconds: a short wait yields the processor in a
// loop (a timer would overshoot the millisecond), a longer one sleeps.
func (g *Generator) sleep(ctx context.Context, ms int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if ms > 2 {
		t := time.NewTimer(time.Duration(ms-1) * time.Millisecond)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		return nil
	}
	runtime.Gosched()
	return nil
}
