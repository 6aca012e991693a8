package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
)

// Unit tests of routing decisions: which host a statement goes to, when a
// schema switch is sent, and what is refused. The inner drivers are
// go-sqlmock connections, one per host; behaviour that depends on the server
// is tested against PostgreSQL in sharded_test.go.

type mockConnector struct {
	drv driver.Driver
	dsn string
}

func (m mockConnector) Connect(context.Context) (driver.Conn, error) { return m.drv.Open(m.dsn) }
func (m mockConnector) Driver() driver.Driver                        { return m.drv }

var mockSeq atomic.Int64

// mockFleet opens an hv *sql.DB over two mock hosts: "a" owns shards 1-8,
// "b" owns 9-16, each with one connection.
func mockFleet(t *testing.T, blockTimeout time.Duration) (*sql.DB, *Connector, sqlmock.Sqlmock, sqlmock.Sqlmock) {
	t.Helper()
	mocks := map[string]sqlmock.Sqlmock{}
	conns := map[string]driver.Connector{}
	for _, h := range []string{"a", "b"} {
		dsn := fmt.Sprintf("hvmock_%s_%d", h, mockSeq.Add(1))
		mdb, mock, err := sqlmock.NewWithDSN(dsn, sqlmock.QueryMatcherOption(sqlmock.QueryMatcherEqual))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mdb.Close() })
		mocks[h] = mock
		conns[h] = mockConnector{drv: mdb.Driver(), dsn: dsn}
	}
	cfg := &Config{
		Hosts: []HostConfig{
			{Shards: ShardSet{{1, 9}}, Params: map[string]string{"host": "a", "password": "sekrit"}},
			{Shards: ShardSet{{9, 17}}, Params: map[string]string{"host": "b"}},
		},
		PoolMax:          1,
		PoolBlockTimeout: blockTimeout,
	}
	c, err := newConnector(cfg, func(connString string) (driver.Connector, error) {
		for h, mc := range conns {
			if strings.Contains(connString, "host='"+h+"'") {
				return mc, nil
			}
		}
		return nil, fmt.Errorf("no mock for %s", connString)
	})
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db, c, mocks["a"], mocks["b"]
}

func expectSet(m sqlmock.Sqlmock, schema string) {
	m.ExpectExec(`SET search_path TO "` + schema + `", "hv_ext"`).WillReturnResult(sqlmock.NewResult(0, 0))
}

func expectSelect(m sqlmock.Sqlmock, v int) {
	m.ExpectQuery("SELECT v").WillReturnRows(sqlmock.NewRows([]string{"v"}).AddRow(v))
}

func selectV(t *testing.T, ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) int {
	t.Helper()
	var v int
	if err := q.QueryRowContext(ctx, "SELECT v").Scan(&v); err != nil {
		t.Fatalf("SELECT v: %v", err)
	}
	return v
}

func checkMocks(t *testing.T, mocks ...sqlmock.Sqlmock) {
	t.Helper()
	for _, m := range mocks {
		if err := m.ExpectationsWereMet(); err != nil {
			t.Error(err)
		}
	}
}

func TestRouteToOwningHostAndSwitchSchemaOnlyWhenNeeded(t *testing.T) {
	db, _, a, b := mockFleet(t, time.Second)
	ctx := context.Background()

	expectSet(a, "shard0005")
	expectSelect(a, 1)
	expectSelect(a, 2) // same shard again: no SET
	expectSet(a, "shard0006")
	expectSelect(a, 3)
	expectSet(b, "shard0012")
	expectSelect(b, 4)
	expectSelect(a, 5) // back on shard 6: a's connection is still there

	for i, shard := range []int{5, 5, 6, 12, 6} {
		if got := selectV(t, WithShard(ctx, shard), db); got != i+1 {
			t.Fatalf("statement %d on shard %d: got %d, want %d", i, shard, got, i+1)
		}
	}
	checkMocks(t, a, b)
}

