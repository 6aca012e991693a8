package main

import (
	"bytes"
	"context"
	"database/sql"
	"testing"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/examples/sqlc/authors"
	"github.com/hypervault/hv/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// TestRun runs the example on shards 1-8 and 9-16 of two servers and
// checks its output: the fleet's count is 4, not one shard's.
func TestRun(t *testing.T) {
	f := pgtest.NewFleet(t, "", "", true)
	var out bytes.Buffer
	if err := run(context.Background(), f.DSN, &out); err != nil {
		t.Fatal(err)
	}
	const want = "author Ursula on shard 1\nauthors in the fleet: 4\nnovels: 2\nstories: 2\n"
	if out.String() != want {
		t.Errorf("output\n%s\nwant\n%s", out.String(), want)
	}
}

// TestCountNeedsTheMergedForm shows the trap the example avoids: sqlc's :one
// on a plain fan-out reads one shard's count.
func TestCountNeedsTheMergedForm(t *testing.T) {
	f := pgtest.NewFleet(t, "", "", true)
	ctx := context.Background()
	if err := run(ctx, f.DSN, new(bytes.Buffer)); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("hv", f.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q := authors.New(db)
	if n, err := q.CountAuthors(hv.WithAllShards(ctx)); err != nil || n > 1 {
		t.Errorf("unmerged CountAuthors = %d, %v; want one shard's count (0 or 1)", n, err)
	}
	if n, err := fleetCount(ctx, q); err != nil || n != 4 {
		t.Errorf("merged CountAuthors = %d, %v; want 4", n, err)
	}
}
