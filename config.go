package hv

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Defaults applied by ParseConfig and NewConnector.
const (
	DefaultPoolMax          = 10
	DefaultPoolBlockTimeout = 5 * time.Second
	DefaultSchemaPattern    = "shard%04d"
	DefaultDriver           = "pgx"
	// DefaultMaxReplicaLag bounds how stale a replica may be before reads
	// skip it (Config.MaxReplicaLag zero, DSN max_replica_lag unset).
	DefaultMaxReplicaLag = time.Second
)

// Pool modes (Config.PoolMode, DSN pool_mode).
const (
	// PoolModeSession, the default, sets search_path once per physical
	// connection and remembers it: for direct connections and for PgBouncer
	// in session pooling mode.
	PoolModeSession = "session"
	// PoolModeTransaction sets the schema inside every transaction (SET
	// LOCAL) and keeps no session state: for PgBouncer (or any pooler) in
	// transaction pooling mode, where consecutive transactions of one client
	// connection may run on different server connections.
	PoolModeTransaction = "transaction"
)

// ShardRange is the half-open range [Start, End) of logical shards a host owns.
// In a DSN it is written "Start-End": shards=1-9 is shards 1 through 8.
type ShardRange struct {
	Start, End int
}

// Contains reports whether shard n is in the range.
func (r ShardRange) Contains(n int) bool { return n >= r.Start && n < r.End }

// Len returns the number of shards in the range.
func (r ShardRange) Len() int { return r.End - r.Start }

// String returns the range in DSN form, "Start-End".
func (r ShardRange) String() string { return fmt.Sprintf("%d-%d", r.Start, r.End) }

// HostConfig is one physical PostgreSQL server (or database) and the logical
// shards it owns.
type HostConfig struct {
	// Shards are the logical shards this host owns: one or more half-open
	// ranges, or none for a host ready to receive shards.
	Shards ShardSet
	// Params holds the libpq connection keywords passed to the inner driver
	// (host, port, user, password, dbname, sslmode, connect_timeout, ...).
	// "database" is accepted in a DSN and stored as "dbname".
	Params map[string]string
	// PoolMax overrides Config.PoolMax for this host when > 0.
	PoolMax int
	// Replicas lists the host's streaming replicas as "HOST:PORT"
	// addresses (DSN replicas=HOST:PORT[,HOST:PORT...]); every other
	// connection keyword is the host's. Statements on WithReplica
	// contexts read from them (replica.go).
	Replicas []string
}

// Config is a parsed hv DSN. Build one with ParseConfig, adjust it, and pass
// it to NewConnector.
type Config struct {
	// Hosts lists the physical hosts; their shard ranges must not overlap.
	Hosts []HostConfig
	// PoolMax is the maximum number of open connections per host (default 10).
	PoolMax int
	// PoolBlockTimeout is how long a statement waits for a free connection of
	// its host before failing with ErrPoolTimeout (default 5s).
	PoolBlockTimeout time.Duration
	// Driver names the inner database/sql driver: "pgx" (default, pgx/v5
	// stdlib) or "postgres" (lib/pq).
	Driver string
	// SchemaPattern is the fmt pattern that turns a shard number into its
	// schema name (default "shard%04d").
	SchemaPattern string
	// Epoch is the time Keys count milliseconds from; zero means DefaultEpoch.
	Epoch time.Time
	// KeyShards is the count of logical shards the application spreads its
	// own keys over (DSN num_shards): WithShardKey maps an integer key k to
	// shard k mod KeyShards and a string key to a stable hash mod KeyShards
	// (see ShardForKey), so hosts should own shards 0..KeyShards-1. Zero
	// means WithShardKey is not configured. The shard space itself is the
	// package constant NumShards (8192), what a Key can address.
	KeyShards int
	// ShardFunc, when set, replaces the default key-to-shard mapping of
	// WithShardKey and Connector.ShardFor. It must be safe for concurrent
	// use and return the same shard for the same key every time.
	ShardFunc func(key any) (int, error)
	// ShardMax caps the connections one logical shard may hold on its host
	// at once (DSN shard_max), so that a hot shard leaves room for its
	// neighbours; waiting for the cap counts against PoolBlockTimeout. Zero
	// means no cap beyond the host's pool_max.
	ShardMax int
	// PoolMode is PoolModeSession (also when empty) or PoolModeTransaction;
	// see the DSN option pool_mode.
	PoolMode string
	// ExtensionSchema is the schema that holds the fleet's extensions
	// (hstore and any the application installs), placed after the shard's
	// schema on search_path so that their types, functions and operators
	// resolve unqualified (DSN ext_schema). Empty means
	// DefaultExtensionSchema ("hv_ext"); NoExtensionSchema ("none") leaves
	// search_path on the shard's schema alone. It must hold no tables:
	// CreateShards and Datastore.CheckExtensions check that. It may not be
	// public, whose tables a shard's missing table would then read.
	ExtensionSchema string
	// MaxReplicaLag is how far behind its primary a replica may be before
	// reads skip it for the primary (DSN max_replica_lag). Zero means
	// DefaultMaxReplicaLag (1s).
	MaxReplicaLag time.Duration
	// Logger, when set, receives each statement at Debug level (shard, host,
	// duration) and pool timeouts at Warn level.
	Logger *slog.Logger
	// Tracer, when set, is told about every statement, transaction,
	// fan-out and wait for a connection (see Tracer; hv/otelhv and
	// hv/promhv implement it). It is not part of the DSN. Nil costs
	// nothing.
	Tracer Tracer
}

