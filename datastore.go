package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
)

// ErrInvalidEntity is wrapped by the errors Datastore methods return for bad
// input: a kind outside the smallint range, nil data, or a key or value
// that PostgreSQL text cannot hold (a NUL byte, invalid UTF-8).
var ErrInvalidEntity error = &sentinel{"invalid entity"}

// Entity is one row of a shard's entities table: schemaless data (an
// hstore) of some kind, under a Key that names its shard.
type Entity struct {
	// Key is the entity's id; Key.ShardID() is the shard it lives on.
	Key Key
	// Kind is an application-defined type number (a smallint).
	Kind int
	// Data is the body. A nil value is SQL NULL.
	Data Hstore
	// Updated is when the entity was last written (Put or Update), or the
	// zero time when the column is NULL.
	Updated time.Time
}

// Datastore stores entities, schemaless hstore bodies under shard-carrying
// Keys, in the shards of an hv fleet: each shard's schema holds a table
//
//	entities (id bigint PRIMARY KEY DEFAULT <schema>.next_id(),
//	          kind smallint NOT NULL, body hv_ext.hstore NOT NULL, updated timestamptz)
//
// with a GIN index on body. CreateShards creates it. A Datastore is safe for
// concurrent use.
type Datastore struct {
	db     *sql.DB
	c      *Connector
	layout Layout
	err    error // why the Datastore cannot be used (nil Connector, bad epoch)

	// stmts caches, per host name, the entity statements qualified with
	// the schema hstore is installed in there (datastore_ext.go).
	stmts sync.Map
}

// Open parses dsn (see ParseConfig), makes a Connector and returns a
// Datastore over it. It connects to no server: the first statement does.
// It returns an error wrapping ErrBadConfig when dsn is invalid; the error
// never holds a password.
func Open(dsn string) (*Datastore, error) {
	cfg, err := ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	c, err := NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	d := NewDatastore(c)
	if d.err != nil {
		_ = d.Close()
		return nil, d.err
	}
	return d, nil
}

// NewDatastore returns a Datastore over c, with a *sql.DB opened on it
// (sql.OpenDB). Keys are built with the Layout of c's Config().Epoch. With a
// nil c every method of the Datastore returns an error.
func NewDatastore(c *Connector) *Datastore {
	if c == nil {
		return &Datastore{err: errors.New("hv: NewDatastore: nil Connector")}
	}
	d := &Datastore{c: c, db: sql.OpenDB(c)}
	d.layout, d.err = NewLayout(c.Config().Epoch)
	return d
}

// DB returns the Datastore's *sql.DB, for statements of your own (route
// them with WithShard, WithKey or WithAllShards). It is nil when the
// Datastore was made from a nil Connector.
func (d *Datastore) DB() *sql.DB { return d.db }

// Connector returns the Datastore's Connector (its Config, Stats, Reset).
func (d *Datastore) Connector() *Connector { return d.c }

// Layout returns the Layout the Datastore's keys are built and decoded with
// (the Config's Epoch).
func (d *Datastore) Layout() Layout { return d.layout }

// Close closes the *sql.DB and the Connector's host pools. It returns the
// error of sql.DB.Close, if any.
func (d *Datastore) Close() error {
	if d == nil || d.db == nil {
		return nil
	}
	return d.db.Close()
}

// Reset closes every host pool and opens new ones (Connector.Reset). It
// returns ErrClosed after Close.
func (d *Datastore) Reset() error {
	if err := d.ready(); err != nil {
		return err
	}
	return d.c.Reset()
}

func (d *Datastore) ready() error {
	if d == nil {
		return errors.New("hv: nil *Datastore")
	}
	return d.err
}

// dsOpError adds what was being done to an error, with one "hv: " prefix
// (hv's own errors inside it are written bare).
type dsOpError struct {
	op  string
	err error
}

func (e *dsOpError) Error() string { return "hv: " + e.bare() }
func (e *dsOpError) bare() string  { return e.op + ": " + bareText(e.err) }
func (e *dsOpError) Unwrap() error { return e.err }

func dsOpErr(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return &dsOpError{op: fmt.Sprintf(format, args...), err: err}
}

