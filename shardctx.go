package hv

import "context"

// NumShards is the number of logical shards a Key can address (13 bits).
const NumShards = 1 << 13

// MaxShard is the highest logical shard number (8191).
const MaxShard = NumShards - 1

type shardKey struct{}

// shardRoute is what a context carries for routing.
type shardRoute struct {
	shard int
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
func ShardFromContext(ctx context.Context) (int, bool) {
	r, ok := ctx.Value(shardKey{}).(shardRoute)
	return r.shard, ok
}