// redactedSecret replaces secret values (passwords) in error messages and String
// output.
const redactedSecret = "xxxxx"

// secretParams are the connection keywords whose values are never shown.
var secretParams = map[string]bool{"password": true, "sslpassword": true}

// dsnGlobalKeys are the options of a segment without shards=, in the order
// errors list them.
var dsnGlobalKeys = []string{"pool_max", "pool_block_timeout", "driver", "schema", "epoch", "num_shards", "shard_max", "pool_mode", "ext_schema", "max_replica_lag"}

// libpqKeywords are the connection keywords libpq documents (plus the "database"
// alias). Unknown keywords are passed through too; this list only serves
// hints in error messages.
var libpqKeywords = map[string]bool{
	"host": true, "hostaddr": true, "port": true, "dbname": true, "database": true,
	"user": true, "password": true, "passfile": true, "require_auth": true,
	"channel_binding": true, "connect_timeout": true, "client_encoding": true,
	"options": true, "application_name": true, "fallback_application_name": true,
	"keepalives": true, "keepalives_idle": true, "keepalives_interval": true,
	"keepalives_count": true, "tcp_user_timeout": true, "replication": true,
	"gssencmode": true, "sslmode": true, "sslnegotiation": true,
	"sslcompression": true, "sslcert": true, "sslkey": true, "sslkeylogfile": true,
	"sslpassword": true, "sslcertmode": true, "sslrootcert": true, "sslcrl": true,
	"sslcrldir": true, "sslsni": true, "requirepeer": true,
	"ssl_min_protocol_version": true, "ssl_max_protocol_version": true,
	"min_protocol_version": true, "max_protocol_version": true,
	"krbsrvname": true, "gsslib": true, "gssdelegation": true, "service": true,
	"target_session_attrs": true, "load_balance_hosts": true,
}

