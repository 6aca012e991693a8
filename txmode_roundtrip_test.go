package hv

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/hypervault/hv/internal/netem"
	"github.com/hypervault/hv/internal/pgtest"
	"github.com/jackc/pgx/v5/stdlib"
)

// roundTrips counts the round trips clients send through a proxy: the
// frontend messages that make the server answer, Sync (extended protocol)
// and Query (simple protocol).
type roundTrips struct {
	mu sync.Mutex
	n  int
}

func (rt *roundTrips) count() int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.n
}

// tap returns a parser of one connection's client stream: the untyped
// startup packets (SSLRequest and GSSENCRequest are followed by another),
// then typed messages.
func (rt *roundTrips) tap() func([]byte) {
	var buf []byte
	startup := true
	return func(b []byte) {
		buf = append(buf, b...)
		for {
			off := 1
			if startup {
				off = 0
			}
			if len(buf) < off+4 {
				return
			}
			n := off + int(binary.BigEndian.Uint32(buf[off:]))
			if len(buf) < n {
				return
			}
			if startup {
				code := binary.BigEndian.Uint32(buf[4:8])
				startup = code == 80877103 || code == 80877104
			} else if buf[0] == 'S' || buf[0] == 'Q' {
				rt.mu.Lock()
				rt.n++
				rt.mu.Unlock()
			}
			buf = buf[n:]
		}
	}
}

// proxiedKeywords returns kw with host and port replaced by the proxy's.
func proxiedKeywords(kw string, p *netem.Proxy) string {
	var f []string
	for _, w := range strings.Fields(kw) {
		if !strings.HasPrefix(w, "host=") && !strings.HasPrefix(w, "port=") {
			f = append(f, w)
		}
	}
	return strings.Join(append(f, "host=127.0.0.1", fmt.Sprintf("port=%d", p.Port())), " ")
}

// TestTxModeQueryOneRoundTrip counts the client's round trips in
// pool_mode=transaction: a Query outside a transaction, with or without
// arguments, and an Exec are one each; the rows are each shard's, typed as
// stdlib types them, and the LOCAL search_path does not outlive the
// statement on the connection.
//
// With default_query_exec_mode=cache_statement (a pooler that keeps named
// statements) the same holds, and the statements are hv's named ones: the
// server keeps one per schema and SQL text, so a repeated query is not
// parsed again.
func TestTxModeQueryOneRoundTrip(t *testing.T) {
	for _, mode := range []string{"", "cache_statement"} {
		t.Run("exec_mode="+mode, func(t *testing.T) { testTxModeQueryOneRoundTrip(t, mode) })
	}
}