func TestWithKeyRoutesToTheKeysShard(t *testing.T) {
	db, _, a, b := mockFleet(t, time.Second)
	expectSet(b, "shard0011")
	expectSelect(b, 7)
	key := Key(123456)<<23 | Key(11)<<10 | 42
	if got := selectV(t, WithKey(context.Background(), key), db); got != 7 {
		t.Fatalf("got %d", got)
	}
	checkMocks(t, a, b)
}

func TestRefusals(t *testing.T) {
	db, _, a, b := mockFleet(t, time.Second)
	ctx := context.Background()

	_, err := db.ExecContext(ctx, "SELECT 1")
	if !errors.Is(err, ErrNoShard) || !strings.Contains(err.Error(), "hv.WithShard") {
		t.Errorf("no shard: got %v, want ErrNoShard naming hv.WithShard", err)
	}
	for _, shard := range []int{0, 17, -1, NumShards, 100000} {
		_, err := db.ExecContext(WithShard(ctx, shard), "SELECT 1")
		if !errors.Is(err, ErrUnknownShard) || !strings.Contains(err.Error(), fmt.Sprint(shard)) {
			t.Errorf("shard %d: got %v, want ErrUnknownShard naming the shard", shard, err)
		}
	}
	checkMocks(t, a, b)
}

func TestStatementThatChangesSearchPathMakesHvForget(t *testing.T) {
	db, _, a, _ := mockFleet(t, time.Second)
	ctx := WithShard(context.Background(), 3)
	expectSet(a, "shard0003")
	a.ExpectExec("SET search_path TO public").WillReturnResult(sqlmock.NewResult(0, 0))
	expectSet(a, "shard0003") // hv no longer knows where the session is
	expectSelect(a, 1)
	a.ExpectExec("select set_config('search_path', 'x', false)").WillReturnResult(sqlmock.NewResult(0, 0))
	expectSet(a, "shard0003")
	expectSelect(a, 2)

	if _, err := db.ExecContext(ctx, "SET search_path TO public"); err != nil {
		t.Fatal(err)
	}
	selectV(t, ctx, db)
	if _, err := db.ExecContext(ctx, "select set_config('search_path', 'x', false)"); err != nil {
		t.Fatal(err)
	}
	selectV(t, ctx, db)
	checkMocks(t, a)
}

func TestErrorMakesHvForgetTheSchema(t *testing.T) {
	db, _, a, _ := mockFleet(t, time.Second)
	ctx := WithShard(context.Background(), 3)
	expectSet(a, "shard0003")
	a.ExpectExec("INSERT x").WillReturnError(errors.New("boom"))
	expectSet(a, "shard0003")
	expectSelect(a, 1)
	_, err := db.ExecContext(ctx, "INSERT x")
	if err == nil || !strings.Contains(err.Error(), "shard 3") || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("got %v, want the error with its shard", err)
	}
	selectV(t, ctx, db)
	checkMocks(t, a)
}

func TestFailedSwitchIsNotRemembered(t *testing.T) {
	db, _, a, _ := mockFleet(t, time.Second)
	ctx := WithShard(context.Background(), 4)
	a.ExpectExec(`SET search_path TO "shard0004", "hv_ext"`).WillReturnError(errors.New("nope"))
	expectSet(a, "shard0004")
	expectSelect(a, 1)
	if _, err := db.QueryContext(ctx, "SELECT v"); err == nil {
		t.Fatal("want the failed switch's error")
	}
	selectV(t, ctx, db)
	checkMocks(t, a)
}