// ParseConfig parses an hv DSN into a Config with the defaults filled in, and
// validates it (see Validate).
//
// A DSN is a list of segments separated by ';'. Each segment holds libpq
// style keyword/value pairs separated by white space: key=value, with
// optional spaces around '='. A value is either unquoted (it ends at white
// space or ';', and a backslash takes the next character literally) or
// single-quoted ('...', in which \' and \\ stand for ' and \, and white space
// and ';' are part of the value). Empty segments are ignored. Unlike libpq,
// "key= other=value" is refused rather than read as key="other=value", and
// so is a segment that directly follows an unquoted password ended by ';'
// (password=a;b=c) when its first key is not a known keyword: both usually
// mean a value that should have been quoted.
//
// A segment with shards=A-B describes a host owning the logical shards
// [A, B), 0 <= A < B <= NumShards; shards=A-B,C-D a host owning several
// ranges, and shards=” one owning none yet (a host that MoveShard may
// move shards to). No two ranges, of one host or of two, may overlap. Its other keys are libpq connection
// keywords handed to the inner driver (database is stored as dbname), except
// pool_max=N, which overrides the global pool_max for that host, and
// replicas=HOST:PORT[,HOST:PORT...], the host's streaming replicas (see
// WithReplica). search_path may not be set, neither directly nor through
// options: hv owns it. libpq's multi-host form (host=a,b port=p,q
// target_session_attrs=read-write) needs driver pgx.
//
// A segment without shards= holds global options: pool_max (default 10),
// pool_block_timeout (default 5s; a bare number is seconds, or a Go duration
// such as 300ms; 0 means fail at once when no connection is free), driver
// ("pgx", the default, or "postgres" for lib/pq), schema (the schema name
// pattern, default "shard%04d"), epoch (milliseconds since 1970-01-01 UTC,
// or an RFC 3339 time) and pool_mode ("session", the default, or
// "transaction" for hosts behind PgBouncer in transaction pooling mode: hv
// then sets the schema with SET LOCAL inside every transaction, keeps no
// session state and makes pgx use unnamed statements,
// default_query_exec_mode=exec, unless a host sets cache_statement for a
// pooler that keeps named statements, PgBouncer 1.21 or later with
// max_prepared_statements; it needs driver pgx), and ext_schema (the schema
// of the extensions, after the shard's schema on search_path; default
// hv_ext, "none" for the shard's schema alone; see Config.ExtensionSchema),
// and max_replica_lag (how far behind a replica may be before reads skip
// it; default 1s, a duration as for pool_block_timeout but positive).
//
// On failure ParseConfig returns nil and an error wrapping ErrBadConfig that
// names the offending segment by its 1-based number (counting empty
// segments too) and quotes its text with passwords replaced by "xxxxx".
// Syntax errors give the 1-based byte position in dsn instead of echoing the
// text that could not be parsed.
func ParseConfig(dsn string) (*Config, error) {
	segs, err := tokenizeDSN(dsn)
	if err != nil {
		return nil, err
	}
	cfg := &Config{
		PoolMax:          DefaultPoolMax,
		PoolBlockTimeout: DefaultPoolBlockTimeout,
		Driver:           DefaultDriver,
		SchemaPattern:    DefaultSchemaPattern,
	}
	var hostSegs []*dsnSegment
	globalSeg := map[string]*dsnSegment{}
	for _, seg := range segs {
		if err := seg.checkKeys(); err != nil {
			return nil, err
		}
		if i := seg.find("shards"); i >= 0 {
			h, err := seg.host(i)
			if err != nil {
				return nil, err
			}
			cfg.Hosts = append(cfg.Hosts, h)
			hostSegs = append(hostSegs, seg)
			continue
		}
		for i := range seg.pairs {
			p := &seg.pairs[i]
			if prev := globalSeg[p.key]; prev != nil && !p.secret {
				return nil, seg.errorf("%s is already set in segment %d %q", p.key, prev.num, prev.text())
			}
			if err := seg.global(cfg, p); err != nil {
				return nil, err
			}
			globalSeg[p.key] = seg
		}
	}
	where := cfgPlaces{
		host: func(i int) cfgPlace { return hostSegs[i].cfgPlace() },
		global: func(key string) cfgPlace {
			if s := globalSeg[key]; s != nil {
				return s.cfgPlace()
			}
			return cfgPlace{where: key + " (default)"}
		},
	}
	if err := cfg.validate(where); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Validate checks c and fills in the defaults for its zero fields: PoolMax
// (DefaultPoolMax), Driver (DefaultDriver) and SchemaPattern
// (DefaultSchemaPattern). A zero PoolBlockTimeout stays zero and means "fail
// at once when no connection is free"; a zero Epoch stays zero and means
// DefaultEpoch. A zero HostConfig.PoolMax means Config.PoolMax.
//
// It checks that there is at least one host, that every shard range is
// non-empty, within 0..NumShards and overlaps no other, that no pool size
// or timeout is negative, that Driver is "pgx" or "postgres", that
// SchemaPattern yields safe schema names, that Epoch is neither before 1970
// nor in the future, and that no host's Params set search_path, use a
// keyword reserved to hv or hold a NUL byte.
//
// On failure it returns an error wrapping ErrBadConfig that names the
// offending host by its index in Hosts and its Name; passwords never appear
// in it. Validate on a nil Config returns such an error too.
func (c *Config) Validate() error {
	if c == nil {
		return fmt.Errorf("%w: nil Config", ErrBadConfig)
	}
	if c.PoolMax == 0 {
		c.PoolMax = DefaultPoolMax
	}
	if c.Driver == "" {
		c.Driver = DefaultDriver
	}
	if c.SchemaPattern == "" {
		c.SchemaPattern = DefaultSchemaPattern
	}
	return c.validate(cfgPlaces{
		host: func(i int) cfgPlace {
			return cfgPlace{where: fmt.Sprintf("Hosts[%d] (%s)", i, c.Hosts[i].Name())}
		},
		global: func(key string) cfgPlace {
			return cfgPlace{where: "Config." + map[string]string{
				"pool_max": "PoolMax", "pool_block_timeout": "PoolBlockTimeout",
				"driver": "Driver", "schema": "SchemaPattern", "epoch": "Epoch",
				"num_shards": "KeyShards", "shard_max": "ShardMax",
				"pool_mode": "PoolMode", "ext_schema": "ExtensionSchema",
				"max_replica_lag": "MaxReplicaLag",
			}[key]}
		},
	})
}

// cfgPlace says where a configuration error is: a DSN segment or a Config
// field, and an optional hint appended to the message.
type cfgPlace struct {
	where, hint string
}

// cfgPlaces maps hosts (by index in Config.Hosts) and global options (by DSN
// key) to where they were configured.
type cfgPlaces struct {
	host   func(i int) cfgPlace
	global func(key string) cfgPlace
}

func (p cfgPlace) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s%s", ErrBadConfig, p.where, fmt.Sprintf(format, args...), p.hint)
}