// CreateShards makes every shard of the fleet ready for entities, on every
// host, hosts concurrently: first the extension schema (Config.ExtSchema,
// hv_ext by default; checked to hold no tables) and the hstore extension in
// it, once per host's database (a database that has hstore in public
// already keeps it there, see the README for moving it), then for each shard of the host its schema,
// its key generator (next_id(), lease_ids(), hv_layout()) and the entities
// table with a GIN index on body. It is idempotent and safe to run from
// several processes at once (advisory locks serialise them). A shard whose
// existing hv_layout() differs from the Datastore's Layout is left alone and
// reported with an error wrapping ErrLayoutMismatch.
//
// Each shard runs in its own transaction; the returned error joins the
// failures, each naming its shard (or host) and host, and is nil when every
// shard is ready.
func (d *Datastore) CreateShards(ctx context.Context) error {
	return d.CreateShardsProgress(ctx, nil)
}

// CreateShardsProgress is CreateShards calling progress (when not nil)
// each time a shard is done, as EachShardOptions.Progress does.
func (d *Datastore) CreateShardsProgress(ctx context.Context, progress func(done, total, shard int, err error)) error {
	if err := d.ready(); err != nil {
		return err
	}
	hosts := d.c.Stats()
	errs := make([]error, len(hosts))
	hstoreIn := make([]string, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() { hstoreIn[i], errs[i] = d.ensureExtensions(ctx, h) })
	}
	wg.Wait()
	shards := make([]int, 0)
	for i, h := range hosts {
		if errs[i] != nil {
			continue
		}
		shards = append(shards, h.Shards.List()...)
	}
	create := func(ctx context.Context, tx *sql.Tx, shard int) error {
		for i, h := range hosts {
			if h.Shards.Contains(shard) {
				return d.createShard(ctx, tx, shard, hstoreIn[i])
			}
		}
		return ErrUnknownShard
	}
	res := EachShard(ctx, d.db, d.c, create, &EachShardOptions{Shards: shards, Progress: progress})
	return errors.Join(append(errs, res.Err())...)
}

// createShard creates shard's schema, key generator and entities table in
// tx; hstoreSchema is the schema of the host's hstore extension.
func (d *Datastore) createShard(ctx context.Context, tx *sql.Tx, shard int, hstoreSchema string) error {
	schema, _, err := d.c.SchemaFor(shard)
	if err != nil {
		return err
	}
	q := quoteIdent(schema)
	exec := func(stmt string) error {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("%s: %w", dsFirstLine(stmt), err)
		}
		return nil
	}
	if err := exec(advisoryXactLock(lockCreateShards, shard)); err != nil {
		return err
	}
	if err := exec("CREATE SCHEMA IF NOT EXISTS " + q); err != nil {
		return err
	}
	var hasLayout bool
	if err := tx.QueryRowContext(ctx, "SELECT pg_catalog.to_regprocedure("+quoteLiteral(q+".hv_layout()")+") IS NOT NULL").Scan(&hasLayout); err != nil {
		return err
	}
	if hasLayout {
		// Never replace the key generator of a shard made for another layout.
		if err := checkShardLayout(ctx, tx, schema, shard, d.layout); err != nil {
			return err
		}
	}
	for _, stmt := range shardDDL(schema, shard, d.layout) {
		if err := exec(stmt); err != nil {
			return err
		}
	}
	if err := exec("CREATE TABLE IF NOT EXISTS " + q + ".entities (" +
		"id bigint PRIMARY KEY DEFAULT " + q + ".next_id(), " +
		"kind smallint NOT NULL, " +
		"body " + quoteIdent(hstoreSchema) + ".hstore NOT NULL, " +
		"updated timestamptz)"); err != nil {
		return err
	}
	return exec("CREATE INDEX IF NOT EXISTS entities_body_gin ON " + q + ".entities USING gin (body)")
}

