package hv

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// sqlState returns the SQLSTATE of err, or "".
func sqlState(err error) string {
	var se interface{ SQLState() string }
	if errors.As(err, &se) {
		return se.SQLState()
	}
	return ""
}

// Extension types, functions and operators resolve unqualified on every
// shard, with both inner drivers and in transaction pool mode, while a
// table a shard lacks still fails and never reads public's (or hv_ext's).
func TestExtensionsResolveUnqualified(t *testing.T) {
	for _, tc := range []struct{ name, driver, global string }{
		{"pgx", "pgx", ""},
		{"postgres", "postgres", ""},
		{"pgx-transaction-mode", "pgx", "pool_mode=transaction"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newTestFleet(t, fleetOptions{driver: tc.driver, global: tc.global})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// A table in public of each host that no shard has.
			for i := range 2 {
				if _, err := directDB(t, f, i).Exec("CREATE TABLE public.ghost (v text); INSERT INTO public.ghost VALUES ('from public')"); err != nil {
					t.Fatal(err)
				}
			}
			d := openDatastore(t, f.dsn)
			if err := d.CreateShards(ctx); err != nil {
				t.Fatal(err)
			}
			db := d.DB()
			for _, shard := range []int{1, 8, 9, 16} {
				sctx := WithShard(ctx, shard)
				var v string
				if err := db.QueryRowContext(sctx, "SELECT ($1::hstore) -> 'k'", "k=>v, a=>b").Scan(&v); err != nil || v != "v" {
					t.Fatalf("shard %d: SELECT $1::hstore -> 'k' = %q, %v", shard, v, err)
				}
				k, err := d.Put(ctx, shard, 1, map[string]string{"k": "shard"})
				if err != nil {
					t.Fatal(err)
				}
				if err := db.QueryRowContext(sctx, "SELECT body -> 'k' FROM entities WHERE id = $1 AND body ? 'k' AND body @> 'k=>shard'", k).Scan(&v); err != nil || v != "shard" {
					t.Fatalf("shard %d: body -> 'k' = %q, %v", shard, v, err)
				}
				var n int
				if err := db.QueryRowContext(sctx, "SELECT count(*) FROM entities WHERE body = hstore('k', 'shard')").Scan(&n); err != nil || n != 1 {
					t.Fatalf("shard %d: hstore() unqualified: %d, %v", shard, n, err)
				}
				var path string
				if err := db.QueryRowContext(sctx, "SELECT pg_catalog.current_setting('search_path')").Scan(&path); err != nil || !strings.HasSuffix(path, ", hv_ext") || strings.Contains(path, "public") {
					t.Errorf("shard %d: search_path %q, %v", shard, path, err)
				}
				// The table the shard lacks fails, public's is not read.
				err = db.QueryRowContext(sctx, "SELECT v FROM ghost").Scan(&v)
				if sqlState(err) != "42P01" {
					t.Errorf("shard %d: SELECT FROM ghost read %q, err %v; want undefined_table", shard, v, err)
				}
				// The shard's own table wins over any other.
				if err := db.QueryRowContext(sctx, "SELECT shard FROM t WHERE id = 0").Scan(&n); err != nil || n != shard {
					t.Errorf("shard %d: t is shard %d's, %v", shard, n, err)
				}
			}
		})
	}
}

// CreateShards refuses an extension schema that holds a table, which a
// shard's missing table would read; CheckExtensions reports it.
func TestExtensionSchemaWithTablesRefused(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := directDB(t, f, 1).Exec("CREATE SCHEMA hv_ext; CREATE TABLE hv_ext.leak (v int)"); err != nil {
		t.Fatal(err)
	}
	d := openDatastore(t, f.dsn)
	err := d.CreateShards(ctx)
	if err == nil || !strings.Contains(err.Error(), "leak") || !strings.Contains(err.Error(), "host "+hostName(f, 1)) {
		t.Fatalf("CreateShards with a table in hv_ext: %v", err)
	}
	if strings.Contains(err.Error(), "hv: host") && strings.Count(err.Error(), "hv: ") > strings.Count(err.Error(), "\n")+1 {
		t.Errorf("repeated prefix: %v", err)
	}
	rep := d.CheckExtensions(ctx)
	if len(rep) != 2 || len(rep[0].Problems()) != 0 || len(rep[1].Problems()) != 1 || !strings.Contains(rep[1].Problems()[0], "leak") {
		t.Errorf("CheckExtensions: %+v", rep)
	}
}

// hostName is the name hv gives host i of f.
func hostName(f *testFleet, i int) string {
	cfg, err := ParseConfig(f.dsn)
	if err != nil {
		panic(err)
	}
	return cfg.Hosts[i].Name()
}

