package migrate_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/internal/pgtest"
	"github.com/hypervault/hv/migrate"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// fleet makes two servers' databases with shards 1-8 and 9-16 (empty
// schemas), hstore in hv_ext, and a Connector over them.
func fleet(t *testing.T, global string) (*pgtest.Fleet, *hv.Connector) {
	t.Helper()
	f := pgtest.NewFleet(t, "", global, true)
	for i := range 2 {
		f.Exec(t, i, "CREATE SCHEMA hv_ext; CREATE EXTENSION hstore SCHEMA hv_ext")
	}
	cfg, err := hv.ParseConfig(f.DSN)
	if err != nil {
		t.Fatal(err)
	}
	c, err := hv.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// versionOn reads shard's goose version directly from its server.
func versionOn(t *testing.T, f *pgtest.Fleet, shard int) int64 {
	t.Helper()
	var v int64
	q := fmt.Sprintf("SELECT coalesce(max(version_id), 0) FROM shard%04d.goose_db_version", shard)
	if err := f.Direct(t, pgtest.HostOf(shard)).QueryRow(context.Background(), q).Scan(&v); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return v
}

// Three versions over 16 shards on two servers, shard 5 made to fail at
// version 2: the others reach version 3, shard 5 is reported with its host
// and stays at 1; status shows the skew; a re-run finishes shard 5.
func TestUpFailingShardThenRerun(t *testing.T) {
	f, c := fleet(t, "pool_max=4")
	ctx := ctxFor(t)
	// Shard 5 already has a table tags: migration 2 fails there.
	f.Exec(t, 0, "CREATE TABLE shard0005.tags (x int)")
	var progress []int
	res := migrate.Up(ctx, c, os.DirFS("testdata/ok"), &migrate.Options{
		Progress: func(done, total, shard int, err error) {
			if total != 16 {
				t.Errorf("progress total %d", total)
			}
			progress = append(progress, done)
		},
	})
	if len(progress) != 16 || progress[15] != 16 {
		t.Errorf("progress calls %v", progress)
	}
	if got := res.Failed(); len(got) != 1 || got[0] != 5 {
		t.Fatalf("failed shards %v: %v", got, res.Err())
	}
	var se *hv.ShardError
	if err := res.Err(); !errors.As(err, &se) || se.Shard != 5 || !strings.Contains(se.Host, "/hv_test_") || !strings.Contains(err.Error(), `relation "tags" already exists`) {
		t.Fatalf("error %v (%#v)", err, se)
	}
	if strings.Count(res.Err().Error(), "hv: ") != 1 {
		t.Errorf("error has more than one hv: prefix: %v", res.Err())
	}
	for _, s := range res.Shards {
		want := int64(3)
		if s.Shard == 5 {
			want = 1
		}
		if s.Version != want || versionOn(t, f, s.Shard) != want {
			t.Errorf("shard %d at version %d (server says %d), want %d", s.Shard, s.Version, versionOn(t, f, s.Shard), want)
		}
		if s.Shard != 5 && len(s.Applied) != 3 {
			t.Errorf("shard %d applied %v", s.Shard, s.Applied)
		}
	}
	for host, n := range res.MaxConcurrent {
		if n < 1 || n > 4 {
			t.Errorf("host %s: %d shards at once, want 1..4 (pool_max)", host, n)
		}
	}
	// Each shard has its own version table, in its own schema.
	var tables int
	if err := f.Direct(t, 1).QueryRow(context.Background(), "SELECT count(*) FROM pg_tables WHERE tablename = 'goose_db_version'").Scan(&tables); err != nil || tables != 8 {
		t.Errorf("%d version tables on host 1, want 8: %v", tables, err)
	}

	// Status and Versions see the skew.
	st := migrate.Status(ctx, c, os.DirFS("testdata/ok"), nil)
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	vs := migrate.Versions(ctx, c, nil)
	for _, r := range []*migrate.Result{st, vs} {
		v := r.Versions()
		if !r.Skewed() || len(v[3]) != 15 || len(v[1]) != 1 || v[1][0] != 5 {
			t.Errorf("versions %v", v)
		}
	}
	if st.Shards[0].Target != 3 {
		t.Errorf("target %d", st.Shards[0].Target)
	}

	// Fix shard 5 and run again: only shard 5 has work, and finishes.
	f.Exec(t, 0, "DROP TABLE shard0005.tags")
	res = migrate.Up(ctx, c, os.DirFS("testdata/ok"), nil)
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	for _, s := range res.Shards {
		want := 0
		if s.Shard == 5 {
			want = 2
		}
		if len(s.Applied) != want || s.Version != 3 {
			t.Errorf("re-run: shard %d applied %v, at %d", s.Shard, s.Applied, s.Version)
		}
	}
	if migrate.Versions(ctx, c, nil).Skewed() {
		t.Error("still skewed")
	}

	// The hstore column works unqualified on every shard.
	db := sql.OpenDB(c)
	defer db.Close()
	if _, err := db.ExecContext(hv.WithShard(ctx, 12), "INSERT INTO items (id, name, attrs) VALUES (1, 'a', 'k=>v')"); err != nil {
		t.Fatal(err)
	}

	// Down rolls back one version per shard.
	res = migrate.Down(ctx, c, os.DirFS("testdata/ok"), &migrate.Options{Shards: []int{3, 12}})
	if err := res.Err(); err != nil || len(res.Shards) != 2 || res.Shards[0].Version != 2 || res.Shards[1].Version != 2 {
		t.Fatalf("down: %+v, %v", res.Shards, err)
	}
	// A shard no host owns fails alone.
	res = migrate.UpTo(ctx, c, os.DirFS("testdata/ok"), 3, &migrate.Options{Shards: []int{3, 40}})
	if got := res.Failed(); len(got) != 1 || got[0] != 40 || !errors.Is(res.Err(), hv.ErrUnknownShard) {
		t.Errorf("unowned shard: %v, %v", got, res.Err())
	}
	if versionOn(t, f, 3) != 3 {
		t.Errorf("shard 3 at %d after UpTo 3", versionOn(t, f, 3))
	}
}

// Two runs at once on the same fleet serialise per shard: every migration
// is applied once, and neither run fails.
func TestConcurrentRuns(t *testing.T) {
	_, c := fleet(t, "pool_max=3")
	ctx := ctxFor(t)
	var wg sync.WaitGroup
	results := make([]*migrate.Result, 2)
	for i := range 2 {
		wg.Go(func() { results[i] = migrate.Up(ctx, c, os.DirFS("testdata/ok"), nil) })
	}
	wg.Wait()
	applied := map[int]int{}
	for _, r := range results {
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		for _, s := range r.Shards {
			applied[s.Shard] += len(s.Applied)
			if s.Version != 3 {
				t.Errorf("shard %d at %d", s.Shard, s.Version)
			}
		}
	}
	for s, n := range applied {
		if n != 3 {
			t.Errorf("shard %d: %d migrations applied by both runs, want 3", s, n)
		}
	}
}

// The per-shard lock is (LockClass, shard): held by another session it
// makes that shard's migration wait, not the host's other shards.
func TestLockIsPerShard(t *testing.T) {
	f, c := fleet(t, "")
	ctx := ctxFor(t)
	holder := f.Direct(t, 0)
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1, 2)", migrate.LockClass); err != nil {
		t.Fatal(err)
	}
	done := make(chan *migrate.Result, 1)
	go func() { done <- migrate.Up(ctx, c, os.DirFS("testdata/ok"), &migrate.Options{Shards: []int{2}}) }()
	// Shard 3 on the same host migrates while shard 2 waits.
	if err := migrate.Up(ctx, c, os.DirFS("testdata/ok"), &migrate.Options{Shards: []int{3}}).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		t.Fatalf("shard 2 migrated while its lock was held: %+v", r.Shards)
	default:
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1, 2)", migrate.LockClass); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.Err() != nil || r.Shards[0].Version != 3 {
		t.Fatalf("shard 2: %+v, %v", r.Shards, r.Err())
	}
}