// validate is Validate without the defaults, reporting errors at where.
func (c *Config) validate(where cfgPlaces) error {
	if len(c.Hosts) == 0 {
		return fmt.Errorf("%w: no hosts: a DSN needs at least one segment with shards=A-B (or shards='' for a host without shards)", ErrBadConfig)
	}
	if c.PoolMax < 1 {
		return where.global("pool_max").errorf("pool_max %d is less than 1", c.PoolMax)
	}
	if c.PoolBlockTimeout < 0 {
		return where.global("pool_block_timeout").errorf("pool_block_timeout %v is negative", c.PoolBlockTimeout)
	}
	if c.Driver != "pgx" && c.Driver != "postgres" {
		return where.global("driver").errorf("driver %q is not supported: use pgx or postgres", c.Driver)
	}
	switch c.PoolMode {
	case "", PoolModeSession:
	case PoolModeTransaction:
		if c.Driver != "pgx" {
			return where.global("pool_mode").errorf("pool_mode transaction needs driver pgx, not %q", c.Driver)
		}
	default:
		return where.global("pool_mode").errorf("pool_mode %q is not supported: use session or transaction", c.PoolMode)
	}
	if msg := checkSchemaPattern(c.SchemaPattern); msg != "" {
		return where.global("schema").errorf("schema pattern %q %s", c.SchemaPattern, msg)
	}
	if msg := checkExtensionSchema(c.ExtensionSchema, c.SchemaPattern); msg != "" {
		return where.global("ext_schema").errorf("ext_schema %q %s", c.ExtensionSchema, msg)
	}
	if c.KeyShards < 0 || c.KeyShards > NumShards {
		return where.global("num_shards").errorf("num_shards %d is outside 1..%d (0 leaves it unset)", c.KeyShards, NumShards)
	}
	if c.ShardMax < 0 {
		return where.global("shard_max").errorf("shard_max %d is negative", c.ShardMax)
	}
	if c.MaxReplicaLag < 0 {
		return where.global("max_replica_lag").errorf("max_replica_lag %v is negative", c.MaxReplicaLag)
	}
	if !c.Epoch.IsZero() {
		if c.Epoch.Before(time.Unix(0, 0)) {
			return where.global("epoch").errorf("epoch %s is before 1970-01-01T00:00:00Z", c.Epoch.Format(time.RFC3339Nano))
		}
		if c.Epoch.After(time.Now()) {
			return where.global("epoch").errorf("epoch %s is in the future", c.Epoch.Format(time.RFC3339Nano))
		}
	}
	for i, h := range c.Hosts {
		for _, r := range h.Shards {
			switch {
			case r.Start < 0 || r.End > NumShards || r.Start > MaxShard:
				return where.host(i).errorf("shard range %s is outside 0-%d (shards are 0..%d)", r, NumShards, MaxShard)
			case r.Start >= r.End:
				return where.host(i).errorf("empty or reversed shard range %s", r)
			}
		}
		if h.PoolMax < 0 {
			return where.host(i).errorf("pool_max %d is negative", h.PoolMax)
		}
		if m, ok := h.Params["default_query_exec_mode"]; ok && c.PoolMode == PoolModeTransaction && !txModeExecModes[m] {
			return where.host(i).errorf("default_query_exec_mode %q cannot work with pool_mode transaction: use exec, simple_protocol or describe_exec, or cache_statement behind a pooler that keeps named statements (PgBouncer 1.21 or later with max_prepared_statements)", m)
		}
		for _, k := range sortedParamKeys(h.Params) {
			if msg := checkHostParam(k, h.Params[k]); msg != "" {
				return where.host(i).errorf("%s", msg)
			}
		}
		if msg := checkReplicas(c, &h); msg != "" { // config_replica.go
			return where.host(i).errorf("%s", msg)
		}
	}
	// Every range of every host, by start: a range overlapping any
	// earlier one overlaps the one just before it.
	type owned struct {
		host int
		r    ShardRange
	}
	var all []owned
	for i, h := range c.Hosts {
		for _, r := range h.Shards {
			all = append(all, owned{i, r})
		}
	}
	sort.SliceStable(all, func(a, b int) bool { return all[a].r.Start < all[b].r.Start })
	for k := 1; k < len(all); k++ {
		a, b := all[k-1], all[k]
		if b.r.Start < a.r.End {
			if a.host > b.host {
				a, b = b, a
			}
			if a.host == b.host {
				return where.host(b.host).errorf("shard range %s overlaps range %s of the same host", b.r, a.r)
			}
			return where.host(b.host).errorf("shard range %s overlaps %s (shards %s)",
				b.r, where.host(a.host).where, a.r)
		}
	}
	return nil
}

// checkHostParam returns why a host's connection keyword is refused, or "".
func checkHostParam(k, v string) string {
	switch {
	case !validParamKey(k):
		return fmt.Sprintf("connection keyword %q is invalid: keys are a lowercase letter or '_' followed by lowercase letters, digits, '_' and '.'", k)
	case k == "shards" || k == "pool_max" || k == "replicas":
		return fmt.Sprintf("%q is an hv option, not a connection keyword: set HostConfig.Shards, HostConfig.PoolMax or HostConfig.Replicas", k)
	case slices.Contains(dsnGlobalKeys, k):
		return fmt.Sprintf("%q is a global option: put it in a segment without shards=", k)
	case k == "database":
		return `use "dbname", not "database"`
	case k == "search_path":
		return "search_path may not be set: hv sets it to the shard's schema"
	case k == "options" && mentionsSearchPath(v):
		return "options may not set search_path: hv sets it to the shard's schema"
	case suggestKeyword(k) != "":
		return fmt.Sprintf("unknown connection keyword %q: did you mean %s? (hv passes unknown keywords to the server as settings, but this one looks misspelt)", k, suggestKeyword(k))
	case strings.IndexByte(v, 0) >= 0:
		if secretParams[k] || nearSecret(k) {
			return fmt.Sprintf("the value of %q holds a NUL byte", k)
		}
		return fmt.Sprintf("the value of %q holds a NUL byte: %q", k, v)
	}
	return ""
}

// mentionsSearchPath reports whether a libpq options value names
// search_path, spelled with '_' or '-' in any case.
func mentionsSearchPath(v string) bool {
	v = strings.ToLower(v)
	return strings.Contains(v, "search_path") || strings.Contains(v, "search-path")
}

