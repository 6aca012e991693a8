package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"
)

// Where moved shards live. MoveShard records every move it finishes in the
// fleet's own databases, in the table hv_meta.shard_moves of both hosts: on
// the source a row "out" naming the target, on the target a row "in"
// naming the source, each by HostConfig.Name as the mover's DSN spells it
// (never a secret). That table is the truth; a Connector keeps only what it
// has learnt from it (shardMoves), and learns it when a statement meets the
// fenced copy: the source's schema was renamed by the move, so the
// statement fails with undefined_table (42P01), invalid_schema_name
// (3F000) or undefined_function (42883) on the old search_path. The
// connection then asks the host it used (following the chain when the
// shard moved on again), routes the shard to its new owner, and retries the
// statement once when no transaction is open; inside a transaction it
// fails with ErrShardMoved.

// ErrShardMoved is returned (inside a *ShardError) by a statement inside a
// transaction that met a shard's copy fenced by MoveShard: the shard now
// lives on another host, which the Connector routes it to from then on.
// Retry the whole transaction. Statements outside a transaction are
// retried by hv itself, as are Datastore operations and EachShard.
var ErrShardMoved error = &sentinel{"shard moved to another host: retry the transaction"}

// ErrMovedOutside is returned (inside a *ShardError) when a shard was
// moved to a host that the Connector's configuration lacks; the message
// names the host, which the DSN needs.
var ErrMovedOutside error = &sentinel{"shard moved to a host this configuration lacks"}

// metaSchema holds hv's own tables in each host's database.
const metaSchema = "hv_meta"

// metaDDL creates hv_meta.shard_moves where it does not exist yet.
const metaDDL = `CREATE SCHEMA IF NOT EXISTS hv_meta;
CREATE TABLE IF NOT EXISTS hv_meta.shard_moves (
	id bigserial PRIMARY KEY,
	shard int NOT NULL,
	direction text NOT NULL CHECK (direction IN ('out', 'in')),
	peer text NOT NULL,
	state text NOT NULL CHECK (state IN ('copying', 'done', 'aborted')),
	fenced_schema text,
	started timestamptz NOT NULL DEFAULT clock_timestamp(),
	finished timestamptz,
	dropped timestamptz
);
CREATE TABLE IF NOT EXISTS hv_meta.move_marks (move_id bigint, seq int, PRIMARY KEY (move_id, seq));`

// ownerSQL returns, for a shard ($1), the latest finished move this host
// took part in: "out" with the host it went to, "in", or no row.
const ownerSQL = `SELECT direction, peer FROM hv_meta.shard_moves
	WHERE shard = $1 AND state = 'done' ORDER BY finished DESC, id DESC LIMIT 1`

// shardMoves is what a Connector has learnt of moved shards: the shard and
// the name of the host it lives on. It is owned by the Connector and
// changed only under Connector.mu; each fleet is built from the
// configuration with it applied.
type shardMoves struct {
	to map[int]string
}

// apply returns the shards each host of cfg owns, in cfg's order, with the
// learnt moves applied. A move to a host cfg lacks is left out, and one
// cfg already agrees with is forgotten.
func (m *shardMoves) apply(cfg *Config) ([]ShardSet, error) {
	owns := make([]ShardSet, len(cfg.Hosts))
	index := make(map[string]int, len(cfg.Hosts))
	for i, h := range cfg.Hosts {
		owns[i] = h.Shards
		index[h.Name()] = i
	}
	for _, shard := range slices.Sorted(maps.Keys(m.to)) {
		j, ok := index[m.to[shard]]
		if !ok {
			continue
		}
		if owns[j].Contains(shard) {
			delete(m.to, shard)
			continue
		}
		for i := range owns {
			if owns[i].Contains(shard) {
				owns[i] = owns[i].Without(shard)
			}
		}
		owns[j] = owns[j].With(shard)
	}
	return owns, nil
}

// Moved returns the shards this Connector has learnt to live on another
// host than its configuration says, with the name of that host.
func (c *Connector) Moved() map[int]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.moves.to)
}