// dsFirstLine returns the first line of a statement, for error messages.
func dsFirstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// CheckLayout compares every shard's hv_layout() with the Datastore's
// Layout (its epoch, and the shard number), shards concurrently. It returns
// nil when all match; otherwise the failures joined, each naming its shard
// and host: a mismatch wraps ErrLayoutMismatch, a shard without
// hv_layout() says to run CreateShards.
func (d *Datastore) CheckLayout(ctx context.Context) error {
	if err := d.ready(); err != nil {
		return err
	}
	res := EachShard(ctx, d.db, d.c, func(ctx context.Context, tx *sql.Tx, shard int) error {
		schema, _, err := d.c.SchemaFor(shard)
		if err != nil {
			return err
		}
		var has bool
		if err := tx.QueryRowContext(ctx, "SELECT pg_catalog.to_regprocedure("+quoteLiteral(quoteIdent(schema)+".hv_layout()")+") IS NOT NULL").Scan(&has); err != nil {
			return err
		}
		if !has {
			return fmt.Errorf("schema %s has no hv_layout(): run CreateShards (hv init)", schema)
		}
		return checkShardLayout(ctx, tx, schema, shard, d.layout)
	}, &EachShardOptions{TxOptions: &sql.TxOptions{ReadOnly: true}})
	return res.Err()
}

// EachShard runs fn on every shard of the Datastore's fleet, each in its own
// transaction; see the package-level EachShard. It never returns nil.
func (d *Datastore) EachShard(ctx context.Context, fn EachShardFunc, opts *EachShardOptions) *EachShardResult {
	if err := d.ready(); err != nil {
		return &EachShardResult{Failed: map[int]error{}, err: err}
	}
	return EachShard(ctx, d.db, d.c, fn, opts)
}

// entityBody validates kind and data and returns data's hstore text.
func entityBody(kind int, data map[string]string) (string, error) {
	if kind < math.MinInt16 || kind > math.MaxInt16 {
		return "", fmt.Errorf("%w: kind %d is outside the smallint range %d..%d", ErrInvalidEntity, kind, math.MinInt16, math.MaxInt16)
	}
	if data == nil {
		return "", fmt.Errorf("%w: nil data (use an empty map for an empty body)", ErrInvalidEntity)
	}
	return dsHstoreText(data)
}

// dsHstoreText returns m in hstore text form, or an error wrapping
// ErrInvalidEntity when a key or value cannot be PostgreSQL text.
func dsHstoreText(m map[string]string) (string, error) {
	h := make(Hstore, len(m))
	for k, v := range m {
		h[k] = &v
	}
	v, err := h.Value()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidEntity, err)
	}
	return v.(string), nil
}

// The entity statements. The table is found on the shard's search_path;
// hstore's type and operator are named in full, in the schema the host has
// the extension in ($HSTORE: hv_ext, or public in fleets made before the
// extension schema; see dsStatementsFor), so that they work whatever the
// search_path. Parameters go as text and are cast, so that neither driver
// needs to know the hstore type's OID.
const (
	putSQL    = "INSERT INTO entities (kind, body, updated) VALUES ($1, $2::text::$HSTORE.hstore, pg_catalog.clock_timestamp()) RETURNING id"
	getSQL    = "SELECT kind, body::text, updated FROM entities WHERE id = $1"
	updateSQL = "UPDATE entities SET body = $2::text::$HSTORE.hstore, updated = pg_catalog.clock_timestamp() WHERE id = $1"
	deleteSQL = "DELETE FROM entities WHERE id = $1"
	findSQL   = "SELECT id, kind, body::text, updated FROM entities WHERE kind = $1 AND body OPERATOR($HSTORE.@>) $2::text::$HSTORE.hstore ORDER BY id"
)

// Put stores a new entity of kind with body data on shard and returns its
// Key, generated by the shard's next_id(). It returns an error wrapping
// ErrUnknownShard when no host owns shard, ErrInvalidEntity for a kind
// outside -32768..32767, nil data or text PostgreSQL cannot hold, and
// otherwise the statement's error naming the shard and host.
func (d *Datastore) Put(ctx context.Context, shard, kind int, data map[string]string) (Key, error) {
	if err := d.ready(); err != nil {
		return 0, err
	}
	if _, _, err := d.c.SchemaFor(shard); err != nil {
		return 0, dsOpErr(err, "put on shard %d", shard)
	}
	body, err := entityBody(kind, data)
	if err != nil {
		return 0, dsOpErr(err, "put on shard %d", shard)
	}
	var k Key
	err = d.withStatements(ctx, shard, func(st *dsStatements) error {
		return d.db.QueryRowContext(WithShard(ctx, shard), st.put, kind, body).Scan(&k)
	})
	if err != nil {
		return 0, dsOpErr(err, "put on shard %d", shard)
	}
	return k, nil
}

