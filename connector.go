package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"

	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/lib/pq"
)

// Connector is an hv database/sql connector: it owns one inner *sql.DB per
// physical host and routes every statement, by the shard on its context, to
// a connection of the host that owns the shard, on the shard's schema.
// Use it with sql.OpenDB. It is safe for concurrent use.
type Connector struct {
	cfg    Config
	moves  shardMoves         // shards learnt to live elsewhere than cfg says (moved.go)
	inner  innerConnectorFunc // nil: the configured inner driver
	fleet  atomic.Pointer[fleet]
	closed atomic.Bool
	mu     sync.Mutex // serialises Reset and Close

	workers workers // fan-out shard workers, kept between fan-outs
}

// fleet is one generation of the shard map and its host pools. Reconfigure
// and Reset swap in a new one; statements that already hold a connection
// finish on the generation they started on.
type fleet struct {
	hosts  []fleetHost  // in configuration order
	shards []*placement // indexed by shard; nil where no host owns it

	libpq         bool                       // the inner driver is lib/pq: Go slices go as pq.Array
	maxReplicaLag time.Duration              // Config.MaxReplicaLag, defaulted
	keyShards     int                        // Config.KeyShards
	shardFunc     func(key any) (int, error) // Config.ShardFunc
	logger        *slog.Logger               // Config.Logger
	tracer        Tracer                     // Config.Tracer (tracer.go)
}

// fleetHost is a host of a fleet and the shards it owns: those of its
// configuration, less those moved away, plus those moved to it (moved.go).
type fleetHost struct {
	pool     *hostPool
	shards   ShardSet
	replicas *replicaSet // nil without replicas (replica.go)
}

// pools returns the host's pool and its replicas' pools.
func (h fleetHost) pools() []*hostPool {
	if h.replicas == nil {
		return []*hostPool{h.pool}
	}
	return append([]*hostPool{h.pool}, h.replicas.pools...)
}

// placement is where one shard lives in a fleet: its host and schema, the
// statements that put a session's search_path on it (setPath, and
// localPath for the current transaction only; both name the extension
// schema after it, searchpath.go), search_path's value for it (pathValue,
// which pool_mode=transaction sets with set_config), and the shard's
// counters on the host.
type placement struct {
	shard     int
	host      *hostPool
	schema    string
	setPath   string
	localPath string
	pathValue string
	counters  *shardCounters

	// On a primary's placement, the shard's placements on the host's
	// replicas and whose turn it is (replica.go); nil on a replica's.
	replicas   []*placement
	replicaSet *replicaSet
}

// place returns shard's placement, or a *ShardError wrapping
// ErrUnknownShard.
func (f *fleet) place(shard int) (*placement, error) {
	if shard < 0 || shard > MaxShard {
		return nil, &ShardError{Shard: shard, Err: errorf(ErrUnknownShard, "shards are 0..%d", MaxShard)}
	}
	if p := f.shards[shard]; p != nil {
		return p, nil
	}
	return nil, &ShardError{Shard: shard, Err: ErrUnknownShard}
}

// owned returns every shard the fleet owns, in order.
func (f *fleet) owned() []int {
	var out []int
	for _, h := range f.hosts {
		out = append(out, h.shards.List()...)
	}
	slices.Sort(out)
	return out
}

// HostStats describes one physical host of a Connector.
type HostStats struct {
	// Host names the host as "host:port/dbname" (never with a password).
	Host string
	// Shards are the logical shards the host owns: those of the
	// configuration, less those moved away and plus those moved to it
	// (MoveShard), as this Connector has learnt.
	Shards ShardSet
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
	// Replicas describes the host's streaming replicas, in configuration
	// order (replica.go).
	Replicas []ReplicaStats
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
	f, err := c.newFleet(&c.cfg, nil)
	if err != nil {
		return nil, err
	}
	c.fleet.Store(f)
	return c, nil
}

