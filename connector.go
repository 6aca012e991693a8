package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/lib/pq"
)

// Connector is an hv database/sql connector: it owns one inner *sql.DB per
// physical host and routes every statement, by the shard on its context, to
// a connection of the host that owns the shard, on the shard's schema.
// Use it with sql.OpenDB. It is safe for concurrent use.
type Connector struct {
	cfg    Config
	inner  innerConnectorFunc // nil: the configured inner driver
	fleet  atomic.Pointer[fleet]
	closed atomic.Bool
	mu     sync.Mutex // serialises Reset and Close
}

// fleet is one generation of host pools. Reset swaps in a new one; statements
// that already hold a connection finish on the generation they started on.
type fleet struct {
	hosts  []*hostPool
	ranges []ShardRange // ranges[i] is the shard range hosts[i] owns

	numShards int                        // Config.NumShards
	shardFunc func(key any) (int, error) // Config.ShardFunc
	logger    *slog.Logger               // Config.Logger
	byShard   []*hostPool                // indexed by shard; nil where no host owns it
	schemas   []string                   // indexed by shard: the schema name
	setPath   []string                   // indexed by shard: the statement that switches to it
}

// HostStats describes one physical host of a Connector.
type HostStats struct {
	// Host names the host as "host:port/dbname" (never with a password).
	Host string
	// Shards is the range of logical shards the host owns.
	Shards ShardRange
	// PoolMax is the host's connection limit.
	PoolMax int
	// DB is the inner *sql.DB's statistics: open, in-use and idle connections.
	DB sql.DBStats
	// WaitCount and WaitDuration count statements that found every
	// connection of the host busy, and how long they waited in total.
	WaitCount    int64
	WaitDuration time.Duration
	// Timeouts counts waits that ended in ErrPoolTimeout.
	Timeouts int64
	// SchemaSwitches counts the search_path switches sent to the host: the
	// statements that found no connection already on their shard's schema.
	SchemaSwitches int64
	// Shards has the counters of each shard the host owns, in shard order.
	ShardStats []ShardStats
}

// NewConnector validates cfg and opens one pool per host. No connection is
// made until a statement needs one. It returns an error wrapping ErrBadConfig
// when cfg is invalid. cfg is copied; later changes to it have no effect.
func NewConnector(cfg *Config) (*Connector, error) {
	return newConnector(cfg, nil)
}

// innerConnectorFunc makes the inner driver's connector for a host from its
// connection string; tests substitute go-sqlmock.
type innerConnectorFunc func(connString string) (driver.Connector, error)

func newConnector(cfg *Config, inner innerConnectorFunc) (*Connector, error) {
	if cfg == nil {
		return nil, fmt.Errorf("%w: nil Config", ErrBadConfig)
	}
	c := &Connector{cfg: *cfg, inner: inner}
	c.cfg.Hosts = append([]HostConfig(nil), cfg.Hosts...)
	if err := c.cfg.Validate(); err != nil {
		return nil, err
	}
	f, err := c.newFleet(nil)
	if err != nil {
		return nil, err
	}
	c.fleet.Store(f)
	return c, nil
}

// newFleet opens the pools of c.cfg's hosts, taking over those in keep
// (by poolKey) instead of opening them again; it removes what it takes from
// keep.
func (c *Connector) newFleet(keep map[string]*hostPool) (*fleet, error) {
	f := &fleet{
		byShard:   make([]*hostPool, NumShards),
		schemas:   make([]string, NumShards),
		setPath:   make([]string, NumShards),
		numShards: c.cfg.NumShards,
		shardFunc: c.cfg.ShardFunc,
		logger:    c.cfg.Logger,
	}
	var opened []*hostPool
	for i := range c.cfg.Hosts {
		hc := &c.cfg.Hosts[i]
		key := c.poolKey(hc)
		h, ok := keep[key]
		if ok {
			delete(keep, key)
		} else {
			var err error
			if h, err = c.openHost(hc); err != nil {
				for _, h := range opened {
					_ = h.close()
				}
				return nil, err
			}
			opened = append(opened, h)
		}
		h.shards.Store(int64(hc.Shards.End - hc.Shards.Start))
		f.hosts = append(f.hosts, h)
		f.ranges = append(f.ranges, hc.Shards)
		for s := hc.Shards.Start; s < hc.Shards.End; s++ {
			f.byShard[s] = h
			f.schemas[s] = c.cfg.SchemaName(s)
			f.setPath[s] = searchPathSQL(false, f.schemas[s], c.cfg.ExtSchema())
		}
	}
	return f, nil
}