// checkKey returns an error when key is negative or its shard has no host.
func (d *Datastore) checkKey(key Key) error {
	if key < 0 {
		return fmt.Errorf("%w: %d is negative", ErrInvalidKey, int64(key))
	}
	_, _, err := d.c.SchemaFor(key.ShardID())
	return err
}

// Get returns the entity with key from the key's shard. When there is none
// the error wraps sql.ErrNoRows and names the key; a negative key gives
// ErrInvalidKey and a shard no host owns ErrUnknownShard.
func (d *Datastore) Get(ctx context.Context, key Key) (Entity, error) {
	if err := d.ready(); err != nil {
		return Entity{}, err
	}
	op := "get key " + key.String()
	if err := d.checkKey(key); err != nil {
		return Entity{}, dsOpErr(err, "%s", op)
	}
	var e Entity
	var updated sql.NullTime
	err := d.db.QueryRowContext(WithKey(ctx, key), getSQL, int64(key)).Scan(&e.Kind, &e.Data, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return Entity{}, dsOpErr(err, "%s: no such entity on shard %d", op, key.ShardID())
	}
	if err != nil {
		return Entity{}, dsOpErr(err, "%s", op)
	}
	e.Key, e.Updated = key, updated.Time
	return e, nil
}

// Update replaces the body of the entity with key by data and sets its
// updated time. When there is no such entity the error wraps sql.ErrNoRows;
// bad data gives ErrInvalidEntity, as for Put.
func (d *Datastore) Update(ctx context.Context, key Key, data map[string]string) error {
	if err := d.ready(); err != nil {
		return err
	}
	op := "update key " + key.String()
	if err := d.checkKey(key); err != nil {
		return dsOpErr(err, "%s", op)
	}
	body, err := entityBody(0, data)
	if err != nil {
		return dsOpErr(err, "%s", op)
	}
	return d.withStatements(ctx, key.ShardID(), func(st *dsStatements) error {
		return d.execOne(ctx, key, op, st.update, int64(key), body)
	})
}

// Delete removes the entity with key. When there is no such entity the
// error wraps sql.ErrNoRows (ignore it for an idempotent delete).
func (d *Datastore) Delete(ctx context.Context, key Key) error {
	if err := d.ready(); err != nil {
		return err
	}
	op := "delete key " + key.String()
	if err := d.checkKey(key); err != nil {
		return dsOpErr(err, "%s", op)
	}
	return d.execOne(ctx, key, op, deleteSQL, int64(key))
}

// execOne runs a statement on key's shard that must affect one row.
func (d *Datastore) execOne(ctx context.Context, key Key, op, query string, args ...any) error {
	res, err := d.db.ExecContext(WithKey(ctx, key), query, args...)
	if err != nil {
		return dsOpErr(err, "%s", op)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return dsOpErr(err, "%s", op)
	}
	if n == 0 {
		return dsOpErr(sql.ErrNoRows, "%s: no such entity on shard %d", op, key.ShardID())
	}
	return nil
}

// Find returns, in key order, the entities of kind on shard whose body
// contains every pair of match (hstore containment, body @> match, served
// by the GIN index on body). An empty or nil match finds every entity of
// kind. Errors are as for Put.
func (d *Datastore) Find(ctx context.Context, shard, kind int, match map[string]string) ([]Entity, error) {
	if err := d.ready(); err != nil {
		return nil, err
	}
	op := fmt.Sprintf("find kind %d on shard %d", kind, shard)
	if _, _, err := d.c.SchemaFor(shard); err != nil {
		return nil, dsOpErr(err, "%s", op)
	}
	if match == nil {
		match = map[string]string{}
	}
	body, err := entityBody(kind, match)
	if err != nil {
		return nil, dsOpErr(err, "%s", op)
	}
	var rows *sql.Rows
	err = d.withStatements(ctx, shard, func(st *dsStatements) error {
		var err error
		rows, err = d.db.QueryContext(WithShard(ctx, shard), st.find, kind, body)
		return err
	})
	if err != nil {
		return nil, dsOpErr(err, "%s", op)
	}
	defer rows.Close()
	var out []Entity
	for rows.Next() {
		var e Entity
		var updated sql.NullTime
		if err := rows.Scan(&e.Key, &e.Kind, &e.Data, &updated); err != nil {
			return nil, dsOpErr(err, "%s", op)
		}
		e.Updated = updated.Time
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, dsOpErr(err, "%s", op)
	}
	return out, nil
}
