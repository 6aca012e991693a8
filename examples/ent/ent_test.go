package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// ent's schema migration through ForShard on every shard of a two-server
// fleet, twice (the second run inspects the existing tables and changes
// nothing); the hstore column is usable unqualified.
func TestEntSchemaCreateEveryShard(t *testing.T) {
	f := pgtest.NewFleet(t, "", "", false)
	ctx := context.Background()
	for i := range 2 {
		var out bytes.Buffer
		if err := run(ctx, f.DSN, &out); err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		if n := strings.Count(out.String(), ": migrated\n"); n != 16 {
			t.Fatalf("run %d: %d shards migrated:\n%s", i+1, n, out.String())
		}
	}
	var typ string
	for i, shard := range []string{"shard0003", "shard0012"} {
		err := f.Direct(t, i).QueryRow(ctx, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = ($1 || '.docs')::regclass AND attname = 'attrs'", shard).Scan(&typ)
		if err != nil || typ != "hv_ext.hstore" {
			t.Errorf("%s.docs.attrs is %q, %v", shard, typ, err)
		}
	}
	ds, err := hv.Open(f.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	sctx := hv.WithShard(ctx, 12)
	if _, err := ds.DB().ExecContext(sctx, "INSERT INTO docs (title, attrs) VALUES ('a', 'k=>v')"); err != nil {
		t.Fatal(err)
	}
	var v string
	if err := ds.DB().QueryRowContext(sctx, "SELECT attrs -> 'k' FROM docs").Scan(&v); err != nil || v != "v" {
		t.Errorf("attrs -> 'k' = %q, %v", v, err)
	}
	var tables int
	if err := f.Direct(t, 0).QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil || tables != 0 {
		t.Errorf("%d tables in public: %v", tables, err)
	}
}