// newFleet opens the pools of cfg's hosts, taking over those in keep (by
// their connection string) instead of opening them again, with cfg's pool
// settings applied in place; it removes what it takes from keep.
func (c *Connector) newFleet(cfg *Config, keep map[string]*hostPool) (*fleet, error) {
	f := &fleet{
		shards:        make([]*placement, NumShards),
		libpq:         cfg.Driver == "postgres",
		keyShards:     cfg.KeyShards,
		shardFunc:     cfg.ShardFunc,
		logger:        cfg.Logger,
		tracer:        cfg.Tracer,
		maxReplicaLag: cfg.maxReplicaLag(),
	}
	var opened []*hostPool
	var configure []func() // kept pools take cfg's settings once nothing can fail
	owns, err := c.moves.apply(cfg)
	if err != nil {
		return nil, err
	}
	for i := range cfg.Hosts {
		hc := &cfg.Hosts[i]
		connString := innerConnString(cfg, hc)
		// Sessions remember their schema by name: another extension
		// schema on the path needs other sessions.
		key := cfg.Driver + "\x00" + string(cfg.PoolMode) + "\x00" + cfg.ExtSchema() + "\x00" + connString
		set := poolSettings{poolMax: cfg.poolMaxOf(hc), shardMax: cfg.ShardMax,
			blockTimeout: cfg.PoolBlockTimeout, logger: cfg.Logger, tracer: cfg.Tracer}
		h, ok := keep[key]
		if ok {
			delete(keep, key)
			configure = append(configure, func() { h.configure(set) })
		} else {
			var err error
			if h, err = c.openHost(cfg, hc, connString, set); err != nil {
				for _, h := range opened {
					_ = h.close()
				}
				return nil, err
			}
			h.key = key
			opened = append(opened, h)
		}
		h.shards.Store(int64(owns[i].Len()))
		rs, err := c.openReplicas(cfg, hc, owns[i], connString, set, keep, &opened, &configure)
		if err != nil {
			for _, h := range opened {
				_ = h.close()
			}
			return nil, err
		}
		f.hosts = append(f.hosts, fleetHost{pool: h, shards: owns[i], replicas: rs})
		for s := range owns[i].All() {
			schema := cfg.SchemaName(s)
			f.shards[s] = &placement{shard: s, host: h, schema: schema,
				setPath:   searchPathSQL(false, schema, cfg.ExtSchema()),
				localPath: searchPathSQL(true, schema, cfg.ExtSchema()),
				pathValue: searchPathValue(schema, cfg.ExtSchema()),
				counters:  h.counters(s)}
			placeReplicas(f.shards[s], rs)
		}
	}
	for _, apply := range configure {
		apply()
	}
	return f, nil
}

// poolMaxOf returns the connection limit of host hc.
func (c *Config) poolMaxOf(hc *HostConfig) int {
	if hc.PoolMax > 0 {
		return hc.PoolMax
	}
	return c.PoolMax
}

// innerConnString returns the connection string hv gives the inner driver
// for host hc, with hv's defaults filled in. Reconfigure keeps a host's
// pool when it, the driver, the pool mode and the extension schema stay the same.
func innerConnString(cfg *Config, hc *HostConfig) string {
	params := make(map[string]string, len(hc.Params)+2)
	for k, v := range hc.Params {
		params[k] = v
	}
	if _, ok := params["connect_timeout"]; !ok {
		// Bound connecting by about the block timeout, so that a host that
		// does not answer fails a statement in about that long.
		secs := int(math.Ceil(cfg.PoolBlockTimeout.Seconds()))
		params["connect_timeout"] = strconv.Itoa(max(secs, 2))
	}
	if _, ok := params["application_name"]; !ok {
		params["application_name"] = "hv"
	}
	if _, ok := params["default_query_exec_mode"]; !ok && cfg.PoolMode == PoolModeTransaction {
		params["default_query_exec_mode"] = "exec" // no named statements
	}
	return HostConfig{Params: params}.ConnString()
}

// openHost opens the pool of host hc over the inner connection string
// connString (from innerConnString).
func (c *Connector) openHost(cfg *Config, hc *HostConfig, connString string, set poolSettings) (*hostPool, error) {
	ic, err := c.innerConnector(cfg.Driver, connString)
	if err != nil {
		return nil, fmt.Errorf("%w: host %s (shards %s): %s", ErrBadConfig, hc.Name(), hc.Shards, innerConfigErr(err))
	}
	sc := sessionConnector{inner: ic, txMode: cfg.PoolMode == PoolModeTransaction}
	h := newHostPool(hc.Name(), sql.OpenDB(&sc), set)
	h.peer = newPeer(hc)
	sc.switches = &h.switches
	return h, nil
}

