package hv

// Streaming replicas: reads on WithReplica contexts.
//
// A replica is a hostPool of its own (its sessions switch schema as the
// primary's do), made from the primary's HostConfig with host and port
// replaced (replicaHostConfig). Its pool owns a replicaMonitor: a goroutine
// that, every replicaPollInterval and off every statement's round trip,
// reads the primary's WAL position (pg_current_wal_lsn) and then the
// replica's replayed position (pg_last_wal_replay_lsn) over connections of
// its own. From the two it keeps:
//
//   - the replayed LSN and the primary's recent positions, with when each
//     was sampled: read-your-writes (readyourwrites.go) serves a unit's
//     read from the replica once it has replayed a position sampled after
//     the unit's write;
//   - since when the replica is behind: the time of the oldest primary
//     position the replica has not replayed. Its lag is how long ago that
//     was, so a paused replica's lag grows while the primary writes, and a
//     replica that has replayed everything the primary wrote is fresh even
//     when the primary is idle (or gone: replicas keep serving reads while
//     the primary is down).
//
// A read on a WithReplica context takes the host's replicas in turn (round
// robin) and uses the first that is up, was polled, lags no more than
// max_replica_lag and, under read-your-writes, has replayed the unit's
// last write to the shard; if none does, it falls back to the primary and
// counts a fallback on the replica whose turn it was.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type replicaKey struct{}

// WithReplica returns a copy of ctx whose statements, and read-only
// transactions begun on it (sql.TxOptions{ReadOnly: true}), read from a
// streaming replica of the shard's host (HostConfig.Replicas), spreading
// them over the replicas in turn. A replica that is down or lags more than
// Config.MaxReplicaLag is skipped; with none left the statement goes to the
// primary (counted in ReplicaStats.Fallbacks). A host without replicas
// serves them itself. A write on such a context fails with PostgreSQL's
// read-only error, wrapped in a *ShardError naming the shard and the
// replica. Fan-outs (WithShards, WithAllShards, WithKeys) read each shard
// from its host's replicas. A *sql.Conn stays on the physical connection
// its first statement took, replica or primary, until it is closed.
func WithReplica(ctx context.Context) context.Context {
	return context.WithValue(ctx, replicaKey{}, true)
}

// replicaFrom reports whether ctx asks for replica reads.
func replicaFrom(ctx context.Context) bool {
	v, _ := ctx.Value(replicaKey{}).(bool)
	return v
}

// replicaPollInterval is how often a replica's monitor reads the WAL
// positions: the lag is known to about this much, and a read-your-writes
// read waits for about this long before a replica is known to have the
// unit's write (until then it reads from the primary).
const replicaPollInterval = 100 * time.Millisecond

// replicaPollTimeout bounds one poll; a replica that does not answer in
// time is down until it does.
const replicaPollTimeout = time.Second

// maxLSNSamples bounds the primary positions a monitor keeps while its
// replica is behind; beyond it every other one is dropped, which only
// coarsens the lag of a replica behind for minutes.
const maxLSNSamples = 1024

// ReplicaStats describes one streaming replica of a host.
type ReplicaStats struct {
	// Host names the replica as "host:port/dbname".
	Host string
	// Reads counts the statements (and read-only transactions, and
	// fan-out shards) the replica was chosen for.
	Reads int64
	// Fallbacks counts the reads that, in the replica's turn, found no
	// replica fit to serve them (down, lagging, or behind the unit's
	// write under WithReadYourWrites) and went to the primary.
	Fallbacks int64
	// Lag is how long ago the primary had WAL the replica had not replayed
	// at its last poll; zero when it had replayed everything.
	Lag time.Duration
	// ReplayLSN is the WAL position the replica had replayed at its last
	// poll ("16/B374D848"), or "" before the first.
	ReplayLSN string
	// Down is set while the replica does not answer its monitor (or a
	// statement could not connect to it), and before its first poll.
	Down bool
	// Polls counts the monitor's polls of the replica, answered or not.
	Polls int64
	// DB is the replica pool's statistics.
	DB sql.DBStats
}

