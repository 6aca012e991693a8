package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// fleet is shards 1-8 on one PostgreSQL server and 9-16 on another, each
// shard an empty schema (pgtest.NewFleet).
type fleet struct{ *pgtest.Fleet }

var ranges = []hv.ShardRange{{Start: 1, End: 9}, {Start: 9, End: 17}}

func newFleet(t *testing.T, hostParams, global string) *fleet {
	return &fleet{pgtest.NewFleet(t, hostParams, global, true)}
}

// newFleetSchemas is newFleet, leaving the shards' schemas for the code
// under test to create when schemas is false.
func newFleetSchemas(t *testing.T, hostParams, global string, schemas bool) *fleet {
	return &fleet{pgtest.NewFleet(t, hostParams, global, schemas)}
}

func (f *fleet) open(t *testing.T) (*bun.DB, *hv.Connector) {
	t.Helper()
	cfg, err := hv.ParseConfig(f.DSN)
	if err != nil {
		t.Fatal(err)
	}
	connector, err := hv.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := bun.NewDB(sql.OpenDB(connector), pgdialect.New())
	t.Cleanup(func() { db.Close() })
	return db, connector
}

func allShards() []int {
	var s []int
	for _, r := range ranges {
		for n := r.Start; n < r.End; n++ {
			s = append(s, n)
		}
	}
	return s
}

func TestBun(t *testing.T) {
	modes := []struct{ name, hostParams, global string }{
		{name: "pgx"},
		{name: "pgx-simple-protocol", hostParams: "default_query_exec_mode=simple_protocol"},
		{name: "lib-pq", global: "driver=postgres"},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			f := newFleet(t, mode.hostParams, mode.global)
			db, connector := f.open(t)
			testBun(t, f, db, connector)
		})
	}
}

