package otelhv

import (
	"context"
	"fmt"
	"testing"

	"github.com/hypervault/hv"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestOperationName(t *testing.T) {
	for sql, want := range map[string]string{
		"SELECT 1":                      "SELECT",
		"  select * from t":             "SELECT",
		"-- note\n/* c */ (SELECT 1)":   "SELECT",
		"with x as (select 1) select *": "WITH",
		"Insert into t values (1)":      "INSERT",
		"BEGIN":                         "BEGIN",
		"frobnicate":                    "",
		"":                              "",
		"-- only a comment":             "",
		"/* unterminated":               "",
		"UPDATE\tt SET a = 1":           "UPDATE",
		"SELECTED":                      "",
	} {
		if got := operationName(sql); got != want {
			t.Errorf("operationName(%q) = %q, want %q", sql, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { operationName("  select 1") }); n != 0 {
		t.Errorf("operationName allocates %v times", n)
	}
}

func TestErrorType(t *testing.T) {
	for _, tc := range []struct {
		err        error
		typ, state string
	}{
		{&hv.ShardError{Shard: 3, Err: &pgconn.PgError{Code: "23505"}}, "23505", "23505"},
		{&hv.ShardError{Shard: 3, Err: fmt.Errorf("x: %w", hv.ErrPoolTimeout)}, "hv.pool_timeout", ""},
		{hv.ErrNoShard, "hv.no_shard", ""},
		{fmt.Errorf("y: %w", context.Canceled), "context.canceled", ""},
		{fmt.Errorf("z"), "_OTHER", ""},
	} {
		if typ, state := errorType(tc.err); typ != tc.typ || state != tc.state {
			t.Errorf("errorType(%v) = %q, %q, want %q, %q", tc.err, typ, state, tc.typ, tc.state)
		}
	}
}

func TestNamespace(t *testing.T) {
	for _, tc := range [][3]string{{"app", "shard0005", "app|shard0005"}, {"app", "", "app"}, {"", "shard0001", "shard0001"}} {
		if got := namespace(tc[0], tc[1]); got != tc[2] {
			t.Errorf("namespace(%q, %q) = %q", tc[0], tc[1], got)
		}
	}
}
