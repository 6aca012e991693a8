package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"
)

// aggBody generates each shard's rows from p.s, the shard number; shard 16
// has none. all_rows on shard 1 holds every shard's rows, for reference.
const aggBody = `SELECT p.s AS s, g AS id, (g % 3)::text AS k1, g % 2 AS k2,
	CASE WHEN g % 5 = 0 THEN NULL ELSE g * p.s END::int AS i,
	CASE WHEN g = 1 THEN 4611686018427387904 + p.s ELSE g END::bigint AS b,
	round((g * p.s)::numeric / 7, 3) AS n, g * 0.5::float8 AS f,
	md5(g::text || p.s::text) AS tx, timestamptz '2020-01-01 00:00Z' + (g * p.s) * interval '1 hour' AS ts,
	NULL::int AS nul
	FROM p, generate_series(1, CASE WHEN p.s = 16 THEN 0 ELSE 5 + p.s END) g`

func aggFleet(t *testing.T) *sql.DB {
	_, db := fanOutFleet(t, 0, "")
	ctx := context.Background()
	if _, err := db.ExecContext(WithAllShards(ctx), "CREATE TABLE a AS WITH p AS (SELECT shard AS s FROM t WHERE id = 0) "+aggBody); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(WithShard(ctx, 1), "CREATE TABLE all_rows AS WITH p AS (SELECT s FROM generate_series(1, 16) s) "+aggBody); err != nil {
		t.Fatal(err)
	}
	return db
}

func rowStrings(t *testing.T, rows *sql.Rows) []string {
	t.Helper()
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			if tm, ok := v.(time.Time); ok {
				vals[i] = tm.UTC()
			}
		}
		out = append(out, fmt.Sprint(vals...))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAggregateMatchesOneTable(t *testing.T) {
	db := aggFleet(t)
	ctx := context.Background()
	all := WithAllShards(ctx)
	cases := []struct {
		name, sql, ref string
		aggs           []Aggregate
		order          []SortKey
		limit          int
	}{
		{"scalars", `SELECT count(*) AS c, count(i) AS ci, sum(i) AS si, sum(b) AS sb, sum(n) AS sn, sum(f) AS sf,
			min(i) AS mini, max(i) AS maxi, min(tx COLLATE "C") AS mint, max(tx COLLATE "C") AS maxt,
			min(ts) AS mints, max(ts) AS maxts, sum(nul) AS snul FROM %s`, "",
			[]Aggregate{Count("c"), Count("ci"), Sum("si"), Sum("sb"), Sum("sn"), Sum("sf"), Min("mini"), Max("maxi"),
				Min("mint"), Max("maxt"), Min("mints"), Max("maxts"), Sum("snul")}, nil, 0},
		{"bigint-overflow", `SELECT sum(b)::bigint AS sb FROM %s`, `SELECT sum(b) AS sb FROM %s`, []Aggregate{Sum("sb")}, nil, 0},
		{"group1", `SELECT k1, count(*) AS c, sum(n) AS sn, max(ts) AS mts FROM %s GROUP BY k1`, "%s ORDER BY k1",
			[]Aggregate{GroupBy("k1"), Count("c"), Sum("sn"), Max("mts")}, nil, 0},
		{"group2-order-limit", `SELECT k1, k2, count(*) AS c, sum(i) AS si FROM %s GROUP BY k1, k2`,
			"%s ORDER BY si DESC, k1, k2 LIMIT 3",
			[]Aggregate{GroupBy("k1"), GroupBy("k2"), Count("c"), Sum("si")}, []SortKey{Desc("si")}, 3},
		// Ordered by the GroupBy columns: the merge streams.
		{"group2-streamed", `SELECT k1, k2, count(*) AS c, sum(i) AS si, min(ts) AS mts FROM %s GROUP BY k1, k2 ORDER BY k2, k1`, "",
			[]Aggregate{GroupBy("k1"), GroupBy("k2"), Count("c"), Sum("si"), Min("mts")}, []SortKey{Asc("k2"), Asc("k1")}, 0},
		{"group-streamed-desc-limit", `SELECT k1, count(*) AS c, sum(n) AS sn FROM %s GROUP BY k1 ORDER BY k1 DESC LIMIT 2`, "",
			[]Aggregate{GroupBy("k1"), Count("c"), Sum("sn")}, []SortKey{Desc("k1")}, 2},
		{"empty", `SELECT count(*) AS c, sum(i) AS si, min(tx) AS mt FROM %s WHERE false`, "",
			[]Aggregate{Count("c"), Sum("si"), Min("mt")}, nil, 0},
		{"empty-group", `SELECT k1, count(*) AS c FROM %s WHERE false GROUP BY k1`, "",
			[]Aggregate{GroupBy("k1"), Count("c")}, nil, 0},
		{"empty-group-streamed", `SELECT k1, count(*) AS c FROM %s WHERE false GROUP BY k1 ORDER BY k1`, "",
			[]Aggregate{GroupBy("k1"), Count("c")}, []SortKey{Asc("k1")}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ref := fmt.Sprintf(c.sql, "all_rows")
			if c.ref != "" {
				if strings.HasPrefix(c.ref, "%s") {
					ref = fmt.Sprintf(c.ref, ref)
				} else {
					ref = fmt.Sprintf(c.ref, "all_rows")
				}
			}
			want := rowStrings(t, must(db.QueryContext(WithShard(ctx, 1), ref)))
			actx := WithLimit(WithMergeOrder(WithAggregate(all, c.aggs...), c.order...), c.limit)
			got := rowStrings(t, must(db.QueryContext(actx, fmt.Sprintf(c.sql, "a"))))
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("merged\n%v\nwant\n%v", got, want)
			}
			if c.aggs[0].kind != aggGroup && len(got) != 1 {
				t.Errorf("%d rows, want 1", len(got))
			}
		})
	}
}