// learnMove routes shard to host to from now on: a new fleet generation,
// keeping every pool. It returns a *ShardError wrapping ErrMovedOutside
// when the configuration has no host named to.
func (c *Connector) learnMove(shard int, to string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	if p := c.fleet.Load().shards[shard]; p != nil && p.host.name == to {
		return nil // another statement learnt it first
	}
	if !slices.ContainsFunc(c.cfg.Hosts, func(h HostConfig) bool { return h.Name() == to }) {
		return &ShardError{Shard: shard, Err: errorf(ErrMovedOutside, "it lives on host %s: add that host to the DSN (shards='' if it should own nothing else)", to)}
	}
	if c.moves.to == nil {
		c.moves.to = map[int]string{}
	}
	c.moves.to[shard] = to
	if err := c.rebuildLocked(&c.cfg); err != nil {
		delete(c.moves.to, shard)
		return err
	}
	return nil
}

// movedCodes are the SQLSTATEs a statement gets when its shard's schema was
// renamed away under it.
var movedCodes = map[string]bool{"42P01": true, "3F000": true, "42883": true}

// mayBeMoved reports whether err could come from a fenced copy.
func mayBeMoved(err error) bool {
	var se interface{ SQLState() string }
	return errors.As(err, &se) && movedCodes[se.SQLState()]
}

// resolveMove asks the host p is on whether shard p.shard moved away, and
// follows the chain of moves through the hosts of the fleet. It returns
// the name of the host that owns the shard now, or "" when it did not
// move (or the host keeps no record). Errors mean the chain could not be
// followed.
func (c *Connector) resolveMove(ctx context.Context, f *fleet, p *placement) (string, error) {
	owner := ""
	for hop := 0; hop < 16; hop++ {
		dir, peer, err := p.host.lastMove(ctx, p)
		if err == sql.ErrNoRows || err != nil && mayBeMoved(err) || err == nil && dir == "in" {
			return owner, nil // no record, no hv_meta, or the shard came here
		}
		if err != nil {
			return "", fmt.Errorf("looking up where shard %d moved on host %s: %w", p.shard, p.host.name, err)
		}
		owner = peer
		next := f.hostNamed(peer)
		if next == nil {
			return owner, nil // learnMove names it
		}
		// The shard's schema and search_path statements stay; only the
		// host, its counters and its replicas are the next host's.
		q := *p
		q.host, q.counters, q.replicas, q.replicaSet = next, next.counters(p.shard), nil, nil
		p = &q
	}
	return "", fmt.Errorf("shard %d: the chain of moves loops", p.shard)
}

// lastMove returns the latest finished move of p's shard recorded on host
// h (ownerSQL), or sql.ErrNoRows. It takes a connection the way a
// statement does, so it waits for the pool like one.
func (h *hostPool) lastMove(ctx context.Context, p *placement) (dir, peer string, err error) {
	pc, slot, err := h.acquire(ctx, p)
	if err != nil {
		return "", "", err
	}
	defer h.release(pc, slot)
	found := false
	err = metaQuery(ctx, pc, ownerSQL, []driver.NamedValue{{Ordinal: 1, Value: int64(p.shard)}}, func(row []driver.Value) {
		dir, peer, found = asText(row[0]), asText(row[1]), true
	})
	if err == nil && !found {
		err = sql.ErrNoRows
	}
	return dir, peer, err
}

// metaQuery runs a schema-qualified query of hv's tables on the physical
// connection pc, past the session (its search_path stays as it is), and
// calls each for every row.
func metaQuery(ctx context.Context, pc *sql.Conn, query string, args []driver.NamedValue, each func([]driver.Value)) error {
	return withSession(pc, func(s *session) error {
		q, ok := s.inner.(driver.QueryerContext)
		if !ok {
			return errors.New("the inner driver cannot query")
		}
		rows, err := q.QueryContext(ctx, query, args)
		if err != nil {
			return err
		}
		defer rows.Close()
		dest := make([]driver.Value, len(rows.Columns()))
		for {
			if err := rows.Next(dest); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			each(dest)
		}
	})
}