func testTxModeQueryOneRoundTrip(t *testing.T, execMode string) {
	s := pgtest.Default(t)
	kw := s.CreateDatabase(t)
	createShards(t, kw, ShardRange{1, 4})
	var rt roundTrips
	p, err := netem.StartTap("127.0.0.1:"+s.Port(), 0, rt.tap)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	hostKw := proxiedKeywords(kw, p)
	if execMode != "" {
		hostKw += " default_query_exec_mode=" + execMode
	}
	db, err := sql.Open("hv", fmt.Sprintf("shards=1-4 %s; pool_max=1; pool_mode=transaction", hostKw))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := whereAmIShard(WithShard(context.Background(), 1), db); err != nil {
		t.Fatal(err) // opens the connection
	}

	const n = 12
	before := rt.count()
	prepared := 0 // named statements: each shard's first query prepares (a round trip)
	if execMode == "cache_statement" {
		prepared = 3
	}
	for i := range n {
		shard := 1 + i%3
		ctx := WithShard(context.Background(), shard)
		var schema string
		var got, plus int64
		var note any
		if err := db.QueryRowContext(ctx, "SELECT current_schema(), shard, $1::int8 + 1, NULL::text FROM t WHERE id = $2", int64(i), 0).Scan(&schema, &got, &plus, &note); err != nil {
			t.Fatal(err)
		}
		if schema != fmt.Sprintf("shard%04d", shard) || got != int64(shard) || plus != int64(i+1) || note != nil {
			t.Errorf("shard %d: got %s, %d, %d, %v", shard, schema, got, plus, note)
		}
	}
	if got := rt.count() - before; got != n+prepared {
		t.Errorf("%d queries took %d round trips, want %d", n, got, n+prepared)
	}

	before = rt.count()
	if _, err := db.ExecContext(WithShard(context.Background(), 2), "UPDATE t SET note = $1 WHERE id = 0", "x"); err != nil {
		t.Fatal(err)
	}
	if got := rt.count() - before; got != 1 {
		t.Errorf("an Exec took %d round trips", got)
	}

	// Values come back with stdlib's Go types.
	var v any
	if err := db.QueryRowContext(WithShard(context.Background(), 3), "SELECT 2::int4").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.(int64); !ok {
		t.Errorf("int4 scanned into any as %T, want int64", v)
	}

	// The connection is back on its own search_path after the batch.
	if path := rawSearchPath(t, db); strings.Contains(path, "shard") {
		t.Errorf("search_path after a batched query: %q", path)
	}

	// hv's named statements are on the connection in cache_statement mode
	// only: one per schema and SQL text, and each schema's set_config.
	err = Raw(WithShard(context.Background(), 1), db, 1, func(dc any) error {
		var named int
		q := "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'hv\\_%'"
		if err := dc.(*stdlib.Conn).Conn().QueryRow(context.Background(), q).Scan(&named); err != nil {
			return err
		}
		want := 0
		if execMode == "cache_statement" {
			// shards 1-3: the query and set_config; shard 1: whereAmIShard's;
			// shard 3: SELECT 2::int4
			want = 3*2 + 2
		}
		if named != want {
			t.Errorf("%d of hv's named statements on the connection, want %d", named, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A statement whose result type changed (DDL) is prepared again.
	ctx2 := WithShard(context.Background(), 2)
	columns := func() []string {
		rows, err := db.QueryContext(ctx2, "SELECT * FROM t WHERE id = 0")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		cols, err := rows.Columns()
		if err != nil {
			t.Fatal(err)
		}
		return cols
	}
	before1 := len(columns())
	if _, err := db.ExecContext(ctx2, "ALTER TABLE t ADD COLUMN extra int DEFAULT 7"); err != nil {
		t.Fatal(err)
	}
	if got := len(columns()); got != before1+1 {
		t.Errorf("after ALTER TABLE: %d columns, want %d", got, before1+1)
	}

	// An error in the statement fails the query with its shard, and the
	// connection serves on.
	if _, err := db.QueryContext(WithShard(context.Background(), 2), "SELECT * FROM missing_table"); err == nil || !strings.Contains(err.Error(), "shard 2") {
		t.Errorf("query of a missing table: %v", err)
	}
	if sh, err := whereAmIShard(WithShard(context.Background(), 3), db); err != nil || sh != 3 {
		t.Errorf("after an error: shard %d, %v", sh, err)
	}
}

// TestTxModeNamedConcurrent runs named-statement transaction mode
// (default_query_exec_mode=cache_statement) from 4 goroutines over 8 shards
// and 3 connections: every read is its own shard's, and afterwards the
// connection a statement gets is on no shard's search_path (each batch's
// setting ends with it).
func TestTxModeNamedConcurrent(t *testing.T) {
	s := pgtest.Default(t)
	kw := s.CreateDatabase(t)
	createShards(t, kw, ShardRange{1, 9})
	db, err := sql.Open("hv", fmt.Sprintf("shards=1-9 %s default_query_exec_mode=cache_statement; pool_max=3; pool_mode=transaction", kw))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wrong := 0
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				shard := 1 + (g*7+i)%8
				got, err := whereAmIShard(WithShard(context.Background(), shard), db)
				mu.Lock()
				if err != nil || got != shard {
					wrong++
					if wrong <= 3 {
						t.Errorf("shard %d: read shard %d, %v", shard, got, err)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if wrong > 0 {
		t.Errorf("%d of 800 reads wrong", wrong)
	}
	if path := rawSearchPath(t, db); strings.Contains(path, "shard") {
		t.Errorf("search_path after batched queries: %q", path)
	}
}

// rawSearchPath returns search_path as the connection a statement on shard
// 1 gets has it (hv.Raw hands it out on no schema in transaction mode).
func rawSearchPath(t *testing.T, db *sql.DB) string {
	t.Helper()
	var path string
	err := Raw(WithShard(context.Background(), 1), db, 1, func(dc any) error {
		return dc.(*stdlib.Conn).Conn().QueryRow(context.Background(), "SHOW search_path").Scan(&path)
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}