// validParamKey reports whether k is a lowercase keyword: [a-z_][a-z0-9_.]*.
func validParamKey(k string) bool {
	if k == "" || !(k[0] == '_' || k[0] >= 'a' && k[0] <= 'z') {
		return false
	}
	for i := 1; i < len(k); i++ {
		b := k[i]
		if !(b == '_' || b == '.' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9') {
			return false
		}
	}
	return true
}

// checkSchemaPattern returns why a schema pattern is unsafe, or "".
func checkSchemaPattern(p string) string {
	verbs := 0
	for i := 0; i < len(p); i++ {
		b := p[i]
		switch {
		case b == '%':
			j := i + 1
			if j < len(p) && p[j] == '0' {
				j++
				if j >= len(p) || p[j] < '1' || p[j] > '9' {
					return "has a bad verb: use %d or %0Nd with N from 1 to 9"
				}
				j++
			}
			if j >= len(p) || p[j] != 'd' {
				return "has a bad verb: use %d or %0Nd with N from 1 to 9"
			}
			verbs++
			i = j
		case b == '_' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9':
		default:
			return "may only hold lowercase letters, digits, '_' and one %d or %0Nd verb"
		}
	}
	switch {
	case verbs != 1:
		return fmt.Sprintf("has %d verbs: it needs exactly one %%d or %%0Nd", verbs)
	case !(p[0] == '_' || p[0] >= 'a' && p[0] <= 'z'):
		return "must start with a lowercase letter or '_'"
	case strings.HasPrefix(p, "pg_"):
		return "must not start with pg_ (reserved for system schemas)"
	case len(fmt.Sprintf(p, MaxShard)) > 63:
		return fmt.Sprintf("makes names longer than 63 bytes (%q)", fmt.Sprintf(p, MaxShard))
	}
	return ""
}

// SchemaName returns the schema name of a logical shard: SchemaPattern (or
// DefaultSchemaPattern when it is empty) formatted with shard. It does not check
// the shard or the pattern; Validate does the latter.
func (c *Config) SchemaName(shard int) string {
	p := c.SchemaPattern
	if p == "" {
		p = DefaultSchemaPattern
	}
	return fmt.Sprintf(p, shard)
}

// HostFor returns the index in Hosts of the host that owns shard, and true;
// or -1 and false when no host owns it.
func (c *Config) HostFor(shard int) (int, bool) {
	for i, h := range c.Hosts {
		if h.Shards.Contains(shard) {
			return i, true
		}
	}
	return -1, false
}

// Name returns "host:port/dbname" for error messages and logs, leaving out
// the port and database when they are not set. The host is the host
// keyword, else hostaddr, else "localhost". It never includes the password.
func (h HostConfig) Name() string {
	host := h.Params["host"]
	if host == "" {
		host = h.Params["hostaddr"]
	}
	if host == "" {
		host = "localhost"
	}
	host = hostPorts(host, h.Params["port"]) // config_replica.go: a,b with their ports
	db := h.Params["dbname"]
	if db == "" {
		db = h.Params["database"]
	}
	if db != "" {
		host += "/" + db
	}
	return host
}

// ConnString returns the libpq keyword/value connection string of the
// host's Params for the inner driver, keys sorted, every value single-quoted
// with backslashes and single quotes escaped by a backslash. It includes the
// password: never log it. It returns "" when Params is empty.
func (h HostConfig) ConnString() string {
	var b strings.Builder
	for _, k := range sortedParamKeys(h.Params) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(dsnQuote(h.Params[k], true))
	}
	return b.String()
}

// String returns the host as a DSN segment, "shards=A-B key=value ...",
// with the password replaced by "xxxxx". ParseConfig accepts it.
func (h HostConfig) String() string {
	var b strings.Builder
	b.WriteString("shards=")
	b.WriteString(dsnQuote(h.Shards.String(), false))
	for _, k := range paramDisplayOrder(h.Params) {
		v := h.Params[k]
		if secretParams[k] {
			v = redactedSecret
		}
		b.WriteString(" " + k + "=" + dsnQuote(v, false))
	}
	if h.PoolMax != 0 {
		b.WriteString(" pool_max=" + strconv.Itoa(h.PoolMax))
	}
	if len(h.Replicas) > 0 {
		b.WriteString(" replicas=" + dsnQuote(strings.Join(h.Replicas, ","), false))
	}
	return b.String()
}

