// Package migrate runs versioned migrations (pressly/goose v3) on every
// shard of an hv fleet.
//
// Each shard gets a goose Provider of its own over a *sql.DB bound to the
// shard (hv.Connector.ForShard), so its version table, goose_db_version,
// lives in the shard's schema and every statement of a migration, SQL or
// Go, runs on the shard's search_path. Instead of goose's advisory lock,
// which is one per database and would queue the shards of a host behind
// each other, each shard takes a session advisory lock of its own
// (LockClass, shard), so two processes migrating the same fleet serialise
// per shard.
//
// Hosts run side by side, each with up to its pool_max shards at once
// (Options.Concurrency for fewer). A shard that fails is reported with an
// *hv.ShardError naming shard and host while the others go on; goose runs
// each migration in a transaction, so the shard stays at the last version
// that succeeded, and running Up again continues every shard from where it
// stopped.
//
//	res := migrate.Up(ctx, connector, os.DirFS("migrations"), nil)
//	if err := res.Err(); err != nil { … }     // the failed shards, joined
//	fmt.Println(res.Versions())               // version → shards at it
package migrate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hypervault/hv"
	"github.com/pressly/goose/v3"
)

// LockClass is the first key of the session advisory lock a shard's
// migration holds, pg_advisory_lock(LockClass, shard): "hm" in ASCII. It
// differs from the class of hv's key generator and CreateShards (0x6876).
const LockClass = 0x686d

// DefaultTableName is goose's version table, created in each shard's
// schema.
const DefaultTableName = "goose_db_version"

// Options tune a run. The zero value (or nil) runs on every shard of the
// fleet, as many at a time per host as its pool_max.
type Options struct {
	// Shards lists the shards to run on; nil means every shard the fleet
	// owns. A shard no host owns fails with hv.ErrUnknownShard.
	Shards []int
	// Concurrency limits how many shards of one host run at once. Zero,
	// or more than the host's pool_max, means its pool_max.
	Concurrency int
	// TableName is the version table in each shard's schema (default
	// goose_db_version).
	TableName string
	// Progress, when set, is called after each shard finishes, with the
	// shards finished so far, the total, the shard and its error. Calls
	// are serialised.
	Progress func(done, total, shard int, err error)
	// ProviderOptions are passed to every shard's goose.NewProvider after
	// hv's own (WithGoMigrations, WithAllowOutofOrder, WithVerbose ...).
	// Do not pass WithSessionLocker: hv locks per shard itself.
	ProviderOptions []goose.ProviderOption
}

// ShardResult is what a run did on one shard.
type ShardResult struct {
	// Shard is the logical shard, Host the name of the host that owns it.
	Shard int
	Host  string
	// Version is the shard's version after the run (for Status and
	// Versions, its current version); 0 when it has none. It is -1 when
	// the version could not be read.
	Version int64
	// Target is the highest version among the migrations (Status only).
	Target int64
	// Applied lists the versions this run applied (Up) or rolled back
	// (Down), in the order it did.
	Applied []int64
	// Err is why the shard failed, an *hv.ShardError; nil when it did not.
	Err error
}

// Result is what a run did on every shard.
type Result struct {
	// Shards holds one entry per shard, in shard order.
	Shards []ShardResult
	// Elapsed is how long the run took.
	Elapsed time.Duration
	// MaxConcurrent is, per host name, the most shards the run had in
	// progress at once on that host.
	MaxConcurrent map[string]int
}

// Err returns the failed shards' errors joined in shard order (each an
// *hv.ShardError), or nil when no shard failed.
func (r *Result) Err() error {
	var errs []error
	for _, s := range r.Shards {
		if s.Err != nil {
			errs = append(errs, s.Err)
		}
	}
	return errors.Join(errs...)
}

// Failed returns the shards that failed, in order.
func (r *Result) Failed() []int {
	var out []int
	for _, s := range r.Shards {
		if s.Err != nil {
			out = append(out, s.Shard)
		}
	}
	return out
}

// Versions maps each version some shard is at (after the run) to those
// shards, in order. Shards whose version could not be read are left out.
// More than one key means the fleet is skewed.
func (r *Result) Versions() map[int64][]int {
	m := map[int64][]int{}
	for _, s := range r.Shards {
		if s.Version >= 0 {
			m[s.Version] = append(m[s.Version], s.Shard)
		}
	}
	return m
}

// Skewed reports whether the shards are at more than one version.
func (r *Result) Skewed() bool { return len(r.Versions()) > 1 }

// Up applies every pending migration of fsys on every shard. fsys holds
// goose migration files (NNN_name.sql, or Go migrations registered with
// goose or given in Options.ProviderOptions); os.DirFS(dir) for a
// directory. It never returns nil.
func Up(ctx context.Context, c *hv.Connector, fsys fs.FS, opts *Options) *Result {
	return runProvider(ctx, c, fsys, opts, func(ctx context.Context, p *goose.Provider) ([]*goose.MigrationResult, error) {
		return p.Up(ctx)
	})
}