// lsnSample is the primary's WAL position at one poll.
type lsnSample struct {
	at  time.Time
	lsn uint64
}

// replicaMonitor tracks one replica's replay position and lag. The poll
// goroutine is the only writer of the atomics and the only user of
// samples.
type replicaMonitor struct {
	db *sql.DB // one connection to the replica, outside its pool

	mu          sync.Mutex
	primary     *sql.DB // one connection to the primary
	primaryConn string  // what primary connects to

	replay      atomic.Uint64 // replayed LSN at the last poll
	behindSince atomic.Int64  // unix nanos of the oldest unreplayed primary position; 0: caught up
	up          atomic.Bool   // answered its last poll (false before the first)
	polls       atomic.Int64
	reads       atomic.Int64
	fallbacks   atomic.Int64

	samples []lsnSample // the primary's positions not yet replayed (poll goroutine only)

	recentMu sync.Mutex
	recent   []lsnSample // the primary's last maxRecentSamples positions, oldest first

	stop chan struct{}
	done chan struct{}
}

// maxRecentSamples is how many of the primary's positions a monitor keeps
// for read-your-writes: a write older than all of them is judged by the
// oldest, which is later than the write and so still safe.
const maxRecentSamples = 32

// newReplicaMonitor starts monitoring the replica reached through ic.
func newReplicaMonitor(ic driver.Connector) *replicaMonitor {
	m := &replicaMonitor{db: sql.OpenDB(ic), stop: make(chan struct{}), done: make(chan struct{})}
	m.db.SetMaxOpenConns(1)
	go m.run()
	return m
}

// setPrimary points the monitor at its replica's primary: connString and
// the inner driver's connector for it (made only when it changed).
func (m *replicaMonitor) setPrimary(connString string, open func() (driver.Connector, error)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.primary != nil && m.primaryConn == connString {
		return nil
	}
	ic, err := open()
	if err != nil {
		return err
	}
	if m.primary != nil {
		_ = m.primary.Close()
	}
	m.primary, m.primaryConn = sql.OpenDB(ic), connString
	m.primary.SetMaxOpenConns(1)
	return nil
}

// close stops the monitor and closes its connections.
func (m *replicaMonitor) close() {
	select {
	case <-m.stop:
		return
	default:
	}
	close(m.stop)
	<-m.done
	_ = m.db.Close()
	m.mu.Lock()
	if m.primary != nil {
		_ = m.primary.Close()
	}
	m.mu.Unlock()
}

func (m *replicaMonitor) run() {
	defer close(m.done)
	t := time.NewTicker(replicaPollInterval)
	defer t.Stop()
	for {
		m.poll()
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
	}
}

// The positions a monitor reads: the primary's insert position (WAL of
// every transaction that has ended, flushed or not: with asynchronous
// commit the write position may be short of a commit already reported),
// and the replica's replay position. A promoted replica replays nothing
// more: it then has everything it will ever serve, up to its own position.
const (
	primaryLSNSQL = `SELECT pg_current_wal_insert_lsn()::text`
	replayLSNSQL  = `SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text`
)

