package hv

import (
	"context"
	"database/sql/driver"
)

// ForShard returns a driver.Connector whose connections run every
// statement on logical shard n, whatever its context: with
// sql.OpenDB(c.ForShard(5)), statements with context.Background() (or no
// shard on their context) run on shard 5's schema, on the host that owns
// it. It is for tools that take a *sql.DB and run some statements without
// the application's context, such as migration tools (golang-migrate's
// postgres.WithInstance, ent's client.Schema.Create, goose).
//
// A statement whose context names another shard fails with an error
// wrapping ErrShardMismatch, a fan-out context with ErrFanOutPinned. A
// shard no host owns (or outside 0..MaxShard) is not refused here: its
// statements fail with ErrUnknownShard. Statements follow the fleet as
// Reconfigure changes it.
//
// The connections share c's host pools: closing the *sql.DB opened on the
// returned connector does not close them, and closing c (or its *sql.DB)
// makes the shard's statements fail with ErrClosed.
func (c *Connector) ForShard(n int) driver.Connector {
	return shardConnector{c: c, shard: n}
}

// shardConnector is what ForShard returns. It has no Close method, so that
// sql.DB.Close leaves the Connector's pools open.
type shardConnector struct {
	c     *Connector
	shard int
}

// Connect returns a virtual connection fixed on the shard; like
// Connector.Connect it only allocates. It returns ErrClosed after the
// Connector was closed, and an error wrapping ErrUnknownShard for a shard
// outside 0..MaxShard.
func (s shardConnector) Connect(ctx context.Context) (driver.Conn, error) {
	if s.c.closed.Load() {
		return nil, ErrClosed
	}
	if s.shard < 0 || s.shard > MaxShard {
		// conn.fixed < 0 means "not fixed": refuse here, at first use.
		return nil, &ShardError{Shard: s.shard, Err: errorf(ErrUnknownShard, "shards are 0..%d", MaxShard)}
	}
	cn := &conn{connector: s.c, intended: s.shard, fixed: s.shard}
	cn.checkout(ctx)
	return cn, nil
}

// Driver returns the hv driver.
func (s shardConnector) Driver() driver.Driver { return &Driver{} }
