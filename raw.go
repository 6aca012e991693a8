package hv

import (
	"context"
	"database/sql"
	"fmt"
)

// Raw runs fn with the inner driver's own connection, taken from the pool of
// the host that owns shard and already on the shard's schema, for what
// database/sql cannot express: COPY, LISTEN/NOTIFY, pgx batches and
// pipelines. With the pgx driver driverConn is a *stdlib.Conn (its Conn
// method returns the *pgx.Conn); with lib/pq it is lib/pq's driver.Conn.
// db must be an hv *sql.DB.
//
// The rules are database/sql's for (*sql.Conn).Raw, plus hv's:
//   - driverConn must not be used after fn returns;
//   - leave the connection as you found it: no open transaction (the
//     connection is then closed rather than pooled again) and no
//     session-level SET of search_path (hv assumes the shard's schema
//     after a successful fn, and forgets it after a failed one);
//   - while fn runs, the connection counts against the host's pool_max
//     (and the shard's shard_max).
//
// On failure Raw returns the routing error (wrapping ErrUnknownShard,
// ErrPoolTimeout or ErrClosed), an error when db is not an hv database, or
// fn's error wrapped with the shard and host.
func Raw(ctx context.Context, db *sql.DB, shard int, fn func(driverConn any) error) error {
	sc, err := db.Conn(WithShard(ctx, shard))
	if err != nil {
		return err
	}
	defer sc.Close()
	return sc.Raw(func(dc any) error {
		c, ok := dc.(*conn)
		if !ok {
			return fmt.Errorf("hv: Raw: db is not an hv database (its driver connection is %T)", dc)
		}
		return c.raw(ctx, fn)
	})
}

// raw leases the shard's physical connection, switches it to the schema
// and lends fn the inner driver's connection.
func (c *conn) raw(ctx context.Context, fn func(driverConn any) error) error {
	if c.rows != nil {
		return ErrConnBusy
	}
	if err := c.lease(ctx); err != nil {
		return err
	}
	return c.fail(withSession(c.phys, func(s *session) error { return s.lend(ctx, c.place, fn) }))
}
