package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
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

func (f *fleet) open(t *testing.T, cfg *gorm.Config) (*gorm.DB, *hv.Connector) {
	t.Helper()
	hcfg, err := hv.ParseConfig(f.DSN)
	if err != nil {
		t.Fatal(err)
	}
	connector, err := hv.NewConnector(hcfg)
	if err != nil {
		t.Fatal(err)
	}
	sqlDB := sql.OpenDB(connector)
	t.Cleanup(func() { sqlDB.Close() })
	if cfg.Logger == nil {
		cfg.Logger = logger.Discard
	}
	db, err := openGORM(sqlDB, hcfg.Driver, cfg)
	if err != nil {
		t.Fatal(err)
	}
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

// UserV2 is User with one more column, as a later version of the
// application would migrate it.
type UserV2 struct {
	User
	Bio string
}

// TableName keeps UserV2 in the users table.
func (UserV2) TableName() string { return "users" }

func TestGORM(t *testing.T) {
	modes := []struct {
		name, hostParams, global string
		gorm                     gorm.Config
	}{
		{name: "pgx"},
		{name: "pgx-simple-protocol", hostParams: "default_query_exec_mode=simple_protocol"},
		{name: "gorm-prepare-stmt", gorm: gorm.Config{PrepareStmt: true}},
		{name: "lib-pq", global: "driver=postgres"},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			f := newFleet(t, mode.hostParams, mode.global)
			cfg := mode.gorm
			db, connector := f.open(t, &cfg)
			testGORM(t, f, db, connector)
		})
	}
}

