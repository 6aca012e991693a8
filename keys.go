package hv

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"slices"
)

// WithKeys returns a copy of ctx that fans statements out to the shards
// owning keys, grouped by shard: the statement runs once on each shard that
// owns some of the keys, with $1 bound to an array of that shard's keys
// only, and the statement's own arguments following as $2, $3, …:
//
//	rows, err := db.QueryContext(hv.WithKeys(ctx, ids...), "SELECT id, body FROM notes WHERE id = ANY($1)")
//
// A Key routes by its own ShardID, other keys as WithShardKey maps them
// (Config.ShardFunc, or ShardForKey with num_shards). Integer keys (and
// Keys) are bound as a bigint array ([]int64), string and []byte keys as a
// text array ([]string); duplicates are removed. The rows merge as any
// fan-out's (WithMergeOrder, WithLimit, WithPartialResults, WithAggregate),
// and ExecContext reports the sum of rows affected. The statement fails
// with an error wrapping ErrShardKey when there are no keys, integer and
// string keys are mixed or a key cannot be mapped, and with a *ShardError
// wrapping ErrUnknownShard, naming the shard and the key, when no host owns
// a key's shard, unless WithPartialResults was asked for: then that shard
// is recorded in the report as failed.
func WithKeys(ctx context.Context, keys ...any) context.Context {
	ks := make([]any, len(keys))
	for i, k := range keys {
		if b, ok := k.([]byte); ok {
			k = string(b) // the context may outlive the caller's buffer
		}
		ks[i] = k
	}
	return context.WithValue(ctx, shardKey{}, shardRoute{fan: true, byKeys: true, keys: ks})
}

// keysByShard maps keys to their shards and returns the owned shards in
// order, with each one's array of keys ([]int64 or []string, without
// duplicates, in the order given). Unowned shards fail the call, or with
// report are recorded there.
func (c *Connector) keysByShard(f *fleet, keys []any, report *FanOutReport) ([]int, map[int]any, error) {
	if len(keys) == 0 {
		return nil, nil, fmt.Errorf("%w: WithKeys names no keys", ErrShardKey)
	}
	ints := map[int][]int64{}
	strs := map[int][]string{}
	seenInt := map[int64]bool{}
	seenStr := map[string]bool{}
	unowned := map[int]error{}
	for _, key := range keys {
		iv, isInt, err := intKey(key)
		if err != nil {
			return nil, nil, err
		}
		sv, isStr := key.(string)
		if !isInt && !isStr {
			return nil, nil, fmt.Errorf("%w of type %T: WithKeys takes integers, strings and Keys", ErrShardKey, key)
		}
		if (isInt && len(strs) > 0) || (isStr && len(ints) > 0) {
			return nil, nil, fmt.Errorf("%w %v: WithKeys keys are all integers or all strings, one array type for $1", ErrShardKey, key)
		}
		if (isInt && seenInt[iv]) || (isStr && seenStr[sv]) {
			continue
		}
		shard, err := c.shardFor(f, key)
		var se *ShardError
		if errors.As(err, &se) && errors.Is(err, ErrUnknownShard) {
			shard, err = se.Shard, nil
		}
		if err != nil {
			return nil, nil, err
		}
		if _, err := f.place(shard); err != nil {
			if _, ok := unowned[shard]; !ok {
				unowned[shard] = &ShardError{Shard: shard, Err: errorf(ErrUnknownShard, "key %v maps to it", key)}
			}
			continue
		}
		if isInt {
			seenInt[iv] = true
			ints[shard] = append(ints[shard], iv)
		} else {
			seenStr[sv] = true
			strs[shard] = append(strs[shard], sv)
		}
	}
	if len(unowned) > 0 {
		if report == nil {
			return nil, nil, joinShardErrors(unowned)
		}
		for s, err := range unowned {
			report.record(s, err)
		}
	}
	args := make(map[int]any, len(ints)+len(strs))
	for s, v := range ints {
		args[s] = v
	}
	for s, v := range strs {
		args[s] = v
	}
	if len(args) == 0 {
		return nil, nil, errEveryShardFailed(report)
	}
	shards := make([]int, 0, len(args))
	for s := range args {
		shards = append(shards, s)
	}
	slices.Sort(shards)
	return shards, args, nil
}

// intKey returns an integer key (or Key) as an int64.
func intKey(key any) (int64, bool, error) {
	if k, ok := key.(Key); ok {
		return int64(k), true, nil
	}
	i, u, kind := integerKey(key)
	switch kind {
	case signedInt:
		return i, true, nil
	case unsignedInt:
		if u > math.MaxInt64 {
			return 0, false, fmt.Errorf("%w %d: above the bigint range of the $1 array", ErrShardKey, u)
		}
		return int64(u), true, nil
	}
	return 0, false, nil
}

// argsFor returns the arguments of the plan's shard i: with WithKeys, the
// shard's keys as $1 before the statement's own.
func (p *fanOut) argsFor(i int, args []driver.NamedValue) []driver.NamedValue {
	if p.keyArgs == nil {
		return args
	}
	out := make([]driver.NamedValue, 0, len(args)+1)
	out = append(out, driver.NamedValue{Ordinal: 1, Value: p.keyArgs[i]})
	for _, a := range args {
		a.Ordinal++
		out = append(out, a)
	}
	return out
}
