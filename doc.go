// Package hv makes a fleet of PostgreSQL servers look like one database/sql
// database, sharded the way Instagram shards.
//
// # Hosts, logical shards and schemas
//
// Data lives in many small logical shards, numbered 0 to MaxShard (8191).
// Each logical shard is a PostgreSQL schema, shard0001, shard0002 and so on
// (Config.SchemaPattern), holding the same tables. The schemas are spread
// over a few physical hosts: each host owns a half-open range of shards.
// Growing the fleet moves whole schemas to new hosts and changes the ranges;
// the shard of a row never changes.
//
// # Keys
//
// A Key is a 64-bit id that carries its own shard, so a row can be found
// from its id alone:
//
//	| 41 bits: milliseconds since the epoch | 13 bits: shard | 10 bits: sequence |
//
// The default epoch is 2013-09-16T21:05:31.352Z (DefaultEpoch; Config.Epoch
// and Layout for another). Keys sort by creation time. NewKey builds one in
// Go; Key.ShardID, Key.Created and Key.AddedID take a key apart. Key
// implements sql.Scanner, driver.Valuer and JSON (as a string).
//
// Datastore.CreateShards gives each shard's schema a next_id() function that
// makes Keys in the database, as Instagram's does, but unique by
// construction: the time and the sequence bits both come from one sequence
// value kept in step with the clock, so no scheduling can repeat a key.
// A Generator makes Keys in the process from blocks leased from the same
// sequence, without a round trip each.
//
// # Datastore
//
// Datastore stores entities (a kind and an hstore body, Hstore) in each
// shard's entities table and reads them back by Key alone: Put, Get,
// Update, Delete and Find (hstore containment, GIN-indexed). EachShard runs a
// migration on every shard, each in its own transaction, and reports the
// shards that failed.
//
// # Routing by application keys and changing the fleet
//
// With num_shards set, WithShardKey routes by the application's own integer
// or string ids (ShardForKey documents the stable mapping).
// Connector.Reconfigure swaps the shard map while the fleet runs, and
// shard_max caps one shard's connections so that a hot shard leaves room for
// its neighbours. Raw hands the inner driver's connection on a shard's
// schema for COPY, LISTEN and batches.
//
// # Routing by context
//
// Every statement names its shard on its context:
//
//	ctx := hv.WithShard(context.Background(), 5) // or hv.WithKey(ctx, key)
//	rows, err := db.QueryContext(ctx, "SELECT id, body FROM notes WHERE id = $1", 42)
//
// hv takes a connection from the owning host's pool (one inner *sql.DB per
// host, at most pool_max connections), sets its search_path to the shard's
// schema and then the extension schema hv_ext, which holds extensions
// (hstore) and no tables (never public: a table missing from the shard is
// an error),
// runs the statement and gives the connection back when the Rows or Result
// is done. A statement whose context names no shard fails with ErrNoShard;
// one naming a shard no host owns with ErrUnknownShard. hv remembers each
// connection's schema and only sends SET search_path when it changes; on
// pgx it sends that SET in the same round trip as the statement, and
// prepares each statement once per schema, so that a routed statement costs
// about what the same statement sent directly through pgx costs.
//
// # Pinned connections and transactions
//
// db.Conn(hv.WithShard(ctx, n)) pins one physical connection on shard n until
// Close, and db.BeginTx(hv.WithShard(ctx, n), opts) runs a transaction on one.
// Their statements need no shard of their own; a statement naming another
// shard fails with ErrShardMismatch. A transaction never spans shards.
//
// # Fan-out
//
// WithAllShards and WithShards run one statement on many shards
// concurrently: ExecContext reports the sum of rows affected, QueryContext
// streams every shard's rows as one *sql.Rows. WithMergeOrder merges shards
// that each sort their rows into one sorted stream, WithLimit stops after n
// rows, WithPartialResults returns the good shards' rows when some fail, and
// WithFanOutConcurrency bounds the shards queried at once. Fan-out on a pinned
// Conn or inside a transaction is refused (ErrFanOutPinned). Aggregates are
// per shard: SELECT count(*) gives one row per shard, to be summed.
//
// # One shard as a *sql.DB, migrations, extensions, COPY
//
// sql.OpenDB(connector.ForShard(n)) runs every statement on shard n,
// whatever its context, for tools that take a *sql.DB and do not pass the
// application's context (golang-migrate, ent's schema migration, goose).
// The package github.com/hypervault/hv/migrate runs goose migrations on
// every shard, a Provider and an advisory lock per shard, reporting failed
// shards and version skew. Extension types and operators resolve
// unqualified because the extension schema (Config.ExtensionSchema, DSN
// ext_schema) follows the shard's schema on search_path; CreateShards
// installs hstore there and Datastore.CheckExtensions checks it. With
// driver=postgres, tx.Prepare(pq.CopyIn(...)) works in a transaction; with
// pgx, COPY goes through Raw.
//
// # Errors
//
// ErrNoShard, ErrUnknownShard, ErrShardMismatch, ErrPoolTimeout (no
// connection of the host became free within pool_block_timeout), ErrBadConfig,
// ErrClosed, ErrFanOutPinned, ErrColumnMismatch, ErrShardKey,
// ErrLayoutMismatch, ErrInvalidKey, ErrInvalidEntity and ErrHstoreSyntax are
// matched with errors.Is. A failure of one shard is a *ShardError naming the
// shard and its host, with one "hv: " prefix; the inner driver's error
// (*pgconn.PgError, *pq.Error) stays reachable with errors.As.
//
// # The DSN
//
// sql.Open("hv", dsn) takes segments separated by ';'. A segment with
// shards=A-B is a host owning shards [A, B) (shards=1-9 is shards 1 to 8);
// its other keys are libpq keywords for that host. A segment without shards=
// holds the global options pool_max, pool_block_timeout, driver (pgx or
// postgres), schema, epoch, num_shards and shard_max:
//
//	shards=1-9 host=db1 user=app dbname=app; shards=9-17 host=db2 user=app dbname=app; pool_max=10
//
// For programmatic use, ParseConfig returns a Config to adjust (for example
// its Logger) before NewConnector and sql.OpenDB. Connector.Stats reports
// each host's pool, waits, timeouts and schema switches.
//
// # Tracing and metrics
//
// Config.Tracer (see Tracer, FanOutTracer, PoolTracer) is told about every
// statement, transaction, fan-out and wait for a connection, with its
// shard, schema and host; unset, it costs nothing. The nested modules
// github.com/hypervault/hv/otelhv (OpenTelemetry spans and metrics) and
// github.com/hypervault/hv/promhv (a Prometheus collector) implement it,
// so that hv itself depends on neither.
//
// # Libraries on top
//
// Anything that takes a *sql.DB works unchanged, routing by the context it
// passes down: sqlx, GORM (db.WithContext(hv.WithShard(ctx, n))) and bun
// (query.Exec(hv.WithShard(ctx, n))). The nested modules examples/gorm and
// examples/bun show both, with migrations on every shard.
package hv
