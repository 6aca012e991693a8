package hv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ShardMove is one move recorded in a host's hv_meta.shard_moves.
type ShardMove struct {
	Shard int
	// Host is where the record is; Direction "out" (the shard left Host
	// for Peer) or "in" (it came from Peer).
	Host, Direction, Peer string
	// State is "copying" (in progress, or interrupted: AbortMove cleans
	// it up), "done" or "aborted".
	State             string
	Started, Finished time.Time
	FencedSchema      string    // the source's renamed copy, for a done move out
	Dropped           time.Time // when CleanupMoved dropped it
}

// eachHost opens an administration connection to every host of c's
// configuration in turn and calls fn; it stops at the first error.
func eachHost(ctx context.Context, c *Connector, fn func(h *HostConfig, conn *pgx.Conn) error) error {
	cfg := c.Config()
	for i := range cfg.Hosts {
		h := &cfg.Hosts[i]
		conn, err := adminConn(ctx, cfg, h)
		if err != nil {
			return fmt.Errorf("host %s: %w", h.Name(), err)
		}
		err = fn(h, conn)
		conn.Close(context.Background())
		if err != nil {
			return fmt.Errorf("host %s: %w", h.Name(), err)
		}
	}
	return nil
}

// hasMeta reports whether conn's database has hv_meta.shard_moves.
func hasMeta(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, "SELECT to_regclass('hv_meta.shard_moves') IS NOT NULL").Scan(&ok)
	return ok, err
}