// String returns c as a DSN, one segment per host and a last one with the
// global options that are set, with passwords replaced by "xxxxx".
// ParseConfig accepts it and, but for the passwords and the Logger, returns
// an equal Config. It returns "<nil>" for a nil Config.
func (c *Config) String() string {
	if c == nil {
		return "<nil>"
	}
	var segs []string
	for _, h := range c.Hosts {
		segs = append(segs, h.String())
	}
	g := []string{}
	if c.PoolMax != 0 {
		g = append(g, "pool_max="+strconv.Itoa(c.PoolMax))
	}
	g = append(g, "pool_block_timeout="+c.PoolBlockTimeout.String())
	if c.Driver != "" {
		g = append(g, "driver="+dsnQuote(c.Driver, false))
	}
	if c.SchemaPattern != "" {
		g = append(g, "schema="+dsnQuote(c.SchemaPattern, false))
	}
	if c.PoolMode != "" {
		g = append(g, "pool_mode="+dsnQuote(c.PoolMode, false))
	}
	if c.ExtensionSchema != "" {
		g = append(g, "ext_schema="+dsnQuote(c.ExtensionSchema, false))
	}
	if !c.Epoch.IsZero() {
		ms := c.Epoch.UnixMilli()
		if ms >= 0 && time.UnixMilli(ms).Equal(c.Epoch) {
			g = append(g, "epoch="+strconv.FormatInt(ms, 10))
		} else {
			g = append(g, "epoch="+dsnQuote(c.Epoch.Format(time.RFC3339Nano), false))
		}
	}
	if c.KeyShards != 0 {
		g = append(g, "num_shards="+strconv.Itoa(c.KeyShards))
	}
	if c.ShardMax != 0 {
		g = append(g, "shard_max="+strconv.Itoa(c.ShardMax))
	}
	if c.MaxReplicaLag != 0 {
		g = append(g, "max_replica_lag="+c.MaxReplicaLag.String())
	}
	return strings.Join(append(segs, strings.Join(g, " ")), "; ")
}

