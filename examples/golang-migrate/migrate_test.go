package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/hypervault/hv/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// golang-migrate through ForShard on every shard of a two-server fleet:
// each shard reaches version 2 with its own schema_migrations, and a
// second run changes nothing.
func TestGolangMigrateEveryShard(t *testing.T) {
	f := pgtest.NewFleet(t, "", "", false)
	for run_ := range 2 {
		var out bytes.Buffer
		if err := run(context.Background(), f.DSN, &out); err != nil {
			t.Fatalf("run %d: %v", run_+1, err)
		}
		if n := strings.Count(out.String(), ": version 2\n"); n != 16 {
			t.Fatalf("run %d: %d shards at version 2:\n%s", run_+1, n, out.String())
		}
	}
	for _, r := range pgtest.FleetRanges {
		for n := r[0]; n < r[1]; n++ {
			if got := f.RowsOn(t, "schema_migrations", n, "version = 2 AND NOT dirty"); got != 1 {
				t.Errorf("shard %d: schema_migrations has %d rows at version 2", n, got)
			}
			// The table and its hstore column are the shard's own.
			if got := f.RowsOn(t, "notes", n, "attrs IS NULL"); got != 0 {
				t.Errorf("shard %d: notes has %d rows", n, got)
			}
		}
	}
	var tables int
	q := "SELECT count(*) FROM pg_tables WHERE tablename = 'schema_migrations' AND schemaname LIKE 'shard%'"
	if err := f.Direct(t, 0).QueryRow(context.Background(), q).Scan(&tables); err != nil || tables != 8 {
		t.Errorf("%d schema_migrations tables on host 0, want 8: %v", tables, err)
	}
	if err := f.Direct(t, 0).QueryRow(context.Background(), "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil || tables != 0 {
		t.Errorf("%d tables in public: %v", tables, err)
	}
}
