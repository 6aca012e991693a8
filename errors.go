package hv

import "errors"

var (
	// ErrNoShard is returned when a statement's context names no logical shard.
	ErrNoShard = errors.New("hv: no shard on the context: use hv.WithShard(ctx, n) or hv.WithKey(ctx, key)")

	// ErrUnknownShard is returned when no configured host owns the shard a
	// statement is routed to, or the shard is outside 0..MaxShard.
	ErrUnknownShard = errors.New("hv: no host owns this shard")

	// ErrPoolTimeout is returned when no connection of the shard's host became
	// free within the pool block timeout. It is never driver.ErrBadConn.
	ErrPoolTimeout = errors.New("hv: timed out waiting for a pooled connection")

	// ErrShardMismatch is returned when a statement on a pinned connection
	// (a *sql.Conn or *sql.Tx) names a shard other than the one it is on.
	ErrShardMismatch = errors.New("hv: statement names a different shard than its connection or transaction")

	// ErrBadConfig is wrapped by every error ParseConfig and NewConnector
	// return for invalid configuration.
	ErrBadConfig = errors.New("hv: invalid configuration")

	// ErrConnBusy is returned when a statement runs on a *sql.Conn or *sql.Tx
	// whose rows from an earlier statement are still open: close them
	// first (PostgreSQL runs one statement at a time per connection).
	ErrConnBusy = errors.New("hv: connection busy: rows of an earlier statement are still open")

	// ErrClosed is returned when a statement runs after the Connector was closed.
	ErrClosed = errors.New("hv: connector is closed")
)
