package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// hstoreSchemaSQL finds the schema the hstore extension is installed in.
const hstoreSchemaSQL = "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'hstore'"

// extTablesSQL lists the tables, views and foreign tables of a schema ($1):
// an extension schema must hold none, or a shard's missing table would be
// read from it.
const extTablesSQL = "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace " +
	"WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY c.relname"

// ensureExtensions makes host h's database ready for the Datastore's
// extensions and returns the schema hstore is in: it creates the extension
// schema (when the fleet has one) and checks that it holds no tables, then
// installs hstore there unless hstore is installed already, in the
// extension schema or in public (fleets made before the extension schema;
// moving it is one statement, ALTER EXTENSION hstore SET SCHEMA hv_ext).
// hstore in any other schema is an error.
func (d *Datastore) ensureExtensions(ctx context.Context, h HostStats) (string, error) {
	fail := func(err error) (string, error) {
		return "", dsOpErr(err, "host %s: installing extensions", h.Host)
	}
	ext := d.c.Config().ExtSchema()
	first, ok := h.Shards.First()
	if !ok {
		return "", nil // a host without shards: MoveShard installs what it needs
	}
	sctx := WithShard(ctx, first)
	tx, err := d.db.BeginTx(sctx, nil)
	if err != nil {
		return fail(err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.ExecContext(sctx, advisoryXactLock(lockCreateShards, -1)); err != nil {
		return fail(err)
	}
	if ext != "" {
		if _, err := tx.ExecContext(sctx, "CREATE SCHEMA IF NOT EXISTS "+quoteIdent(ext)); err != nil {
			return fail(err)
		}
		tables, err := extTables(sctx, tx, ext)
		if err != nil {
			return fail(err)
		}
		if len(tables) > 0 {
			return fail(extTablesError(ext, tables))
		}
	}
	var schema string
	switch err := tx.QueryRowContext(sctx, hstoreSchemaSQL).Scan(&schema); {
	case errors.Is(err, sql.ErrNoRows):
		schema = ext
		if schema == "" {
			schema = "public"
		}
		// A bare CREATE EXTENSION would put it in the shard's schema, the
		// first on search_path: name the schema.
		if _, err := tx.ExecContext(sctx, "CREATE EXTENSION IF NOT EXISTS hstore SCHEMA "+quoteIdent(schema)); err != nil {
			return fail(err)
		}
	case err != nil:
		return fail(err)
	case schema != "public" && schema != ext:
		want := ext
		if want == "" {
			want = "public"
		}
		return fail(fmt.Errorf("the hstore extension is in schema %q; hv needs it in %s (ALTER EXTENSION hstore SET SCHEMA %s)", schema, want, quoteIdent(want)))
	}
	if err := tx.Commit(); err != nil {
		return fail(err)
	}
	d.stmts.Store(h.Host, dsStatementsFor(schema))
	return schema, nil
}

// extTables returns the tables and views of schema ext.
func extTables(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, ext string) ([]string, error) {
	rows, err := q.QueryContext(ctx, extTablesSQL, ext)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

func extTablesError(ext string, tables []string) error {
	return fmt.Errorf("extension schema %s holds tables or views (%s): a statement naming a table its shard lacks would read them; move them to another schema",
		quoteIdent(ext), strings.Join(tables, ", "))
}

// dsStatements are the entity statements for a host whose hstore is in
// one schema.
type dsStatements struct {
	put, update, find string
}

// dsStatementsFor returns the entity statements with hstore in schema.
func dsStatementsFor(schema string) *dsStatements {
	r := strings.NewReplacer("$HSTORE", quoteIdent(schema))
	return &dsStatements{put: r.Replace(putSQL), update: r.Replace(updateSQL), find: r.Replace(findSQL)}
}

// statements returns the entity statements for shard's host, looking up
// where the host's hstore is the first time (one query per host and
// Datastore).
func (d *Datastore) statements(ctx context.Context, shard int) (*dsStatements, error) {
	_, host, err := d.c.SchemaFor(shard)
	if err != nil {
		return nil, err
	}
	if st, ok := d.stmts.Load(host); ok {
		return st.(*dsStatements), nil
	}
	var schema string
	switch err := d.db.QueryRowContext(WithShard(ctx, shard), hstoreSchemaSQL).Scan(&schema); {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("hv: host %s: the hstore extension is not installed: run CreateShards (hv init)", host)
	case err != nil:
		return nil, err
	}
	st := dsStatementsFor(schema)
	d.stmts.Store(host, st)
	return st, nil
}

// withStatements runs fn with the entity statements of shard's host. When
// the server says a type, function or operator of them does not exist
// (someone moved the extension, ALTER EXTENSION hstore SET SCHEMA), hv
// forgets where the host's hstore was, looks again and runs fn once more:
// the server refused the statement before executing any of it.
func (d *Datastore) withStatements(ctx context.Context, shard int, fn func(*dsStatements) error) error {
	st, err := d.statements(ctx, shard)
	if err != nil {
		return err
	}
	err = fn(st)
	var se interface{ SQLState() string }
	if err == nil || !errors.As(err, &se) || se.SQLState() != "42704" && se.SQLState() != "42883" {
		return err
	}
	_, host, herr := d.c.SchemaFor(shard)
	if herr != nil {
		return err
	}
	d.stmts.CompareAndDelete(host, st)
	if st2, serr := d.statements(ctx, shard); serr == nil && *st2 != *st {
		return fn(st2)
	}
	return err
}

// HostExtensions is what CheckExtensions found on one host.
type HostExtensions struct {
	// Host is the host's name, "host:port/dbname".
	Host string
	// Schema is the fleet's extension schema (Config.ExtSchema), "" when
	// it has none.
	Schema string
	// SchemaExists reports whether Schema exists in the host's database.
	SchemaExists bool
	// Extensions maps each installed extension (but plpgsql) to its schema.
	Extensions map[string]string
	// Tables lists the tables and views in Schema; there should be none.
	Tables []string
	// Err is why the host could not be checked, nil when it was.
	Err error
}

// Problems returns what is wrong with the host's extensions, one sentence
// each, or nil: an extension outside the extension schema (its types and
// operators do not resolve unqualified on the shards), tables in the
// extension schema, an extension schema that is missing.
func (e HostExtensions) Problems() []string {
	if e.Err != nil {
		return []string{e.Err.Error()}
	}
	var out []string
	if e.Schema == "" {
		return nil
	}
	if !e.SchemaExists {
		out = append(out, fmt.Sprintf("extension schema %s does not exist: run CreateShards (hv init)", e.Schema))
	}
	if len(e.Tables) > 0 {
		out = append(out, extTablesError(e.Schema, e.Tables).Error())
	}
	names := make([]string, 0, len(e.Extensions))
	for n := range e.Extensions {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if s := e.Extensions[n]; s != e.Schema {
			out = append(out, fmt.Sprintf("extension %s is in schema %s, not on the shards' search_path, so its types and operators must be qualified (%s.%s): move it with ALTER EXTENSION %s SET SCHEMA %s",
				n, s, s, n, n, quoteIdent(e.Schema)))
		}
	}
	return out
}

// CheckExtensions reports, for every host in configuration order, the
// extension schema, the extensions installed and where, and any tables in
// the extension schema. It never fails as a whole: a host that cannot be
// reached has its Err set, naming the host.
func (d *Datastore) CheckExtensions(ctx context.Context) []HostExtensions {
	if err := d.ready(); err != nil {
		return []HostExtensions{{Err: err}}
	}
	ext := d.c.Config().ExtSchema()
	hosts := d.c.Stats()
	out := make([]HostExtensions, len(hosts))
	done := make(chan struct{})
	for i, h := range hosts {
		go func() {
			defer func() { done <- struct{}{} }()
			first, ok := h.Shards.First()
			if !ok { // hv reaches a host through one of its shards
				out[i] = HostExtensions{Host: h.Host, Schema: ext}
				return
			}
			out[i] = checkHostExtensions(WithShard(ctx, first), d.db, h.Host, ext)
		}()
	}
	for range hosts {
		<-done
	}
	return out
}

func checkHostExtensions(ctx context.Context, db *sql.DB, host, ext string) HostExtensions {
	e := HostExtensions{Host: host, Schema: ext, Extensions: map[string]string{}}
	fail := func(err error) HostExtensions {
		e.Err = dsOpErr(err, "host %s: checking extensions", host)
		return e
	}
	rows, err := db.QueryContext(ctx, "SELECT e.extname, n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql'")
	if err != nil {
		return fail(err)
	}
	for rows.Next() {
		var name, schema string
		if err := rows.Scan(&name, &schema); err != nil {
			rows.Close()
			return fail(err)
		}
		e.Extensions[name] = schema
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	if ext == "" {
		return e
	}
	if err := db.QueryRowContext(ctx, "SELECT pg_catalog.to_regnamespace($1) IS NOT NULL", quoteIdent(ext)).Scan(&e.SchemaExists); err != nil {
		return fail(err)
	}
	if e.Tables, err = extTables(ctx, db, ext); err != nil {
		return fail(err)
	}
	return e
}