// poolKey identifies what a host's pool is made of: its connection
// parameters and every setting its pool depends on. Reconfigure keeps a
// host's pool when its key stays the same.
func (c *Connector) poolKey(hc *HostConfig) string {
	poolMax := c.cfg.PoolMax
	if hc.PoolMax > 0 {
		poolMax = hc.PoolMax
	}
	conn := HostConfig{Params: hc.Params}
	return fmt.Sprintf("%s\x00%s\x00%d\x00%d\x00%v\x00%p\x00%s", conn.ConnString(), c.cfg.Driver,
		poolMax, c.cfg.ShardMax, c.cfg.PoolBlockTimeout, c.cfg.Logger, c.cfg.ExtSchema())
}

func (c *Connector) openHost(hc *HostConfig) (*hostPool, error) {
	poolMax := c.cfg.PoolMax
	if hc.PoolMax > 0 {
		poolMax = hc.PoolMax
	}
	params := make(map[string]string, len(hc.Params)+2)
	for k, v := range hc.Params {
		params[k] = v
	}
	if _, ok := params["connect_timeout"]; !ok {
		// Bound connecting by about the block timeout, so that a host that
		// does not answer fails a statement in about that long.
		secs := int(math.Ceil(c.cfg.PoolBlockTimeout.Seconds()))
		params["connect_timeout"] = strconv.Itoa(max(secs, 2))
	}
	if _, ok := params["application_name"]; !ok {
		params["application_name"] = "hv"
	}
	txMode := c.cfg.PoolMode == PoolModeTransaction
	if _, ok := params["default_query_exec_mode"]; !ok && txMode {
		params["default_query_exec_mode"] = "exec" // no named statements
	}
	inner := HostConfig{Shards: hc.Shards, Params: params}
	name := hc.Name()

	ic, err := c.innerConnector(inner.ConnString())
	if err != nil {
		return nil, fmt.Errorf("%w: host %s (shards %s): %s", ErrBadConfig, name, hc.Shards, redactErr(err, hc))
	}
	h := &hostPool{
		name:         name,
		permits:      make(chan struct{}, poolMax),
		poolMax:      poolMax,
		shardMax:     c.cfg.ShardMax,
		blockTimeout: c.cfg.PoolBlockTimeout,
		logger:       c.cfg.Logger,
	}
	h.db = sql.OpenDB(trackingConnector{inner: ic, switches: &h.switches, txMode: txMode, ext: c.cfg.ExtSchema()})
	h.db.SetMaxOpenConns(poolMax)
	h.db.SetMaxIdleConns(poolMax)
	return h, nil
}

// innerConnector returns the inner driver's connector for one host.
func (c *Connector) innerConnector(connString string) (driver.Connector, error) {
	if c.inner != nil {
		return c.inner(connString)
	}
	switch c.cfg.Driver {
	case "pgx", "":
		pc, err := pgx.ParseConfig(connString)
		if err != nil {
			return nil, err
		}
		return stdlib.GetConnector(*pc), nil
	case "postgres":
		return pq.NewConnector(connString)
	}
	return nil, fmt.Errorf("unknown driver %q (want pgx or postgres)", c.cfg.Driver)
}

// redactErr returns err's text with the host's password removed.
func redactErr(err error, hc *HostConfig) string {
	msg := err.Error()
	for k := range secretParams {
		if pw := hc.Params[k]; pw != "" {
			msg = strings.ReplaceAll(msg, pw, redactedSecret)
		}
	}
	return msg
}

func (f *fleet) close() {
	for _, h := range f.hosts {
		_ = h.close()
	}
}

// retire closes the pools of f that are not in keep once they are idle.
func (f *fleet) retire(keep map[*hostPool]bool) {
	for _, h := range f.hosts {
		if !keep[h] {
			h.retire()
		}
	}
}

// Connect returns a new virtual connection. It only allocates: the physical
// connection is taken from the shard's host when a statement runs.
// It returns ErrClosed after Close.
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	cn := &conn{connector: c, intended: -1, shard: -1, fixed: -1}
	cn.checkout(ctx)
	return cn, nil
}

// Driver returns the hv driver.
func (c *Connector) Driver() driver.Driver { return &Driver{} }

// Config returns a copy of the configuration the Connector was built with.
func (c *Connector) Config() *Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg := c.cfg
	cfg.Hosts = append([]HostConfig(nil), c.cfg.Hosts...)
	return &cfg
}

