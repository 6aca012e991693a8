package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

func TestRawHandsTheInnerConnectionOnTheShardsSchema(t *testing.T) {
	f := newTestFleet(t, fleetOptions{global: "pool_max=2"})
	db := f.open(t)
	ctx := context.Background()

	// pgx: COPY into shard 13's table through the native connection.
	err := Raw(ctx, db, 13, func(dc any) error {
		pc := dc.(*stdlib.Conn).Conn()
		var schema string
		if err := pc.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
			return err
		}
		if schema != "shard0013" {
			t.Errorf("Raw on shard 13 is on schema %q", schema)
		}
		rows := [][]any{{101, 13, "copied"}, {102, 13, "copied"}}
		n, err := pc.CopyFrom(ctx, pgx.Identifier{"t"}, []string{"id", "shard", "note"}, pgx.CopyFromRows(rows))
		if n != 2 {
			t.Errorf("copied %d rows", n)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRowContext(WithShard(ctx, 13), "SELECT count(*) FROM t WHERE note = 'copied'").Scan(&n); err != nil || n != 2 {
		t.Errorf("after COPY on shard 13: %d rows, %v", n, err)
	}

	// fn's error comes back naming shard and host; the connection still serves.
	boom := errors.New("boom")
	err = Raw(ctx, db, 2, func(any) error { return boom })
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "shard 2 on host") {
		t.Errorf("fn's error: got %v", err)
	}
	if got, err := whereAmI(WithShard(ctx, 2), db); err != nil || got != f.expect(t, 2) {
		t.Errorf("after a failed Raw: %+v, %v", got, err)
	}
	if err := Raw(ctx, db, 99, func(any) error { return nil }); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("Raw on an unowned shard: got %v", err)
	}
	plain, err := sql.Open("pgx", f.hosts[0])
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := Raw(ctx, plain, 1, func(any) error { return nil }); err == nil || !strings.Contains(err.Error(), "not an hv database") {
		t.Errorf("Raw on a plain pgx database: got %v", err)
	}
	assertIdle(t, db)
}

func TestRawWithLibpq(t *testing.T) {
	f := newTestFleet(t, fleetOptions{driver: "postgres"})
	db := f.open(t)
	ctx := context.Background()
	err := Raw(ctx, db, 10, func(dc any) error {
		q, ok := dc.(driver.QueryerContext)
		if !ok {
			t.Fatalf("lib/pq connection %T is not a QueryerContext", dc)
		}
		rows, err := q.QueryContext(ctx, "SELECT current_schema()", nil)
		if err != nil {
			return err
		}
		defer rows.Close()
		v := make([]driver.Value, 1)
		if err := rows.Next(v); err != nil {
			return err
		}
		if s, _ := v[0].([]byte); string(s) != "shard0010" {
			t.Errorf("lib/pq Raw on shard 10 is on schema %v", v[0])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