func TestAggregateFailingShardAndBadColumns(t *testing.T) {
	db := aggFleet(t)
	ctx := context.Background()
	if _, err := db.ExecContext(WithShard(ctx, 3), "DROP TABLE a"); err != nil {
		t.Fatal(err)
	}
	const q = "SELECT count(*) AS c, sum(i) AS si FROM %s"
	aggs := []Aggregate{Count("c"), Sum("si")}
	_, err := db.QueryContext(WithAggregate(WithAllShards(ctx), aggs...), fmt.Sprintf(q, "a"))
	var se *ShardError
	if !errors.As(err, &se) || se.Shard != 3 {
		t.Fatalf("err = %v, want shard 3's", err)
	}
	var rep FanOutReport
	got := rowStrings(t, must(db.QueryContext(WithAggregate(WithPartialResults(WithAllShards(ctx), &rep), aggs...), fmt.Sprintf(q, "a"))))
	want := rowStrings(t, must(db.QueryContext(WithShard(ctx, 1), fmt.Sprintf(q, "all_rows WHERE s <> 3"))))
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("partial %v, want %v", got, want)
	}
	if _, ok := rep.Failed()[3]; !ok || len(rep.Failed()) != 1 {
		t.Errorf("report %v", rep.Failed())
	}
	for _, c := range []struct {
		sql  string
		aggs []Aggregate
		want string
	}{
		{"SELECT count(*) AS c, sum(i) AS si FROM a", []Aggregate{Count("c")}, `"si" is not named`},
		{"SELECT count(*) AS c FROM a", []Aggregate{Count("c"), Sum("nope")}, `"nope"`},
		{"SELECT max(tx) AS m FROM a", []Aggregate{Sum("m")}, "not a decimal"},
		// The streamed merge meets a shard whose rows are not in the merge
		// order: an error, not a group returned twice.
		{"SELECT k1, count(*) AS c FROM a GROUP BY k1 ORDER BY k1 DESC", []Aggregate{GroupBy("k1"), Count("c")}, "not sorted by the merge order"},
	} {
		actx := WithAggregate(WithShards(ctx, 1, 9), c.aggs...)
		if c.aggs[0].kind == aggGroup {
			actx = WithMergeOrder(actx, Asc("k1"))
		}
		rows, err := db.QueryContext(actx, c.sql)
		if err == nil {
			for rows.Next() {
			}
			err = rows.Err()
			rows.Close()
		}
		if !errors.Is(err, ErrAggregate) || !strings.Contains(err.Error(), c.want) || strings.Count(err.Error(), "hv: ") != 1 {
			t.Errorf("%s: err = %v, want ErrAggregate with %s", c.sql, err, c.want)
		}
	}
}