// MoveStatus returns the moves recorded on every host of c's
// configuration, host by host in configuration order, oldest first. A
// move in progress (or interrupted) is in state "copying".
func MoveStatus(ctx context.Context, c *Connector) ([]ShardMove, error) {
	var out []ShardMove
	err := eachHost(ctx, c, func(h *HostConfig, conn *pgx.Conn) error {
		if ok, err := hasMeta(ctx, conn); err != nil || !ok {
			return err
		}
		rows, err := conn.Query(ctx, `SELECT shard, direction, peer, state, started, coalesce(finished, 'epoch'), coalesce(fenced_schema, ''), coalesce(dropped, 'epoch')
			FROM hv_meta.shard_moves ORDER BY id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			mv := ShardMove{Host: h.Name()}
			if err := rows.Scan(&mv.Shard, &mv.Direction, &mv.Peer, &mv.State, &mv.Started, &mv.Finished, &mv.FencedSchema, &mv.Dropped); err != nil {
				return err
			}
			if mv.Finished.Unix() == 0 {
				mv.Finished = time.Time{}
			}
			if mv.Dropped.Unix() == 0 {
				mv.Dropped = time.Time{}
			}
			out = append(out, mv)
		}
		return rows.Err()
	})
	return out, err
}

// Locate returns where each shard of c's configuration really lives,
// following the moves recorded in the fleet: shard to host name, for the
// shards that live elsewhere than the configuration says. It also
// updates c's routing.
func Locate(ctx context.Context, c *Connector) (map[int]string, error) {
	f := c.fleet.Load()
	out := map[int]string{}
	cfg := c.Config()
	for _, h := range f.hosts {
		for s := range h.shards.All() {
			p := f.shards[s]
			owner, err := c.resolveMove(ctx, f, p)
			if err != nil {
				return out, err
			}
			if owner != "" && owner != p.host.name {
				if err := c.learnMove(s, owner); err != nil {
					return out, err
				}
			}
		}
	}
	for s, name := range c.Moved() {
		if i, ok := cfg.HostFor(s); !ok || cfg.Hosts[i].Name() != name {
			out[s] = name
		}
	}
	return out, nil
}

// AbortMove removes what an interrupted or running-away move of shard left
// behind: the subscription, slot and publication of any move of the shard
// on every host of c's configuration, and the target's half-made copy of a
// move that did not reach its fence (the source keeps serving). It never
// touches a copy that serves the shard. It returns a *ShardError wrapping
// ErrBadMove when a mover is still running for the shard.
func AbortMove(ctx context.Context, c *Connector, shard int) error {
	if _, err := c.fleet.Load().place(shard); err != nil {
		return err
	}
	// Who owns it now: its half-made copies are the others'.
	loc, err := Locate(ctx, c)
	if err != nil {
		return &ShardError{Shard: shard, Err: err}
	}
	cfg := c.Config()
	owner := loc[shard]
	if owner == "" {
		if i, ok := cfg.HostFor(shard); ok {
			owner = cfg.Hosts[i].Name()
		}
	}
	pattern := fmt.Sprintf("hv\\_move\\_%%\\_%d", shard)
	type stale struct{ host, peer string }
	var copying []stale
	// Subscriptions first, everywhere: then no slot is in use.
	err = eachHost(ctx, c, func(h *HostConfig, conn *pgx.Conn) error {
		if h.Name() == owner {
			var got bool
			if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, $2)", lockMoveShard, shard).Scan(&got); err != nil {
				return err
			}
			if !got {
				return refuse(shard, h.Name(), "a mover of the shard is still running: stop it first")
			}
		}
		rows, err := conn.Query(ctx, "SELECT subname FROM pg_subscription WHERE subname LIKE $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())", pattern)
		if err != nil {
			return err
		}
		subs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, sub := range subs {
			if err := dropSubscription(ctx, conn, sub); err != nil {
				return err
			}
		}
		if ok, err := hasMeta(ctx, conn); err != nil || !ok {
			return err
		}
		rows, err = conn.Query(ctx, "SELECT peer FROM hv_meta.shard_moves WHERE shard = $1 AND direction = 'out' AND state = 'copying'", shard)
		if err != nil {
			return err
		}
		peers, err := pgx.CollectRows(rows, pgx.RowTo[string])
		for _, p := range peers {
			copying = append(copying, stale{h.Name(), p})
		}
		return err
	})
	if err != nil {
		return shardErr(shard, "", err)
	}
	err = eachHost(ctx, c, func(h *HostConfig, conn *pgx.Conn) error {
		var db uint32
		if err := conn.QueryRow(ctx, "SELECT oid FROM pg_database WHERE datname = current_database()").Scan(&db); err != nil {
			return err
		}
		name := moveName(db, shard)
		if err := dropReplication(ctx, conn, conn, name); err != nil {
			return err
		}
		for _, s := range copying {
			if s.peer == h.Name() && h.Name() != owner {
				if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+quoteIdent(cfg.SchemaName(shard))+" CASCADE"); err != nil {
					return err
				}
				if _, err := conn.Exec(ctx, "DELETE FROM hv_meta.move_marks"); err != nil && !strings.Contains(err.Error(), "does not exist") {
					return err
				}
			}
			if s.host == h.Name() {
				if _, err := conn.Exec(ctx, "UPDATE hv_meta.shard_moves SET state = 'aborted', finished = clock_timestamp() WHERE shard = $1 AND direction = 'out' AND state = 'copying'", shard); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return shardErr(shard, "", err)
	}
	for _, s := range copying {
		if _, ok := hostByName(cfg, s.peer); !ok {
			return &ShardError{Shard: shard, Host: s.host, Err: errors.New("an interrupted move to host " + s.peer + " is marked aborted, but that host is not in the configuration: drop its copy and its subscription there by hand")}
		}
	}
	return nil
}

// CleanupMoved drops the fenced copies that moves left on their sources,
// those fenced more than olderThan ago, and returns them as "host: schema".
// Nothing else drops them: until then a move can be checked against, or
// undone from, the old copy.
func CleanupMoved(ctx context.Context, c *Connector, olderThan time.Duration) ([]string, error) {
	var dropped []string
	err := eachHost(ctx, c, func(h *HostConfig, conn *pgx.Conn) error {
		if ok, err := hasMeta(ctx, conn); err != nil || !ok {
			return err
		}
		rows, err := conn.Query(ctx, `SELECT id, fenced_schema FROM hv_meta.shard_moves WHERE direction = 'out' AND state = 'done'
			AND fenced_schema IS NOT NULL AND dropped IS NULL AND finished < clock_timestamp() - $1::interval ORDER BY id`, fmt.Sprintf("%d microseconds", olderThan.Microseconds()))
		if err != nil {
			return err
		}
		type fenced struct {
			id     int64
			schema string
		}
		var list []fenced
		for rows.Next() {
			var f fenced
			if err := rows.Scan(&f.id, &f.schema); err != nil {
				return err
			}
			list = append(list, f)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, f := range list {
			if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+quoteIdent(f.schema)+" CASCADE"); err != nil {
				return err
			}
			if _, err := conn.Exec(ctx, "UPDATE hv_meta.shard_moves SET dropped = clock_timestamp() WHERE id = $1", f.id); err != nil {
				return err
			}
			dropped = append(dropped, h.Name()+": "+f.schema)
		}
		return nil
	})
	return dropped, err
}
