package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

// openDatastore opens a Datastore on dsn, closed when t ends.
func openDatastore(t testing.TB, dsn string) *Datastore {
	t.Helper()
	d, err := Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// directDB opens the database behind a test fleet's host i with pgx,
// bypassing hv.
func directDB(t testing.TB, f *testFleet, i int) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", f.hosts[i])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func dsPtr(s string) *string { return &s }

// trickyData holds keys and values that need quoting or escaping in hstore
// text.
var trickyData = map[string]string{
	"beep":            "boop",
	"empty":           "",
	"NULL":            "NULL", // the text NULL, not SQL NULL
	"null-ish":        "null",
	`quote"key`:       `quote"value`,
	`back\slash`:      `C:\path\`,
	"arrow=>key":      "a=>b, c=>d",
	"single'quote":    "it's",
	"comma,key":       " spaced value ",
	"unicode ключ 🔑":  "значение ✓ 漢字",
	"newline\nkey":    "tab\tvalue\r\n",
	"trailing space ": "=",
}

func TestDatastoreTwoServers(t *testing.T) {
	for _, drv := range []string{"pgx", "postgres"} {
		t.Run(drv, func(t *testing.T) {
			f := newTestFleet(t, fleetOptions{driver: drv})
			d := openDatastore(t, f.dsn)
			ctx := context.Background()

			for i := range 2 {
				if err := d.CreateShards(ctx); err != nil {
					t.Fatalf("CreateShards #%d: %v", i+1, err)
				}
			}
			if err := d.CheckLayout(ctx); err != nil {
				t.Fatalf("CheckLayout: %v", err)
			}

			// The extension is in hv_ext of both databases; no shard schema
			// got a copy.
			for i := range 2 {
				var schema string
				err := directDB(t, f, i).QueryRow(
					"SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE extname = 'hstore'").Scan(&schema)
				if err != nil || schema != "hv_ext" {
					t.Fatalf("host %d: hstore extension in %q, %v; want hv_ext", i, schema, err)
				}
			}

			before := time.Now()
			keys := map[int]Key{}
			for _, shard := range []int{1, 8, 9, 12, 16} {
				k, err := d.Put(ctx, shard, 7, trickyData)
				if err != nil {
					t.Fatalf("Put on shard %d: %v", shard, err)
				}
				keys[shard] = k
				if k.ShardID() != shard {
					t.Errorf("key %d: ShardID %d, want %d", k, k.ShardID(), shard)
				}
				if c := k.Created(); c.Before(before.Add(-5*time.Second)) || c.After(time.Now().Add(5*time.Second)) {
					t.Errorf("key %d: Created %v, want about %v", k, c, before)
				}
			}

			// Each entity is in its shard's schema on the shard's server.
			for shard, k := range keys {
				host := 0
				if shard >= 9 {
					host = 1
				}
				var n int
				q := fmt.Sprintf("SELECT count(*) FROM shard%04d.entities WHERE id = $1", shard)
				if err := directDB(t, f, host).QueryRow(q, int64(k)).Scan(&n); err != nil || n != 1 {
					t.Errorf("shard %d: %d rows with key %d on host %d (%v), want 1", shard, n, k, host, err)
				}
			}

			for shard, k := range keys {
				e, err := d.Get(ctx, k)
				if err != nil {
					t.Fatalf("Get(%d) on shard %d: %v", k, shard, err)
				}
				if e.Key != k || e.Kind != 7 || e.Updated.IsZero() {
					t.Errorf("Get(%d) = key %d kind %d updated %v", k, e.Key, e.Kind, e.Updated)
				}
				checkData(t, e.Data, trickyData)
			}

			// A key nobody stored.
			k12 := keys[12]
			missing, err := NewKey(k12.Created(), 12, (k12.AddedID()+512)%1024)
			if err != nil {
				t.Fatal(err)
			}
			_, err = d.Get(ctx, missing)
			if !errors.Is(err, sql.ErrNoRows) || !strings.Contains(err.Error(), missing.String()) {
				t.Fatalf("Get(missing) = %v, want sql.ErrNoRows naming the key", err)
			}

			// Update replaces the body and moves updated forward.
			old, _ := d.Get(ctx, k12)
			newData := map[string]string{"beep": "boop", "state": "updated"}
			if err := d.Update(ctx, k12, newData); err != nil {
				t.Fatalf("Update: %v", err)
			}
			e, err := d.Get(ctx, k12)
			if err != nil {
				t.Fatal(err)
			}
			checkData(t, e.Data, newData)
			if e.Updated.Before(old.Updated) {
				t.Errorf("updated went back: %v then %v", old.Updated, e.Updated)
			}
			if err := d.Update(ctx, missing, newData); !errors.Is(err, sql.ErrNoRows) {
				t.Errorf("Update(missing) = %v, want sql.ErrNoRows", err)
			}

			// Find by containment.
			found, err := d.Find(ctx, 12, 7, map[string]string{"state": "updated"})
			if err != nil {
				t.Fatalf("Find: %v", err)
			}
			if len(found) != 1 || found[0].Key != k12 {
				t.Fatalf("Find(state=updated) = %v, want key %d", found, k12)
			}
			found, err = d.Find(ctx, 12, 7, map[string]string{"beep": "boop", `quote"key`: `quote"value`})
			if err != nil || len(found) != 0 {
				t.Fatalf("Find(beep=boop, quote) = %v, %v; want none (the body was replaced)", found, err)
			}
			found, err = d.Find(ctx, 16, 7, map[string]string{`back\slash`: `C:\path\`, "arrow=>key": "a=>b, c=>d"})
			if err != nil || len(found) != 1 || found[0].Key != keys[16] {
				t.Fatalf("Find(escaped pairs) = %v, %v; want key %d", found, err, keys[16])
			}
			found, err = d.Find(ctx, 16, 8, nil)
			if err != nil || len(found) != 0 {
				t.Fatalf("Find(kind 8) = %v, %v; want none", found, err)
			}

			// Delete.
			if err := d.Delete(ctx, k12); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := d.Get(ctx, k12); !errors.Is(err, sql.ErrNoRows) {
				t.Errorf("Get after Delete = %v, want sql.ErrNoRows", err)
			}
			if err := d.Delete(ctx, k12); !errors.Is(err, sql.ErrNoRows) {
				t.Errorf("second Delete = %v, want sql.ErrNoRows", err)
			}

			// A fan-out over the fleet sees the remaining entities.
			var total int
			rows, err := d.DB().QueryContext(WithAllShards(ctx), "SELECT count(*) FROM entities")
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var n int
				if err := rows.Scan(&n); err != nil {
					t.Fatal(err)
				}
				total += n
			}
			if err := rows.Close(); err != nil {
				t.Fatal(err)
			}
			if total != len(keys)-1 {
				t.Errorf("fan-out count = %d, want %d", total, len(keys)-1)
			}
		})
	}
}

// checkData fails t unless got holds exactly want's pairs.
func checkData(t *testing.T, got Hstore, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d pairs, want %d: %v", len(got), len(want), got)
	}
	for k, v := range want {
		g, ok := got[k]
		switch {
		case !ok:
			t.Errorf("key %q missing", k)
		case g == nil:
			t.Errorf("key %q: SQL NULL, want %q", k, v)
		case *g != v:
			t.Errorf("key %q: %q, want %q", k, *g, v)
		}
	}
}

// SQL NULL values, which Put cannot write (its data is a map[string]string),
// read back as nil.
func TestDatastoreNullValues(t *testing.T) {
	for _, drv := range []string{"pgx", "postgres"} {
		t.Run(drv, func(t *testing.T) {
			f := newTestFleet(t, fleetOptions{driver: drv})
			d := openDatastore(t, f.dsn)
			ctx := context.Background()
			if err := d.CreateShards(ctx); err != nil {
				t.Fatal(err)
			}
			var k Key
			err := d.DB().QueryRowContext(WithShard(ctx, 10),
				`INSERT INTO entities (kind, body) VALUES (3, 'a=>NULL, b=>"NULL", c=>x'::hstore) RETURNING id`).Scan(&k)
			if err != nil {
				t.Fatal(err)
			}
			e, err := d.Get(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			want := Hstore{"a": nil, "b": dsPtr("NULL"), "c": dsPtr("x")}
			if len(e.Data) != 3 || e.Data["a"] != nil || e.Data["b"] == nil || *e.Data["b"] != "NULL" || e.Data["c"] == nil || *e.Data["c"] != "x" {
				t.Errorf("Data = %v, want %v", e.Data, want)
			}
			if !e.Updated.IsZero() {
				t.Errorf("Updated = %v for a NULL column, want the zero time", e.Updated)
			}
			// Empty bodies are fine too.
			k2, err := d.Put(ctx, 10, 3, map[string]string{})
			if err != nil {
				t.Fatal(err)
			}
			if e, err := d.Get(ctx, k2); err != nil || e.Data == nil || len(e.Data) != 0 {
				t.Errorf("Get(empty body) = %v, %v; want an empty non-nil Hstore", e.Data, err)
			}
		})
	}
}

// Find's statement is served by the GIN index on body.
func TestDatastoreFindUsesGINIndex(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	d := openDatastore(t, f.dsn)
	ctx := context.Background()
	if err := d.CreateShards(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := d.Put(ctx, 12, 1, map[string]string{"n": fmt.Sprint(i), "beep": "boop"}); err != nil {
			t.Fatal(err)
		}
	}
	// Enough rows that an index matters.
	if _, err := d.DB().ExecContext(WithShard(ctx, 12), `INSERT INTO entities (kind, body)
		SELECT 1, hstore(ARRAY['n', g::text, 'beep', 'boop']) FROM pg_catalog.generate_series(100, 1100) g`); err != nil {
		t.Fatal(err)
	}
	sctx := WithShard(ctx, 12)
	tx, err := d.DB().BeginTx(sctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	// With a few thousand rows the planner prefers a sequential scan, or
	// for ORDER BY id the primary key (measured: it picks the GIN index
	// unprompted from about 100k rows): rule both out to see that the
	// statement's hstore operator can use the GIN index.
	if _, err := tx.ExecContext(sctx, "SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(sctx, "ANALYZE entities"); err != nil {
		t.Fatal(err)
	}
	body, err := dsHstoreText(map[string]string{"n": "3"})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := tx.QueryContext(sctx, "EXPLAIN "+dsStatementsFor("hv_ext").find, 1, body)
	if err != nil {
		t.Fatal(err)
	}
	var plan strings.Builder
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan.WriteString(line + "\n")
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plan.String(), "entities_body_gin") {
		t.Fatalf("Find's plan does not use the GIN index:\n%s", plan.String())
	}
	t.Logf("plan:\n%s", plan.String())

	found, err := d.Find(ctx, 12, 1, map[string]string{"n": "3"})
	if err != nil || len(found) != 1 || *found[0].Data["n"] != "3" {
		t.Fatalf("Find(n=3) = %v, %v", found, err)
	}
}

// Bad input gives clear errors and touches no server: the DSN points at a
// port where nothing listens.
func TestDatastoreBadInput(t *testing.T) {
	d := openDatastore(t, "shards=1-9 host=127.0.0.1 port=1 user=u password=sekrit dbname=x; shards=9-17 host=127.0.0.1 port=1 dbname=y")
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"Put unknown shard", second(d.Put(ctx, 99, 1, map[string]string{})), ErrUnknownShard},
		{"Put shard out of range", second(d.Put(ctx, -1, 1, map[string]string{})), ErrUnknownShard},
		{"Put kind too big", second(d.Put(ctx, 5, math.MaxInt16+1, map[string]string{})), ErrInvalidEntity},
		{"Put kind too small", second(d.Put(ctx, 5, math.MinInt16-1, map[string]string{})), ErrInvalidEntity},
		{"Put nil data", second(d.Put(ctx, 5, 1, nil)), ErrInvalidEntity},
		{"Put NUL", second(d.Put(ctx, 5, 1, map[string]string{"a": "b\x00"})), ErrInvalidEntity},
		{"Put bad UTF-8", second(d.Put(ctx, 5, 1, map[string]string{"\xff": "b"})), ErrInvalidEntity},
		{"Get negative key", second(d.Get(ctx, -5)), ErrInvalidKey},
		{"Get unowned shard", second(d.Get(ctx, must(NewKey(time.Now(), 40, 0)))), ErrUnknownShard},
		{"Update nil data", d.Update(ctx, must(NewKey(time.Now(), 3, 0)), nil), ErrInvalidEntity},
		{"Update unowned", d.Update(ctx, must(NewKey(time.Now(), 0, 0)), map[string]string{}), ErrUnknownShard},
		{"Delete negative", d.Delete(ctx, -1), ErrInvalidKey},
		{"Find unowned", second(d.Find(ctx, 17, 1, nil)), ErrUnknownShard},
		{"Find kind", second(d.Find(ctx, 1, 1<<20, nil)), ErrInvalidEntity},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		} else if strings.Contains(tc.err.Error(), "sekrit") {
			t.Errorf("%s: error shows the password: %v", tc.name, tc.err)
		}
	}

	// A statement that reaches the (absent) server fails naming shard and
	// host, without the password.
	_, err := d.Put(ctx, 5, 1, map[string]string{})
	if err == nil || !strings.Contains(err.Error(), "shard 5") || !strings.Contains(err.Error(), "127.0.0.1:1/x") || strings.Contains(err.Error(), "sekrit") {
		t.Errorf("Put to a dead host: %v", err)
	}
	err = d.CreateShards(ctx)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1/x") || !strings.Contains(err.Error(), "127.0.0.1:1/y") || strings.Contains(err.Error(), "sekrit") {
		t.Errorf("CreateShards on dead hosts: %v", err)
	}

	if _, err := Open("shards=1-9 host=h password=sekrit; bogus=1"); !errors.Is(err, ErrBadConfig) || strings.Contains(err.Error(), "sekrit") {
		t.Errorf("Open(bad DSN) = %v", err)
	}

	var nilDS *Datastore
	for _, err := range []error{
		NewDatastore(nil).CreateShards(ctx),
		second(NewDatastore(nil).Put(ctx, 1, 1, map[string]string{})),
		second(nilDS.Get(ctx, 1)),
		NewDatastore(nil).EachShard(ctx, func(context.Context, *sql.Tx, int) error { return nil }, nil).Err(),
	} {
		if err == nil {
			t.Error("a Datastore without a Connector worked")
		}
	}
	if err := NewDatastore(nil).Close(); err != nil {
		t.Error(err)
	}
}

func second[T any](_ T, err error) error { return err }

func TestDatastoreCheckLayout(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	ctx := context.Background()
	d := openDatastore(t, f.dsn)

	// Before CreateShards the shards have no hv_layout().
	err := d.CheckLayout(ctx)
	if err == nil || !strings.Contains(err.Error(), "CreateShards") {
		t.Fatalf("CheckLayout before CreateShards = %v", err)
	}
	if err := d.CreateShards(ctx); err != nil {
		t.Fatal(err)
	}

	other := openDatastore(t, f.dsn+"; epoch=1500000000000")
	err = other.CheckLayout(ctx)
	if !errors.Is(err, ErrLayoutMismatch) {
		t.Fatalf("CheckLayout with another epoch = %v, want ErrLayoutMismatch", err)
	}
	for s := 1; s <= 16; s++ {
		if !strings.Contains(err.Error(), fmt.Sprintf("shard %d ", s)) {
			t.Errorf("the mismatch error does not name shard %d: %v", s, err)
		}
	}
	var se *ShardError
	if !errors.As(err, &se) || se.Host == "" {
		t.Errorf("the error has no *ShardError naming the host: %v", err)
	}
	// CreateShards with the other epoch refuses to replace the generators.
	if err := other.CreateShards(ctx); !errors.Is(err, ErrLayoutMismatch) {
		t.Errorf("CreateShards with another epoch = %v, want ErrLayoutMismatch", err)
	}
	if err := d.CheckLayout(ctx); err != nil {
		t.Errorf("the original layout changed: %v", err)
	}
}

// Keys of a fleet with its own epoch decode with that epoch's Layout.
func TestDatastoreCustomEpoch(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	ctx := context.Background()
	d := openDatastore(t, f.dsn+"; epoch=2020-01-01T00:00:00Z")
	if err := d.CreateShards(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckLayout(ctx); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	k, err := d.Put(ctx, 11, 1, map[string]string{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	if c := d.Layout().Created(k); c.Before(before.Add(-5*time.Second)) || c.After(time.Now().Add(5*time.Second)) {
		t.Errorf("Created %v, want about %v", c, before)
	}
	if k.ShardID() != 11 {
		t.Errorf("ShardID %d, want 11", k.ShardID())
	}
}

// Several CreateShards at once on a fresh fleet (the hstore extension not
// yet installed) all succeed.
func TestDatastoreCreateShardsConcurrent(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		d := openDatastore(t, f.dsn)
		wg.Go(func() { errs[i] = d.CreateShards(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("CreateShards #%d: %v", i, err)
		}
	}
}
