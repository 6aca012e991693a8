package pgtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// FleetRanges are the shard ranges of a Fleet's two hosts, half-open: shards
// 1-8 on the first server and 9-16 on the second.
var FleetRanges = [2][2]int{{1, 9}, {9, 17}}

// Fleet is two fresh databases on two separate servers, for code that runs
// on hv: DSN is the hv DSN, Hosts the libpq keywords of each database.
type Fleet struct {
	DSN   string
	Hosts []string
}

// NewFleet creates a Fleet. hostParams are added to each host's segment of
// the DSN and global to its global options; when schemas is true each shard
// gets its (empty) schema.
func NewFleet(t *testing.T, hostParams, global string, schemas bool) *Fleet {
	t.Helper()
	f := &Fleet{}
	var segs []string
	for i, s := range Servers(t, 2) {
		kw := s.CreateDatabase(t)
		f.Hosts = append(f.Hosts, kw)
		r := FleetRanges[i]
		if schemas {
			var ddl strings.Builder
			for n := r[0]; n < r[1]; n++ {
				fmt.Fprintf(&ddl, "CREATE SCHEMA shard%04d;", n)
			}
			f.Exec(t, i, ddl.String())
		}
		segs = append(segs, fmt.Sprintf("shards=%d-%d %s %s", r[0], r[1], kw, hostParams))
	}
	if global != "" {
		segs = append(segs, global)
	}
	f.DSN = strings.Join(segs, "; ")
	return f
}

// Direct opens a plain pgx connection to host i, bypassing hv, closed when
// t ends.
func (f *Fleet) Direct(t *testing.T, i int) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, f.Hosts[i])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// Exec runs sql directly on host i.
func (f *Fleet) Exec(t *testing.T, host int, sql string) {
	t.Helper()
	if _, err := f.Direct(t, host).Exec(context.Background(), sql); err != nil {
		t.Fatalf("host %d: %v", host, err)
	}
}

// HostOf returns the index of the host that owns shard.
func HostOf(shard int) int {
	if shard >= FleetRanges[1][0] {
		return 1
	}
	return 0
}

// RowsOn counts the rows of shard's table matching where, read directly
// from the shard's schema on its own server.
func (f *Fleet) RowsOn(t *testing.T, table string, shard int, where string, args ...any) int {
	t.Helper()
	var n int
	q := fmt.Sprintf("SELECT count(*) FROM shard%04d.%s WHERE %s", shard, table, where)
	if err := f.Direct(t, HostOf(shard)).QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// Placement returns, for every shard whose table holds rows matching where,
// how many.
func (f *Fleet) Placement(t *testing.T, table, where string, args ...any) map[int]int {
	t.Helper()
	m := map[int]int{}
	for _, r := range FleetRanges {
		for n := r[0]; n < r[1]; n++ {
			if c := f.RowsOn(t, table, n, where, args...); c > 0 {
				m[n] = c
			}
		}
	}
	return m
}