func testBun(t *testing.T, f *fleet, db *bun.DB, connector *hv.Connector) {
	ctx := context.Background()
	shards := allShards()

	for range 2 { // IF NOT EXISTS: the second run finds every table
		if err := createTables(ctx, db, connector, shards); err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range ranges {
		rows, err := f.Direct(t, i).Query(ctx, `SELECT table_schema FROM information_schema.tables
			WHERE table_name = 'users' ORDER BY table_schema`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for n := r.Start; n < r.End; n++ {
			want = append(want, fmt.Sprintf("shard%04d", n))
		}
		if !slices.Equal(got, want) {
			t.Fatalf("host %d: users in schemas %v, want %v (and never public)", i, got, want)
		}
	}

	now := time.Now()
	newUser := func(shard, seq int, email string) User {
		id, err := hv.NewKey(now, shard, seq)
		if err != nil {
			t.Fatal(err)
		}
		return User{ID: id, Email: email, Name: "name of " + email}
	}
	a := newUser(3, 1, "a@example.com")
	b := newUser(12, 2, "b@example.com")
	c := newUser(16, 3, "c@example.com")
	for _, u := range []*User{&a, &b, &c} {
		if _, err := db.NewInsert().Model(u).Exec(hv.WithKey(ctx, u.ID)); err != nil {
			t.Fatalf("insert %s: %v", u.Email, err)
		}
		if u.CreatedAt.IsZero() {
			t.Fatalf("%s: created_at not returned", u.Email)
		}
	}
	if got, want := f.Placement(t, "users", "true"), map[int]int{3: 1, 12: 1, 16: 1}; !maps.Equal(got, want) {
		t.Fatalf("rows per shard %v, want %v", got, want)
	}
	if n := f.RowsOn(t, "users", 12, "id = $1 AND email = $2", int64(b.ID), b.Email); n != 1 {
		t.Fatalf("shard0012.users has %d rows for b, want 1", n)
	}
	// The same key on every shard: the row is found only on its own.
	for _, n := range shards {
		got := User{ID: b.ID}
		err := db.NewSelect().Model(&got).WherePK().Scan(hv.WithShard(ctx, n))
		switch {
		case n == 12 && err != nil:
			t.Fatalf("shard 12: %v", err)
		case n == 12 && got.Email != b.Email:
			t.Fatalf("shard 12: got %+v", got)
		case n != 12 && !errors.Is(err, sql.ErrNoRows):
			t.Fatalf("shard %d: err %v, want sql.ErrNoRows", n, err)
		}
	}

	// Update by key.
	b.Name = "Barbara"
	if _, err := db.NewUpdate().Model(&b).WherePK().Exec(hv.WithKey(ctx, b.ID)); err != nil {
		t.Fatal(err)
	}
	if n := f.RowsOn(t, "users", 12, "name = 'Barbara'"); n != 1 {
		t.Fatal("update on shard 12 not found there")
	}

	// Transactions: RunInTx pins the shard; a rollback leaves nothing.
	sctx := hv.WithShard(ctx, 5)
	rollback := errors.New("roll back")
	err := db.RunInTx(sctx, &sql.TxOptions{Isolation: sql.LevelSerializable}, func(ctx context.Context, tx bun.Tx) error {
		for i, email := range []string{"t1@example.com", "t2@example.com"} {
			u := newUser(5, 10+i, email)
			if _, err := tx.NewInsert().Model(&u).Exec(ctx); err != nil {
				return err
			}
		}
		n, err := tx.NewSelect().Model((*User)(nil)).Count(ctx)
		if err != nil || n != 2 {
			return fmt.Errorf("count in transaction: %d, %v", n, err)
		}
		return rollback
	})
	if !errors.Is(err, rollback) {
		t.Fatalf("RunInTx: %v", err)
	}
	if n := f.RowsOn(t, "users", 5, "true"); n != 0 {
		t.Fatalf("rolled-back rows on shard 5: %d", n)
	}
	err = db.RunInTx(sctx, nil, func(ctx context.Context, tx bun.Tx) error {
		u := newUser(5, 20, "t3@example.com")
		_, err := tx.NewInsert().Model(&u).Exec(ctx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// A statement for another shard inside a shard's transaction is refused.
	err = db.RunInTx(sctx, nil, func(ctx context.Context, tx bun.Tx) error {
		u := newUser(9, 21, "t4@example.com")
		_, err := tx.NewInsert().Model(&u).Exec(hv.WithShard(ctx, 9))
		return err
	})
	if !errors.Is(err, hv.ErrShardMismatch) {
		t.Fatalf("cross-shard statement in a transaction: %v, want ErrShardMismatch", err)
	}
	u := newUser(7, 22, "t5@example.com")
	if _, err := db.NewInsert().Model(&u).Exec(ctx); !errors.Is(err, hv.ErrNoShard) {
		t.Fatalf("insert without shard: %v, want ErrNoShard", err)
	}
	if got := f.Placement(t, "users", "email LIKE 't%'"); !maps.Equal(got, map[int]int{5: 1}) {
		t.Fatalf("transaction rows per shard %v, want only t3 on shard 5", got)
	}

	// Fan-out reads, merged by key (same millisecond: by shard).
	var everyone []User
	all := hv.WithMergeOrder(hv.WithAllShards(ctx), hv.Asc("id"))
	if err := db.NewSelect().Model(&everyone).Order("id").Scan(all); err != nil {
		t.Fatal(err)
	}
	var gotShards []int
	for _, u := range everyone {
		gotShards = append(gotShards, u.ID.ShardID())
	}
	if want := []int{3, 5, 12, 16}; !slices.Equal(gotShards, want) {
		t.Fatalf("fan-out select: shards %v, want %v", gotShards, want)
	}
	// An aggregate over a fan-out gives one row per shard: Count reads only
	// the first. Scan the per-shard counts and sum them.
	if one, err := db.NewSelect().Model((*User)(nil)).Count(hv.WithAllShards(ctx)); err != nil || one > 1 {
		t.Fatalf("fan-out Count: %d, %v; want one shard's count (0 or 1)", one, err)
	}
	var counts []int
	if err := db.NewSelect().Model((*User)(nil)).ColumnExpr("count(*)").Scan(hv.WithAllShards(ctx), &counts); err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	if len(counts) != len(shards) || total != 4 {
		t.Fatalf("per-shard counts %v (sum %d), want %d shards summing to 4", counts, total, len(shards))
	}
	// The merged form: hv adds the shards' counts into one row.
	merged := hv.WithAggregate(hv.WithAllShards(ctx), hv.Count("count"))
	if n, err := db.NewSelect().Model((*User)(nil)).Count(merged); err != nil || n != 4 {
		t.Fatalf("merged Count: %d, %v; want 4", n, err)
	}

	// Fan-out delete: bun runs it without a transaction, so it just works.
	res, err := db.NewDelete().Model((*User)(nil)).Where("email IN (?)", bun.In([]string{a.Email, "t3@example.com"})).Exec(hv.WithAllShards(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 2 {
		t.Fatalf("fan-out delete: %d rows, want 2", n)
	}
	// Delete by key.
	if _, err := db.NewDelete().Model(&c).WherePK().Exec(hv.WithKey(ctx, c.ID)); err != nil {
		t.Fatal(err)
	}
	if got := f.Placement(t, "users", "true"); !maps.Equal(got, map[int]int{12: 1}) {
		t.Fatalf("after deletes, rows per shard %v, want only b on shard 12", got)
	}
}

// TestRun runs the example program twice (it must be re-runnable) and
// checks, on a fleet without schemas yet, that each user it reports landed in the schema it names.
func TestRun(t *testing.T) {
	f := newFleetSchemas(t, "", "", false) // run creates the schemas
	for range 2 {
		var out bytes.Buffer
		if err := run(context.Background(), f.DSN, &out); err != nil {
			t.Fatalf("run: %v\n%s", err, out.String())
		}
		t.Logf("output:\n%s", out.String())
		var created, fleetLines int
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var email, schema, host string
			var shard int
			if _, err := fmt.Sscanf(line, "created %s on shard %d (%s on %s", &email, &shard, &schema, &host); err == nil {
				created++
				if schema != fmt.Sprintf("shard%04d", shard) {
					t.Errorf("%q: schema %s for shard %d", line, schema, shard)
				}
				want := 1
				if email == "donald@example.com" {
					want = 0 // deleted later in the run
				}
				if n := f.RowsOn(t, "users", shard, "email = $1", email); n != want {
					t.Errorf("%s: %d rows in %s, want %d", email, n, schema, want)
				}
			}
			if strings.HasPrefix(line, "fleet: ") {
				fleetLines++
			}
		}
		if created != 3 || fleetLines != 2 {
			t.Fatalf("created %d users and listed %d, want 3 and 2:\n%s", created, fleetLines, out.String())
		}
		if !strings.Contains(out.String(), `renamed ada@example.com to "Ada Lovelace"`) ||
			!strings.Contains(out.String(), "deleted donald@example.com: true") {
			t.Fatalf("unexpected output:\n%s", out.String())
		}
	}
}