// sortedParamKeys returns the keys of m in order.
func sortedParamKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// paramDisplayOrder returns the keys of m with the usual ones first, then the
// rest sorted.
func paramDisplayOrder(m map[string]string) []string {
	first := []string{"host", "hostaddr", "port", "user", "password", "dbname"}
	keys := make([]string, 0, len(m))
	for _, k := range first {
		if _, ok := m[k]; ok {
			keys = append(keys, k)
		}
	}
	for _, k := range sortedParamKeys(m) {
		if !slices.Contains(first, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// dsnSpace reports whether b separates keyword/value pairs, as C isspace does.
func dsnSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f'
}

// dsnQuote returns v in keyword/value syntax: single-quoted, with
// backslashes and single quotes escaped, when always is set or v needs it;
// else as it is.
func dsnQuote(v string, always bool) string {
	if !always && v != "" && !strings.ContainsAny(v, " \t\n\r\v\f;'\\") {
		return v
	}
	var b strings.Builder
	b.Grow(len(v) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' || v[i] == '\'' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('\'')
	return b.String()
}

// dsnPair is one key=value of a DSN segment.
type dsnPair struct {
	key, val string
	// secret hides both key and value: the pair may be the tail of the
	// previous segment's unquoted password that held a ';'.
	secret bool
}

// dsnSegment is one ';'-separated part of a DSN.
type dsnSegment struct {
	num   int // 1-based, counting empty segments
	pairs []dsnPair
	// partial marks a segment whose parsing stopped at a syntax error.
	partial bool
	// suspect marks a segment that follows an unquoted password directly
	// ended by ';': its first pair may be the rest of that password.
	suspect bool
}

// text returns the segment as written, normalized, with secrets redacted.
func (s *dsnSegment) text() string {
	parts := make([]string, 0, len(s.pairs)+1)
	for _, p := range s.pairs {
		switch {
		case p.secret:
			parts = append(parts, redactedSecret)
		case secretParams[p.key] || nearSecret(p.key):
			parts = append(parts, p.key+"="+redactedSecret)
		default:
			parts = append(parts, p.key+"="+dsnQuote(p.val, false))
		}
	}
	if s.partial {
		parts = append(parts, "...")
	}
	return strings.Join(parts, " ")
}

// cfgPlace returns where errors about the segment are: its number and text,
// and a hint when its first pair may be part of a password.
func (s *dsnSegment) cfgPlace() cfgPlace {
	p := cfgPlace{where: fmt.Sprintf("segment %d %q", s.num, s.text())}
	if len(s.pairs) == 0 {
		// Nothing of the segment could be read: the error's position says
		// where it went wrong, a quoted "..." would say nothing.
		p.where = fmt.Sprintf("segment %d", s.num)
	}
	if s.suspect && (len(s.pairs) == 0 || s.pairs[0].secret) {
		p.hint = " (the segment directly follows an unquoted password ended by ';': if the password holds a ';', quote it, password='...'; if not, put a space after the ';')"
	}
	return p
}

func (s *dsnSegment) errorf(format string, args ...any) error {
	return s.cfgPlace().errorf(format, args...)
}

// find returns the index of the pair with key, or -1.
func (s *dsnSegment) find(key string) int {
	for i, p := range s.pairs {
		if p.key == key && !p.secret {
			return i
		}
	}
	return -1
}

// show returns what errors may say of p's key or value: s, or "xxxxx" when
// the pair is secret.
func (p *dsnPair) show(s string) string {
	if p.secret {
		return redactedSecret
	}
	return s
}

// checkKeys refuses invalid and duplicate keys, and database with dbname.
func (s *dsnSegment) checkKeys() error {
	if len(s.pairs) > 0 && s.pairs[0].secret {
		return s.errorf("the first key is not a known keyword")
	}
	seen := map[string]bool{}
	for i := range s.pairs {
		p := &s.pairs[i]
		if !validParamKey(p.key) {
			return s.errorf("key %d of the segment is invalid: keys are a lowercase letter or '_' followed by lowercase letters, digits, '_' and '.'", i+1)
		}
		if seen[p.key] {
			return s.errorf("duplicate key %q", p.key)
		}
		seen[p.key] = true
	}
	if seen["database"] && seen["dbname"] {
		return s.errorf("both database and dbname are set")
	}
	return nil
}

// host builds the HostConfig of a segment whose pair i is shards=.
func (s *dsnSegment) host(i int) (HostConfig, error) {
	var h HostConfig
	p := &s.pairs[i]
	set, err := parseShardSet(p.val)
	if err != nil {
		return h, s.errorf("shards=%s is not a shard range A-B, a list of them (A-B,C-D) or '' for none (half-open, shards 0..%d, e.g. 0-%d)", dsnQuote(p.show(p.val), false), MaxShard, NumShards)
	}
	h.Shards = set
	h.Params = map[string]string{}
	for j := range s.pairs {
		p := &s.pairs[j]
		switch {
		case j == i:
		case p.key == "pool_max" && !p.secret:
			n, err := dsnPoolMax(p.val)
			if err != nil {
				return h, s.errorf("pool_max=%s: %v", dsnQuote(p.show(p.val), false), err)
			}
			h.PoolMax = n
		case p.key == "replicas" && !p.secret:
			h.Replicas = splitReplicas(p.val)
		case p.key == "database":
			h.Params["dbname"] = p.val
		default:
			h.Params[p.key] = p.val
		}
	}
	return h, nil
}

// global sets the global option of pair p on cfg.
func (s *dsnSegment) global(cfg *Config, p *dsnPair) error {
	shown := dsnQuote(p.show(p.val), false)
	switch {
	case p.secret:
		return s.errorf("unknown global key %s: a segment without shards= takes %s", redactedSecret, strings.Join(dsnGlobalKeys, ", "))
	case p.key == "pool_max":
		n, err := dsnPoolMax(p.val)
		if err != nil {
			return s.errorf("pool_max=%s: %v", shown, err)
		}
		cfg.PoolMax = n
	case p.key == "pool_block_timeout":
		d, err := dsnTimeout(p.val)
		if err != nil {
			return s.errorf("pool_block_timeout=%s: %v", shown, err)
		}
		cfg.PoolBlockTimeout = d
	case p.key == "driver":
		cfg.Driver = p.val
	case p.key == "schema":
		cfg.SchemaPattern = p.val
	case p.key == "num_shards" || p.key == "shard_max":
		n, err := dsnCount(p.val)
		if err != nil || (p.key == "num_shards" && (n < 1 || n > NumShards)) {
			return s.errorf("%s=%s: want an integer in %s", p.key, shown, map[string]string{
				"num_shards": fmt.Sprintf("1..%d", NumShards), "shard_max": "0..pool_max (0: no cap)"}[p.key])
		}
		if p.key == "num_shards" {
			cfg.KeyShards = n
		} else {
			cfg.ShardMax = n
		}
	case p.key == "pool_mode":
		cfg.PoolMode = p.val
	case p.key == "ext_schema":
		cfg.ExtensionSchema = p.val
	case p.key == "max_replica_lag":
		d, err := dsnTimeout(p.val)
		if err == nil && d == 0 {
			err = errors.New("it must be positive")
		}
		if err != nil {
			return s.errorf("max_replica_lag=%s: %v", shown, err)
		}
		cfg.MaxReplicaLag = d
	case p.key == "epoch":
		t, err := dsnEpoch(p.val)
		if err != nil {
			return s.errorf("epoch=%s: %v", shown, err)
		}
		cfg.Epoch = t
	case libpqKeywords[p.key] || secretParams[p.key]:
		return s.errorf("%s is a connection keyword but the segment has no shards=A-B: a segment without shards= takes %s", p.key, strings.Join(dsnGlobalKeys, ", "))
	default:
		return s.errorf("unknown global key %q: a segment without shards= takes %s", p.key, strings.Join(dsnGlobalKeys, ", "))
	}
	return nil
}

// dsnCount parses a non-negative decimal integer of digits only.
func dsnCount(v string) (int, error) {
	if v == "" || strings.Trim(v, "0123456789") != "" {
		return 0, errors.New("not a number")
	}
	return strconv.Atoi(v)
}

// dsnPoolMax parses a pool size, an integer >= 1.
func dsnPoolMax(v string) (int, error) {
	if strings.HasPrefix(v, "-") && dsnDecimal(v[1:]) {
		return 0, errors.New("pool_max must be at least 1")
	}
	n, err := dsnCount(v)
	switch {
	case err != nil:
		return 0, errors.New("not an integer, or too large")
	case n < 1:
		return 0, errors.New("pool_max must be at least 1")
	}
	return n, nil
}

// dsnDecimal reports whether v is digits with at most one '.', and at least
// one digit.
func dsnDecimal(v string) bool {
	return strings.Trim(v, "0123456789.") == "" && strings.Count(v, ".") <= 1 && strings.Trim(v, ".") != ""
}

// dsnTimeout parses a non-negative duration: a bare decimal number of
// seconds or a Go duration.
func dsnTimeout(v string) (time.Duration, error) {
	s := v
	if dsnDecimal(strings.TrimPrefix(v, "-")) {
		s += "s"
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, errors.New("not a duration: use seconds (5, 0.5) or a Go duration (300ms, 2s)")
	case d < 0:
		return 0, errors.New("the timeout is negative")
	}
	return d, nil
}

// dsnEpoch parses milliseconds since 1970-01-01 UTC or an RFC 3339 time,
// returning it in UTC.
func dsnEpoch(v string) (time.Time, error) {
	if ms, err := dsnCount(v); err == nil {
		return time.UnixMilli(int64(ms)).UTC(), nil
	} else if strings.Trim(v, "0123456789") == "" && v != "" {
		return time.Time{}, errors.New("milliseconds out of range")
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, errors.New("not milliseconds since 1970-01-01 nor an RFC 3339 time (2006-01-02T15:04:05Z)")
	}
	return t.UTC(), nil
}

// tokenizeDSN splits dsn into segments of key=value pairs in one pass, so
// that a quoted ';' does not end a segment. Empty segments are dropped. It
// returns an error wrapping ErrBadConfig on a syntax error.
func tokenizeDSN(dsn string) ([]*dsnSegment, error) {
	var segs []*dsnSegment
	seg := &dsnSegment{num: 1}
	i := 0
	// fail reports a syntax error at byte i (0-based) of dsn.
	fail := func(at int, format string, args ...any) error {
		seg.partial = true
		return seg.errorf("%s at position %d", fmt.Sprintf(format, args...), at+1)
	}
	endSegment := func() {
		if len(seg.pairs) > 0 {
			segs = append(segs, seg)
		}
		seg = &dsnSegment{num: seg.num + 1}
	}
	for {
		for i < len(dsn) && dsnSpace(dsn[i]) {
			i++
		}
		if i == len(dsn) {
			endSegment()
			return segs, nil
		}
		if dsn[i] == ';' {
			i++
			endSegment()
			continue
		}
		// Key: up to white space, '=' or ';'.
		keyStart := i
		for i < len(dsn) && !dsnSpace(dsn[i]) && dsn[i] != '=' && dsn[i] != ';' {
			if dsn[i] == 0 {
				return nil, fail(i, "NUL byte")
			}
			i++
		}
		key := dsn[keyStart:i]
		for i < len(dsn) && dsnSpace(dsn[i]) {
			i++
		}
		if i == len(dsn) || dsn[i] != '=' {
			return nil, fail(keyStart, `missing "=" after the key`)
		}
		if key == "" {
			return nil, fail(i, `empty key before "="`)
		}
		i++ // '='
		afterEq := i
		for i < len(dsn) && dsnSpace(dsn[i]) {
			i++
		}
		if i > afterEq && i < len(dsn) && dsn[i] != '\'' {
			// libpq would take "k= k2=v2" as k="k2=v2": refuse it, as the
			// author more likely meant an empty value (and "k2" may be a
			// password keyword).
			j := i
			for j < len(dsn) && !dsnSpace(dsn[j]) && dsn[j] != ';' && dsn[j] != '=' {
				if dsn[j] == '\\' {
					j++
				}
				j++
			}
			if j < len(dsn) && dsn[j] == '=' {
				return nil, fail(i, "the value after \"= \" looks like key=value: quote it, or write '' for an empty value,")
			}
		}
		var val strings.Builder
		quoted := i < len(dsn) && dsn[i] == '\''
		if quoted {
			open := i
			i++
			for {
				if i == len(dsn) {
					return nil, fail(open, "unterminated quoted value starting")
				}
				c := dsn[i]
				if c == '\'' {
					i++
					break
				}
				if c == '\\' {
					i++
					if i == len(dsn) {
						return nil, fail(open, "unterminated quoted value starting")
					}
					c = dsn[i]
				}
				if c == 0 {
					return nil, fail(i, "NUL byte")
				}
				val.WriteByte(c)
				i++
			}
			if i < len(dsn) && !dsnSpace(dsn[i]) && dsn[i] != ';' {
				return nil, fail(i, "expected white space or ';' after the closing quote")
			}
		} else {
			for i < len(dsn) && !dsnSpace(dsn[i]) && dsn[i] != ';' {
				c := dsn[i]
				if c == '\\' {
					i++
					if i == len(dsn) {
						return nil, fail(i-1, "backslash at the end of the DSN")
					}
					c = dsn[i]
				}
				if c == 0 {
					return nil, fail(i, "NUL byte")
				}
				val.WriteByte(c)
				i++
			}
		}
		p := dsnPair{key: key, val: val.String()}
		if seg.suspect && len(seg.pairs) == 0 && !libpqKeywords[key] && !slices.Contains(dsnGlobalKeys, key) && key != "shards" {
			p.secret = true
		}
		seg.pairs = append(seg.pairs, p)
		// An unquoted password ended by a ';' that is directly followed by
		// more text may have been cut short: hide the next key and value.
		if secretParams[key] && !quoted && i+1 < len(dsn) && dsn[i] == ';' && !dsnSpace(dsn[i+1]) && dsn[i+1] != ';' {
			i++
			endSegment()
			seg.suspect = true
		}
	}
}