// A fleet made before the extension schema has hstore in public: the
// Datastore keeps working, CheckExtensions says how to move it, and after
// ALTER EXTENSION hstore SET SCHEMA hv_ext the same Datastore goes on
// working without a failed statement.
func TestExtensionsLegacyPublic(t *testing.T) {
	for _, drv := range []string{"pgx", "postgres"} {
		t.Run(drv, func(t *testing.T) {
			f := newTestFleet(t, fleetOptions{driver: drv})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for i := range 2 {
				if _, err := directDB(t, f, i).Exec("CREATE EXTENSION hstore SCHEMA public"); err != nil {
					t.Fatal(err)
				}
			}
			d := openDatastore(t, f.dsn)
			if err := d.CreateShards(ctx); err != nil {
				t.Fatal(err)
			}
			var schema string
			if err := directDB(t, f, 0).QueryRow(hstoreSchemaSQL).Scan(&schema); err != nil || schema != "public" {
				t.Fatalf("hstore moved to %q by CreateShards: %v", schema, err)
			}
			for _, h := range d.CheckExtensions(ctx) {
				if p := h.Problems(); len(p) != 1 || !strings.Contains(p[0], "ALTER EXTENSION hstore SET SCHEMA \"hv_ext\"") {
					t.Errorf("host %s: problems %q", h.Host, p)
				}
			}
			// Another process (a Datastore that never ran CreateShards)
			// finds public too.
			d2 := openDatastore(t, f.dsn)
			keys := map[int]Key{}
			for _, shard := range []int{3, 12} {
				k, err := d2.Put(ctx, shard, 2, map[string]string{"a": "b"})
				if err != nil {
					t.Fatal(err)
				}
				keys[shard] = k
				if found, err := d2.Find(ctx, shard, 2, map[string]string{"a": "b"}); err != nil || len(found) != 1 {
					t.Fatalf("Find on shard %d: %v, %v", shard, found, err)
				}
			}
			for i := range 2 {
				if _, err := directDB(t, f, i).Exec("ALTER EXTENSION hstore SET SCHEMA hv_ext"); err != nil {
					t.Fatal(err)
				}
			}
			for shard, k := range keys {
				if err := d2.Update(ctx, k, map[string]string{"a": "c"}); err != nil {
					t.Fatalf("Update after the move: %v", err)
				}
				if found, err := d2.Find(ctx, shard, 2, map[string]string{"a": "c"}); err != nil || len(found) != 1 {
					t.Fatalf("Find after the move on shard %d: %v, %v", shard, found, err)
				}
				if _, err := d2.Put(ctx, shard, 2, map[string]string{"x": "y"}); err != nil {
					t.Fatalf("Put after the move: %v", err)
				}
				var v string
				if err := d2.DB().QueryRowContext(WithShard(ctx, shard), "SELECT body -> 'a' FROM entities WHERE id = $1", k).Scan(&v); err != nil || v != "c" {
					t.Fatalf("unqualified after the move: %q, %v", v, err)
				}
			}
			for _, h := range d.CheckExtensions(ctx) {
				if p := h.Problems(); len(p) != 0 {
					t.Errorf("host %s after the move: problems %q", h.Host, p)
				}
			}
		})
	}
}

func TestExtensionSchemaConfig(t *testing.T) {
	for _, tc := range []struct{ dsn, want string }{
		{"shards=0-8 host=h; ext_schema=public", "public"},
		{"shards=0-8 host=h; ext_schema=shard0003", "schema of shard 3"},
		{"shards=0-8 host=h; ext_schema=Ext", "lowercase"},
		{"shards=0-8 host=h; ext_schema=pg_ext", "pg_"},
		{"shards=0-8 host=h; ext_schema=x_1; schema=x_%d", "schema of shard 1"},
	} {
		_, err := ParseConfig(tc.dsn)
		if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "segment 2") {
			t.Errorf("%q: %v", tc.dsn, err)
		}
	}
	for dsn, want := range map[string]string{
		"shards=0-8 host=h":                  `SET search_path TO "shard0005", "hv_ext"`,
		"shards=0-8 host=h; ext_schema=ext1": `SET search_path TO "shard0005", "ext1"`,
		"shards=0-8 host=h; ext_schema=none": `SET search_path TO "shard0005"`,
	} {
		cfg, err := ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.fleet.Load().shards[5].setPath; got != want {
			t.Errorf("%q: %s, want %s", dsn, got, want)
		}
		c.Close()
		if cfg2, err := ParseConfig(cfg.String()); err != nil || cfg2.ExtensionSchema != cfg.ExtensionSchema {
			t.Errorf("%q: String round trip %q: %v", dsn, cfg.String(), err)
		}
	}
}

// With ext_schema=none search_path is the shard's schema alone, as before
// the extension schema, and CreateShards installs hstore in public.
func TestExtensionSchemaNone(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "ext_schema=none"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d := openDatastore(t, f.dsn)
	if err := d.CreateShards(ctx); err != nil {
		t.Fatal(err)
	}
	var schema, path string
	if err := directDB(t, f, 1).QueryRow(hstoreSchemaSQL).Scan(&schema); err != nil || schema != "public" {
		t.Fatalf("hstore in %q: %v", schema, err)
	}
	if err := d.DB().QueryRowContext(WithShard(ctx, 2), "SELECT pg_catalog.current_setting('search_path')").Scan(&path); err != nil || path != "shard0002" {
		t.Errorf("search_path %q, %v", path, err)
	}
	if _, err := d.Put(ctx, 2, 1, map[string]string{"a": "b"}); err != nil {
		t.Fatal(err)
	}
}