// poll reads the primary's position, then the replica's: read in that
// order, a replica at or past the sample has everything the primary had
// when it was taken.
func (m *replicaMonitor) poll() {
	ctx, cancel := context.WithTimeout(context.Background(), replicaPollTimeout)
	defer cancel()
	defer m.polls.Add(1)
	m.mu.Lock()
	primary := m.primary
	m.mu.Unlock()
	now := time.Now()
	if primary != nil {
		// A primary that does not answer adds no sample: the replica is
		// judged by what the primary last had.
		if p, err := queryLSN(ctx, primary, primaryLSNSQL); err == nil {
			if n := len(m.samples); n == 0 || m.samples[n-1].lsn < p {
				m.samples = append(m.samples, lsnSample{at: now, lsn: p})
			}
			m.recentMu.Lock()
			if len(m.recent) == maxRecentSamples {
				m.recent = append(m.recent[:0], m.recent[1:]...)
			}
			m.recent = append(m.recent, lsnSample{at: now, lsn: p})
			m.recentMu.Unlock()
		}
	}
	r, err := queryLSN(ctx, m.db, replayLSNSQL)
	if err != nil {
		m.up.Store(false)
		return
	}
	i := 0
	for i < len(m.samples) && m.samples[i].lsn <= r {
		i++
	}
	m.samples = append(m.samples[:0], m.samples[i:]...)
	if len(m.samples) > maxLSNSamples {
		// Keep the oldest (it sets the lag) and every other one after it.
		kept := m.samples[:1]
		for j := 2; j < len(m.samples); j += 2 {
			kept = append(kept, m.samples[j])
		}
		m.samples = kept
	}
	var since int64
	if len(m.samples) > 0 {
		since = m.samples[0].at.UnixNano()
	}
	m.replay.Store(r)
	m.behindSince.Store(since)
	m.up.Store(true)
}

// lag returns how far behind the replica is now.
func (m *replicaMonitor) lag(now time.Time) time.Duration {
	since := m.behindSince.Load()
	if since == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, since))
}

// fit reports whether the replica may serve a read now: up, within maxLag,
// and, for a unit of work that wrote, past a primary position sampled
// after the write.
func (m *replicaMonitor) fit(now time.Time, maxLag time.Duration, need rywNeed) bool {
	if !m.up.Load() || m.lag(now) > maxLag {
		return false
	}
	if !need.some {
		return true
	}
	if need.unknown {
		return false
	}
	lsn, ok := m.sampledAfter(need.done)
	return ok && m.replay.Load() >= lsn
}

// sampledAfter returns the first of the primary's recent positions whose
// query was sent after t.
func (m *replicaMonitor) sampledAfter(t time.Time) (uint64, bool) {
	m.recentMu.Lock()
	defer m.recentMu.Unlock()
	for _, s := range m.recent {
		if s.at.After(t) {
			return s.lsn, true
		}
	}
	return 0, false
}

// markDown records that a statement could not reach the replica: reads
// skip it until its monitor reaches it again.
func (m *replicaMonitor) markDown() { m.up.Store(false) }

// queryLSN runs a query returning one pg_lsn as text and parses it.
func queryLSN(ctx context.Context, db *sql.DB, query string) (uint64, error) {
	var s sql.NullString
	if err := db.QueryRowContext(ctx, query).Scan(&s); err != nil {
		return 0, err
	}
	if !s.Valid {
		return 0, errors.New("no WAL position")
	}
	return parseLSN(s.String)
}

// parseLSN parses PostgreSQL's pg_lsn text form, "X/Y" in hex.
func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad WAL position %q", s)
	}
	return h<<32 | l, nil
}

// formatLSN is parseLSN's inverse.
func formatLSN(n uint64) string {
	return fmt.Sprintf("%X/%X", n>>32, n&0xffffffff)
}

// replicaSet is the replicas of one host of a fleet and whose turn it is.
type replicaSet struct {
	pools []*hostPool // each with its monitor (hostPool.replica)
	next  atomic.Uint32
}

// onReplica reports whether p is a shard's placement on a replica.
func (p *placement) onReplica() bool { return p.host.replica != nil }

// forRead returns where a read of primary placement p on ctx goes: a fit
// replica's placement of the shard, in turn, or p itself (counting a
// fallback when the host has replicas).
func (f *fleet) forRead(ctx context.Context, p *placement) *placement {
	n := len(p.replicas)
	if n == 0 {
		return p
	}
	need := rywFrom(ctx).need(p) // readyourwrites.go
	now := time.Now()
	turn := int(p.replicaSet.next.Add(1))
	for i := range n {
		r := p.replicas[(turn+i)%n]
		if r.host.replica.fit(now, f.maxReplicaLag, need) {
			r.host.replica.reads.Add(1)
			return r
		}
	}
	p.replicas[turn%n].host.replica.fallbacks.Add(1)
	return p
}

