package hv

import "context"

// NumShards is the number of logical shards a Key can address (13 bits).
const NumShards = 1 << 13

// MaxShard is the highest logical shard number (8191).
const MaxShard = NumShards - 1

type shardKey struct{}

// shardRoute is what a context carries for routing: one shard, or a
// fan-out to several (fan is set; all means every shard of the fleet).
type shardRoute struct {
	shard  int
	fan    bool
	all    bool
	shards []int
	byKey  bool // route by key, mapped by the connector (WithShardKey)
	key    any
	byKeys bool  // fan out to the shards of keys (WithKeys), grouped
	keys   []any // WithKeys' keys
}

// WithShard returns a copy of ctx that routes statements to logical shard n.
// Statements run with the returned context go to the host that owns shard n,
// on the shard's schema. A shard outside 0..MaxShard, or one that no host
// owns, makes the statement fail with ErrUnknownShard.
func WithShard(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, shardKey{}, shardRoute{shard: n})
}

// WithKey returns a copy of ctx that routes statements to the logical shard
// carried in key (key.ShardID()).
func WithKey(ctx context.Context, key Key) context.Context {
	return WithShard(ctx, key.ShardID())
}

// ShardFromContext reports the logical shard that ctx routes to, and whether
// it carries one.
// A context marked for fan-out (WithShards, WithAllShards) carries no single
// shard, nor does one routed by an application key (WithShardKey), whose
// shard only the connector knows (Connector.ShardFor).
func ShardFromContext(ctx context.Context) (int, bool) {
	r, ok := ctx.Value(shardKey{}).(shardRoute)
	if !ok || r.fan || r.byKey {
		return 0, false
	}
	return r.shard, true
}

// shardOf returns the shard ctx routes a single statement to, mapping an
// application key with f; ok is false when ctx names no shard.
func (c *Connector) shardOf(ctx context.Context, f *fleet) (shard int, ok bool, err error) {
	r, ok := ctx.Value(shardKey{}).(shardRoute)
	switch {
	case !ok || r.fan:
		return 0, false, nil
	case r.byKey:
		shard, err = c.shardFor(f, r.key)
		return shard, err == nil, err
	}
	return r.shard, true, nil
}

// WithShards returns a copy of ctx that fans statements out to the given
// logical shards: QueryContext runs the statement on every one of them
// concurrently and returns one *sql.Rows streaming all their rows;
// ExecContext runs it on each and reports the sum of rows affected.
// Duplicates are ignored. See WithMergeOrder, WithLimit, WithPartialResults
// and WithFanOutConcurrency for the options.
func WithShards(ctx context.Context, shards ...int) context.Context {
	return context.WithValue(ctx, shardKey{}, shardRoute{fan: true, shards: append([]int(nil), shards...)})
}

// WithAllShards returns a copy of ctx that fans statements out to every
// logical shard the fleet owns, as WithShards does.
func WithAllShards(ctx context.Context) context.Context {
	return context.WithValue(ctx, shardKey{}, shardRoute{fan: true, all: true})
}

// fanOutFrom returns the fan-out route on ctx, if any.
func fanOutFrom(ctx context.Context) (shardRoute, bool) {
	r, ok := ctx.Value(shardKey{}).(shardRoute)
	return r, ok && r.fan
}
