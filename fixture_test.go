package hv

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/pgtest"
	_ "github.com/jackc/pgx/v5/stdlib"
)

// fleetOptions describe a test fleet: shards 1-8 on a first host and 9-16 on
// a second.
type fleetOptions struct {
	sameServer bool   // the two hosts are two databases of one server
	driver     string // inner driver: "pgx" or "postgres"
	global     string // extra global DSN options, e.g. "pool_max=1"
	perHost    int    // shards per host (default 8): 1..n on the first, n+1..2n on the second
}

type testFleet struct {
	dsn     string
	perHost int
	hosts   []string // libpq keywords of each host's database
	ports   []int
}

// createShards creates, in the database of libpq keywords kw, each shard's
// schema with t(id int primary key, shard int, note text) holding the row
// (0, shard, 'seed').
func createShards(t testing.TB, kw string, r ShardRange) {
	t.Helper()
	db, err := sql.Open("pgx", kw)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ddl strings.Builder
	for sh := r.Start; sh < r.End; sh++ {
		fmt.Fprintf(&ddl, `CREATE SCHEMA shard%04[1]d;
			CREATE TABLE shard%04[1]d.t (id int PRIMARY KEY, shard int NOT NULL, note text);
			INSERT INTO shard%04[1]d.t VALUES (0, %[1]d, 'seed');`, sh)
	}
	if _, err := db.Exec(ddl.String()); err != nil {
		t.Fatalf("creating shards: %v", err)
	}
}

// shardDatabase creates a database on s holding shards r (createShards)
// and returns its libpq keywords and the server's port, as the server
// reports it.
func shardDatabase(tb testing.TB, s *pgtest.Server, r ShardRange) (string, int) {
	tb.Helper()
	kw := s.CreateDatabase(tb)
	createShards(tb, kw, r)
	db, err := sql.Open("pgx", kw)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	var port int
	if err := db.QueryRow("SELECT inet_server_port()").Scan(&port); err != nil {
		tb.Fatal(err)
	}
	return kw, port
}

// newTestFleet creates the two hosts' databases, each shard's schema with a
// table t(id int primary key, shard int, note text) holding one row
// (0, shard), and returns the hv DSN for them.
func newTestFleet(t testing.TB, o fleetOptions) *testFleet {
	t.Helper()
	var servers []*pgtest.Server
	if o.sameServer {
		s := pgtest.Default(t)
		servers = []*pgtest.Server{s, s}
	} else {
		servers = pgtest.Servers(t, 2)
	}
	f := &testFleet{}
	n := o.perHost
	if n == 0 {
		n = 8
	}
	f.perHost = n
	ranges := []ShardRange{{1, n + 1}, {n + 1, 2*n + 1}}
	var segs []string
	for i, s := range servers {
		kw, port := shardDatabase(t, s, ranges[i])
		f.ports = append(f.ports, port)
		kw = netKeywords(t, kw, port) // benchmarks on the emulated network
		f.hosts = append(f.hosts, kw)
		segs = append(segs, fmt.Sprintf("shards=%s %s", ranges[i], kw))
	}
	if o.driver != "" {
		segs = append(segs, "driver="+o.driver)
	}
	if o.global != "" {
		segs = append(segs, o.global)
	}
	f.dsn = strings.Join(segs, "; ")
	return f
}

// open opens the fleet through sql.Open("hv", dsn).
func (f *testFleet) open(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("hv", f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// connect opens the fleet through its own Connector, returning the parsed
// Config too (for Reconfigure).
func (f *testFleet) connect(t testing.TB) (*Config, *Connector, *sql.DB) {
	t.Helper()
	return openDSN(t, f.dsn, nil)
}

// openDSN opens a Connector and its *sql.DB on dsn, closed when t ends,
// after adjust (when not nil) has changed the parsed Config.
func openDSN(t testing.TB, dsn string, adjust func(*Config)) (*Config, *Connector, *sql.DB) {
	t.Helper()
	cfg, err := ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if adjust != nil {
		adjust(cfg)
	}
	c, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return cfg, c, db
}

// where reports where a statement on ctx ran: schema, database, server port
// and the shard number stored in the schema's table.
type where struct {
	Schema, Database string
	Port, Shard      int
}

const whereSQL = "SELECT current_schema(), current_database(), inet_server_port(), (SELECT shard FROM t WHERE id = 0)"

func whereAmI(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (where, error) {
	var w where
	err := q.QueryRowContext(ctx, whereSQL).Scan(&w.Schema, &w.Database, &w.Port, &w.Shard)
	return w, err
}

// expect returns where shard's statements must run.
func (f *testFleet) expect(t testing.TB, shard int) where {
	t.Helper()
	i := 0
	if shard > f.perHost {
		i = 1
	}
	db := dbName(f.hosts[i])
	return where{Schema: fmt.Sprintf("shard%04d", shard), Database: db, Port: f.ports[i], Shard: shard}
}

func dbName(kw string) string {
	for _, f := range strings.Fields(kw) {
		if v, ok := strings.CutPrefix(f, "dbname="); ok {
			return strings.Trim(v, "'")
		}
	}
	return ""
}

// waitUntil polls cond until it holds, failing t when it does not within a
// bound loose enough for a loaded machine.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