func testGORM(t *testing.T, f *fleet, db *gorm.DB, connector *hv.Connector) {
	ctx := context.Background()
	shards := allShards()

	// Migrate every shard twice (the second run finds the table through
	// information_schema with CURRENT_SCHEMA()), then add a column.
	for range 2 {
		if err := migrate(ctx, db, connector, shards, &User{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := migrate(ctx, db, connector, shards, &UserV2{}); err != nil {
		t.Fatal(err)
	}
	for i, r := range ranges {
		rows, err := f.Direct(t, i).Query(ctx, `SELECT table_schema FROM information_schema.columns
			WHERE table_name = 'users' AND column_name = 'bio' ORDER BY table_schema`)
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
			t.Fatalf("host %d: users.bio in schemas %v, want %v (and never public)", i, got, want)
		}
	}
	for _, n := range shards {
		for _, ok := range []bool{db.WithContext(hv.WithShard(ctx, n)).Migrator().HasTable(&User{})} {
			if !ok {
				t.Fatalf("shard %d: HasTable(users) = false", n)
			}
		}
	}

	// Create on chosen shards.
	now := time.Now()
	newUser := func(shard, seq int, email string) UserV2 {
		id, err := hv.NewKey(now, shard, seq)
		if err != nil {
			t.Fatal(err)
		}
		return UserV2{User: User{ID: id, Email: email, Name: "name of " + email}, Bio: "bio"}
	}
	a := newUser(3, 1, "a@example.com")
	b := newUser(12, 2, "b@example.com")
	c := newUser(16, 3, "c@example.com")
	for _, u := range []*UserV2{&a, &b, &c} {
		if err := db.WithContext(hv.WithKey(ctx, u.ID)).Create(u).Error; err != nil {
			t.Fatalf("create %s: %v", u.Email, err)
		}
	}
	if got, want := f.Placement(t, "users", "true"), map[int]int{3: 1, 12: 1, 16: 1}; !mapsEqual(got, want) {
		t.Fatalf("rows per shard %v, want %v", got, want)
	}
	if n := f.RowsOn(t, "users", 12, "id = $1 AND email = $2", int64(b.ID), b.Email); n != 1 {
		t.Fatalf("shard0012.users has %d rows for b, want 1", n)
	}
	// The same key on every shard: the record is found only on its own.
	for _, n := range shards {
		var got UserV2
		err := db.WithContext(hv.WithShard(ctx, n)).Where("id = ?", b.ID).Take(&got).Error
		switch {
		case n == 12 && err != nil:
			t.Fatalf("shard 12: %v", err)
		case n == 12 && (got.Email != b.Email || got.ID != b.ID || got.Bio != "bio"):
			t.Fatalf("shard 12: got %+v", got)
		case n != 12 && !errors.Is(err, gorm.ErrRecordNotFound):
			t.Fatalf("shard %d: err %v, want ErrRecordNotFound", n, err)
		}
	}
	// First, with GORM's ORDER BY primary key and LIMIT.
	var first UserV2
	if err := db.WithContext(hv.WithKey(ctx, a.ID)).First(&first).Error; err != nil || first.ID != a.ID {
		t.Fatalf("First on shard 3: %+v, %v", first, err)
	}

	// Update: Model+Update, Updates with a struct, Save.
	if err := db.WithContext(hv.WithKey(ctx, b.ID)).Model(&b).Update("name", "Barbara").Error; err != nil {
		t.Fatal(err)
	}
	if err := db.WithContext(hv.WithKey(ctx, c.ID)).Model(&c).Updates(UserV2{Bio: "updated"}).Error; err != nil {
		t.Fatal(err)
	}
	a.Name = "Alan"
	if err := db.WithContext(hv.WithKey(ctx, a.ID)).Save(&a).Error; err != nil {
		t.Fatal(err)
	}
	if n := f.RowsOn(t, "users", 12, "name = 'Barbara'"); n != 1 {
		t.Fatalf("update on shard 12 not found there")
	}
	if n := f.RowsOn(t, "users", 16, "bio = 'updated'"); n != 1 {
		t.Fatalf("update on shard 16 not found there")
	}
	if n := f.RowsOn(t, "users", 3, "name = 'Alan'"); n != 1 {
		t.Fatalf("save on shard 3 not found there")
	}
	if got := f.Placement(t, "users", "true"); !mapsEqual(got, map[int]int{3: 1, 12: 1, 16: 1}) {
		t.Fatalf("after updates, rows per shard %v", got)
	}

	// Transactions: GORM's own around Create, and db.Transaction.
	sctx := hv.WithShard(ctx, 5)
	rollback := errors.New("roll back")
	err := db.WithContext(sctx).Transaction(func(tx *gorm.DB) error {
		for i, email := range []string{"t1@example.com", "t2@example.com"} {
			u := newUser(5, 10+i, email)
			if err := tx.Create(&u).Error; err != nil {
				return err
			}
		}
		var n int64
		if err := tx.Model(&UserV2{}).Count(&n).Error; err != nil || n != 2 {
			return fmt.Errorf("count in transaction: %d, %v", n, err)
		}
		return rollback
	})
	if !errors.Is(err, rollback) {
		t.Fatalf("Transaction: %v", err)
	}
	if n := f.RowsOn(t, "users", 5, "true"); n != 0 {
		t.Fatalf("rolled-back rows on shard 5: %d", n)
	}
	err = db.WithContext(sctx).Transaction(func(tx *gorm.DB) error {
		u := newUser(5, 20, "t3@example.com")
		return tx.Create(&u).Error
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := f.RowsOn(t, "users", 5, "email = 't3@example.com'"); n != 1 {
		t.Fatalf("committed row on shard 5: %d", n)
	}
	// A statement for another shard inside a shard's transaction is refused.
	err = db.WithContext(sctx).Transaction(func(tx *gorm.DB) error {
		u := newUser(9, 21, "t4@example.com")
		return tx.WithContext(hv.WithShard(ctx, 9)).Create(&u).Error
	})
	if !errors.Is(err, hv.ErrShardMismatch) {
		t.Fatalf("cross-shard statement in a transaction: %v, want ErrShardMismatch", err)
	}
	// No shard on the context.
	u := newUser(7, 22, "t5@example.com")
	if err := db.WithContext(ctx).Create(&u).Error; !errors.Is(err, hv.ErrNoShard) {
		t.Fatalf("create without shard: %v, want ErrNoShard", err)
	}
	if got := f.Placement(t, "users", "email LIKE 't%'"); !mapsEqual(got, map[int]int{5: 1}) {
		t.Fatalf("transaction rows per shard %v, want only t3 on shard 5", got)
	}

	// Fan-out reads: every shard's rows, merged by key.
	var everyone []UserV2
	all := hv.WithMergeOrder(hv.WithAllShards(ctx), hv.Asc("id"))
	if err := db.WithContext(all).Order("id").Find(&everyone).Error; err != nil {
		t.Fatal(err)
	}
	var gotShards []int
	for _, u := range everyone {
		gotShards = append(gotShards, u.ID.ShardID())
	}
	if want := []int{3, 5, 12, 16}; !slices.Equal(gotShards, want) {
		t.Fatalf("fan-out Find: shards %v, want %v (key order: same millisecond, so by shard)", gotShards, want)
	}
	// An aggregate over a fan-out gives one row per shard. GORM's Count,
	// seeing more than one row, reports the number of rows: the number of
	// shards. Pluck the per-shard counts and sum them.
	var rowsSeen int64
	if err := db.WithContext(hv.WithAllShards(ctx)).Model(&UserV2{}).Count(&rowsSeen).Error; err != nil || rowsSeen != int64(len(shards)) {
		t.Fatalf("fan-out Count: %d, %v; want GORM's row count, %d", rowsSeen, err, len(shards))
	}
	var counts []int64
	if err := db.WithContext(hv.WithAllShards(ctx)).Model(&UserV2{}).Pluck("count(*)", &counts).Error; err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, n := range counts {
		total += n
	}
	if len(counts) != len(shards) || total != 4 {
		t.Fatalf("per-shard counts %v (sum %d), want %d shards summing to 4", counts, total, len(shards))
	}
	// The merged form: hv adds the shards' counts into one row.
	merged := hv.WithAggregate(hv.WithAllShards(ctx), hv.Count("count"))
	var n int64
	if err := db.WithContext(merged).Model(&UserV2{}).Count(&n).Error; err != nil || n != 4 {
		t.Fatalf("merged Count: %d, %v; want 4", n, err)
	}

	// Fan-out writes need GORM's default transaction off: a transaction
	// lives on one shard.
	err = db.WithContext(hv.WithAllShards(ctx)).Where("bio = ?", "bio").Delete(&UserV2{}).Error
	if !errors.Is(err, hv.ErrFanOutPinned) {
		t.Fatalf("fan-out delete in GORM's default transaction: %v, want ErrFanOutPinned", err)
	}
	res := db.Session(&gorm.Session{SkipDefaultTransaction: true}).
		WithContext(hv.WithAllShards(ctx)).Where("email IN ?", []string{a.Email, "t3@example.com"}).Delete(&UserV2{})
	if res.Error != nil || res.RowsAffected != 2 {
		t.Fatalf("fan-out delete: %d rows, %v; want 2", res.RowsAffected, res.Error)
	}

	// Delete by key.
	if err := db.WithContext(hv.WithKey(ctx, c.ID)).Delete(&UserV2{}, "id = ?", c.ID).Error; err != nil {
		t.Fatal(err)
	}
	if got := f.Placement(t, "users", "true"); !mapsEqual(got, map[int]int{12: 1}) {
		t.Fatalf("after deletes, rows per shard %v, want only b on shard 12", got)
	}
}

func mapsEqual(a, b map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRun runs the example program twice (it must be re-runnable) and
// checks, on a fleet without schemas yet, that each user it reports landed in the schema and on the server
// it names.
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
		total := 0
		for _, n := range f.Placement(t, "users", "true") {
			total += n
		}
		if total != 2 {
			t.Fatalf("%d users in the fleet, want 2", total)
		}
	}
}
