package hv

import (
	"context"
	"fmt"
)

// ErrShardKey is wrapped by the error of a statement routed with
// WithShardKey, and of Connector.ShardFor, when the key cannot be mapped to
// a shard: a type other than an integer or a string, or no num_shards
// configured.
var ErrShardKey error = &sentinel{"cannot map shard key"}

// WithShardKey returns a copy of ctx that routes statements by the
// application's own key: the connector maps it to a logical shard with
// Config.ShardFunc, or by default with ShardForKey and Config.KeyShards
// (num_shards in the DSN). key is an integer of any Go integer type, a
// string or a []byte; a Key routes to its own ShardID. A key that maps to a
// shard no host owns fails the statement with ErrUnknownShard, one that
// cannot be mapped with ErrShardKey.
func WithShardKey(ctx context.Context, key any) context.Context {
	if k, ok := key.(Key); ok {
		return WithKey(ctx, k)
	}
	if b, ok := key.([]byte); ok {
		key = string(b) // the context may outlive the caller's buffer
	}
	return context.WithValue(ctx, shardKey{}, shardRoute{byKey: true, key: key})
}

// ShardFor returns the logical shard that WithShardKey(ctx, key) routes to,
// without running anything. It returns an error wrapping ErrShardKey when
// the key cannot be mapped, and one wrapping ErrUnknownShard when no host
// owns its shard.
func (c *Connector) ShardFor(key any) (int, error) {
	return c.shardFor(c.fleet.Load(), key)
}

func (c *Connector) shardFor(f *fleet, key any) (int, error) {
	if k, ok := key.(Key); ok {
		return k.ShardID(), nil
	}
	var shard int
	var err error
	if fn := f.shardFunc; fn != nil {
		shard, err = fn(key)
		if err != nil {
			return 0, fmt.Errorf("%w %v: %w", ErrShardKey, key, err)
		}
	} else {
		if f.keyShards == 0 {
			return 0, fmt.Errorf("%w %v: set num_shards in the DSN (or Config.KeyShards or Config.ShardFunc)", ErrShardKey, key)
		}
		if shard, err = ShardForKey(key, f.keyShards); err != nil {
			return 0, err
		}
	}
	if _, err := f.place(shard); err != nil {
		return 0, &ShardError{Shard: shard, Err: errorf(ErrUnknownShard, "shard key %v maps to it", key)}
	}
	return shard, nil
}

// ShardForKey is the default mapping of WithShardKey from an application key
// to one of numShards logical shards, 0..numShards-1. It is stable: the same
// in every process and every release of hv, so other programs can compute it
// too.
//
//   - An integer k (any Go integer type) maps to k mod numShards, the
//     non-negative remainder (-1 maps to numShards-1).
//   - A string or []byte maps to h mod numShards, where h is the 64-bit
//     FNV-1a hash of its bytes (offset basis 14695981039346656037, prime
//     1099511628211) passed through the MurmurHash3 64-bit finaliser
//     (h ^= h>>33; h *= 0xff51afd7ed558ccd; h ^= h>>33;
//     h *= 0xc4ceb9fe1a85ec53; h ^= h>>33), all unsigned.
//
// It returns an error wrapping ErrShardKey for other key types or when
// numShards is outside 1..NumShards.
func ShardForKey(key any, numShards int) (int, error) {
	if numShards < 1 || numShards > NumShards {
		return 0, fmt.Errorf("%w %v: numShards %d outside 1..%d", ErrShardKey, key, numShards, NumShards)
	}
	n := uint64(numShards)
	switch i, u, kind := integerKey(key); kind {
	case signedInt:
		return signedShard(i, numShards), nil
	case unsignedInt:
		return int(u % n), nil
	}
	switch k := key.(type) {
	case string:
		return int(hashKey(k) % n), nil
	case []byte:
		return int(hashKey(string(k)) % n), nil
	}
	return 0, fmt.Errorf("%w of type %T: want an integer or a string", ErrShardKey, key)
}

func signedShard(k int64, numShards int) int {
	r := int(k % int64(numShards))
	if r < 0 {
		r += numShards
	}
	return r
}

// hashKey is FNV-1a 64 followed by the MurmurHash3 fmix64 finaliser, which
// spreads FNV's weak low bits over the whole word before the modulo.
func hashKey(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// intKind says which of integerKey's results holds the key.
type intKind int

const (
	notInt intKind = iota
	signedInt
	unsignedInt
)

// integerKey returns a key of any Go integer type as an int64 (signed
// types) or a uint64 (unsigned ones); kind says which, or notInt.
func integerKey(key any) (i int64, u uint64, kind intKind) {
	switch k := key.(type) {
	case int:
		return int64(k), 0, signedInt
	case int8:
		return int64(k), 0, signedInt
	case int16:
		return int64(k), 0, signedInt
	case int32:
		return int64(k), 0, signedInt
	case int64:
		return k, 0, signedInt
	case uint:
		return 0, uint64(k), unsignedInt
	case uint8:
		return 0, uint64(k), unsignedInt
	case uint16:
		return 0, uint64(k), unsignedInt
	case uint32:
		return 0, uint64(k), unsignedInt
	case uint64:
		return 0, k, unsignedInt
	case uintptr:
		return 0, uint64(k), unsignedInt
	}
	return 0, 0, notInt
}