// UpTo applies the pending migrations up to and including version on
// every shard.
func UpTo(ctx context.Context, c *hv.Connector, fsys fs.FS, version int64, opts *Options) *Result {
	return runProvider(ctx, c, fsys, opts, func(ctx context.Context, p *goose.Provider) ([]*goose.MigrationResult, error) {
		return p.UpTo(ctx, version)
	})
}

// Down rolls back the last applied migration on every shard (each shard
// its own last one).
func Down(ctx context.Context, c *hv.Connector, fsys fs.FS, opts *Options) *Result {
	return runProvider(ctx, c, fsys, opts, func(ctx context.Context, p *goose.Provider) ([]*goose.MigrationResult, error) {
		r, err := p.Down(ctx)
		if r == nil {
			return nil, err
		}
		return []*goose.MigrationResult{r}, err
	})
}

// DownTo rolls back every shard's migrations above version.
func DownTo(ctx context.Context, c *hv.Connector, fsys fs.FS, version int64, opts *Options) *Result {
	return runProvider(ctx, c, fsys, opts, func(ctx context.Context, p *goose.Provider) ([]*goose.MigrationResult, error) {
		return p.DownTo(ctx, version)
	})
}

// Status reads every shard's current version and the migrations' target
// version (ShardResult.Version and Target). Like goose, it creates a
// shard's version table when missing.
func Status(ctx context.Context, c *hv.Connector, fsys fs.FS, opts *Options) *Result {
	return run(ctx, c, opts, func(ctx context.Context, db *sql.DB, o *Options, r *ShardResult) error {
		p, err := newProvider(db, fsys, r.Shard, o)
		if err != nil {
			return err
		}
		r.Version, r.Target, err = p.GetVersions(ctx)
		return err
	})
}

// Versions reads every shard's current version from its version table
// without needing the migrations and without creating anything: 0 for a
// shard that has no version table. It is what hv status reports skew from.
func Versions(ctx context.Context, c *hv.Connector, opts *Options) *Result {
	return run(ctx, c, opts, func(ctx context.Context, db *sql.DB, o *Options, r *ShardResult) error {
		var exists bool
		if err := db.QueryRowContext(ctx, "SELECT pg_catalog.to_regclass(pg_catalog.quote_ident(pg_catalog.current_schema()) || '.' || pg_catalog.quote_ident($1)) IS NOT NULL", o.TableName).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			r.Version = 0
			return nil
		}
		var v sql.NullInt64
		err := db.QueryRowContext(ctx, "SELECT max(version_id) FROM "+quoteIdent(o.TableName)).Scan(&v)
		r.Version = v.Int64
		return err
	})
}