// innerConnector returns the inner driver's connector for one host.
func (c *Connector) innerConnector(driverName, connString string) (driver.Connector, error) {
	if c.inner != nil {
		return c.inner(connString)
	}
	switch driverName {
	case "pgx", "":
		pc, err := pgx.ParseConfig(connString)
		if err != nil {
			return nil, err
		}
		return stdlib.GetConnector(*pc), nil
	case "postgres":
		return pq.NewConnector(connString)
	}
	return nil, fmt.Errorf("unknown driver %q (want pgx or postgres)", driverName)
}

// innerConfigErr returns the reason the inner driver refused a host's
// connection parameters without the connection string, which can hold a
// password: pgx's ParseConfigError quotes the string (redacted as best it
// can), so only its cause is kept; hv names the host itself.
func innerConfigErr(err error) string {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return err.Error()
	}
	if cause := pe.Unwrap(); cause != nil {
		return "invalid connection parameters: " + cause.Error()
	}
	return "invalid connection parameters"
}

func (f *fleet) close() {
	for _, h := range f.hosts {
		for _, p := range h.pools() {
			_ = p.close()
		}
	}
}

// retire closes the pools of f that are not in keep once they are idle.
func (f *fleet) retire(keep map[*hostPool]bool) {
	for _, h := range f.hosts {
		for _, p := range h.pools() {
			if !keep[p] {
				p.retire()
			}
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
	cn := &conn{connector: c, intended: -1, fixed: -1}
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
	c.workers.close()
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
	f, err := c.newFleet(&c.cfg, nil)
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
	return c.rebuildLocked(&next)
}

// rebuildLocked makes next the configuration and swaps in its fleet,
// keeping the pools that stay. Called with c.mu held.
func (c *Connector) rebuildLocked(next *Config) error {
	old := c.fleet.Load()
	keep := make(map[string]*hostPool, len(old.hosts))
	for _, h := range old.hosts {
		for _, p := range h.pools() {
			keep[p.key] = p
		}
	}
	f, err := c.newFleet(next, keep)
	if err != nil {
		return err
	}
	kept := make(map[*hostPool]bool, len(f.hosts))
	for _, h := range f.hosts {
		for _, p := range h.pools() {
			kept[p] = true
		}
	}
	c.cfg = *next
	c.fleet.Store(f)
	old.retire(kept)
	return nil
}

// Stats returns, per host in configuration order, its shard range and pool
// statistics.
func (c *Connector) Stats() []HostStats {
	f := c.fleet.Load()
	out := make([]HostStats, len(f.hosts))
	for i, fh := range f.hosts {
		h := fh.pool
		out[i] = HostStats{
			Host:           h.name,
			Shards:         fh.shards,
			PoolMax:        h.poolMax(),
			DB:             h.stats(),
			WaitCount:      h.waits.Load(),
			WaitDuration:   time.Duration(h.waitNanos.Load()),
			Timeouts:       h.timeouts.Load(),
			SchemaSwitches: h.switches.Load(),
			ShardStats:     h.shardStats(fh.shards),
			Replicas:       fh.replicas.stats(),
		}
	}
	return out
}

// SchemaFor returns the schema name of shard and the name of the host that
// owns it, or an error wrapping ErrUnknownShard.
func (c *Connector) SchemaFor(shard int) (schema, host string, err error) {
	p, err := c.fleet.Load().place(shard)
	if err != nil {
		return "", "", err
	}
	return p.schema, p.host.name, nil
}

// pingAll pings every host concurrently and returns the errors joined, each
// naming its host.
func (c *Connector) pingAll(ctx context.Context) error {
	f := c.fleet.Load()
	errs := make([]error, len(f.hosts))
	var wg sync.WaitGroup
	for i, h := range f.hosts {
		wg.Go(func() {
			if err := h.pool.db.PingContext(ctx); err != nil {
				errs[i] = fmt.Errorf("hv: host %s: %w", h.pool.name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Connector) logStatement(ctx context.Context, p *placement, start time.Time, err error) {
	attrs := []slog.Attr{slog.Int("shard", p.shard), slog.String("host", p.host.name), slog.Duration("duration", time.Since(start))}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	c.fleet.Load().logger.LogAttrs(ctx, slog.LevelDebug, "hv: statement", attrs...)
}

func (c *Connector) debugEnabled(ctx context.Context) bool {
	l := c.fleet.Load().logger
	return l != nil && l.Enabled(ctx, slog.LevelDebug)
}