func TestCreate(t *testing.T) {
	dir := t.TempDir()
	p1, err := migrate.Create(dir, "add_users", "sql", true)
	if err != nil || !strings.HasSuffix(p1, "00001_add_users.sql") {
		t.Fatalf("%s, %v", p1, err)
	}
	p2, err := migrate.Create(dir, "backfill", "go", true)
	if err != nil || !strings.HasSuffix(p2, "00002_backfill.go") {
		t.Fatalf("%s, %v", p2, err)
	}
	if b, _ := os.ReadFile(p2); !strings.Contains(string(b), "func upBackfill(ctx context.Context, tx *sql.Tx) error") {
		t.Errorf("go template:\n%s", b)
	}
	p3, err := migrate.Create(dir, "later", "", false)
	if err != nil || !strings.HasSuffix(p3, "_later.sql") || len(strings.TrimSuffix(strings.TrimPrefix(p3, dir+"/"), "_later.sql")) != 14 {
		t.Fatalf("%s, %v", p3, err)
	}
	for _, bad := range [][2]string{{"bad name", "sql"}, {"x", "yaml"}} {
		if _, err := migrate.Create(dir, bad[0], bad[1], true); err == nil {
			t.Errorf("Create(%q, %q) succeeded", bad[0], bad[1])
		}
	}
}

func TestCompact(t *testing.T) {
	if got := migrate.Compact([]int{9, 1, 2, 3, 4, 7, 10, 11, 12, 13, 14, 15, 16}); got != "1-5 7 9-17" {
		t.Errorf("Compact = %q", got)
	}
}

// TestMigrate256 measures Up of the three migrations on 256 shards, 128
// on each of two servers (HV_MIGRATE_BENCH=1; not part of make test).
func TestMigrate256(t *testing.T) {
	if os.Getenv("HV_MIGRATE_BENCH") == "" {
		t.Skip("set HV_MIGRATE_BENCH=1")
	}
	servers := pgtest.Servers(t, 2)
	poolMax := 10
	if v, err := strconv.Atoi(os.Getenv("HV_MIGRATE_POOL_MAX")); err == nil {
		poolMax = v
	}
	var segs []string
	for i, s := range servers {
		kw := s.CreateDatabase(t)
		conn, err := pgx.Connect(context.Background(), kw)
		if err != nil {
			t.Fatal(err)
		}
		var ddl strings.Builder
		ddl.WriteString("CREATE SCHEMA hv_ext; CREATE EXTENSION hstore SCHEMA hv_ext;")
		for n := i * 128; n < (i+1)*128; n++ {
			fmt.Fprintf(&ddl, "CREATE SCHEMA shard%04d;", n)
		}
		if _, err := conn.Exec(context.Background(), ddl.String()); err != nil {
			t.Fatal(err)
		}
		conn.Close(context.Background())
		segs = append(segs, fmt.Sprintf("shards=%d-%d %s", i*128, (i+1)*128, kw))
	}
	cfg, err := hv.ParseConfig(strings.Join(segs, "; ") + fmt.Sprintf("; pool_max=%d", poolMax))
	if err != nil {
		t.Fatal(err)
	}
	c, err := hv.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res := migrate.Up(ctxFor(t), c, os.DirFS("testdata/ok"), nil)
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("256 shards, 3 migrations each, pool_max %d: %v; shards at once per host: %v", poolMax, res.Elapsed.Round(time.Millisecond), res.MaxConcurrent)
}