// HasVersionTables reports whether any shard of r (from Versions) has a
// version other than 0, that is, whether the fleet uses migrations.
func (r *Result) HasVersionTables() bool {
	for _, s := range r.Shards {
		if s.Version > 0 {
			return true
		}
	}
	return false
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// newProvider makes shard's goose Provider over db, locked per shard.
func newProvider(db *sql.DB, fsys fs.FS, shard int, o *Options) (*goose.Provider, error) {
	popts := append([]goose.ProviderOption{
		goose.WithSessionLocker(shardLocker{shard: shard}),
		goose.WithTableName(o.TableName),
	}, o.ProviderOptions...)
	return goose.NewProvider(goose.DialectPostgres, db, fsys, popts...)
}

// runProvider runs fn with each shard's Provider and records what it
// applied and where the shard ends up.
func runProvider(ctx context.Context, c *hv.Connector, fsys fs.FS, opts *Options,
	fn func(context.Context, *goose.Provider) ([]*goose.MigrationResult, error)) *Result {
	return run(ctx, c, opts, func(ctx context.Context, db *sql.DB, o *Options, r *ShardResult) error {
		p, err := newProvider(db, fsys, r.Shard, o)
		if err != nil {
			return err
		}
		results, err := fn(ctx, p)
		var partial *goose.PartialError
		if errors.As(err, &partial) {
			results = partial.Applied
			if partial.Failed != nil && partial.Failed.Source != nil {
				err = &migrationError{shard: r.Shard, host: r.Host, source: partial.Failed.Source, err: partial.Err}
			}
		}
		for _, m := range results {
			if m != nil && m.Error == nil && m.Source != nil {
				r.Applied = append(r.Applied, m.Source.Version)
			}
		}
		if errors.Is(err, goose.ErrNoNextVersion) || errors.Is(err, goose.ErrNoCurrentVersion) {
			err = nil // nothing to roll back: not a failure
		}
		v, verr := p.GetDBVersion(context.WithoutCancel(ctx))
		r.Version = v
		if verr != nil {
			r.Version = -1
		}
		return err
	})
}

// migrationError is the error of a shard's failed migration: which one,
// and why, without repeating the shard and host the *hv.ShardError around
// it names.
type migrationError struct {
	shard  int
	host   string
	source *goose.Source
	err    error
}

func (e *migrationError) Error() string {
	msg := e.err.Error()
	msg = strings.TrimPrefix(msg, fmt.Sprintf("hv: shard %d on host %s: ", e.shard, e.host))
	return fmt.Sprintf("migration %d (%s): %s", e.source.Version, filepath.Base(e.source.Path), msg)
}

func (e *migrationError) Unwrap() error { return e.err }

// shardWork runs on one shard, over a *sql.DB bound to it, filling r.
type shardWork func(ctx context.Context, db *sql.DB, o *Options, r *ShardResult) error

// run runs work on every shard of opts, hosts concurrently, up to each
// host's pool_max (or Options.Concurrency) shards at a time per host.
func run(ctx context.Context, c *hv.Connector, opts *Options, work shardWork) *Result {
	start := time.Now()
	o := Options{}
	if opts != nil {
		o = *opts
	}
	if o.TableName == "" {
		o.TableName = DefaultTableName
	}
	res := &Result{MaxConcurrent: map[string]int{}}
	if c == nil {
		res.Shards = []ShardResult{{Shard: -1, Version: -1, Err: errors.New("hv: migrate: nil *hv.Connector")}}
		return res
	}
	var mu sync.Mutex
	inFlight := map[string]int{}
	results := map[int]*ShardResult{}
	c.RunShards(ctx, o.Shards, o.Concurrency,
		func(ctx context.Context, shard int, host string) error {
			mu.Lock()
			inFlight[host]++
			res.MaxConcurrent[host] = max(res.MaxConcurrent[host], inFlight[host])
			r := &ShardResult{Shard: shard, Host: host}
			results[shard] = r
			mu.Unlock()
			err := runShard(ctx, c, shard, &o, r, work)
			mu.Lock()
			inFlight[host]--
			mu.Unlock()
			return err
		},
		func(done, total, shard int, host string, err error) {
			mu.Lock()
			r := results[shard]
			mu.Unlock()
			if r == nil { // not run: unowned, or ctx ended first
				r = &ShardResult{Shard: shard, Host: host, Version: -1}
			}
			r.Err = err
			res.Shards = append(res.Shards, *r)
			if o.Progress != nil {
				o.Progress(done, total, shard, err)
			}
		})
	sort.Slice(res.Shards, func(a, b int) bool { return res.Shards[a].Shard < res.Shards[b].Shard })
	res.Elapsed = time.Since(start)
	return res
}

// runShard runs work on shard over a *sql.DB of its own, bound to the shard.
func runShard(ctx context.Context, c *hv.Connector, shard int, o *Options, r *ShardResult, work shardWork) error {
	if err := ctx.Err(); err != nil {
		r.Version = -1
		return fmt.Errorf("not run: %w", context.Cause(ctx))
	}
	db := sql.OpenDB(c.ForShard(shard)) // closing it leaves c's pools open
	defer db.Close()
	// One connection per shard: goose runs a shard's migrations on the
	// connection that holds its lock, so that pool_max shards at once fit
	// in the host's pool_max connections.
	db.SetMaxOpenConns(1)
	return work(ctx, db, o, r)
}

// shardLocker is goose's session locker for one shard: a session advisory
// lock (LockClass, shard) on the connection goose runs the shard's
// migrations on.
type shardLocker struct{ shard int }

func (l shardLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, "SELECT pg_catalog.pg_advisory_lock("+strconv.Itoa(LockClass)+", "+strconv.Itoa(l.shard)+")")
	if err != nil {
		return fmt.Errorf("taking the shard's migration lock: %w", err)
	}
	return nil
}

func (l shardLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	var ok bool
	err := conn.QueryRowContext(ctx, "SELECT pg_catalog.pg_advisory_unlock("+strconv.Itoa(LockClass)+", "+strconv.Itoa(l.shard)+")").Scan(&ok)
	if err != nil {
		return fmt.Errorf("releasing the shard's migration lock: %w", err)
	}
	if !ok {
		return errors.New("releasing the shard's migration lock: it was not held")
	}
	return nil
}

// Compact writes shards (sorted) as half-open ranges in the DSN's
// notation, "1-5 7 9-17" for 1..4, 7 and 9..16.
func Compact(shards []int) string {
	s := slices.Clone(shards)
	slices.Sort(s)
	var parts []string
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(s[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", s[i], s[j]+1))
		}
		i = j + 1
	}
	return strings.Join(parts, " ")
}