func TestTransactionSwitchesBeforeBeginAndRefusesOtherShards(t *testing.T) {
	db, _, a, _ := mockFleet(t, time.Second)
	ctx := context.Background()
	expectSet(a, "shard0002")
	a.ExpectBegin()
	expectSelect(a, 1)
	expectSelect(a, 1)
	a.ExpectCommit()
	expectSelect(a, 2) // after commit the session is still on shard0002

	tx, err := db.BeginTx(WithShard(ctx, 2), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(WithShard(ctx, 3), "SELECT v"); !errors.Is(err, ErrShardMismatch) {
		t.Errorf("statement for shard 3 in a shard 2 transaction: got %v, want ErrShardMismatch", err)
	}
	selectV(t, ctx, tx) // no shard on ctx: the transaction's
	selectV(t, WithShard(ctx, 2), tx)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	selectV(t, WithShard(ctx, 2), db)
	checkMocks(t, a)
}

func TestSetInsideTransactionIsForgotten(t *testing.T) {
	db, _, a, _ := mockFleet(t, time.Second)
	ctx := WithShard(context.Background(), 2)
	expectSet(a, "shard0002")
	a.ExpectBegin()
	a.ExpectExec("SET LOCAL search_path TO x").WillReturnResult(sqlmock.NewResult(0, 0))
	expectSelect(a, 1) // inside the transaction hv never switches
	a.ExpectRollback()
	expectSet(a, "shard0002") // after it, hv switches again
	expectSelect(a, 2)

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "SET LOCAL search_path TO x"); err != nil {
		t.Fatal(err)
	}
	selectV(t, ctx, tx)
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	selectV(t, ctx, db)
	checkMocks(t, a)
}

func TestPinnedConnStaysOnItsShard(t *testing.T) {
	db, _, a, _ := mockFleet(t, time.Second)
	ctx := context.Background()
	expectSet(a, "shard0007")
	expectSelect(a, 1)
	expectSelect(a, 2)

	c, err := db.Conn(WithShard(ctx, 7))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ExecContext(WithShard(ctx, 8), "SELECT v"); !errors.Is(err, ErrShardMismatch) {
		t.Errorf("statement for shard 8 on a shard 7 Conn: got %v, want ErrShardMismatch", err)
	}
	selectV(t, ctx, c)
	selectV(t, WithShard(ctx, 7), c)
	checkMocks(t, a)
}

func TestPoolTimeoutNamesHostAndShardAndSparesOtherHosts(t *testing.T) {
	db, c, a, b := mockFleet(t, 30*time.Millisecond)
	ctx := context.Background()
	expectSet(a, "shard0001")
	expectSelect(a, 1)
	expectSet(b, "shard0009")
	expectSelect(b, 2)

	held, err := db.Conn(WithShard(ctx, 1))
	if err != nil {
		t.Fatal(err)
	}
	selectV(t, ctx, held) // holds host a's only connection

	_, err = db.ExecContext(WithShard(ctx, 2), "SELECT v")
	if !errors.Is(err, ErrPoolTimeout) {
		t.Fatalf("got %v, want ErrPoolTimeout", err)
	}
	if errors.Is(err, driver.ErrBadConn) {
		t.Error("a pool timeout must not be driver.ErrBadConn")
	}
	for _, want := range []string{"shard 2", "host a"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "sekrit") {
		t.Errorf("error %q shows the password", err)
	}
	if got := selectV(t, WithShard(ctx, 9), db); got != 2 {
		t.Errorf("other host: got %d", got)
	}
	st := c.Stats()
	if st[0].Timeouts != 1 || st[0].WaitCount != 1 || st[1].Timeouts != 0 {
		t.Errorf("stats: %+v", st)
	}
	held.Close()
	checkMocks(t, a, b)
}

func TestChangesSearchPath(t *testing.T) {
	for q, want := range map[string]bool{
		"SET search_path TO x":                  true,
		"  set\tstatement_timeout = 5":          true,
		"/* c */ RESET ALL":                     true,
		"-- x\nDISCARD ALL":                     true,
		"SELECT set_config('search_path','')":   true,
		"select 1 -- SEARCH_PATH":               true,
		"SELECT * FROM t WHERE settled":         false,
		"SELECT 1":                              false,
		"INSERT INTO t (offset_reset) VALUES 1": false,
		"":                                      false,
	} {
		if got := changesSearchPath(q); got != want {
			t.Errorf("changesSearchPath(%q) = %v, want %v", q, got, want)
		}
	}
}