// Close closes every host pool (the seed's disconnect). Statements already
// running finish; new ones fail with ErrClosed. sql.DB.Close calls it.
func (c *Connector) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Swap(true) {
		return nil
	}
	c.fleet.Load().close()
	return nil
}

// Reset closes every host pool and opens new ones (the seed's
// reinstantiate): idle connections are closed at once, connections in use
// when their statement, transaction or Conn ends. It returns ErrClosed after
// Close.
func (c *Connector) Reset() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	f, err := c.newFleet(nil)
	if err != nil {
		return err
	}
	c.fleet.Swap(f).retire(nil)
	return nil
}

// Reconfigure swaps in a new host list and options without a restart (a
// live shard map): statements, transactions and pinned Conns that start
// afterwards go to the shards' new owners, while those already running
// finish where they started. Pools of hosts that stay, with the same
// connection parameters and pool settings, are kept with their
// connections; pools of hosts that left are closed once the statements
// using them end.
//
// cfg is validated and copied as by NewConnector; on error (wrapping
// ErrBadConfig, or a host that cannot be set up) nothing changes. It
// returns ErrClosed after Close.
func (c *Connector) Reconfigure(cfg *Config) error {
	if cfg == nil {
		return fmt.Errorf("%w: nil Config", ErrBadConfig)
	}
	next := *cfg
	next.Hosts = append([]HostConfig(nil), cfg.Hosts...)
	if err := next.Validate(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	old := c.fleet.Load()
	keep := make(map[string]*hostPool, len(old.hosts))
	for i, h := range old.hosts {
		keep[c.poolKey(&c.cfg.Hosts[i])] = h
	}
	prev := c.cfg
	c.cfg = next
	f, err := c.newFleet(maps.Clone(keep))
	if err != nil {
		c.cfg = prev
		return err
	}
	kept := make(map[*hostPool]bool, len(f.hosts))
	for _, h := range f.hosts {
		kept[h] = true
	}
	c.fleet.Store(f)
	old.retire(kept)
	return nil
}

// Stats returns, per host in configuration order, its shard range and pool
// statistics.
func (c *Connector) Stats() []HostStats {
	f := c.fleet.Load()
	out := make([]HostStats, len(f.hosts))
	for i, h := range f.hosts {
		out[i] = HostStats{
			Host:           h.name,
			Shards:         f.ranges[i],
			PoolMax:        h.poolMax,
			DB:             h.stats(),
			WaitCount:      h.waits.Load(),
			WaitDuration:   time.Duration(h.waitNanos.Load()),
			Timeouts:       h.timeouts.Load(),
			SchemaSwitches: h.switches.Load(),
			ShardStats:     h.shardStats(f.ranges[i]),
		}
	}
	return out
}

// SchemaFor returns the schema name of shard and the name of the host that
// owns it, or an error wrapping ErrUnknownShard.
func (c *Connector) SchemaFor(shard int) (schema, host string, err error) {
	f := c.fleet.Load()
	h, err := f.host(shard)
	if err != nil {
		return "", "", err
	}
	return f.schemas[shard], h.name, nil
}

func (f *fleet) host(shard int) (*hostPool, error) {
	if shard < 0 || shard > MaxShard {
		return nil, fmt.Errorf("%w: shard %d is outside 0..%d", ErrUnknownShard, shard, MaxShard)
	}
	h := f.byShard[shard]
	if h == nil {
		return nil, fmt.Errorf("%w: shard %d", ErrUnknownShard, shard)
	}
	return h, nil
}

// pingAll pings every host concurrently and returns the errors joined, each
// naming its host.
func (c *Connector) pingAll(ctx context.Context) error {
	f := c.fleet.Load()
	errs := make([]error, len(f.hosts))
	var wg sync.WaitGroup
	for i, h := range f.hosts {
		wg.Go(func() {
			if err := h.db.PingContext(ctx); err != nil {
				errs[i] = fmt.Errorf("hv: host %s: %w", h.name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Connector) logStatement(ctx context.Context, shard int, host string, start time.Time, err error) {
	attrs := []slog.Attr{slog.Int("shard", shard), slog.String("host", host), slog.Duration("duration", time.Since(start))}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	c.fleet.Load().logger.LogAttrs(ctx, slog.LevelDebug, "hv: statement", attrs...)
}

func (c *Connector) debugEnabled(ctx context.Context) bool {
	l := c.fleet.Load().logger
	return l != nil && l.Enabled(ctx, slog.LevelDebug)
}