// acquireFor takes a connection for a statement on primary placement p:
// on a replica when replica is set and one is fit (forRead), else on the
// primary. A replica that cannot be reached is marked down and the
// statement goes to the primary. It returns the placement used; errors
// are acquire's.
func (f *fleet) acquireFor(ctx context.Context, p *placement, replica bool) (*placement, *sql.Conn, *semaphore, error) {
	t := p
	if replica {
		t = f.forRead(ctx, p)
	}
	pc, slot, err := t.host.acquire(ctx, t)
	if err != nil && err != errPoolRetired && t != p && ctx.Err() == nil {
		t.host.replica.markDown()
		t.host.replica.fallbacks.Add(1)
		t = p
		pc, slot, err = p.host.acquire(ctx, p)
	}
	return t, pc, slot, err
}

// stats returns the statistics of a host's replicas (nil for none).
func (rs *replicaSet) stats() []ReplicaStats {
	if rs == nil {
		return nil
	}
	now := time.Now()
	out := make([]ReplicaStats, len(rs.pools))
	for i, h := range rs.pools {
		m := h.replica
		st := ReplicaStats{Host: h.name, Reads: m.reads.Load(), Fallbacks: m.fallbacks.Load(),
			Lag: m.lag(now), Down: !m.up.Load(), Polls: m.polls.Load(), DB: h.stats()}
		if r := m.replay.Load(); r != 0 {
			st.ReplayLSN = formatLSN(r)
		}
		out[i] = st
	}
	return out
}

// openReplicas opens (or takes from keep) the pools of hc's replicas, each
// with its monitor pointed at hc's primary and counting the shards hc owns
// now (owned). Opened pools are appended to *opened, for the caller to
// close on failure.
func (c *Connector) openReplicas(cfg *Config, hc *HostConfig, owned ShardSet, primaryConn string, set poolSettings,
	keep map[string]*hostPool, opened *[]*hostPool, configure *[]func()) (*replicaSet, error) {
	if len(hc.Replicas) == 0 {
		return nil, nil
	}
	rs := &replicaSet{}
	for _, addr := range hc.Replicas {
		rc := replicaHostConfig(hc, addr)
		connString := innerConnString(cfg, &rc)
		key := "replica\x00" + cfg.Driver + "\x00" + string(cfg.PoolMode) + "\x00" + cfg.ExtSchema() + "\x00" + connString
		h, ok := keep[key]
		if ok {
			delete(keep, key)
			*configure = append(*configure, func() { h.configure(set) })
		} else {
			var err error
			if h, err = c.openHost(cfg, &rc, connString, set); err != nil {
				return nil, err
			}
			h.key = key
			*opened = append(*opened, h)
			ic, err := c.innerConnector(cfg.Driver, connString)
			if err != nil {
				return nil, fmt.Errorf("%w: replica %s of host %s: %s", ErrBadConfig, rc.Name(), hc.Name(), innerConfigErr(err))
			}
			h.replica = newReplicaMonitor(ic)
		}
		if err := h.replica.setPrimary(primaryConn, func() (driver.Connector, error) {
			return c.innerConnector(cfg.Driver, primaryConn)
		}); err != nil {
			return nil, fmt.Errorf("%w: host %s: %s", ErrBadConfig, hc.Name(), innerConfigErr(err))
		}
		h.shards.Store(int64(owned.Len()))
		rs.pools = append(rs.pools, h)
	}
	return rs, nil
}

// placeReplicas gives primary placement p its placements on rs's replicas.
func placeReplicas(p *placement, rs *replicaSet) {
	if rs == nil {
		return
	}
	p.replicaSet = rs
	for _, h := range rs.pools {
		r := *p
		r.host, r.counters, r.replicas, r.replicaSet = h, h.counters(p.shard), nil, nil
		p.replicas = append(p.replicas, &r)
	}
}