// Which idle connection a statement takes (the last idle one is the most
// recently released): the most recent, unless it lacks the schema's
// prepared statements and another has them. wantAlone is what the former
// rule BenchmarkPolicy also measures (perShardWhenAlone) takes: alone on its
// host, one on its schema, else a new one while there is room and the host
// owns no more shards than pool_max; else the same as the rule.
func TestTakeIdle(t *testing.T) {
	with := func(schema string, prepared ...string) *session {
		px := &pgxSender{schemas: map[string]*schemaStatements{}}
		for _, s := range append(prepared, schema) {
			px.schemas[s] = &schemaStatements{stmts: 1}
		}
		return &session{send: px, schema: schema}
	}
	on := func(s string, prepared ...string) idleConn {
		return idleConn{conn: &sql.Conn{}, sess: with(s, prepared...)}
	}
	lib := func(s string) idleConn {
		return idleConn{conn: &sql.Conn{}, sess: &session{send: stdSender{}, schema: s}}
	}
	for _, tc := range []struct {
		name            string
		idle            []idleConn
		inFlight        int // other statements of the host
		poolMax         int
		shards          int // the host owns
		want, wantAlone int // index into idle, -1 for a new connection
	}{
		{"alone: on the schema", []idleConn{on("c"), on("a"), on("b")}, 0, 3, 3, 0, 0},
		{"alone: on the schema, the most recent has its statements", []idleConn{on("c"), on("a"), on("b", "c")}, 0, 3, 3, 2, 0},
		{"alone: room for a new one", []idleConn{on("a"), on("b")}, 0, 3, 3, 1, -1},
		{"alone: room, but more shards than pool_max", []idleConn{on("a"), on("b")}, 0, 3, 4, 1, 1},
		{"alone, full: the most recent", []idleConn{on("a"), on("b"), on("d")}, 0, 3, 3, 2, 2},
		{"alone, full: one with the statements", []idleConn{on("a", "c"), on("b"), on("d")}, 0, 3, 3, 0, 0},
		{"busy: the most recent, not the one on the schema", []idleConn{on("c"), on("a"), on("b", "c")}, 2, 10, 3, 2, 2},
		{"busy: the most recent lacks the statements", []idleConn{on("a"), on("b", "c"), on("d")}, 2, 10, 3, 1, 1},
		{"busy: none has them", []idleConn{on("a"), on("b")}, 2, 10, 3, 1, 1},
		{"lib/pq: the most recent", []idleConn{lib("a"), lib("b")}, 0, 2, 3, 1, 1},
	} {
		for _, alone := range []bool{false, true} {
			h := &hostPool{idle: append([]idleConn(nil), tc.idle...), conns: newSemaphore(20)}
			h.settings.Store(&poolSettings{poolMax: tc.poolMax})
			h.shards.Store(int64(tc.shards))
			for range tc.inFlight + 1 { // the statement's own permit too
				h.conns.tryAcquire()
			}
			perShardWhenAlone.Store(alone)
			got, _ := h.takeIdle("c")
			perShardWhenAlone.Store(false)
			wantIdx := tc.want
			if alone {
				wantIdx = tc.wantAlone
			}
			want := (*sql.Conn)(nil)
			if wantIdx >= 0 {
				want = tc.idle[wantIdx].conn
			}
			if got != want {
				t.Errorf("%s (perShardWhenAlone %v): took %v, want index %d", tc.name, alone, got, wantIdx)
			}
		}
	}
}

func TestFirstKeyword(t *testing.T) {
	for q, want := range map[string]string{
		"SELECT 1":                       "select",
		"  (select 1)":                   "select",
		"/* c */ WITH x AS (SELECT 1) x": "with",
		"-- c\nDeAllocate ALL":           "deallocate",
		"VACUUM t":                       "",
		"selection":                      "",
		"-- only a comment":              "",
	} {
		if got := firstKeyword(q); got != want {
			t.Errorf("firstKeyword(%q) = %q, want %q", q, got, want)
		}
	}
	for q, want := range map[string]bool{"INSERT INTO t VALUES (1)": true, "update t set x = 1": true, "VACUUM t": false, "CREATE INDEX CONCURRENTLY i ON t (x)": false} {
		if got := isDataStatement(q); got != want {
			t.Errorf("isDataStatement(%q) = %v, want %v", q, got, want)
		}
	}
}