func TestWithKeysGroupsByShard(t *testing.T) {
	_, db := fanOutFleet(t, 100, "num_shards=16")
	ctx := context.Background()
	for _, keys := range [][]any{{17, 33, 49}, {1, 2, 18, 9, 25, 1, 2}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 31, int64(47)}} {
		rows, err := db.QueryContext(WithMergeOrder(WithKeys(ctx, keys...), Asc("id")),
			"SELECT id, shard, note FROM t WHERE id = ANY($1) ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		got := scanFanRows(t, rows)
		seen := map[int]bool{}
		var want []int
		for _, k := range keys {
			n := fmt.Sprint(k)
			var id int
			fmt.Sscan(n, &id)
			if !seen[id] {
				seen[id] = true
				want = append(want, id)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("keys %v: %d rows %v, want %d", keys, len(got), got, len(want))
		}
		for i, r := range got {
			if r.Shard != r.ID%16 || (i > 0 && got[i-1].ID >= r.ID) || !seen[r.ID] {
				t.Errorf("keys %v: row %v", keys, r)
			}
		}
	}
	// Key 16 maps to shard 0, which no host owns.
	_, err := db.QueryContext(WithKeys(ctx, 1, 16), "SELECT id FROM t WHERE id = ANY($1)")
	var se *ShardError
	if !errors.Is(err, ErrUnknownShard) || !errors.As(err, &se) || se.Shard != 0 || !strings.Contains(err.Error(), "16") {
		t.Fatalf("err = %v", err)
	}
	var rep FanOutReport
	rows, err := db.QueryContext(WithPartialResults(WithKeys(ctx, 1, 16), &rep), "SELECT id, shard, note FROM t WHERE id = ANY($1)")
	if err != nil {
		t.Fatal(err)
	}
	if got := scanFanRows(t, rows); len(got) != 1 || got[0].ID != 1 {
		t.Errorf("partial rows %v", got)
	}
	if _, ok := rep.Failed()[0]; !ok {
		t.Errorf("report %v", rep.Failed())
	}
	// Exec with an extra argument as $2.
	res, err := db.ExecContext(WithKeys(ctx, 3, 19, 35), "UPDATE t SET note = $2 WHERE id = ANY($1)", "x")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 3 {
		t.Errorf("rows affected %d, want 3", n)
	}
}

// WithKeys binds each shard's keys as an array with lib/pq too.
func TestWithKeysLibPQ(t *testing.T) {
	_, db := fanOutFleet(t, 0, "num_shards=16; driver=postgres")
	ctx := context.Background()
	var strs []any // on owned shards (shard 0 is no host's), one with a quote and a backslash
	for _, k := range []string{`q"uo\te`, "a", "b", "c", "d", "e", "f", "g", "h", "a"} {
		if s, err := ShardForKey(k, 16); err == nil && s != 0 {
			strs = append(strs, k)
		}
	}
	for _, tc := range []struct {
		keys []any
		sql  string
	}{
		{[]any{1, 17, 2, 18, 9, 2}, "SELECT unnest($1::bigint[])::text AS k"},
		{strs, "SELECT unnest($1::text[]) AS k"},
	} {
		rows, err := db.QueryContext(WithKeys(ctx, tc.keys...), tc.sql)
		if err != nil {
			t.Fatalf("%v: %v", tc.keys, err)
		}
		got := map[string]bool{}
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				t.Fatal(err)
			}
			got[k] = true
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		want := map[string]bool{}
		for _, k := range tc.keys {
			want[fmt.Sprint(k)] = true
		}
		if !maps.Equal(got, want) {
			t.Errorf("keys %v: the shards saw %v", tc.keys, got)
		}
	}
}