// movedOutSQL lists the shards whose latest finished move on this host
// took them away, with the host they went to.
const movedOutSQL = `SELECT shard, peer FROM (SELECT DISTINCT ON (shard) shard, direction, peer FROM hv_meta.shard_moves
	WHERE state = 'done' ORDER BY shard, finished DESC, id DESC) m WHERE direction = 'out'`

// checkHost runs once per host pool, before its first statement: it asks
// the host which shards moved away from it and routes them to where they
// went. A process started with an old DSN so never reads a copy that a
// move left behind, nor a half-made one on a host the shard left once.
// It asks on pc, the connection the statement got, past its session.
// It reports whether the routing changed; a host it cannot ask is asked
// again next time.
func (c *Connector) checkHost(ctx context.Context, f *fleet, p *placement, pc *sql.Conn) bool {
	h := p.host
	if c.inner != nil { // go-sqlmock: no fleet behind it
		h.checked.Store(true)
		return false
	}
	moved := map[int]string{}
	err := metaQuery(ctx, pc, movedOutSQL, nil, func(row []driver.Value) {
		if n, ok := row[0].(int64); ok {
			moved[int(n)] = asText(row[1])
		}
	})
	if err != nil && !mayBeMoved(err) { // no hv_meta: nothing ever moved
		return false
	}
	h.checked.Store(true)
	changed := false
	for shard, to := range moved {
		if q := f.shards[shard]; q != nil && q.host == h && to != h.name && c.learnMove(shard, to) == nil {
			changed = true
		}
	}
	return changed
}

// asText returns a text column's value as the inner driver gave it.
func asText(v driver.Value) string {
	if b, ok := v.([]byte); ok {
		return string(b)
	}
	s, _ := v.(string)
	return s
}

// hostNamed returns the pool of the fleet's host called name, or nil.
func (f *fleet) hostNamed(name string) *hostPool {
	for _, h := range f.hosts {
		if h.pool.name == name {
			return h.pool
		}
	}
	return nil
}

// movedAway checks, after a statement on p failed with err, whether the
// shard moved; if it did, it learns the new owner and reports true. The
// physical connection must have been released.
func (c *Connector) movedAway(ctx context.Context, f *fleet, p *placement, err error) (bool, error) {
	if !mayBeMoved(err) {
		return false, nil
	}
	to, lerr := c.resolveMove(ctx, f, p)
	if lerr != nil || to == "" || to == p.host.name {
		return false, nil
	}
	if lerr := c.learnMove(p.shard, to); lerr != nil {
		return false, lerr
	}
	return true, nil
}

// lookupTimeout bounds the look-up of a moved shard's new owner.
const lookupTimeout = 5 * time.Second

// afterMoved handles a statement error that may come from a fenced copy
// (mayBeMoved). Outside a transaction it gives the physical connection
// back, and when the shard did move it learns the new owner and returns
// retry: the statement had no effect (it failed before it ran) and runs
// again on the new owner. Otherwise, or inside a transaction, it returns
// the error to give the caller: inside a transaction, for a moved shard, a
// *ShardError wrapping ErrShardMoved.
func (c *conn) afterMoved(ctx context.Context, err error) (retry bool, _ error) {
	p, f := c.place, c.connector.fleet.Load()
	if c.tx == nil {
		// Every statement on the fenced copy is here at once after a move:
		// holding their connections while they look up would leave the
		// look-ups none.
		c.release()
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
	defer cancel()
	moved, lerr := c.connector.movedAway(lctx, f, p, err)
	switch {
	case lerr != nil:
		return false, shardErr(p.shard, p.host.name, lerr)
	case moved && c.tx != nil:
		to := c.connector.fleet.Load().shards[p.shard].host.name
		return false, &ShardError{Shard: p.shard, Host: p.host.name, Err: errorf(ErrShardMoved, "now on host %s", to)}
	case moved:
		return true, nil
	case c.tx == nil:
		return false, shardErr(p.shard, p.host.name, err)
	}
	return false, c.fail(err)
}
