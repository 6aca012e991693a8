package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// moveFleet is a fleet on two clusters with wal_level=logical: shards 1-4
// on host 0, 5-8 on host 1, made by a Datastore (entities, next_id()).
type moveFleet struct {
	dsn   string
	kws   []string // libpq keywords of each host's database
	names []string // HostConfig.Name of each host
}

func newMoveFleet(t *testing.T, extra ...string) *moveFleet {
	t.Helper()
	servers := pgtest.LogicalServers(t, 2)
	f := &moveFleet{}
	ranges := []string{"1-5", "5-9"}
	var segs []string
	for i, s := range servers {
		kw := s.CreateDatabase(t)
		f.kws = append(f.kws, kw)
		segs = append(segs, "shards="+ranges[i]+" "+kw)
	}
	for i, e := range extra { // more hosts, without shards, on the second cluster
		_ = i
		kw := servers[1].CreateDatabase(t)
		f.kws = append(f.kws, kw)
		segs = append(segs, "shards="+e+" "+kw)
	}
	f.dsn = strings.Join(segs, "; ") + "; pool_block_timeout=10s"
	cfg, err := ParseConfig(f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range cfg.Hosts {
		f.names = append(f.names, h.Name())
	}
	d := f.open(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.CreateShards(ctx); err != nil {
		t.Fatal(err)
	}
	return f
}

// open opens a Datastore on the fleet's DSN: another process.
func (f *moveFleet) open(t testing.TB) *Datastore {
	t.Helper()
	d, err := Open(f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func (f *moveFleet) direct(t testing.TB, host int) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), f.kws[host])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func queryInt(t testing.TB, c *pgx.Conn, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := c.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// schemaExists reports whether host has the schema.
func schemaExists(t testing.TB, c *pgx.Conn, schema string) bool {
	return queryInt(t, c, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 1
}

// replicationLeft counts the replication objects of moves on host.
func replicationLeft(t testing.TB, c *pgx.Conn) int64 {
	return queryInt(t, c, `SELECT (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'hv\_move\_%')
		+ (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'hv\_move\_%' AND database = current_database())
		+ (SELECT count(*) FROM pg_subscription WHERE subname LIKE 'hv\_move\_%' AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))`)
}

// writer puts entities on one shard at a steady rate until stopped,
// keeping the keys acknowledged, the errors and the latencies.
type writer struct {
	d     *Datastore
	shard int
	keys  []Key
	errs  []error
	lat   []time.Duration
	acked atomic.Int64
	stop  chan struct{}
	done  chan struct{}
	every time.Duration
}

func startWriter(d *Datastore, shard int, every time.Duration) *writer {
	w := &writer{d: d, shard: shard, every: every, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			start := time.Now()
			k, err := w.d.Put(ctx, w.shard, 1, map[string]string{"n": fmt.Sprint(i)})
			w.lat = append(w.lat, time.Since(start))
			cancel()
			if err != nil {
				w.errs = append(w.errs, err)
				continue
			}
			w.keys = append(w.keys, k)
			w.acked.Add(1)
		}
	}()
	return w
}

func (w *writer) halt() { close(w.stop); <-w.done }

// reader gets a known entity of each of shards in turn until stopped.
type reader struct {
	reads atomic.Int64
	errs  []error
	stop  chan struct{}
	done  chan struct{}
}

func startReader(d *Datastore, keys []Key) *reader {
	r := &reader{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for i := 0; ; i++ {
			select {
			case <-r.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := d.Get(ctx, keys[i%len(keys)]); err != nil {
				r.errs = append(r.errs, err)
			}
			cancel()
			r.reads.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return r
}

func (r *reader) halt() { close(r.stop); <-r.done }

// Two processes (Datastores on the old DSN) write to the moving shard at a
// steady rate and read two other shards while a third moves it: every
// acknowledged write is on the target once, none reached the fenced source,
// keys never repeat, and nobody saw an error.
func TestMoveShardOnline(t *testing.T) {
	f := newMoveFleet(t)
	ctx := context.Background()
	seedDS := f.open(t)
	const shard = 3
	var seeded []Key
	for i := 0; i < 300; i++ {
		k, err := seedDS.Put(ctx, shard, 1, map[string]string{"seed": fmt.Sprint(i), "pad": strings.Repeat("x", 200)})
		if err != nil {
			t.Fatal(err)
		}
		seeded = append(seeded, k)
	}
	var others []Key
	for _, s := range []int{2, 6} {
		k, err := seedDS.Put(ctx, s, 1, map[string]string{"other": "yes"})
		if err != nil {
			t.Fatal(err)
		}
		others = append(others, k)
	}

	p1, p2 := f.open(t), f.open(t)
	writers := []*writer{startWriter(p1, shard, 10*time.Millisecond), startWriter(p2, shard, 10*time.Millisecond)}
	readers := []*reader{startReader(p1, others), startReader(p2, others)}
	waitUntil(t, "writers to start", func() bool { return writers[0].acked.Load() > 10 && writers[1].acked.Load() > 10 })

	// A process that has used the source host before the move, and whose
	// first statement on the shard afterwards is in a transaction.
	tardy := f.open(t)
	if _, err := tardy.Get(ctx, others[0]); err != nil {
		t.Fatal(err)
	}
	mover := f.open(t)
	var phases []string
	rep, err := MoveShard(ctx, mover.Connector(), shard, f.names[1], &MoveOptions{
		MaxPause: 10 * time.Second, Checksum: true,
		Progress: func(p MoveProgress) {
			if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
				phases = append(phases, p.Phase)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	// Both processes keep writing after the fence, and learn the owner.
	after := []int64{writers[0].acked.Load(), writers[1].acked.Load()}
	waitUntil(t, "writes after the move", func() bool {
		return writers[0].acked.Load() > after[0]+20 && writers[1].acked.Load() > after[1]+20
	})
	for _, w := range writers {
		w.halt()
	}
	for _, r := range readers {
		r.halt()
	}
	t.Logf("report: %+v", rep)
	if got := strings.Join(phases, ","); got != "check,schema,copy,catchup,cutover,cleanup" {
		t.Errorf("phases %s", got)
	}
	for i, w := range writers {
		if len(w.errs) > 0 {
			t.Errorf("writer %d: %d errors, first %v", i, len(w.errs), w.errs[0])
		}
	}
	for i, r := range readers {
		if len(r.errs) > 0 || r.reads.Load() == 0 {
			t.Errorf("reader %d of other shards: %d errors of %d reads, first %v", i, len(r.errs), r.reads.Load(), r.errs)
		}
	}
	for i, d := range []*Datastore{p1, p2, mover} {
		if got := d.Connector().Moved()[shard]; got != f.names[1] {
			t.Errorf("process %d routes shard %d to %q", i, shard, got)
		}
	}
	// Every acknowledged key once on the target; keys unique.
	all := append([]Key(nil), seeded...)
	for _, w := range writers {
		all = append(all, w.keys...)
	}
	seen := map[Key]bool{}
	ids := make([]int64, 0, len(all))
	for _, k := range all {
		if seen[k] {
			t.Fatalf("key %v handed out twice", k)
		}
		seen[k] = true
		ids = append(ids, int64(k))
	}
	src, dst := f.direct(t, 0), f.direct(t, 1)
	if n := queryInt(t, dst, "SELECT count(*) FROM shard0003.entities WHERE id = ANY($1)", ids); n != int64(len(ids)) {
		t.Errorf("target has %d of the %d acknowledged keys", n, len(ids))
	}
	if n := queryInt(t, dst, "SELECT count(*) - count(DISTINCT id) FROM shard0003.entities"); n != 0 {
		t.Errorf("%d duplicate ids on the target", n)
	}
	// Nothing reached the source after the fence: its copy holds what it
	// held at the fence.
	var fencedRows int64
	for _, tc := range rep.Tables {
		if strings.HasSuffix(tc.Table, ".entities") {
			fencedRows = tc.Source
			if tc.SourceSum == "" || tc.SourceSum != tc.TargetSum {
				t.Errorf("checksums %q %q", tc.SourceSum, tc.TargetSum)
			}
		}
	}
	if n := queryInt(t, src, "SELECT count(*) FROM "+quoteIdent(rep.FencedSchema)+".entities"); n != fencedRows || n < 300 {
		t.Errorf("fenced copy has %d rows, %d at the fence", n, fencedRows)
	}
	if schemaExists(t, src, "shard0003") {
		t.Error("shard0003 still exists on the source")
	}
	if n := replicationLeft(t, src) + replicationLeft(t, dst); n != 0 {
		t.Errorf("%d replication objects left", n)
	}

	// A process started now with the old DSN: reads and writes go to the
	// new owner; inside a transaction the first statement fails with
	// ErrShardMoved, and the retried transaction succeeds.
	late := f.open(t)
	if _, err := late.Get(ctx, seeded[0]); err != nil {
		t.Fatalf("late process: %v", err)
	}
	run := func() error {
		tx, err := tardy.DB().BeginTx(WithShard(ctx, shard), nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if _, err := tx.Exec("INSERT INTO entities (kind, body) VALUES (2, '')"); err != nil {
			return err
		}
		return tx.Commit()
	}
	err = run()
	var se *ShardError
	if !errors.Is(err, ErrShardMoved) || !errors.As(err, &se) || se.Shard != shard || !strings.Contains(err.Error(), f.names[1]) {
		t.Fatalf("transaction on the fenced copy: %v", err)
	}
	if err := run(); err != nil {
		t.Fatalf("retried transaction: %v", err)
	}
	// A fan-out from a process that has not met the move runs the moved
	// shard's statement again on its new owner.
	fan := f.open(t)
	rows, err := fan.DB().QueryContext(WithAllShards(ctx), "SELECT count(*) FROM entities")
	if err != nil {
		t.Fatalf("fan-out after the move: %v", err)
	}
	if n := len(rowStrings(t, rows)); n != 8 {
		t.Fatalf("fan-out after the move: %d shards answered, want 8", n)
	}
	// EachShard retries a shard that moved under it.
	third := f.open(t)
	res := third.EachShard(ctx, func(ctx context.Context, tx *sql.Tx, s int) error {
		_, err := tx.ExecContext(ctx, "SELECT count(*) FROM entities")
		return err
	}, nil)
	if res.Err() != nil || len(res.Committed) != 8 {
		t.Fatalf("EachShard after the move: %v (%v)", res.Err(), res.Committed)
	}
	// A process whose DSN lacks the new owner gets an error naming it.
	cfg, _ := ParseConfig(f.dsn)
	cfg.Hosts = cfg.Hosts[:1]
	lone, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lone.Close()
	_, err = sql.OpenDB(lone).ExecContext(WithShard(ctx, shard), "INSERT INTO entities (kind, body) VALUES (2, '')")
	if !errors.Is(err, ErrMovedOutside) || !strings.Contains(err.Error(), f.names[1]) {
		t.Fatalf("DSN without the new owner: %v", err)
	}
	st, err := MoveStatus(ctx, mover.Connector())
	if err != nil || len(st) != 2 || st[0].State != "done" || st[0].Direction != "out" || st[1].Direction != "in" {
		t.Fatalf("MoveStatus: %+v %v", st, err)
	}
	// Cleanup drops the fenced copy only when asked, by age.
	if got, err := CleanupMoved(ctx, mover.Connector(), time.Hour); err != nil || len(got) != 0 {
		t.Fatalf("cleanup of copies older than 1h: %v %v", got, err)
	}
	if got, err := CleanupMoved(ctx, mover.Connector(), 0); err != nil || len(got) != 1 || schemaExists(t, src, rep.FencedSchema) {
		t.Fatalf("cleanup: %v %v", got, err)
	}
}

func pgConnect(t testing.TB, kw string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), kw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}
